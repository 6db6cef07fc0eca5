//! Frame exits before CPython 3.12 (3.9-3.11): a C-level profile function whose
//! PyTrace_RETURN events (returns, yields and unwinds alike) go to `stack::frame_exiting`.
//!
//! A profile function costs every Python call of its thread (about 1,000 instructions a
//! call on 3.11, which materializes a frame object for each; docs/performance.md), so it is
//! installed only on threads whose stacks `stack.rs` found deep, and never from a hook:
//! the hook queues the thread state and asks for a pending call, which the main thread runs
//! at its next safe point with the GIL. A thread is given the function once per capture: if
//! the program replaces it, exits go unreported from then on, and `stack.rs` stops using
//! anchors there because `c_profilefunc` is no longer ours.

use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use super::{symbol, Interpreter};

const PY_TRACE_RETURN: c_int = 3;

type ProfileFn = unsafe extern "C" fn(*mut c_void, *mut c_void, c_int, *mut c_void) -> c_int;

/// The profile function: called by the interpreter with the GIL on every event of a thread
/// it is installed on.
unsafe extern "C" fn on_event(_obj: *mut c_void, _frame: *mut c_void, what: c_int, _arg: *mut c_void) -> c_int {
    if what == PY_TRACE_RETURN {
        crate::stack::frame_exiting();
    }
    0
}

/// The address a thread state's `c_profilefunc` holds when the function is ours.
pub fn address() -> usize {
    on_event as ProfileFn as usize
}

/// On while the tracker wants profile functions on deep threads (a capture with
/// `--trace-python-allocators` on 3.9-3.11).
static ENABLED: AtomicBool = AtomicBool::new(false);
/// Thread states waiting for the pending call (0: free slot).
static QUEUE: [AtomicUsize; 32] = [const { AtomicUsize::new(0) }; 32];
/// A pending call is asked for and has not run yet.
static PENDING: AtomicBool = AtomicBool::new(false);
/// Thread states given the function during this capture (touched with the GIL only).
static GIVEN: Mutex<Vec<usize>> = Mutex::new(Vec::new());

pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

type PendingFn = unsafe extern "C" fn(*mut c_void) -> c_int;
type AddPendingCall = unsafe extern "C" fn(PendingFn, *mut c_void) -> c_int;
type SetProfile = unsafe extern "C" fn(*const u8, Option<ProfileFn>, *mut c_void) -> c_int;
type InterpreterGet = unsafe extern "C" fn() -> *const c_void;
type ThreadHead = unsafe extern "C" fn(*const c_void) -> *const u8;
type ThreadNext = unsafe extern "C" fn(*const u8) -> *const u8;
type ErrClear = unsafe extern "C" fn();

/// The C API functions used here, found once.
struct Api {
    add_pending_call: AddPendingCall,
    set_profile: SetProfile,
    interpreter_get: InterpreterGet,
    thread_head: ThreadHead,
    thread_next: ThreadNext,
    err_clear: ErrClear,
}

static API: AtomicUsize = AtomicUsize::new(0);

fn api() -> Option<&'static Api> {
    let p = API.load(Ordering::Acquire);
    // SAFETY: a non-zero value is a leaked Box<Api>, never freed.
    (p != 0).then(|| unsafe { &*(p as *const Api) })
}

/// Finds the API (with the GIL, outside the hooks). False when the interpreter lacks it
/// (3.8 has no `_PyEval_SetProfile` for another thread).
fn resolve() -> bool {
    if api().is_some() {
        return true;
    }
    let names = [
        c"Py_AddPendingCall",
        c"_PyEval_SetProfile",
        c"PyInterpreterState_Get",
        c"PyInterpreterState_ThreadHead",
        c"PyThreadState_Next",
        c"PyErr_Clear",
    ];
    let found: Vec<usize> = names.iter().map(|n| symbol(n) as usize).collect();
    if found.contains(&0) {
        return false;
    }
    // SAFETY: each symbol is the C API function of that name, with the signature declared
    // in Api (CPython 3.9-3.11 headers).
    let api = unsafe {
        Api {
            add_pending_call: std::mem::transmute::<usize, AddPendingCall>(found[0]),
            set_profile: std::mem::transmute::<usize, SetProfile>(found[1]),
            interpreter_get: std::mem::transmute::<usize, InterpreterGet>(found[2]),
            thread_head: std::mem::transmute::<usize, ThreadHead>(found[3]),
            thread_next: std::mem::transmute::<usize, ThreadNext>(found[4]),
            err_clear: std::mem::transmute::<usize, ErrClear>(found[5]),
        }
    };
    API.store(Box::into_raw(Box::new(api)) as usize, Ordering::Release);
    true
}

