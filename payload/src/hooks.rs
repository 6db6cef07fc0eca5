//! The intercepts that GOT slots are pointed at, and the two record paths they share.
//!
//! Rules for everything reachable from here: no allocation that reaches a hook (our own
//! allocations go through the payload's unpatched PLT straight to libc, and the guard is
//! set while we work), no panic, and the only lock taken is the writer lock, which this
//! thread never already holds (the guard makes nested calls skip recording).

use std::ffi::CStr;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

use libc::{c_char, c_int, c_void, off_t, size_t};
use memray_capture::Allocator;

use crate::got::Redirect;
use crate::lock::FutexMutex;
use crate::python::Interpreter;
use crate::stack::{diff_and_update, StackSource};
use crate::thread_state::{self, with_guard};
use crate::writer::Writer;

/// True while a tracker is recording. Checked before anything else in every hook.
pub static ACTIVE: AtomicBool = AtomicBool::new(false);
pub static WRITER: FutexMutex<Option<Writer>> = FutexMutex::new(None);
static INTERP: AtomicPtr<Interpreter> = AtomicPtr::new(std::ptr::null_mut());

/// Installs the interpreter description used by the hooks; the first one is kept forever
/// (hooks on other threads may still be reading it).
pub fn set_interpreter(interp: Interpreter) -> &'static Interpreter {
    let current = INTERP.load(Ordering::Acquire);
    if !current.is_null() {
        // SAFETY: pointers stored in INTERP come from Box::leak and are never freed.
        return unsafe { &*current };
    }
    let leaked: &'static mut Interpreter = Box::leak(Box::new(interp));
    INTERP.store(leaked, Ordering::Release);
    leaked
}

#[inline(always)]
pub fn interpreter() -> Option<&'static Interpreter> {
    let p = INTERP.load(Ordering::Acquire);
    // SAFETY: see set_interpreter.
    if p.is_null() {
        None
    } else {
        Some(unsafe { &*p })
    }
}

/// Records an allocation with the calling thread's Python stack.
#[inline(always)]
pub fn record_allocation(address: *mut c_void, size: usize, allocator: Allocator) {
    if address.is_null() || !ACTIVE.load(Ordering::Relaxed) {
        return;
    }
    with_guard(|| record_allocation_slow(address as usize, size, allocator));
}

#[inline(never)]
fn record_allocation_slow(address: usize, size: usize, allocator: Allocator) {
    let Some(interp) = interpreter() else { return };
    let tid = thread_state::current_tid();
    let state = thread_state::current();
    let mut guard = WRITER.lock();
    let Some(writer) = guard.as_mut() else { return };
    if let Some(state) = state {
        if !state.name_written {
            state.name_written = true;
            writer.write_pending_thread_name(tid);
        }
        let n = interp.capture(&mut state.scratch);
        if !writer.native_traces {
            // Memray marks every frame as an entry frame unless native traces are on.
            state.scratch[..n].iter_mut().for_each(|f| f.is_entry = true);
        }
        let delta = diff_and_update(state, n);
        writer.write_stack_change(tid, delta.pops, &state.written[delta.push_from..]);
    }
    writer.write_allocation(tid, address, size, allocator);
}

/// Records a deallocation (no stack: Memray's format carries none for frees).
#[inline(always)]
pub fn record_deallocation(address: *mut c_void, size: usize, allocator: Allocator) {
    if address.is_null() || !ACTIVE.load(Ordering::Relaxed) {
        return;
    }
    with_guard(|| {
        let tid = thread_state::current_tid();
        let mut guard = WRITER.lock();
        if let Some(writer) = guard.as_mut() {
            writer.write_allocation(tid, address as usize, size, allocator);
        }
    });
}

// ---- the intercepts -------------------------------------------------------------------
// Each calls the real function through the payload's own (never patched) PLT entry.

unsafe extern "C" fn malloc_hook(size: size_t) -> *mut c_void {
    let p = libc::malloc(size);
    record_allocation(p, size, Allocator::Malloc);
    p
}

unsafe extern "C" fn calloc_hook(n: size_t, size: size_t) -> *mut c_void {
    let p = libc::calloc(n, size);
    record_allocation(p, n.saturating_mul(size), Allocator::Calloc);
    p
}

unsafe extern "C" fn realloc_hook(ptr: *mut c_void, size: size_t) -> *mut c_void {
    let p = libc::realloc(ptr, size);
    if !p.is_null() {
        record_deallocation(ptr, 0, Allocator::Free);
        record_allocation(p, size, Allocator::Realloc);
    } else if size == 0 {
        // glibc frees the block and returns NULL for realloc(p, 0).
        record_deallocation(ptr, 0, Allocator::Free);
    }
    p
}

unsafe extern "C" fn free_hook(ptr: *mut c_void) {
    // Recorded before the real free, so the address cannot be handed out again in between.
    record_deallocation(ptr, 0, Allocator::Free);
    libc::free(ptr);
}

unsafe extern "C" fn posix_memalign_hook(memptr: *mut *mut c_void, align: size_t, size: size_t) -> c_int {
    let rc = libc::posix_memalign(memptr, align, size);
    if rc == 0 && !memptr.is_null() {
        record_allocation(*memptr, size, Allocator::PosixMemalign);
    }
    rc
}

