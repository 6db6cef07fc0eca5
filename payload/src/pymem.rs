//! `trace_python_allocators`: wraps the three PyMem domains (RAW, MEM, OBJ) so that
//! pymalloc's allocations are recorded as PYMALLOC_* records. The wrapped allocator runs
//! with the guard set, so the malloc/mmap calls pymalloc makes underneath are not
//! counted a second time.

use std::sync::atomic::{AtomicBool, Ordering};

use libc::c_void;
use memray_capture::Allocator;

use crate::hooks::{record_allocation, record_deallocation};
use crate::thread_state::GuardScope;

#[repr(C)]
#[derive(Clone, Copy)]
struct PyMemAllocatorEx {
    ctx: *mut c_void,
    malloc: Option<unsafe extern "C" fn(*mut c_void, usize) -> *mut c_void>,
    calloc: Option<unsafe extern "C" fn(*mut c_void, usize, usize) -> *mut c_void>,
    realloc: Option<unsafe extern "C" fn(*mut c_void, *mut c_void, usize) -> *mut c_void>,
    free: Option<unsafe extern "C" fn(*mut c_void, *mut c_void)>,
}

const EMPTY: PyMemAllocatorEx = PyMemAllocatorEx { ctx: std::ptr::null_mut(), malloc: None, calloc: None, realloc: None, free: None };

/// The allocators we replaced, one per domain; our wrappers receive a pointer to their
/// domain's entry as `ctx`. Written only by install/uninstall, which run under the GIL.
static mut ORIGINAL: [PyMemAllocatorEx; 3] = [EMPTY; 3];
static INSTALLED: AtomicBool = AtomicBool::new(false);

type GetAllocator = unsafe extern "C" fn(i32, *mut PyMemAllocatorEx);
type SetAllocator = unsafe extern "C" fn(i32, *mut PyMemAllocatorEx);

fn resolve() -> Option<(GetAllocator, SetAllocator)> {
    // SAFETY: dlsym with valid NUL-terminated names; the results, when non-null, are the
    // interpreter's exported functions with these C signatures.
    unsafe {
        let get = libc::dlsym(libc::RTLD_DEFAULT, c"PyMem_GetAllocator".as_ptr());
        let set = libc::dlsym(libc::RTLD_DEFAULT, c"PyMem_SetAllocator".as_ptr());
        if get.is_null() || set.is_null() {
            return None;
        }
        Some((std::mem::transmute::<*mut c_void, GetAllocator>(get), std::mem::transmute::<*mut c_void, SetAllocator>(set)))
    }
}

/// Must be called with the GIL held.
pub fn install() -> bool {
    let Some((get, set)) = resolve() else { return false };
    if INSTALLED.swap(true, Ordering::AcqRel) {
        return true;
    }
    // SAFETY: called with the GIL held (the Python API requires it for domains MEM/OBJ),
    // and ORIGINAL is only touched here and in uninstall, both serialised by the GIL.
    unsafe {
        let originals = &raw mut ORIGINAL;
        for domain in 0..3 {
            get(domain as i32, &mut (*originals)[domain]);
            let mut wrapper = PyMemAllocatorEx {
                ctx: &mut (*originals)[domain] as *mut PyMemAllocatorEx as *mut c_void,
                malloc: Some(py_malloc),
                calloc: Some(py_calloc),
                realloc: Some(py_realloc),
                free: Some(py_free),
            };
            set(domain as i32, &mut wrapper);
        }
    }
    true
}

/// Must be called with the GIL held.
pub fn uninstall() {
    if !INSTALLED.swap(false, Ordering::AcqRel) {
        return;
    }
    let Some((_, set)) = resolve() else { return };
    // SAFETY: as in install; the originals are valid allocator descriptions saved there.
    unsafe {
        let originals = &raw mut ORIGINAL;
        for domain in 0..3 {
            set(domain as i32, &mut (*originals)[domain]);
        }
    }
}

/// SAFETY (all wrappers): `ctx` is the pointer install() gave the interpreter, to a
/// static PyMemAllocatorEx that holds the original domain allocator.
unsafe fn original(ctx: *mut c_void) -> &'static PyMemAllocatorEx {
    // SAFETY: `ctx` is the pointer install() gave the interpreter: a static PyMemAllocatorEx, never freed.
    unsafe { &*(ctx as *const PyMemAllocatorEx) }
}

unsafe extern "C" fn py_malloc(ctx: *mut c_void, size: usize) -> *mut c_void {
    // SAFETY: the interpreter calls us with the `ctx` install() registered (see `original`) and its
    // own arguments, which go unchanged to the original allocator of this domain.
    unsafe {
        let orig = original(ctx);
        let p = {
            let _g = GuardScope::enter();
            orig.malloc.map_or(std::ptr::null_mut(), |f| f(orig.ctx, size))
        };
        record_allocation(p, size, Allocator::PymallocMalloc);
        p
    }
}

unsafe extern "C" fn py_calloc(ctx: *mut c_void, n: usize, size: usize) -> *mut c_void {
    // SAFETY: the interpreter calls us with the `ctx` install() registered (see `original`) and its
    // own arguments, which go unchanged to the original allocator of this domain.
    unsafe {
        let orig = original(ctx);
        let p = {
            let _g = GuardScope::enter();
            orig.calloc.map_or(std::ptr::null_mut(), |f| f(orig.ctx, n, size))
        };
        record_allocation(p, n.saturating_mul(size), Allocator::PymallocCalloc);
        p
    }
}

unsafe extern "C" fn py_realloc(ctx: *mut c_void, ptr: *mut c_void, size: usize) -> *mut c_void {
    // SAFETY: the interpreter calls us with the `ctx` install() registered (see `original`) and its
    // own arguments, which go unchanged to the original allocator of this domain.
    unsafe {
        let orig = original(ctx);
        let p = {
            let _g = GuardScope::enter();
            orig.realloc.map_or(std::ptr::null_mut(), |f| f(orig.ctx, ptr, size))
        };
        if !p.is_null() {
            record_deallocation(ptr, Allocator::PymallocFree);
            record_allocation(p, size, Allocator::PymallocRealloc);
        }
        p
    }
}

unsafe extern "C" fn py_free(ctx: *mut c_void, ptr: *mut c_void) {
    // SAFETY: the interpreter calls us with the `ctx` install() registered (see `original`) and its
    // own arguments, which go unchanged to the original allocator of this domain.
    unsafe {
        let orig = original(ctx);
        record_deallocation(ptr, Allocator::PymallocFree);
        let _g = GuardScope::enter();
        if let Some(f) = orig.free {
            f(orig.ctx, ptr);
        }
    }
}
