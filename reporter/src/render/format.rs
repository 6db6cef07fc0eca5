//! Formatting every renderer shares, as Memray prints it: sizes, allocator names,
//! locations.

use memray_capture::{Allocator, PythonAllocator};

use crate::model::stacks::Location;

/// `AllocatorType(k).name`.
pub fn allocator_type_name(a: Allocator) -> String {
    a.name().to_ascii_uppercase()
}

/// The Python allocator as Memray's metadata names it.
pub fn python_allocator_label(a: PythonAllocator) -> &'static str {
    match a {
        PythonAllocator::Pymalloc => "pymalloc",
        PythonAllocator::PymallocDebug => "pymalloc debug",
        PythonAllocator::Mimalloc => "mimalloc",
        PythonAllocator::MimallocDebug => "mimalloc debug",
        PythonAllocator::Malloc => "malloc",
        PythonAllocator::Other => "unknown",
    }
}

/// `function:file:line`, or Memray's placeholder for allocations without a Python stack.
pub fn format_location(location: Option<&Location>) -> String {
    match location {
        None => "<stack trace unavailable>".to_string(),
        Some(l) => format!("{}:{}:{}", l.function, l.filename, l.lineno),
    }
}

/// Memray's `size_fmt`: three decimals and a decimal (1000-based) unit.
pub fn size_fmt(bytes: u64) -> String {
    let mut num = bytes as f64;
    for unit in ["", "k", "M", "G", "T", "P", "E", "Z"] {
        if num.abs() < 1000.0 {
            return format!("{num:5.3}{unit}B");
        }
        num /= 1000.0;
    }
    format!("{num:.1}YB")
}
