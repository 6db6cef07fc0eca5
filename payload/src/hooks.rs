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
use crate::sampled_blocks::SAMPLED;
use crate::sampling;
use crate::thread_state::{self, with_guard};
use crate::writer::Writer;

/// True while a tracker is recording. Checked before anything else in every hook.
pub static ACTIVE: AtomicBool = AtomicBool::new(false);
pub static WRITER: FutexMutex<Option<Writer>> = FutexMutex::new(None);
/// Whether the capture records native stacks (it changes what is_entry means).
pub static NATIVE_TRACES: AtomicBool = AtomicBool::new(false);
static INTERP: AtomicPtr<Interpreter> = AtomicPtr::new(std::ptr::null_mut());

/// The interpreter description the hooks use, found on first use and kept forever (hooks
/// on other threads may still be reading it). Call with the GIL, outside the hooks (the
/// GIL also keeps two first uses from racing).
pub fn resolve_interpreter() -> Result<&'static Interpreter, String> {
    if let Some(interp) = interpreter() {
        return Ok(interp);
    }
    let leaked: &'static mut Interpreter = Box::leak(Box::new(Interpreter::resolve()?));
    INTERP.store(leaked, Ordering::Release);
    Ok(leaked)
}

#[inline(always)]
pub fn interpreter() -> Option<&'static Interpreter> {
    let p = INTERP.load(Ordering::Acquire);
    if p.is_null() {
        None
    } else {
        // SAFETY: pointers stored in INTERP come from Box::leak and are never freed.
        Some(unsafe { &*p })
    }
}

/// Records an allocation with the calling thread's Python stack.
#[inline(always)]
pub fn record_allocation(address: *mut c_void, size: usize, allocator: Allocator) {
    if address.is_null() || !ACTIVE.load(Ordering::Relaxed) {
        return;
    }
    let interval = sampling::interval();
    if interval != 0 && (allocator != Allocator::Mmap || (size as u64) < interval) {
        return record_sampled_allocation(address as usize, size, allocator, interval);
    }
    with_guard(|| record_with_stack(|writer, tid, native_id| writer.write_allocation(tid, address as usize, size, allocator, native_id)));
}

/// A sampled capture: the allocation is recorded, with its weight as its size, only if
/// the thread's countdown says so (see `sampling.rs`).
#[inline(never)]
fn record_sampled_allocation(address: usize, size: usize, allocator: Allocator, interval: u64) {
    let Some(weight) = sampling::sample(size, interval) else { return };
    with_guard(|| {
        record_with_stack(|writer, tid, native_id| {
            if allocator == Allocator::Mmap {
                // A range of its weight would cover its neighbours (sampled_mappings.rs).
                let synthetic = writer.sampled_mappings.add(address as u64, size as u64, weight);
                return writer.write_allocation(tid, synthetic as usize, weight as usize, allocator, native_id);
            }
            SAMPLED.insert(writer, address);
            writer.write_allocation(tid, address, weight as usize, allocator, native_id)
        })
    });
}

/// Records a Python object's creation (with the calling thread's stack) or destruction
/// (`track_object_lifetimes`; called by CPython's reference tracer with the GIL held).
pub fn record_object(obj: *mut c_void, created: bool) {
    if obj.is_null() || !ACTIVE.load(Ordering::Relaxed) {
        return;
    }
    with_guard(|| {
        if created {
            record_with_stack(|writer, tid, native_id| writer.write_object_created(tid, obj as usize, native_id));
        } else {
            let tid = thread_state::current_tid();
            if let Some(writer) = WRITER.lock().as_mut() {
                writer.write_object_destroyed(tid, obj as usize);
            }
        }
    });
}

