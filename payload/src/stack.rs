//! Where Python stacks come from: the stack source interface and the diff against what
//! was last written for the thread.
//!
//! The source today reads the interpreter's own frame chain at allocation time (no
//! profile hook, so threads that existed before tracking, threads started from C and
//! frames entered before an attach all come for free). Another source (sys.monitoring,
//! PEP 768 for 3.14) can replace it behind `StackSource`.

use crate::python::frames::RawFrame;
use crate::python::Interpreter;
use crate::thread_state::ThreadState;

pub trait StackSource {
    /// Fills `out` with the calling thread's frames, innermost first; returns how many.
    fn capture(&self, out: &mut [RawFrame]) -> usize;
}

impl StackSource for Interpreter {
    #[inline]
    fn capture(&self, out: &mut [RawFrame]) -> usize {
        let tstate = self.current_tstate();
        if tstate.is_null() {
            return 0;
        }
        // SAFETY: tstate is the calling thread's own PyThreadState (a TLS read), and only
        // this thread mutates its frame chain, so the chain is stable while we walk it.
        let (n, _truncated) = unsafe { crate::python::frames::walk(&self.layout, tstate, self.code_type, out) };
        n
    }
}

/// The change to write: `pops` frames off the written stack, then `written[push_from..]`
/// pushed.
pub struct StackDelta {
    pub pops: usize,
    pub push_from: usize,
}

/// Compares the fresh stack (`scratch[..n]`, innermost first) with the written one
/// (outermost first), returns the delta, and makes `written` the fresh stack.
pub fn diff_and_update(state: &mut ThreadState, n: usize) -> StackDelta {
    let fresh = &state.scratch[..n.min(state.scratch.len())];
    let common = state.written.iter().zip(fresh.iter().rev()).take_while(|(a, b)| a == b).count();
    let pops = state.written.len() - common;
    state.written.truncate(common);
    state.written.extend(fresh[..fresh.len() - common].iter().rev().copied());
    StackDelta { pops, push_from: common }
}
