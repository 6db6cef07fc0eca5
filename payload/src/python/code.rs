//! Readers for a code object's name, file name, first line and line table, straight from
//! memory: no Python API call (the hook may run without the GIL) and no allocation.
//!
//! Every function takes a `code` pointer that must be a live `PyCodeObject*` (see the
//! Safety sections); a null pointer, or one whose type is not `PyCode_Type`, reads as
//! "nothing" (empty name, line 0, empty table) rather than being dereferenced further.

use super::{read_at, Interpreter};
use cpython::Layout;

/// Where decoded UTF-8 goes. Implementations must not call back into Python.
pub trait Utf8Sink {
    fn put(&mut self, bytes: &[u8]);
}

/// Appends to the vector. It only allocates if the caller did not reserve enough.
impl Utf8Sink for Vec<u8> {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// What a code object looked like when it was cached: if another code object is later
/// allocated at the same address, at least one of these differs (the name, file name and
/// line table objects are owned by the code object and would have been freed with it; a
/// new code object sharing all three interned objects *and* its first line is the same
/// function for a profiler's purposes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct CodeIdentity {
    pub name: usize,
    pub filename: usize,
    pub linetable: usize,
    pub firstlineno: i32,
}

/// Longest string (in code points) we are willing to read; longer ones are taken as
/// corrupt and written as `???`.
const MAX_STR_CHARS: usize = 1 << 20;
/// Longest line table we are willing to hand out.
const MAX_LINETABLE: usize = 1 << 26;

/// Written for any string we cannot read.
const UNKNOWN: &[u8] = b"???";

/// True when `code` is non-null and its type is `PyCode_Type`.
///
/// # Safety
/// `code` is null or points at a live Python object.
unsafe fn is_code(interp: &Interpreter, code: usize) -> bool {
    // SAFETY: a live object starts with its PyObject header (caller contract).
    code != 0 && interp.code_type != 0 && unsafe { read_at::<usize>(code, interp.layout.ob_type) } == interp.code_type
}

/// Pointer field `offset` of a code object, or 0 when `code` is not one.
///
/// # Safety
/// `code` is null or a live Python object.
unsafe fn field(interp: &Interpreter, code: usize, offset: usize) -> usize {
    // SAFETY: `code` is null or a live object (caller contract), which is_code handles.
    if unsafe { is_code(interp, code) } {
        // SAFETY: checked to be a code object, whose layout `interp.layout` describes.
        unsafe { read_at(code, offset) }
    } else {
        0
    }
}

/// `co_firstlineno`, or 0 when `code` is not a code object.
///
/// # Safety
/// `code` is null or a live Python object (e.g. the `code` of a RawFrame just returned
/// by `frames::walk` on this thread, whose frame is still executing).
pub unsafe fn firstlineno(interp: &Interpreter, code: usize) -> i32 {
    // SAFETY: caller contract: `code` is null or a live object, which is_code handles.
    if unsafe { is_code(interp, code) } {
        // SAFETY: checked to be a code object, whose layout `interp.layout` describes.
        unsafe { read_at(code, interp.layout.code_firstlineno) }
    } else {
        0
    }
}

/// The raw line table bytes (`co_lnotab` on 3.8/3.9, `co_linetable` on 3.10+), borrowed
/// from the bytes object. Empty when missing or implausible.
///
/// # Safety
/// As for `firstlineno`; the slice must not outlive the code object (which owns a
/// reference to the bytes object, and bytes objects are immutable).
pub unsafe fn linetable<'a>(interp: &Interpreter, code: usize) -> &'a [u8] {
    let layout = &interp.layout;
    // SAFETY: caller contract.
    let table = unsafe { field(interp, code, layout.code_linetable) };
    if table == 0 {
        return &[];
    }
    // SAFETY: co_linetable/co_lnotab is always a bytes object owned by the code object.
    let size: isize = unsafe { read_at(table, layout.bytes_size) };
    if size <= 0 || size as usize > MAX_LINETABLE {
        return &[];
    }
    // SAFETY: a bytes object stores `ob_size` bytes inline from `ob_sval`, never modified
    // after creation, and alive as long as the code object.
    unsafe { std::slice::from_raw_parts(table.wrapping_add(layout.bytes_data) as *const u8, size as usize) }
}

