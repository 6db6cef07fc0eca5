//! Everything the payload knows about CPython's in-memory structures.
//!
//! - `frames`: the allocation-free walker of the calling thread's frame chain;
//! - `code`: readers for a code object's names, first line and line table;
//! - `monitoring`: the frame-exit callback registered with sys.monitoring (3.12+);
//! - `profile_hook`: the profile function that reports frame exits before 3.12.
//!
//! The per-version layouts themselves live in the `cpython` crate. Nothing here links
//! against libpython: `Interpreter::resolve` finds what it needs with
//! `dlsym(RTLD_DEFAULT, …)` once, at tracker start.

pub mod code;
pub mod frames;
pub mod monitoring;
pub mod profile_hook;

use std::ffi::{c_char, c_void, CStr};

use cpython::{Layout, Version};

/// Reads a `T` at `base + offset` (unaligned reads allowed).
///
/// # Safety
/// The `size_of::<T>()` bytes at `base + offset` are readable and hold a valid `T`.
#[inline(always)]
pub(crate) unsafe fn read_at<T: Copy>(base: usize, offset: usize) -> T {
    // SAFETY: guaranteed by the caller.
    unsafe { std::ptr::read_unaligned(base.wrapping_add(offset) as *const T) }
}

/// The running CPython, as the hooks need it.
pub struct Interpreter {
    pub layout: Layout,
    /// `PyGILState_GetThisThreadState`: reads a TLS key, so it works with or without
    /// the GIL and never allocates.
    get_tstate: unsafe extern "C" fn() -> *const u8,
    /// `&PyCode_Type`.
    pub code_type: usize,
    pub version: Version,
}

/// Looks a symbol up in everything already loaded (libpython or a static python binary).
pub(crate) fn symbol(name: &CStr) -> *mut c_void {
    // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name has no other precondition.
    unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) }
}

impl Interpreter {
    /// Finds the interpreter this library was loaded into. Call once, outside the hooks
    /// (it calls `Py_GetVersion` on 3.8-3.10).
    pub fn resolve() -> Result<Interpreter, String> {
        let get_tstate = symbol(c"PyGILState_GetThisThreadState");
        let code_type = symbol(c"PyCode_Type") as usize;
        if get_tstate.is_null() || code_type == 0 {
            return Err("no CPython found in this process".into());
        }
        let py_version = symbol(c"Py_Version");
        let version = if !py_version.is_null() {
            // SAFETY: 3.11+ exports `const unsigned long Py_Version` (64 bits on LP64 Linux).
            Version::from_hex(unsafe { *(py_version as *const u64) })
        } else {
            let get_version = symbol(c"Py_GetVersion");
            if get_version.is_null() {
                return Err("cannot find the CPython version".into());
            }
            // SAFETY: Py_GetVersion is `const char *Py_GetVersion(void)`, usable at any
            // time, returning a static NUL-terminated string.
            let text = unsafe {
                let f: unsafe extern "C" fn() -> *const c_char = std::mem::transmute(get_version);
                CStr::from_ptr(f())
            };
            Version::parse(text.to_bytes()).ok_or("cannot parse the CPython version")?
        };
        if cpython::version::FREE_THREADED_SYMBOLS.iter().any(|name| {
            let name = std::ffi::CString::new(*name).unwrap_or_default();
            !symbol(&name).is_null()
        }) {
            return Err(cpython::Error::FreeThreaded { version }.to_string());
        }
        let runtime = symbol(c"_PyRuntime");
        let debug_block = if version.has_debug_offsets() && !runtime.is_null() {
            // SAFETY: `_PyRuntime` is the interpreter's `_PyRuntimeState`, a static object
            // of hundreds of KiB that starts with `_Py_DebugOffsets` on 3.13+, so its first
            // READ_SIZE bytes are readable; they are only read as bytes.
            Some(unsafe { std::slice::from_raw_parts(runtime as *const u8, cpython::debug_offsets::READ_SIZE) })
        } else {
            None
        };
        let layout = cpython::resolve(version, debug_block).map_err(|e| e.to_string())?;
        // SAFETY: the symbol is `PyThreadState *PyGILState_GetThisThreadState(void)`.
        let get_tstate = unsafe { std::mem::transmute::<*mut c_void, unsafe extern "C" fn() -> *const u8>(get_tstate) };
        Ok(Interpreter { layout, get_tstate, code_type, version })
    }

    /// The calling thread's `PyThreadState*`, or null if it has none. Lock- and
    /// allocation-free; does not need the GIL.
    #[inline]
    pub fn current_tstate(&self) -> *const u8 {
        // SAFETY: PyGILState_GetThisThreadState only reads a thread-local key.
        unsafe { (self.get_tstate)() }
    }
}

/// Test aid (kept exported for integration tests): walks the calling thread's Python
/// stack and writes one line per frame into `buf`, innermost first:
/// `function \t filename \t firstlineno \t instr_offset \t is_entry(0/1) \n`.
/// Returns the number of bytes written (output is cut at `len`), or -1 when the
/// interpreter is not supported. Allocates; never call it from a hook.
///
/// # Safety
/// `buf` is null or writable for `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn memray_debug_walk_current_stack(buf: *mut u8, len: usize) -> isize {
    let Ok(interp) = Interpreter::resolve() else { return -1 };
    let mut frames = vec![frames::RawFrame::default(); 4096];
    // SAFETY: the thread state is this thread's own, so its chain cannot change under
    // us; layout and code type come from the running interpreter.
    let (n, _) = unsafe { frames::walk(&interp.layout, interp.current_tstate(), interp.code_type, &mut frames) };
    let mut text = Vec::new();
    for f in frames.iter().take(n) {
        // SAFETY: each code object is held by a frame of this thread that is still live.
        unsafe {
            code::write_name(&interp, f.code, &mut text);
            text.push(b'\t');
            code::write_filename(&interp, f.code, &mut text);
            let line = format!("\t{}\t{}\t{}\n", code::firstlineno(&interp, f.code), f.instr_offset, f.is_entry as u8);
            text.extend_from_slice(line.as_bytes());
        }
    }
    let count = text.len().min(len);
    if !buf.is_null() {
        // SAFETY: the caller passes a writable buffer of `len` bytes; count <= len.
        unsafe { std::ptr::copy_nonoverlapping(text.as_ptr(), buf, count) };
    }
    count as isize
}

/// Test aid (exported for `tests/test_cpython_layouts.py`): writes the layout this
/// process's interpreter resolves to, one `name value` line per field (the names of
/// `cpython::Layout::fields`), or the one-line refusal prefixed with `error: `.
/// Returns the number of bytes written (cut at `len`). Allocates; never call it from a
/// hook.
///
/// # Safety
/// `buf` is null or writable for `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn memray_debug_layout(buf: *mut u8, len: usize) -> isize {
    let text = match Interpreter::resolve() {
        Ok(interp) => interp.layout.fields().iter().map(|(name, value)| format!("{name} {value}\n")).collect::<String>(),
        Err(e) => format!("error: {e}\n"),
    };
    let count = text.len().min(len);
    if !buf.is_null() {
        // SAFETY: the caller passes a writable buffer of `len` bytes; count <= len.
        unsafe { std::ptr::copy_nonoverlapping(text.as_ptr(), buf, count) };
    }
    count as isize
}

#[cfg(test)]
mod tests {
    /// The test binary has no CPython loaded: resolving must fail cleanly.
    #[test]
    fn resolve_fails_without_python() {
        assert!(super::Interpreter::resolve().is_err());
    }
}
