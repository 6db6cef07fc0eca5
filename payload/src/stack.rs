//! Where Python stacks come from, and what changes in the capture's view of them.
//!
//! The stack is read from the interpreter's own frame chain at allocation time (no profile
//! hook, so threads that existed before tracking, threads started from C and frames
//! entered before an attach all come for free).
//!
//! Reading the whole chain costs O(depth) per allocation. Where the interpreter reports
//! every frame exit (sys.monitoring on 3.12+, registered by `_tracking.py`, which then
//! calls `set_exits_watched`; before 3.12 a profile function given to deep threads, see
//! `python/profile_hook.rs`), each thread keeps an *anchor*: a frame of its chain that has
//! not returned, yielded or unwound since the walk that wrote it. While it has not,
//! nothing below it can have changed: each frame below is suspended in the call that leads
//! up to the anchor, and a frame's instruction moves only while it is the innermost. So
//! the walk stops at the anchor (re-reading the anchor itself, whose line moves while it
//! runs) and the frames below are the ones already written. A walk makes the innermost
//! frame the anchor; when the anchor exits, the frame below it, which becomes the
//! innermost, is the anchor instead. So the walk reads only the frames entered since the
//! last one, however deep the stack.
//! CPython delivers no event while a trace or profile function runs on the thread, so no
//! anchor is chosen then; one chosen before stays sound, since no frame below a running
//! trace function can exit until it returns.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use crate::log::{self, log};
use crate::python::frames::{self, RawFrame, WalkEnd};
use crate::python::profile_hook;
use crate::python::{read_at, Interpreter};
use crate::thread_state::{self, ThreadState, MAX_FRAMES};

/// How far below the innermost frame a walk puts the anchor. An anchor further down is
/// met by fewer exits, at the cost of reading more frames at every walk: with anchors
/// that move down on exit, 0 measured best (docs/performance.md).
const ANCHOR_DEPTH: usize = 0;

/// Before 3.12, a thread asks for the profile function that reports its frame exits
/// (`python/profile_hook.rs`) after this many walks of at least `DEEP_WALK` frames: the
/// function costs every call of the thread, so only threads with deep stacks get it. At
/// 16 (was 32) a handler 18 frames deep costs 25% less and a call-heavy recursion 21 deep
/// 11% more, both below Memray's cost (docs/performance.md).
const DEEP_WALK: usize = 16;
const DEEP_WALKS_BEFORE_REQUEST: u32 = 64;

/// The `PyInterpreterState*` whose frame exits are reported to `frame_exiting` (0: none).
/// sys.monitoring is per interpreter: a subinterpreter's threads never get an anchor.
static WATCHED_INTERP: AtomicUsize = AtomicUsize::new(0);

/// Called with the GIL by the interpreter that just set (`on`) or is about to remove the
/// frame-exit events.
pub fn set_exits_watched(on: bool) {
    let watched = match crate::hooks::resolve_interpreter() {
        // SAFETY: the calling thread's own thread state, described by the layout.
        Ok(i) if on => unsafe { interpreter_of(i, i.current_tstate()) },
        _ => 0,
    };
    WATCHED_INTERP.store(watched, Ordering::Release);
}

/// `tstate->interp`, or 0 for a null thread state.
///
/// # Safety
/// `tstate` is null or a live PyThreadState described by `interp.layout`.
unsafe fn interpreter_of(interp: &Interpreter, tstate: *const u8) -> usize {
    if tstate.is_null() {
        return 0;
    }
    // SAFETY: guaranteed by the caller.
    unsafe { read_at(tstate as usize, interp.layout.tstate_interp) }
}

/// The frame-exit callback's work: the calling thread's innermost frame is returning,
/// yielding or unwinding. If it is the anchor, the anchor moves to the frame below it,
/// which becomes the innermost and so has not exited (nor has anything below it): a
/// program that allocates on its way back up keeps short walks.
#[inline]
pub fn frame_exiting() {
    let (anchor, below) = thread_state::anchor();
    if anchor == 0 {
        return;
    }
    let Some(interp) = crate::hooks::interpreter() else { return };
    // SAFETY: current_tstate is the calling thread's own thread state (or null), described
    // by the interpreter's layout.
    let frame = unsafe { frames::innermost(&interp.layout, interp.current_tstate()) };
    if frame != anchor {
        return;
    }
    match below.checked_sub(1) {
        // SAFETY: the anchor is the innermost frame of the calling thread's chain.
        Some(next_below) => thread_state::set_anchor(unsafe { frames::next_visible(&interp.layout, anchor, interp.code_type) }, next_below),
        None => thread_state::set_anchor(0, 0),
    }
}

/// The change to write: `pops` frames off the written stack, then `written[push_from..]`
/// pushed.
pub struct StackDelta {
    pub pops: usize,
    pub push_from: usize,
}