/// Writes `co_name` as UTF-8 (or `???`).
///
/// # Safety
/// As for `firstlineno`.
pub unsafe fn write_name(interp: &Interpreter, code: usize, sink: &mut impl Utf8Sink) {
    // SAFETY: caller contract; co_name is a str owned by the code object.
    unsafe { write_str(&interp.layout, field(interp, code, interp.layout.code_name), sink) }
}

/// Writes `co_filename` as UTF-8 (or `???`).
///
/// # Safety
/// As for `firstlineno`.
pub unsafe fn write_filename(interp: &Interpreter, code: usize, sink: &mut impl Utf8Sink) {
    // SAFETY: caller contract; co_filename is a str owned by the code object.
    unsafe { write_str(&interp.layout, field(interp, code, interp.layout.code_filename), sink) }
}

/// The cheap identity of a code object, for caches keyed by its address.
///
/// # Safety
/// As for `firstlineno`.
pub unsafe fn identity(interp: &Interpreter, code: usize) -> CodeIdentity {
    let l = &interp.layout;
    // SAFETY: caller contract; each read checks the type first.
    unsafe {
        CodeIdentity {
            name: field(interp, code, l.code_name),
            filename: field(interp, code, l.code_filename),
            linetable: field(interp, code, l.code_linetable),
            firstlineno: firstlineno(interp, code),
        }
    }
}

/// Writes a `str` object as UTF-8: compact ASCII is copied; other strings are encoded
/// from their canonical UCS1/UCS2/UCS4 buffer (immutable once created, unlike the lazily
/// filled `utf8` cache, which another thread holding the GIL could be writing right now);
/// the `utf8` cache is only used for a legacy string without a canonical buffer; anything
/// else gives `???`.
///
/// # Safety
/// `s` is null or a live `str` object described by `layout`.
pub unsafe fn write_str(layout: &Layout, s: usize, sink: &mut impl Utf8Sink) {
    if s == 0 {
        sink.put(UNKNOWN);
        return;
    }
    // SAFETY: `s` is a live str (caller contract): length and state are header fields.
    let (length, state) = unsafe { (read_at::<isize>(s, layout.str_length), read_at::<u32>(s, layout.str_state)) };
    if length < 0 || length as usize > MAX_STR_CHARS {
        sink.put(UNKNOWN);
        return;
    }
    let length = length as usize;
    let kind = (state >> layout.str_kind_shift) & 7;
    let compact = state & (1 << layout.str_compact_bit) != 0;
    let ascii = state & (1 << layout.str_ascii_bit) != 0;

    let data = if compact {
        s.wrapping_add(if ascii { layout.str_ascii_data } else { layout.str_compact_data })
    } else {
        // A legacy (non-compact) PyUnicodeObject keeps `data.any` right after the
        // PyCompactUnicodeObject part, which is where compact data would start.
        // SAFETY: non-compact strings are PyUnicodeObjects, which have this field.
        unsafe { read_at::<usize>(s, layout.str_compact_data) }
    };
    if data == 0 {
        // SAFETY: every str has the PyCompactUnicodeObject fields unless it is compact
        // ASCII, which always has data and so never gets here.
        let (utf8, utf8_len) = unsafe { (read_at::<usize>(s, layout.str_utf8), read_at::<isize>(s, layout.str_utf8_length)) };
        if utf8 != 0 && utf8_len >= 0 && (utf8_len as usize) <= 4 * MAX_STR_CHARS {
            // SAFETY: a non-null cache holds utf8_length bytes owned by the string.
            sink.put(unsafe { std::slice::from_raw_parts(utf8 as *const u8, utf8_len as usize) });
        } else {
            sink.put(UNKNOWN);
        }
        return;
    }
    // SAFETY: a ready str stores `length` code points of `kind` bytes each at `data`.
    unsafe {
        match kind {
            1 if ascii => sink.put(std::slice::from_raw_parts(data as *const u8, length)),
            1 => encode_utf8(std::slice::from_raw_parts(data as *const u8, length).iter().map(|&c| c as u32), sink),
            2 => encode_utf8(std::slice::from_raw_parts(data as *const u16, length).iter().map(|&c| c as u32), sink),
            4 => encode_utf8(std::slice::from_raw_parts(data as *const u32, length).iter().copied(), sink),
            _ => sink.put(UNKNOWN),
        }
    }
}

