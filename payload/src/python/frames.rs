//! The in-process frame walker: reads the calling thread's Python frame chain straight
//! from the interpreter's memory, with no Python API call, no lock, no allocation and no
//! panic, so it can run inside a malloc hook with or without the GIL.

use super::read_at;
use cpython::{EntryRule, FrameRoot, InstrPos, Layout};

/// One Python frame, as Memray's FRAME_PUSH record carries it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RawFrame {
    /// The frame's `PyCodeObject*`.
    pub code: usize,
    /// What Memray 1.20 records for this version: `f_lasti` as is on 3.8-3.10 (bytes on
    /// 3.8/3.9, code units on 3.10), `PyFrame_GetLasti()` (bytes, or -1) on 3.11+.
    pub instr_offset: i32,
    /// Memray's `is_entry_frame`: true before 3.11; on 3.11+ `_PyFrame_IsEntryFrame`.
    pub is_entry: bool,
}

/// Frames the walker may pass over without writing (3.12+ shim frames, incomplete frames)
/// on top of `out.len()`, before it gives up on a chain that looks endless.
const MAX_SKIPPED: usize = 64;

/// How a walk ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalkEnd {
    /// The whole chain was read.
    Complete,
    /// Frames were left out: the buffer was full, or the chain was longer than any sane one.
    Truncated,
    /// The walk stopped at the anchor frame, written last.
    Anchor,
}

/// Walks the frames of the thread that owns `tstate`, innermost first, writing up to
/// `out.len()` of them, and the frame pointers of the first `ptrs.len()` written to `ptrs`.
/// Stops after writing the frame at address `anchor` (0: walk to the end).
/// Returns how many frames were written and how the walk ended.
///
/// Frames are kept or skipped as `PyEval_GetFrame`/`PyFrame_GetBack` would expose them
/// (3.11+ incomplete frames and frames owned by the C stack are skipped, and so is any
/// frame whose code slot does not hold a code object, 3.13 `f_executable`), except that a
/// frame that has not started (see `describe`) is skipped too.
///
/// # Safety
/// - `tstate` is null or the calling thread's own `PyThreadState*` (then only this thread
///   mutates the chain, and it is busy calling us, so every linked frame stays valid and
///   keeps its code object alive for the duration of the call);
/// - `layout` describes the running interpreter and `code_type` is `&PyCode_Type`.
pub unsafe fn walk_to(
    layout: &Layout,
    tstate: *const u8,
    code_type: usize,
    out: &mut [RawFrame],
    ptrs: &mut [usize],
    anchor: usize,
) -> (usize, WalkEnd) {
    if tstate.is_null() || code_type == 0 {
        return (0, WalkEnd::Complete);
    }
    // SAFETY: tstate is a live PyThreadState (caller contract) described by `layout`.
    let mut frame = unsafe { first_frame(layout, tstate as usize) };
    let mut written = 0usize;
    let mut budget = out.len().saturating_mul(2).saturating_add(MAX_SKIPPED);
    while frame != 0 {
        if budget == 0 {
            return (written, WalkEnd::Truncated);
        }
        budget -= 1;
        // SAFETY: `frame` is a non-null frame linked into this thread's chain (see above).
        let previous: usize = unsafe { read_at(frame, layout.frame_back) };
        // SAFETY: as above; `previous` is null or the next frame of the same chain.
        if let Some(f) = unsafe { describe(layout, frame, previous, code_type) } {
            match out.get_mut(written) {
                Some(slot) => *slot = f,
                None => return (written, WalkEnd::Truncated),
            }
            if let Some(slot) = ptrs.get_mut(written) {
                *slot = frame;
            }
            written += 1;
            if frame == anchor {
                return (written, WalkEnd::Anchor);
            }
        }
        frame = previous;
    }
    (written, WalkEnd::Complete)
}

/// The whole walk: `walk_to` without anchor or frame pointers. Returns how many frames
/// were written and whether frames were left out.
///
/// # Safety
/// As `walk_to`.
pub unsafe fn walk(layout: &Layout, tstate: *const u8, code_type: usize, out: &mut [RawFrame]) -> (usize, bool) {
    // SAFETY: the caller's contract is walk_to's.
    let (n, end) = unsafe { walk_to(layout, tstate, code_type, out, &mut [], 0) };
    (n, end == WalkEnd::Truncated)
}