/// Brings the capture's view of this thread's stack up to date, then `write`s the record
/// (given the thread and its native stack's id) under the writer lock.
#[inline(never)]
fn record_with_stack(write: impl FnOnce(&mut crate::writer::Writer, u64, u64)) {
    let Some(interp) = interpreter() else { return };
    let tid = thread_state::current_tid();
    // The walk and the diff touch only this thread's state: do them before taking the
    // lock that every thread shares.
    let native = NATIVE_TRACES.load(Ordering::Relaxed);
    let state = thread_state::current().map(|state| {
        let delta = crate::stack::update(interp, state, native);
        if native {
            // The unwind, like the Python walk, needs no lock.
            state.native.get_or_insert_with(crate::native::ThreadNative::new).capture();
        }
        (state, delta)
    });
    let mut guard = WRITER.lock();
    let Some(writer) = guard.as_mut() else { return };
    let mut native_id = 0;
    if let Some((state, delta)) = state {
        if !state.name_written {
            state.name_written = true;
            writer.thread_first_seen(tid);
        }
        writer.write_stack_change(tid, delta.pops, &state.written[delta.push_from..]);
        if let Some(n) = state.native.as_mut().filter(|_| native) {
            native_id = writer.native_frame_id(&n.ips[..n.len], &mut n.prefix);
        }
    }
    write(writer, tid, native_id);
}

/// Records a free (no stack: Memray's format carries none for frees). In a sampled
/// capture, only the frees of sampled blocks are recorded.
#[inline(always)]
pub fn record_deallocation(address: *mut c_void, allocator: Allocator) {
    if address.is_null() || !ACTIVE.load(Ordering::Relaxed) {
        return;
    }
    let sampled = sampling::interval() != 0;
    if sampled && !SAMPLED.may_contain(address as usize) {
        return;
    }
    with_guard(|| {
        let tid = thread_state::current_tid();
        let mut guard = WRITER.lock();
        if let Some(writer) = guard.as_mut() {
            if !sampled || SAMPLED.remove(writer, address as usize) {
                writer.write_allocation(tid, address as usize, 0, allocator, 0);
            }
        }
    });
}

/// Records a munmap, always (it may release part of a recorded mapping). In a sampled
/// capture, the sampled small mappings it touches first end their synthetic ranges.
fn record_unmap(address: *mut c_void, len: usize) {
    if address.is_null() || !ACTIVE.load(Ordering::Relaxed) {
        return;
    }
    with_guard(|| {
        let tid = thread_state::current_tid();
        let mut guard = WRITER.lock();
        if let Some(writer) = guard.as_mut() {
            while let Some((synthetic, weight)) = writer.sampled_mappings.take_overlapping(address as u64, len as u64) {
                writer.write_allocation(tid, synthetic as usize, weight as usize, Allocator::Munmap, 0);
            }
            writer.write_allocation(tid, address as usize, len, Allocator::Munmap, 0);
        }
    });
}

// ---- the real functions ----------------------------------------------------------------

extern "C" {
    fn memalign(align: size_t, size: size_t) -> *mut c_void;
    fn valloc(size: size_t) -> *mut c_void;
    fn pvalloc(size: size_t) -> *mut c_void;
    fn mmap64(addr: *mut c_void, len: size_t, prot: c_int, flags: c_int, fd: c_int, off: i64) -> *mut c_void;
}

/// Every function we intercept, once: the GOT symbol, the fallback used when no loaded
/// object defines it, our hook, and the C signature both share. From this one table come
/// `Real` (the functions the hooks forward to), `resolve_real_functions` and `redirects`.
/// (dlclose is hooked for native traces only: restoring visits only objects still loaded.)
macro_rules! hooked_functions {
    ($($field:ident: $name:literal, $fallback:expr, $hook:expr, $ty:ty;)*) => {
        /// The functions our intercepts forward to: the first definition of each in load
        /// order (see got::find_definition), resolved before any slot points at a hook.
        pub struct Real {
            $($field: $ty,)*
        }

        fn find_real_functions() -> Real {
            Real {
                $($field: match crate::got::find_definition($name) {
                    // SAFETY: the symbol's definition has the C signature of that libc
                    // function, which is `$ty`.
                    Some(addr) => unsafe { std::mem::transmute::<usize, $ty>(addr) },
                    None => $fallback as $ty,
                },)*
            }
        }

        /// The GOT redirections the tracker installs.
        pub fn redirects() -> [Redirect; [$(stringify!($field)),*].len()] {
            [$(Redirect { name: $name, hook: $hook as $ty as usize },)*]
        }
    };
}

type Prctl = unsafe extern "C" fn(c_int, libc::c_ulong, libc::c_ulong, libc::c_ulong, libc::c_ulong) -> c_int;
type Mmap = unsafe extern "C" fn(*mut c_void, size_t, c_int, c_int, c_int, off_t) -> *mut c_void;
type Mmap64 = unsafe extern "C" fn(*mut c_void, size_t, c_int, c_int, c_int, i64) -> *mut c_void;