unsafe extern "C" fn aligned_alloc_hook(align: size_t, size: size_t) -> *mut c_void {
    let p = libc::aligned_alloc(align, size);
    record_allocation(p, size, Allocator::AlignedAlloc);
    p
}

extern "C" {
    fn memalign(align: size_t, size: size_t) -> *mut c_void;
    fn valloc(size: size_t) -> *mut c_void;
    fn pvalloc(size: size_t) -> *mut c_void;
    fn mmap64(addr: *mut c_void, len: size_t, prot: c_int, flags: c_int, fd: c_int, off: i64) -> *mut c_void;
}

unsafe extern "C" fn memalign_hook(align: size_t, size: size_t) -> *mut c_void {
    let p = memalign(align, size);
    record_allocation(p, size, Allocator::Memalign);
    p
}

unsafe extern "C" fn valloc_hook(size: size_t) -> *mut c_void {
    let p = valloc(size);
    record_allocation(p, size, Allocator::Valloc);
    p
}

unsafe extern "C" fn pvalloc_hook(size: size_t) -> *mut c_void {
    let p = pvalloc(size);
    record_allocation(p, size, Allocator::Pvalloc);
    p
}

unsafe extern "C" fn mmap_hook(addr: *mut c_void, len: size_t, prot: c_int, flags: c_int, fd: c_int, off: off_t) -> *mut c_void {
    let p = libc::mmap(addr, len, prot, flags, fd, off);
    if p != libc::MAP_FAILED {
        record_allocation(p, len, Allocator::Mmap);
    }
    p
}

unsafe extern "C" fn mmap64_hook(addr: *mut c_void, len: size_t, prot: c_int, flags: c_int, fd: c_int, off: i64) -> *mut c_void {
    let p = mmap64(addr, len, prot, flags, fd, off);
    if p != libc::MAP_FAILED {
        record_allocation(p, len, Allocator::Mmap);
    }
    p
}

unsafe extern "C" fn munmap_hook(addr: *mut c_void, len: size_t) -> c_int {
    record_deallocation(addr, len, Allocator::Munmap);
    libc::munmap(addr, len)
}

unsafe extern "C" fn dlopen_hook(filename: *const c_char, flags: c_int) -> *mut c_void {
    let handle = libc::dlopen(filename, flags);
    if !handle.is_null() && ACTIVE.load(Ordering::Relaxed) {
        // Patch what this dlopen brought in; the guard keeps the walk's own allocations out.
        let _g = thread_state::GuardScope::enter();
        crate::got::patch_all(&redirects());
    }
    handle
}

unsafe extern "C" fn prctl_hook(option: c_int, a2: libc::c_ulong, a3: libc::c_ulong, a4: libc::c_ulong, a5: libc::c_ulong) -> c_int {
    let rc = libc::prctl(option, a2, a3, a4, a5);
    if rc == 0 && option == libc::PR_SET_NAME && a2 != 0 && ACTIVE.load(Ordering::Relaxed) {
        with_guard(|| {
            // SAFETY: PR_SET_NAME's argument is a NUL-terminated string (the kernel read it).
            let name = CStr::from_ptr(a2 as *const c_char).to_bytes();
            let tid = thread_state::current_tid();
            if let Some(w) = WRITER.lock().as_mut() {
                w.write_thread_name(tid, name);
            }
        });
    }
    rc
}

/// The GOT redirections the tracker installs. (dlclose needs none: restoring only visits
/// objects still loaded.)
pub fn redirects() -> [Redirect; 14] {
    macro_rules! r {
        ($name:literal, $f:expr) => {
            Redirect { name: $name, hook: $f as usize }
        };
    }
    [
        r!(c"malloc", malloc_hook as unsafe extern "C" fn(size_t) -> *mut c_void),
        r!(c"calloc", calloc_hook as unsafe extern "C" fn(size_t, size_t) -> *mut c_void),
        r!(c"realloc", realloc_hook as unsafe extern "C" fn(*mut c_void, size_t) -> *mut c_void),
        r!(c"free", free_hook as unsafe extern "C" fn(*mut c_void)),
        r!(c"posix_memalign", posix_memalign_hook as unsafe extern "C" fn(*mut *mut c_void, size_t, size_t) -> c_int),
        r!(c"aligned_alloc", aligned_alloc_hook as unsafe extern "C" fn(size_t, size_t) -> *mut c_void),
        r!(c"memalign", memalign_hook as unsafe extern "C" fn(size_t, size_t) -> *mut c_void),
        r!(c"valloc", valloc_hook as unsafe extern "C" fn(size_t) -> *mut c_void),
        r!(c"pvalloc", pvalloc_hook as unsafe extern "C" fn(size_t) -> *mut c_void),
        r!(c"mmap", mmap_hook as unsafe extern "C" fn(*mut c_void, size_t, c_int, c_int, c_int, off_t) -> *mut c_void),
        r!(c"mmap64", mmap64_hook as unsafe extern "C" fn(*mut c_void, size_t, c_int, c_int, c_int, i64) -> *mut c_void),
        r!(c"munmap", munmap_hook as unsafe extern "C" fn(*mut c_void, size_t) -> c_int),
        r!(c"dlopen", dlopen_hook as unsafe extern "C" fn(*const c_char, c_int) -> *mut c_void),
        r!(c"prctl", prctl_hook as unsafe extern "C" fn(c_int, libc::c_ulong, libc::c_ulong, libc::c_ulong, libc::c_ulong) -> c_int),
    ]
}
