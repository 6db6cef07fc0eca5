//! Per-thread state of the tracker: the reentrancy guard, the thread's id in the capture,
//! and the Python stack last written for it (so only the difference is written next time).
//!
//! The per-thread words live in initial-exec TLS defined in csrc/tls.c: reading them never
//! calls __tls_get_addr, which may allocate (and so re-enter a hook) the first time a
//! thread touches a dlopen'ed library's ordinary TLS. The heavier per-thread buffers live
//! behind a pointer, allocated on the thread's first tracked event and freed by a pthread
//! key destructor when the thread exits.

use std::sync::atomic::{AtomicIsize, AtomicU64, Ordering};
use std::sync::Once;

use crate::python::frames::RawFrame;

/// Deepest Python stack recorded; deeper frames (the outermost ones) are dropped.
pub const MAX_FRAMES: usize = 2048;

#[repr(C)]
struct Tls {
    guard: u8,
    /// Set once the thread's key destructor ran: it is exiting and its state is gone.
    exiting: u8,
    /// (generation, tid): kept outside the heap state so an exiting thread keeps its id.
    generation: u64,
    tid: u64,
    /// A `*mut ThreadState` (opaque to C).
    state: *mut libc::c_void,
    countdown: Countdown,
    /// The frame this thread's stack walks may stop at (`stack.rs`); 0: none. In TLS so
    /// the frame-exit callback can move it without the thread's heap state.
    anchor: usize,
    /// While `anchor` is set, `written[anchor_below]` of the heap state is the anchor frame
    /// and `written[..anchor_below]` the frames below it.
    anchor_below: usize,
}

/// The thread's place in the sampler's Poisson process (`sampling.rs`): in TLS, because
/// the sampler runs before anything else in every sampled hook and must not allocate.
#[repr(C)]
pub struct Countdown {
    /// Bytes to allocate before the next sample.
    pub bytes_left: i64,
    pub rng: u64,
    /// The tracker generation the countdown was drawn for (u64::MAX: never drawn).
    pub generation: u64,
}

extern "C" {
    fn memray_tls_get() -> *mut Tls;
}

/// Where the TLS block is from the thread pointer: the same in every thread for
/// initial-exec TLS (the C library reserves the module's static TLS at one offset). 0
/// until `init` measured it (the block is never at the thread pointer itself).
static TLS_OFFSET: AtomicIsize = AtomicIsize::new(0);

/// This thread's TLS block. Every hook reads it, so it is computed inline (thread pointer
/// plus offset) rather than through a call into the C file, once `init` has run.
#[inline(always)]
fn tls() -> &'static mut Tls {
    let offset = TLS_OFFSET.load(Ordering::Relaxed);
    let block = if offset != 0 {
        crate::arch::thread_pointer().wrapping_add_signed(offset) as *mut Tls
    } else {
        // SAFETY: memray_tls_get has no preconditions.
        unsafe { memray_tls_get() }
    };
    // SAFETY: `block` is the calling thread's own initial-exec TLS struct (memray_tls_get's
    // answer, or the same address computed from the thread pointer), valid for the
    // thread's lifetime; only this thread accesses it, and no two references to it are
    // alive at once in this module's functions.
    unsafe { &mut *block }
}

/// Bumped at every tracker start, so threads forget what they wrote to an older capture.
pub static GENERATION: AtomicU64 = AtomicU64::new(0);
static NEXT_TID: AtomicU64 = AtomicU64::new(1);

pub struct ThreadState {
    pub generation: u64,
    pub name_written: bool,
    /// Stack as last written to the capture, outermost first.
    pub written: Vec<RawFrame>,
    /// Scratch for the walker (always MAX_FRAMES long), innermost first.
    pub scratch: Vec<RawFrame>,
    /// `MEMRAY_CHECK_STACKS` only: a second scratch for the full walk every update is
    /// compared with.
    pub check_scratch: Vec<RawFrame>,
    /// Before 3.12: walks of deep stacks so far, and whether the thread asked for the
    /// profile function that reports its frame exits (`stack.rs`), in this capture.
    pub deep_walks: u32,
    pub exits_requested: bool,
    /// Native unwinding state, made on the first allocation of a `--native` capture.
    pub native: Option<Box<crate::native::ThreadNative>>,
    /// Greenlets this thread switched away from, by greenlet (its `id()`): each is a thread
    /// of its own in the capture, as in Memray, with the stack last written for it.
    pub greenlets: Option<std::collections::HashMap<u64, SuspendedGreenlet>>,
}

/// What a greenlet had written to the capture when this thread switched away from it.
pub struct SuspendedGreenlet {
    tid: u64,
    name_written: bool,
    written: Vec<RawFrame>,
}

/// The thread switches from greenlet `origin` to greenlet `target` (greenlet's trace
/// callback, with the GIL): records then belong to `target`'s capture thread, a new one
/// the first time it runs, and continue from the stack last written for it. A dead
/// origin is forgotten. Call only with the guard set.
pub fn switch_greenlet(origin: u64, target: u64, origin_dead: bool) {
    let tid = current_tid();
    let Some(state) = current() else { return };
    let greenlets = state.greenlets.get_or_insert_with(Default::default);
    if !origin_dead {
        let written = std::mem::take(&mut state.written);
        greenlets.insert(origin, SuspendedGreenlet { tid, name_written: state.name_written, written });
    }
    let (tid, name_written, written) = match greenlets.remove(&target) {
        Some(g) => (g.tid, g.name_written, g.written),
        None => (NEXT_TID.fetch_add(1, Ordering::Relaxed), false, Vec::with_capacity(64)),
    };
    tls().tid = tid;
    // The anchor belongs to the greenlet switched away from.
    tls().anchor = 0;
    state.name_written = name_written;
    state.written = written;
    if let Some(native) = state.native.as_mut() {
        // Another C stack from here on: nothing of the last unwind can be reused.
        native.prefix.clear();
    }
}