hooked_functions! {
    malloc: c"malloc", libc::malloc, malloc_hook, unsafe extern "C" fn(size_t) -> *mut c_void;
    calloc: c"calloc", libc::calloc, calloc_hook, unsafe extern "C" fn(size_t, size_t) -> *mut c_void;
    realloc: c"realloc", libc::realloc, realloc_hook, unsafe extern "C" fn(*mut c_void, size_t) -> *mut c_void;
    free: c"free", libc::free, free_hook, unsafe extern "C" fn(*mut c_void);
    posix_memalign: c"posix_memalign", libc::posix_memalign, posix_memalign_hook,
        unsafe extern "C" fn(*mut *mut c_void, size_t, size_t) -> c_int;
    aligned_alloc: c"aligned_alloc", libc::aligned_alloc, aligned_alloc_hook, unsafe extern "C" fn(size_t, size_t) -> *mut c_void;
    memalign: c"memalign", memalign, memalign_hook, unsafe extern "C" fn(size_t, size_t) -> *mut c_void;
    valloc: c"valloc", valloc, valloc_hook, unsafe extern "C" fn(size_t) -> *mut c_void;
    pvalloc: c"pvalloc", pvalloc, pvalloc_hook, unsafe extern "C" fn(size_t) -> *mut c_void;
    mmap: c"mmap", libc::mmap, mmap_hook, Mmap;
    mmap64: c"mmap64", mmap64, mmap64_hook, Mmap64;
    munmap: c"munmap", libc::munmap, munmap_hook, unsafe extern "C" fn(*mut c_void, size_t) -> c_int;
    dlopen: c"dlopen", libc::dlopen, crate::dlopen::entry, unsafe extern "C" fn(*const c_char, c_int) -> *mut c_void;
    dlclose: c"dlclose", libc::dlclose, dlclose_hook, unsafe extern "C" fn(*mut c_void) -> c_int;
    prctl: c"prctl", prctl_fallback, prctl_hook, Prctl;
    // C23 deallocators (glibc 2.43+). The fallbacks only fill `Real` where libc lacks
    // them: no object can then import them, so no slot ever leads to them.
    free_sized: c"free_sized", free_sized_fallback, free_sized_hook, unsafe extern "C" fn(*mut c_void, size_t);
    free_aligned_sized: c"free_aligned_sized", free_aligned_sized_fallback, free_aligned_sized_hook,
        unsafe extern "C" fn(*mut c_void, size_t, size_t);
}

static REAL: AtomicPtr<Real> = AtomicPtr::new(std::ptr::null_mut());

/// Resolves the real functions (once per process; they do not move).
pub fn resolve_real_functions() {
    if !REAL.load(Ordering::Acquire).is_null() {
        return;
    }
    REAL.store(Box::leak(Box::new(find_real_functions())), Ordering::Release);
}

unsafe extern "C" fn prctl_fallback(o: c_int, a: libc::c_ulong, b: libc::c_ulong, c: libc::c_ulong, d: libc::c_ulong) -> c_int {
    // SAFETY: the caller's prctl arguments, passed on unchanged.
    unsafe { libc::prctl(o, a, b, c, d) }
}

#[inline(always)]
fn real() -> &'static Real {
    // SAFETY: set by resolve_real_functions (from a leaked Box, never freed) before any GOT
    // slot points at a hook, so every hook sees it non-null.
    unsafe { &*REAL.load(Ordering::Relaxed) }
}

// ---- the intercepts -------------------------------------------------------------------

unsafe extern "C" fn malloc_hook(size: size_t) -> *mut c_void {
    // SAFETY: a hook stands in for the libc function of the same signature: the program's own
    // arguments go unchanged to the real function (resolved before any slot points here), and the
    // recording reads only the values it returns.
    unsafe {
        let p = (real().malloc)(size);
        record_allocation(p, size, Allocator::Malloc);
        p
    }
}

unsafe extern "C" fn calloc_hook(n: size_t, size: size_t) -> *mut c_void {
    // SAFETY: a hook stands in for the libc function of the same signature: the program's own
    // arguments go unchanged to the real function (resolved before any slot points here), and the
    // recording reads only the values it returns.
    unsafe {
        let p = (real().calloc)(n, size);
        record_allocation(p, n.saturating_mul(size), Allocator::Calloc);
        p
    }
}