/// The frame below `frame` that a walk would write next (0: none): its `previous`, past
/// the frames CPython does not show.
///
/// # Safety
/// `frame` is a non-null live frame of the calling thread's chain; `layout` and
/// `code_type` describe the running interpreter.
pub unsafe fn next_visible(layout: &Layout, frame: usize, code_type: usize) -> usize {
    // SAFETY: `frame` is live (caller contract), so its `previous` link is.
    let mut frame: usize = unsafe { read_at(frame, layout.frame_back) };
    for _ in 0..MAX_SKIPPED {
        if frame == 0 {
            break;
        }
        // SAFETY: `frame` is a live frame of the same chain, and `previous` its successor.
        let previous: usize = unsafe { read_at(frame, layout.frame_back) };
        // SAFETY: as above.
        if unsafe { describe(layout, frame, previous, code_type) }.is_some() {
            return frame;
        }
        frame = previous;
    }
    0
}

/// The calling thread's innermost frame pointer, whether or not CPython would show it.
///
/// # Safety
/// `tstate` is null or a live PyThreadState described by `layout`.
#[inline]
pub unsafe fn innermost(layout: &Layout, tstate: *const u8) -> usize {
    if tstate.is_null() {
        return 0;
    }
    // SAFETY: guaranteed by the caller.
    unsafe { first_frame(layout, tstate as usize) }
}

/// The innermost frame pointer (PyFrameObject* before 3.11, _PyInterpreterFrame* after).
///
/// # Safety
/// `tstate` is a non-null, live PyThreadState described by `layout`.
unsafe fn first_frame(layout: &Layout, tstate: usize) -> usize {
    match layout.tstate_frame {
        // SAFETY: reading a pointer field of the live thread state.
        FrameRoot::Direct(offset) => unsafe { read_at(tstate, offset) },
        FrameRoot::ViaCFrame { cframe, current } => {
            // SAFETY: reading a pointer field of the live thread state.
            let cf: usize = unsafe { read_at(tstate, cframe) };
            if cf == 0 {
                return 0;
            }
            // SAFETY: a non-null `cframe` points at the thread's live _PyCFrame (it lives
            // in the thread state or on this thread's C stack, below us).
            unsafe { read_at(cf, current) }
        }
    }
}

/// The RawFrame for `frame`, or None when CPython itself would not show it or it has not
/// started yet (3.11+: at its first RESUME; 3.10-: `f_lasti` -1).
///
/// # Safety
/// `frame` is a non-null live frame of the calling thread's chain and `previous` its
/// successor (or null); `layout` and `code_type` describe the running interpreter.
unsafe fn describe(layout: &Layout, frame: usize, previous: usize, code_type: usize) -> Option<RawFrame> {
    // 3.12+: shim/entry frames owned by C are not Python frames.
    // SAFETY: `owner` is a one-byte field of the live frame.
    let owner: Option<u8> = layout.frame_owner.map(|offset| unsafe { read_at(frame, offset) });
    if let (Some(owner), Some(first_c)) = (owner, layout.first_c_owner) {
        if owner >= first_c {
            return None;
        }
    }

    // SAFETY: the code slot of a live frame holds a strong (3.14+: possibly tagged)
    // reference, or null.
    let code: usize = unsafe { read_at::<usize>(frame, layout.frame_code) } & !layout.frame_code_tag;
    if code == 0 {
        return None;
    }
    // SAFETY: `code` is a live object (the frame owns a reference); ob_type is its header.
    let ob_type: usize = unsafe { read_at(code, layout.ob_type) };
    if ob_type != code_type {
        return None;
    }

    let instr_offset = match layout.frame_instr {
        InstrPos::Lasti(offset) => {
            // SAFETY: `f_lasti` is an int field of the live PyFrameObject.
            let lasti = unsafe { read_at::<i32>(frame, offset) };
            // -1: not started; what happens there is the call's, in the caller (as below).
            if lasti < 0 {
                return None;
            }
            lasti
        }
        InstrPos::Pointer(offset) => {
            // SAFETY: the instruction pointer is a plain field of the live frame.
            let ip: usize = unsafe { read_at(frame, offset) };
            let first = code.wrapping_add(layout.code_adaptive?);
            if let (Some(owner), Some(traceable)) = (owner, layout.code_firsttraceable) {
                // _PyFrame_IsIncomplete: a frame that has not yet run its prologue. Nor is
                // one shown that is still at its first RESUME, not yet started: what
                // happens there (the frame object a profile function is given, the eval
                // breaker's work) belongs to the call in the caller, as Memray shows it.
                // SAFETY: `_co_firsttraceable` is an int field of the live code object.
                let firsttraceable: i32 = unsafe { read_at(code, traceable) };
                let start = first.wrapping_add((firsttraceable.max(0) as usize).wrapping_mul(2));
                if ip == start || (owner != layout.owned_by_generator && ip < start) {
                    return None;
                }
            }
            lasti_bytes(ip, first)
        }
    };

    let is_entry = match layout.entry {
        EntryRule::Always => true,
        // SAFETY: `is_entry` is a one-byte bool field of the live frame.
        EntryRule::Flag(offset) => (unsafe { read_at::<u8>(frame, offset) }) != 0,
        EntryRule::PreviousOwnedByC => match (layout.frame_owner, layout.first_c_owner) {
            (Some(offset), Some(first_c)) if previous != 0 => {
                // SAFETY: `previous` is the next live frame of the same chain.
                let previous_owner: u8 = unsafe { read_at(previous, offset) };
                previous_owner >= first_c
            }
            _ => false,
        },
    };

    Some(RawFrame { code, instr_offset, is_entry })
}

