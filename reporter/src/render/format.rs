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

/// A size in binary units with one decimal (`512.0KiB`), as the pytest plugin prints them.
pub fn binary_size(bytes: u64) -> String {
    let mut num = bytes as f64;
    for unit in ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi"] {
        if num.abs() < 1024.0 {
            return format!("{num:3.1}{unit}B");
        }
        num /= 1024.0;
    }
    format!("{num:.1}YiB")
}

/// The line every report of a sampled capture shows once, saying its figures are
/// estimates; `None` when no capture in `intervals` (their sampling intervals, 0: every
/// allocation recorded) was sampled, so reports of full captures stay Memray's.
pub fn sampling_notice(intervals: &[u64]) -> Option<String> {
    let mut sampled: Vec<u64> = intervals.iter().copied().filter(|&i| i != 0).collect();
    sampled.sort_unstable();
    sampled.dedup();
    if sampled.is_empty() {
        return None;
    }
    let per: Vec<String> = sampled.into_iter().map(binary_size).collect();
    Some(format!("Sampled capture: one allocation recorded per {} on average; bytes and counts are estimates", per.join(" or ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_notice_only_for_sampled_captures() {
        assert_eq!(sampling_notice(&[0]), None);
        assert_eq!(sampling_notice(&[]), None);
        assert_eq!(
            sampling_notice(&[512 * 1024]).as_deref(),
            Some("Sampled capture: one allocation recorded per 512.0KiB on average; bytes and counts are estimates")
        );
        assert!(sampling_notice(&[0, 1 << 20, 4096, 1 << 20]).unwrap().contains("per 4.0KiB or 1.0MiB on average"));
        assert_eq!(binary_size(100), "100.0B");
    }
}