/// Reads the calling thread's stack and makes `state.written` (outermost first) equal to
/// it; returns the change. `native` keeps the frames' entry flags (they mean something
/// only beside native stacks; Memray writes every frame as an entry otherwise).
pub fn update(interp: &Interpreter, state: &mut ThreadState, native: bool) -> StackDelta {
    let tstate = interp.current_tstate();
    let watching = WATCHED_INTERP.load(Ordering::Acquire);
    let profiling = profile_hook::enabled();
    let watched = if watching != 0 {
        // SAFETY: the calling thread's own thread state (or null).
        let thread_interp = unsafe { interpreter_of(interp, tstate) };
        thread_interp == watching
    } else {
        // Before 3.12: only while this thread has our profile function, which it is given
        // once per capture (a gap would leave an anchor that exited unreported).
        profiling && profile_hook::profile_function_of(interp, tstate) == profile_hook::address()
    };
    let (mut anchor, anchor_below) = if watched { thread_state::anchor() } else { (0, 0) };
    // Frame pointers are only needed to choose an anchor: the one at ANCHOR_DEPTH.
    let mut frame_ptrs = [0usize; ANCHOR_DEPTH + 1];
    let (n, end) = loop {
        let ptrs: &mut [usize] = if watched { &mut frame_ptrs } else { &mut [] };
        // SAFETY: tstate is the calling thread's own PyThreadState (or null), so only this
        // thread mutates its chain, and it is here; layout and code type describe it.
        let (n, end) = unsafe { frames::walk_to(&interp.layout, tstate, interp.code_type, &mut state.scratch, ptrs, anchor) };
        // The anchor's frames must still be what was written, and no deeper than a full
        // walk keeps; otherwise read everything.
        if end == WalkEnd::Anchor && (anchor_below >= state.written.len() || anchor_below + n > MAX_FRAMES) {
            anchor = 0;
            continue;
        }
        break (n, end);
    };
    if !native {
        state.scratch[..n].iter_mut().for_each(|f| f.is_entry = true);
    }
    let base = if end == WalkEnd::Anchor { anchor_below } else { 0 };
    let fresh = &state.scratch[..n];
    let same = state.written[base..].iter().zip(fresh.iter().rev()).take_while(|(a, b)| a == b).count();
    let common = base + same;
    let pops = state.written.len() - common;
    state.written.truncate(common);
    state.written.extend(fresh[..n - same].iter().rev().copied());

    // A found anchor stays while the walk above it is short, and whenever no new one may
    // be chosen (a trace function is running; its frames exit unreported).
    let found = end == WalkEnd::Anchor;
    if !(found && n <= ANCHOR_DEPTH + 1) {
        if watched && end != WalkEnd::Truncated && n > ANCHOR_DEPTH && !tracing(interp, tstate) {
            thread_state::set_anchor(frame_ptrs[ANCHOR_DEPTH], state.written.len() - 1 - ANCHOR_DEPTH);
        } else if !found {
            thread_state::set_anchor(0, 0);
        }
    }
    if profiling && !watched && n >= DEEP_WALK && !state.exits_requested {
        state.deep_walks += 1;
        if state.deep_walks >= DEEP_WALKS_BEFORE_REQUEST {
            state.exits_requested = true;
            profile_hook::request(tstate);
        }
    }
    if CHECK.load(Ordering::Relaxed) {
        check(interp, tstate, state, native, end == WalkEnd::Anchor);
    }
    StackDelta { pops, push_from: common }
}

/// Whether a trace or profile function (or another tool's sys.monitoring callback) is
/// running on the thread; true when the layout cannot tell.
fn tracing(interp: &Interpreter, tstate: *const u8) -> bool {
    match interp.layout.tstate_tracing {
        // SAFETY: `tracing` is an int field of the calling thread's live thread state.
        Some(offset) if !tstate.is_null() => unsafe { read_at::<i32>(tstate as usize, offset) != 0 },
        _ => true,
    }
}

// `MEMRAY_CHECK_STACKS` (tests): every update is compared with a full walk.
static CHECK: AtomicBool = AtomicBool::new(false);
static CHECKED: AtomicU64 = AtomicU64::new(0);
static ANCHORED: AtomicU64 = AtomicU64::new(0);
static DIFFERED: AtomicU64 = AtomicU64::new(0);

pub fn set_check(on: bool) {
    CHECKED.store(0, Ordering::Relaxed);
    ANCHORED.store(0, Ordering::Relaxed);
    DIFFERED.store(0, Ordering::Relaxed);
    CHECK.store(on, Ordering::Relaxed);
}

#[cold]
fn check(interp: &Interpreter, tstate: *const u8, state: &mut ThreadState, native: bool, anchored: bool) {
    if state.check_scratch.is_empty() {
        // The payload's own allocations go straight to libc (and the guard is set).
        state.check_scratch = vec![RawFrame::default(); MAX_FRAMES];
    }
    // SAFETY: as in `update`.
    let (n, _) = unsafe { frames::walk(&interp.layout, tstate, interp.code_type, &mut state.check_scratch) };
    let full = &mut state.check_scratch[..n];
    if !native {
        full.iter_mut().for_each(|f| f.is_entry = true);
    }
    CHECKED.fetch_add(1, Ordering::Relaxed);
    ANCHORED.fetch_add(anchored as u64, Ordering::Relaxed);
    if !state.written.iter().eq(full.iter().rev()) {
        DIFFERED.fetch_add(1, Ordering::Relaxed);
    }
}

/// At tracker stop, with `MEMRAY_CHECK_STACKS`: one line the tests read.
pub fn report_check() {
    if CHECK.swap(false, Ordering::Relaxed) {
        let (checked, anchored, differed) =
            (CHECKED.load(Ordering::Relaxed), ANCHORED.load(Ordering::Relaxed), DIFFERED.load(Ordering::Relaxed));
        log!(log::WARNING, "memray: stack check: {checked} stacks, {anchored} read from an anchor, {differed} differed from a full walk");
    }
}
