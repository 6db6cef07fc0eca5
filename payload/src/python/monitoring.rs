//! The builtin function sys.monitoring calls on every frame exit (CPython 3.12+; see
//! `stack.rs` for what the exits are for), made through the C API at run time, since the
//! payload does not link against libpython.

use std::ffi::{c_char, c_int, c_void};
use std::sync::atomic::{AtomicPtr, Ordering};

use super::symbol;

type FastCall = unsafe extern "C" fn(*mut c_void, *const *mut c_void, isize) -> *mut c_void;

/// `PyMethodDef`.
#[repr(C)]
struct MethodDef {
    name: *const c_char,
    meth: FastCall,
    flags: c_int,
    doc: *const c_char,
}

// SAFETY: the definition is never written after construction; CPython only reads it.
unsafe impl Sync for MethodDef {}

const METH_FASTCALL: c_int = 0x0080;

static DEF: MethodDef = MethodDef { name: c"memray_frame_exit".as_ptr(), meth: on_exit, flags: METH_FASTCALL, doc: std::ptr::null() };

/// `&_Py_NoneStruct`: immortal from 3.12 on, so it is returned without a new reference.
static NONE: AtomicPtr<c_void> = AtomicPtr::new(std::ptr::null_mut());

/// Called by the interpreter with the GIL on PY_RETURN, PY_YIELD and PY_UNWIND, with
/// (code, offset, value) arguments that are not needed: the exiting frame is the thread's
/// innermost.
unsafe extern "C" fn on_exit(_module: *mut c_void, _args: *const *mut c_void, _nargs: isize) -> *mut c_void {
    crate::stack::frame_exiting();
    NONE.load(Ordering::Relaxed)
}

/// The callback, made once and kept (one reference held here forever).
static CALLBACK: AtomicPtr<c_void> = AtomicPtr::new(std::ptr::null_mut());

/// A new reference to the callback (ctypes' `py_object` result takes it over), or null on
/// an interpreter before 3.12 (or when the C API is missing). Call with the GIL.
pub fn exit_callback() -> *mut c_void {
    let incref = symbol(c"Py_IncRef");
    if incref.is_null() {
        return std::ptr::null_mut();
    }
    // SAFETY: `void Py_IncRef(PyObject *)`, called with the GIL.
    let incref: unsafe extern "C" fn(*mut c_void) = unsafe { std::mem::transmute(incref) };
    let made = CALLBACK.load(Ordering::Relaxed);
    if !made.is_null() {
        // SAFETY: `made` is alive: this module holds a reference to it forever.
        unsafe { incref(made) };
        return made;
    }
    // None must be immortal (3.12+) to be returned without a new reference.
    if !crate::hooks::resolve_interpreter().is_ok_and(|i| i.version.minor >= 12) {
        return std::ptr::null_mut();
    }
    let none = symbol(c"_Py_NoneStruct");
    let new = symbol(c"PyCFunction_NewEx");
    if none.is_null() || new.is_null() {
        return std::ptr::null_mut();
    }
    NONE.store(none, Ordering::Relaxed);
    // SAFETY: `PyObject *PyCFunction_NewEx(PyMethodDef *, PyObject *self, PyObject *module)`;
    // the definition is static, self and module may be null, and the caller holds the GIL.
    let made = unsafe {
        let new: unsafe extern "C" fn(*const MethodDef, *mut c_void, *mut c_void) -> *mut c_void = std::mem::transmute(new);
        new(&DEF, std::ptr::null_mut(), std::ptr::null_mut())
    };
    if !made.is_null() {
        // One reference kept here, one for the caller. The GIL serializes callers: no
        // other thread can have stored one meanwhile.
        // SAFETY: `made` is a live object just created.
        unsafe { incref(made) };
        CALLBACK.store(made, Ordering::Relaxed);
    }
    made
}