/// Turns the scheme on (true if this interpreter supports it) or off, removing the function
/// from every thread that still has it. Called with the GIL.
pub fn set_enabled(on: bool) -> bool {
    let ok = on && resolve();
    ENABLED.store(ok, Ordering::Release);
    QUEUE.iter().for_each(|slot| slot.store(0, Ordering::Relaxed));
    GIVEN.lock().unwrap_or_else(|e| e.into_inner()).clear();
    if !on {
        if let (Some(api), Some(interp)) = (api(), crate::hooks::interpreter()) {
            for_each_live_thread(api, |t| profile_function_of(interp, t) == address(), |t| set_profile(api, t, None));
        }
    }
    ok
}

/// The `c_profilefunc` of a live thread state (0 when the layout does not say).
pub fn profile_function_of(interp: &Interpreter, tstate: *const u8) -> usize {
    let Some(offset) = interp.layout.tstate_profilefunc else { return 0 };
    if tstate.is_null() {
        return 0;
    }
    // SAFETY: a live thread state (callers pass their own, or one of the interpreter's list
    // with the GIL held); `c_profilefunc` is a pointer field at this offset.
    unsafe { crate::python::read_at(tstate as usize, offset) }
}

/// The thread states of the current interpreter. With the GIL; no Python runs meanwhile.
fn threads(api: &Api) -> Vec<*const u8> {
    let mut out = Vec::new();
    // SAFETY: with the GIL held, the interpreter's thread list is stable while we walk it.
    unsafe {
        let mut t = (api.thread_head)((api.interpreter_get)());
        while !t.is_null() {
            out.push(t);
            t = (api.thread_next)(t);
        }
    }
    out
}

/// Calls `f` on each thread state of the current interpreter that `pick` chooses, each
/// found still in the list right before: `f` may run Python (an audit hook), during which
/// threads may come and go. With the GIL.
fn for_each_live_thread(api: &Api, pick: impl Fn(*const u8) -> bool, mut f: impl FnMut(*const u8)) {
    for t in threads(api).into_iter().filter(|&t| pick(t)) {
        if threads(api).contains(&t) && pick(t) {
            f(t);
        }
    }
}

/// `_PyEval_SetProfile(tstate, f, NULL)`. An audit hook may refuse it: its exception is
/// cleared (the thread then goes on without). With the GIL, on a live thread state.
fn set_profile(api: &Api, tstate: *const u8, f: Option<ProfileFn>) {
    // SAFETY: a live thread state of this interpreter (caller contract); the GIL is held.
    if unsafe { (api.set_profile)(tstate, f, std::ptr::null_mut()) } != 0 {
        // SAFETY: with the GIL; leave no exception behind.
        unsafe { (api.err_clear)() };
    }
}

/// From a hook: asks for the function on the calling thread (`tstate`). Lock-free apart
/// from the interpreter's pending-call lock, which no allocation is made under.
pub fn request(tstate: *const u8) {
    let Some(api) = api() else { return };
    let t = tstate as usize;
    if t == 0 || !QUEUE.iter().any(|slot| slot.compare_exchange(0, t, Ordering::AcqRel, Ordering::Relaxed).is_ok()) {
        return;
    }
    if !PENDING.swap(true, Ordering::AcqRel) {
        // SAFETY: Py_AddPendingCall may be called from any thread, with or without the GIL.
        if unsafe { (api.add_pending_call)(install_pending, std::ptr::null_mut()) } != 0 {
            PENDING.store(false, Ordering::Release);
        }
    }
}

/// The pending call: runs on the main thread with the GIL, at a safe point.
unsafe extern "C" fn install_pending(_arg: *mut c_void) -> c_int {
    let _guard = crate::thread_state::GuardScope::enter();
    PENDING.store(false, Ordering::Release);
    let (Some(api), Some(interp)) = (api(), crate::hooks::interpreter()) else { return 0 };
    if !ENABLED.load(Ordering::Acquire) {
        return 0;
    }
    let wanted: Vec<usize> = QUEUE.iter().map(|slot| slot.swap(0, Ordering::AcqRel)).filter(|&t| t != 0).collect();
    // A thread that exited since it asked is not in the list; one that has a profile
    // function of its own keeps it; one given ours before does not get it twice (the lock
    // is not held while CPython runs an audit hook).
    let fresh = |t: *const u8| {
        let given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        wanted.contains(&(t as usize)) && profile_function_of(interp, t) == 0 && !given.contains(&(t as usize))
    };
    for_each_live_thread(api, fresh, |t| {
        GIVEN.lock().unwrap_or_else(|e| e.into_inner()).push(t as usize);
        set_profile(api, t, Some(on_event));
    });
    0
}
