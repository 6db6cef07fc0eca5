//! Per-thread state of the tracker: the reentrancy guard, the thread's id in the capture,
//! and the Python stack last written for it (so only the difference is written next time).
//!
//! TLS here is Rust `thread_local!` with const initialisers and no destructors: access
//! never allocates and never registers a destructor. The heavier per-thread buffers live
//! behind a pointer, allocated on the thread's first tracked event and freed by a pthread
//! key destructor when the thread exits.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

use crate::python::frames::RawFrame;

/// Deepest Python stack recorded; deeper frames (the outermost ones) are dropped.
pub const MAX_FRAMES: usize = 2048;

thread_local! {
    static GUARD: Cell<bool> = const { Cell::new(false) };
    static STATE: Cell<*mut ThreadState> = const { Cell::new(std::ptr::null_mut()) };
    /// Set once the thread's TLS destructors have run: it is exiting and its state is gone.
    static EXITING: Cell<bool> = const { Cell::new(false) };
    /// (generation, tid): kept outside the heap state so an exiting thread keeps its id.
    static IDENTITY: Cell<(u64, u64)> = const { Cell::new((u64::MAX, 0)) };
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
}

/// Runs `f` with the reentrancy guard set, unless it is already set on this thread (a
/// hook called from inside our own work), in which case it returns None.
#[inline(always)]
pub fn with_guard<R>(f: impl FnOnce() -> R) -> Option<R> {
    GUARD.with(|g| {
        if g.get() {
            return None;
        }
        g.set(true);
        let r = f();
        g.set(false);
        Some(r)
    })
}

/// Sets the guard for the rest of the thread's life (the RSS sampler thread uses this).
pub fn set_guard_permanently() {
    GUARD.with(|g| g.set(true));
}

/// A scope that sets the guard and restores the previous value when dropped.
pub struct GuardScope(bool);
impl GuardScope {
    pub fn enter() -> Self {
        GuardScope(GUARD.with(|g| g.replace(true)))
    }
}
impl Drop for GuardScope {
    fn drop(&mut self) {
        GUARD.with(|g| g.set(self.0));
    }
}

static KEY_ONCE: Once = Once::new();
static mut KEY: libc::pthread_key_t = 0;

extern "C" fn destroy_state(ptr: *mut libc::c_void) {
    // The thread is exiting: later frees on it (glibc's own teardown) are still recorded,
    // but without a state they carry no stack update.
    let _g = GuardScope::enter();
    EXITING.with(|e| e.set(true));
    STATE.with(|s| s.set(std::ptr::null_mut()));
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
}

/// The calling thread's id in the current capture, assigned on first use.
#[inline]
pub fn current_tid() -> u64 {
    let generation = GENERATION.load(Ordering::Acquire);
    IDENTITY.with(|id| {
        let (g, tid) = id.get();
        if g == generation {
            return tid;
        }
        let tid = NEXT_TID.fetch_add(1, Ordering::Relaxed);
        id.set((generation, tid));
        tid
    })
}

/// The calling thread's stack state for the current tracker generation, created on first
/// use. Returns None on a thread that is exiting. Call only with the guard set.
pub fn current() -> Option<&'static mut ThreadState> {
    if EXITING.with(|e| e.get()) {
        return None;
    }
    let generation = GENERATION.load(Ordering::Acquire);
    let mut ptr = STATE.with(|s| s.get());
    if ptr.is_null() {
        let state = Box::new(ThreadState {
            generation: u64::MAX,
            name_written: false,
            written: Vec::with_capacity(64),
            scratch: vec![RawFrame::default(); MAX_FRAMES],
        });
        ptr = Box::into_raw(state);
        STATE.with(|s| s.set(ptr));
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
    }
    Some(state)
}

/// Thread ids restart at 1 for each capture, as in Memray.
pub fn reset_tids() {
    NEXT_TID.store(1, Ordering::Relaxed);
}