unsafe extern "C" fn realloc_hook(ptr: *mut c_void, size: size_t) -> *mut c_void {
    // SAFETY: a hook stands in for the libc function of the same signature: the program's own
    // arguments go unchanged to the real function (resolved before any slot points here), and the
    // recording reads only the values it returns.
    unsafe {
        let p = (real().realloc)(ptr, size);
        if !p.is_null() {
            record_deallocation(ptr, Allocator::Free);
            record_allocation(p, size, Allocator::Realloc);
        } else if size == 0 {
            // glibc frees the block and returns NULL for realloc(p, 0).
            record_deallocation(ptr, Allocator::Free);
        }
        p
    }
}

unsafe extern "C" fn free_hook(ptr: *mut c_void) {
    // SAFETY: a hook stands in for the libc function of the same signature: the program's own
    // arguments go unchanged to the real function (resolved before any slot points here), and the
    // recording reads only the values it returns.
    unsafe {
        // Recorded before the real free, so the address cannot be handed out again in between.
        record_deallocation(ptr, Allocator::Free);
        (real().free)(ptr);
    }
}

unsafe extern "C" fn posix_memalign_hook(memptr: *mut *mut c_void, align: size_t, size: size_t) -> c_int {
    // SAFETY: the program's arguments go unchanged to the real posix_memalign; on success it has
    // stored the block through `memptr`, which we then read.
    unsafe {
        let rc = (real().posix_memalign)(memptr, align, size);
        if rc == 0 && !memptr.is_null() {
            record_allocation(*memptr, size, Allocator::PosixMemalign);
        }
        rc
    }
}

unsafe extern "C" fn aligned_alloc_hook(align: size_t, size: size_t) -> *mut c_void {
    // SAFETY: a hook stands in for the libc function of the same signature: the program's own
    // arguments go unchanged to the real function (resolved before any slot points here), and the
    // recording reads only the values it returns.
    unsafe {
        let p = (real().aligned_alloc)(align, size);
        record_allocation(p, size, Allocator::AlignedAlloc);
        p
    }
}

unsafe extern "C" fn memalign_hook(align: size_t, size: size_t) -> *mut c_void {
    // SAFETY: a hook stands in for the libc function of the same signature: the program's own
    // arguments go unchanged to the real function (resolved before any slot points here), and the
    // recording reads only the values it returns.
    unsafe {
        let p = (real().memalign)(align, size);
        record_allocation(p, size, Allocator::Memalign);
        p
    }
}

unsafe extern "C" fn valloc_hook(size: size_t) -> *mut c_void {
    // SAFETY: a hook stands in for the libc function of the same signature: the program's own
    // arguments go unchanged to the real function (resolved before any slot points here), and the
    // recording reads only the values it returns.
    unsafe {
        let p = (real().valloc)(size);
        record_allocation(p, size, Allocator::Valloc);
        p
    }
}

unsafe extern "C" fn pvalloc_hook(size: size_t) -> *mut c_void {
    // SAFETY: a hook stands in for the libc function of the same signature: the program's own
    // arguments go unchanged to the real function (resolved before any slot points here), and the
    // recording reads only the values it returns.
    unsafe {
        let p = (real().pvalloc)(size);
        record_allocation(p, size, Allocator::Pvalloc);
        p
    }
}

unsafe extern "C" fn mmap_hook(addr: *mut c_void, len: size_t, prot: c_int, flags: c_int, fd: c_int, off: off_t) -> *mut c_void {
    // SAFETY: a hook stands in for the libc function of the same signature: the program's own
    // arguments go unchanged to the real function (resolved before any slot points here), and the
    // recording reads only the values it returns.
    unsafe {
        let p = (real().mmap)(addr, len, prot, flags, fd, off);
        if p != libc::MAP_FAILED {
            record_allocation(p, len, Allocator::Mmap);
        }
        p
    }
}

unsafe extern "C" fn mmap64_hook(addr: *mut c_void, len: size_t, prot: c_int, flags: c_int, fd: c_int, off: i64) -> *mut c_void {
    // SAFETY: a hook stands in for the libc function of the same signature: the program's own
    // arguments go unchanged to the real function (resolved before any slot points here), and the
    // recording reads only the values it returns.
    unsafe {
        let p = (real().mmap64)(addr, len, prot, flags, fd, off);
        if p != libc::MAP_FAILED {
            record_allocation(p, len, Allocator::Mmap);
        }
        p
    }
}