/// Runs `f` with the reentrancy guard set, unless it is already set on this thread (a
/// hook called from inside our own work), in which case it returns None.
#[inline(always)]
pub fn with_guard<R>(f: impl FnOnce() -> R) -> Option<R> {
    if tls().guard != 0 {
        return None;
    }
    tls().guard = 1;
    let r = f();
    tls().guard = 0;
    Some(r)
}

/// The calling thread's sampling countdown, unless the reentrancy guard is set (the hook
/// was reached from our own work, which takes no part in the program's sampling). One
/// TLS lookup for both: this runs on every allocation of a sampled capture.
#[inline(always)]
pub fn countdown_unless_guarded() -> Option<&'static mut Countdown> {
    let t = tls();
    (t.guard == 0).then_some(&mut t.countdown)
}

/// The calling thread's stack anchor (`stack.rs`), 0 for none, and its index in the
/// written stack.
#[inline(always)]
pub fn anchor() -> (usize, usize) {
    let t = tls();
    (t.anchor, t.anchor_below)
}

#[inline(always)]
pub fn set_anchor(frame: usize, below: usize) {
    let t = tls();
    t.anchor = frame;
    t.anchor_below = below;
}

/// Sets the guard for the rest of the thread's life (the RSS sampler thread uses this).
pub fn set_guard_permanently() {
    tls().guard = 1;
}

/// A scope that sets the guard and restores the previous value when dropped.
pub struct GuardScope(bool);
impl GuardScope {
    pub fn enter() -> Self {
        let t = tls();
        let previous = t.guard != 0;
        t.guard = 1;
        GuardScope(previous)
    }
}
impl Drop for GuardScope {
    fn drop(&mut self) {
        tls().guard = self.0 as u8;
    }
}

static KEY_ONCE: Once = Once::new();
static mut KEY: libc::pthread_key_t = 0;

extern "C" fn destroy_state(ptr: *mut libc::c_void) {
    // The thread is exiting: later frees on it (glibc's own teardown) are still recorded,
    // but without a state they carry no stack update.
    let _g = GuardScope::enter();
    let t = tls();
    t.exiting = 1;
    t.state = std::ptr::null_mut();
    if !ptr.is_null() {
        // SAFETY: the pointer was produced by Box::into_raw in `current` and registered
        // with this key exactly once; the key's value is cleared by pthread before calling us.
        drop(unsafe { Box::from_raw(ptr as *mut ThreadState) });
    }
}

fn key() -> libc::pthread_key_t {
    KEY_ONCE.call_once(|| {
        // SAFETY: KEY is written only here, once, before any read (Once orders it).
        unsafe {
            let mut k: libc::pthread_key_t = 0;
            libc::pthread_key_create(&mut k, Some(destroy_state));
            KEY = k;
        }
    });
    // SAFETY: written once inside call_once above, read-only afterwards.
    unsafe { KEY }
}

/// Must be called once before tracking starts (outside any hook).
pub fn init() {
    key();
    // SAFETY: memray_tls_get has no preconditions.
    let block = unsafe { memray_tls_get() } as isize;
    TLS_OFFSET.store(block.wrapping_sub(crate::arch::thread_pointer() as isize), Ordering::Relaxed);
}

/// The calling thread's id in the current capture, assigned on first use.
#[inline]
pub fn current_tid() -> u64 {
    let generation = GENERATION.load(Ordering::Acquire);
    let t = tls();
    if t.generation != generation {
        t.generation = generation;
        t.tid = NEXT_TID.fetch_add(1, Ordering::Relaxed);
    }
    t.tid
}

/// The calling thread's stack state for the current tracker generation, created on first
/// use. Returns None on a thread that is exiting. Call only with the guard set.
pub fn current() -> Option<&'static mut ThreadState> {
    if tls().exiting != 0 {
        return None;
    }
    let generation = GENERATION.load(Ordering::Acquire);
    let mut ptr = tls().state as *mut ThreadState;
    if ptr.is_null() {
        let state = Box::new(ThreadState {
            generation: u64::MAX,
            name_written: false,
            written: Vec::with_capacity(64),
            scratch: vec![RawFrame::default(); MAX_FRAMES],
            check_scratch: Vec::new(),
            deep_walks: 0,
            exits_requested: false,
            native: None,
            greenlets: None,
        });
        ptr = Box::into_raw(state);
        tls().state = ptr as *mut libc::c_void;
        // SAFETY: the key was created by init(); storing our pointer makes pthread call
        // destroy_state with it at thread exit.
        unsafe { libc::pthread_setspecific(key(), ptr as *const libc::c_void) };
    }
    // SAFETY: ptr is this thread's own heap state; only this thread ever dereferences it
    // and the guard prevents reentrant aliasing.
    let state = unsafe { &mut *ptr };
    if state.generation != generation {
        state.generation = generation;
        state.name_written = false;
        state.written.clear();
        tls().anchor = 0;
        state.deep_walks = 0;
        state.exits_requested = false;
        state.greenlets = None;
        if let Some(native) = state.native.as_mut() {
            // Node ids belong to the previous capture's frame tree.
            native.prefix.clear();
        }
    }
    Some(state)
}

/// Thread ids restart at 1 for each capture, as in Memray.
pub fn reset_tids() {
    NEXT_TID.store(1, Ordering::Relaxed);
}