/// `PyFrame_GetLasti` on 3.11+: the distance from the first code unit, in bytes, or -1
/// when the pointer is before it (a frame that has not started).
fn lasti_bytes(ip: usize, first: usize) -> i32 {
    let units = (ip.wrapping_sub(first) as isize) >> 1;
    let units = units as i32;
    if units < 0 {
        -1
    } else {
        units.wrapping_mul(2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cpython::layout::{PY310, PY311, PY312, PY313, PY314, PY315};

    #[test]
    fn lasti_matches_pyframe_getlasti() {
        assert_eq!(lasti_bytes(1000, 1000), 0);
        assert_eq!(lasti_bytes(1008, 1000), 8);
        assert_eq!(lasti_bytes(998, 1000), -1); // prev_instr before the first instruction
    }

    /// Builds a fake interpreter in plain memory and walks it: catches offset mix-ups in
    /// the walker itself (the offsets are checked against real interpreters separately).
    /// Frame 2 is `unstarted` (at its first RESUME; 3.10-: f_lasti -1), else incomplete
    /// (3.11+: before _co_firsttraceable) or, on 3.10-, an ordinary frame.
    fn fake_walk(layout: &Layout, unstarted: bool) -> Vec<RawFrame> {
        const CODE_TYPE: usize = 0xC0DE;
        let mut code = vec![0u64; 64];
        let mut other = vec![0u64; 64];
        let code_addr = code.as_mut_ptr() as usize;
        // SAFETY: every call writes inside one of this function's 64-word buffers (the
        // layouts' offsets are all below 512 bytes), which live until it returns.
        let set = |base: usize, off: usize, val: &[u8]| unsafe {
            std::ptr::copy_nonoverlapping(val.as_ptr(), (base + off) as *mut u8, val.len())
        };
        set(code_addr, layout.ob_type, &CODE_TYPE.to_ne_bytes());
        set(other.as_mut_ptr() as usize, layout.ob_type, &0xBADusize.to_ne_bytes());
        let first = code_addr + layout.code_adaptive.unwrap_or(0);
        if let Some(t) = layout.code_firsttraceable {
            set(code_addr, t, &2i32.to_ne_bytes());
        }
        let mut frames = vec![vec![0u64; 64]; 4];
        let addrs: Vec<usize> = frames.iter_mut().map(|f| f.as_mut_ptr() as usize).collect();
        // 0: innermost, running; 1: a C-stack shim or non-code frame; 2: see above;
        // 3: outermost.
        for (i, &a) in addrs.iter().enumerate() {
            let back = addrs.get(i + 1).copied().unwrap_or(0);
            set(a, layout.frame_back, &back.to_ne_bytes());
            // 3.14+ tag the code reference's low bits.
            set(a, layout.frame_code, &(code_addr | (layout.frame_code_tag & i)).to_ne_bytes());
            match layout.frame_instr {
                InstrPos::Lasti(o) => set(a, o, &(if i == 2 && unstarted { -1 } else { 10 * i as i32 }).to_ne_bytes()),
                InstrPos::Pointer(o) => {
                    // _co_firsttraceable is 2: the first RESUME is at byte 4.
                    let ip = match i {
                        2 if unstarted => first + 4,
                        2 => first + 2,
                        _ => first + 20 * i + 6,
                    };
                    set(a, o, &ip.to_ne_bytes())
                }
            }
            if let EntryRule::Flag(o) = layout.entry {
                set(a, o, &[(i == 3) as u8]);
            }
        }
        match (layout.frame_owner, layout.first_c_owner) {
            (Some(o), Some(first_c)) => set(addrs[1], o, &[first_c + (layout.minor == 14) as u8]),
            _ => set(addrs[1], layout.frame_code, &(other.as_ptr() as usize).to_ne_bytes()),
        }
        let mut tstate = vec![0u64; 64];
        let mut cframe = vec![0u64; 4];
        let t = tstate.as_mut_ptr() as usize;
        match layout.tstate_frame {
            FrameRoot::Direct(o) => set(t, o, &addrs[0].to_ne_bytes()),
            FrameRoot::ViaCFrame { cframe: c, current } => {
                set(t, c, &(cframe.as_mut_ptr() as usize).to_ne_bytes());
                set(cframe.as_mut_ptr() as usize, current, &addrs[0].to_ne_bytes());
            }
        }
        let mut out = [RawFrame::default(); 8];
        // SAFETY: `t` and every frame and code object it leads to are the buffers above.
        let (n, truncated) = unsafe { walk(layout, t as *const u8, CODE_TYPE, &mut out) };
        assert!(!truncated);
        // Stopping at the anchor (the innermost frame): just that frame, and its address.
        let mut upper = [RawFrame::default(); 8];
        let mut ptrs = [0usize; 8];
        // SAFETY: as above.
        let (k, end) = unsafe { walk_to(layout, t as *const u8, CODE_TYPE, &mut upper, &mut ptrs, addrs[0]) };
        assert_eq!((k, end, ptrs[0], upper[0]), (1, WalkEnd::Anchor, addrs[0], out[0]));
        // An anchor that is not in the chain: the whole walk.
        // SAFETY: as above.
        let (k, end) = unsafe { walk_to(layout, t as *const u8, CODE_TYPE, &mut upper, &mut ptrs, 8) };
        assert_eq!((k, end), (n, WalkEnd::Complete));
        assert_eq!(ptrs[n - 1], addrs[3]);
        // The frame below each written one is the next written one.
        for i in 0..n {
            let below = if i + 1 < n { ptrs[i + 1] } else { 0 };
            // SAFETY: as above.
            assert_eq!(unsafe { next_visible(layout, ptrs[i], CODE_TYPE) }, below, "below frame {i}");
        }
        let mut small = [RawFrame::default(); 1];
        // SAFETY: as above.
        let (n1, truncated1) = unsafe { walk(layout, t as *const u8, CODE_TYPE, &mut small) };
        assert_eq!((n1, truncated1), (1, true));
        out[..n].to_vec()
    }

    #[test]
    fn walks_frame_objects() {
        let got = fake_walk(&PY310, false);
        // Frame 1 holds a non-code object and is skipped; 3.10 has no incomplete frames.
        let offs: Vec<i32> = got.iter().map(|f| f.instr_offset).collect();
        assert_eq!(offs, vec![0, 20, 30]);
        assert!(got.iter().all(|f| f.is_entry));
        let offs: Vec<i32> = fake_walk(&PY310, true).iter().map(|f| f.instr_offset).collect();
        assert_eq!(offs, vec![0, 30], "a frame that has not started is not shown");
    }

    #[test]
    fn walks_interpreter_frames() {
        for layout in [&PY311, &PY312, &PY313, &PY314, &PY315] {
            // Frame 1 is skipped (3.11: non-code object; 3.12+: C-stack owner), frame 2 is
            // incomplete (before _co_firsttraceable) or at its first RESUME.
            for unstarted in [false, true] {
                let offs: Vec<i32> = fake_walk(layout, unstarted).iter().map(|f| f.instr_offset).collect();
                assert_eq!(offs, vec![6, 66], "3.{} unstarted={unstarted}", layout.minor);
            }
            let got = fake_walk(layout, false);
            let entries: Vec<bool> = got.iter().map(|f| f.is_entry).collect();
            let expected = if layout.minor == 11 { vec![false, true] } else { vec![true, false] };
            assert_eq!(entries, expected, "3.{}", layout.minor);
        }
    }

    #[test]
    fn null_thread_state_gives_nothing() {
        let mut out = [RawFrame::default(); 4];
        // SAFETY: walk accepts a null thread state.
        assert_eq!(unsafe { walk(&PY312, std::ptr::null(), 1, &mut out) }, (0, false));
    }
}