/// Encodes code points as UTF-8 through a small stack buffer. Lone surrogates and values
/// beyond U+10FFFF (which strict UTF-8 cannot carry) become U+FFFD.
pub fn encode_utf8(points: impl Iterator<Item = u32>, sink: &mut impl Utf8Sink) {
    let mut buf = [0u8; 256];
    let mut n = 0usize;
    for cp in points {
        if n + 4 > buf.len() {
            sink.put(buf.get(..n).unwrap_or_default());
            n = 0;
        }
        let c = char::from_u32(cp).unwrap_or(char::REPLACEMENT_CHARACTER);
        // At least 4 bytes are free here and a char needs at most 4, so encode_utf8
        // cannot panic.
        if let Some(free) = buf.get_mut(n..) {
            n += c.encode_utf8(free).len();
        }
    }
    sink.put(buf.get(..n).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;
    use cpython::layout::{PY310, PY312};

    fn encode(points: &[u32]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_utf8(points.iter().copied(), &mut out);
        out
    }

    #[test]
    fn encodes_every_utf8_length() {
        let s = "aé€😀";
        let points: Vec<u32> = s.chars().map(|c| c as u32).collect();
        assert_eq!(encode(&points), s.as_bytes());
    }

    #[test]
    fn replaces_what_utf8_cannot_carry() {
        assert_eq!(encode(&[0x61, 0xDC80, 0x110000]), "a\u{FFFD}\u{FFFD}".as_bytes());
    }

    #[test]
    fn long_strings_cross_the_buffer() {
        let s = "ж😀".repeat(500);
        let points: Vec<u32> = s.chars().map(|c| c as u32).collect();
        assert_eq!(encode(&points), s.as_bytes());
    }

    /// Builds a compact str the way CPython lays it out for `layout` and reads it back.
    fn fake_str(layout: &Layout, text: &str) -> Vec<u8> {
        let points: Vec<u32> = text.chars().map(|c| c as u32).collect();
        let max = points.iter().copied().max().unwrap_or(0);
        let (kind, ascii) = match max {
            0..=0x7f => (1u32, true),
            0x80..=0xff => (1, false),
            0x100..=0xffff => (2, false),
            _ => (4, false),
        };
        let mut obj = vec![0u64; 64 + points.len()];
        let base = obj.as_mut_ptr() as usize;
        let state: u32 = (kind << layout.str_kind_shift) | (1 << layout.str_compact_bit) | ((ascii as u32) << layout.str_ascii_bit);
        let data = base + if ascii { layout.str_ascii_data } else { layout.str_compact_data };
        // SAFETY: every write lands inside `obj` (64 words of header room plus one word per
        // code point), which outlives the block.
        unsafe {
            *((base + layout.str_length) as *mut isize) = points.len() as isize;
            *((base + layout.str_state) as *mut u32) = state;
            for (i, &p) in points.iter().enumerate() {
                match kind {
                    1 => *((data + i) as *mut u8) = p as u8,
                    2 => *((data + 2 * i) as *mut u16) = p as u16,
                    _ => *((data + 4 * i) as *mut u32) = p,
                }
            }
        }
        let mut out = Vec::new();
        // SAFETY: `base` is the fake string object built above, alive until we return.
        unsafe { write_str(layout, base, &mut out) };
        out
    }

    #[test]
    fn reads_compact_strings_of_every_kind() {
        for layout in [&PY310, &PY312] {
            for text in ["<module>", "café", "函数", "f😀", ""] {
                assert_eq!(fake_str(layout, text), text.as_bytes(), "{text} on 3.{}", layout.minor);
            }
        }
    }

    #[test]
    fn null_string_is_unknown() {
        let mut out = Vec::new();
        // SAFETY: write_str accepts a null object.
        unsafe { write_str(&PY312, 0, &mut out) };
        assert_eq!(out, b"???");
    }
}