// glibc's free_sized and free_aligned_sized call free through libc's own PLT, whose slot
// we patch: the guard keeps that inner free from being recorded a second time. (Another
// libc may free directly; either way the block is recorded freed exactly once.)
unsafe extern "C" fn free_sized_hook(ptr: *mut c_void, size: size_t) {
    // SAFETY: as free_hook: the program's arguments go unchanged to the real function.
    unsafe {
        record_deallocation(ptr, Allocator::Free);
        let _g = thread_state::GuardScope::enter();
        (real().free_sized)(ptr, size);
    }
}

unsafe extern "C" fn free_aligned_sized_hook(ptr: *mut c_void, align: size_t, size: size_t) {
    // SAFETY: as free_hook: the program's arguments go unchanged to the real function.
    unsafe {
        record_deallocation(ptr, Allocator::Free);
        let _g = thread_state::GuardScope::enter();
        (real().free_aligned_sized)(ptr, align, size);
    }
}

unsafe extern "C" fn free_sized_fallback(ptr: *mut c_void, _size: size_t) {
    // SAFETY: free_sized(p, n) is free(p) with a size hint; `ptr` is the caller's block.
    unsafe { libc::free(ptr) }
}

unsafe extern "C" fn free_aligned_sized_fallback(ptr: *mut c_void, _align: size_t, _size: size_t) {
    // SAFETY: as free_sized_fallback.
    unsafe { libc::free(ptr) }
}

unsafe extern "C" fn munmap_hook(addr: *mut c_void, len: size_t) -> c_int {
    // SAFETY: a hook stands in for the libc function of the same signature: the program's own
    // arguments go unchanged to the real function (resolved before any slot points here), and the
    // recording reads only the values it returns.
    unsafe {
        record_unmap(addr, len);
        (real().munmap)(addr, len)
    }
}

/// Reached through `dlopen::entry`, which adds the caller's return address.
pub(crate) unsafe extern "C" fn dlopen_hook(filename: *const c_char, flags: c_int, caller: *const c_void) -> *mut c_void {
    // SAFETY: the arguments are the program's own dlopen arguments, passed on.
    let handle = unsafe { crate::dlopen::open_for(real().dlopen, filename, flags, caller) };
    if !handle.is_null() && ACTIVE.load(Ordering::Relaxed) {
        // Patch what this dlopen brought in; the guard keeps the walk's own allocations out.
        let _g = thread_state::GuardScope::enter();
        crate::got::patch_all(&redirects());
        if NATIVE_TRACES.load(Ordering::Relaxed) {
            // Unwind through the new object, and tell readers where it is.
            crate::native::refresh();
        }
    }
    handle
}

unsafe extern "C" fn dlclose_hook(handle: *mut c_void) -> c_int {
    // SAFETY: the program's handle goes unchanged to the real dlclose; native::before_unload only
    // looks the handle up.
    unsafe {
        if !(ACTIVE.load(Ordering::Relaxed) && NATIVE_TRACES.load(Ordering::Relaxed)) {
            return (real().dlclose)(handle);
        }
        let _g = thread_state::GuardScope::enter();
        // The object may be unmapped by this call: stop unwinding through it first.
        crate::native::before_unload(handle);
        let rc = (real().dlclose)(handle);
        crate::native::refresh();
        rc
    }
}

unsafe extern "C" fn prctl_hook(option: c_int, a2: libc::c_ulong, a3: libc::c_ulong, a4: libc::c_ulong, a5: libc::c_ulong) -> c_int {
    // SAFETY: the program's arguments go unchanged to the real prctl; for a successful PR_SET_NAME
    // the kernel has read `a2` as a NUL-terminated string, so we may too.
    unsafe {
        let rc = (real().prctl)(option, a2, a3, a4, a5);
        if rc == 0 && option == libc::PR_SET_NAME && a2 != 0 && ACTIVE.load(Ordering::Relaxed) {
            with_guard(|| {
                let name = CStr::from_ptr(a2 as *const c_char).to_bytes();
                let tid = thread_state::current_tid();
                if let Some(w) = WRITER.lock().as_mut() {
                    w.write_thread_name(tid, name);
                }
            });
        }
        rc
    }
}
