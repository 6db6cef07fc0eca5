//! Hybrid stacks: the native stack with each interpreter eval-loop frame replaced by the
//! Python frames it was running, so Python and native frames appear interleaved in the
//! order they ran. Semantics follow Memray 1.20's `hybrid_stack_trace`:
//!
//! * stacks are paired from the outermost frame inwards, so an allocation the eval loop
//!   made before its Python frame was recorded leaves the innermost eval frame unpaired
//!   (it then shows as a native frame);
//! * on 3.11+ one eval loop runs several Python frames: a frame whose entry flag is
//!   unset ran in the same eval loop as its caller, so an eval-loop frame stands for its
//!   entry frame plus the non-entry frames called from it (3.8-3.10 frames are all entry
//!   frames);
//! * on the thread that started tracking, the frames outside the one that started it
//!   (`skipped_frames_on_main_tid`), Python and native, are dropped;
//! * if Python frames are left over once the native stack is used up (eval-loop frames
//!   that could not be recognized, as with a stripped interpreter), the Python stack is
//!   returned alone, whole.

use crate::model::stacks::Location;

/// Whether a native function is one of the interpreter's eval loops.
pub fn is_eval_frame(function: &str) -> bool {
    function.contains("_PyEval_EvalFrameDefault") || function.starts_with("_TAIL_CALL_")
}

/// Merges `python` (innermost first, with each frame's entry flag; the whole stack) and
/// `native` (innermost first). `skip`: outermost Python frames to hide (and the native
/// frames outside them). Returns innermost first.
pub fn merge(python: &[(Location, bool)], native: &[Location], skip: usize) -> Vec<Location> {
    // Work outermost first.
    let n_py = python.len();
    let py_outer = |i: usize| &python[n_py - 1 - i];
    let mut out: Vec<Location> = Vec::with_capacity(native.len() + n_py);
    let mut next_py = 0usize; // outermost-first index of the next Python frame to place
    for frame in native.iter().rev() {
        if next_py < n_py && is_eval_frame(&frame.function) {
            loop {
                if skip != 0 && next_py == skip {
                    // The first frame to keep: everything outside it is hidden.
                    out.clear();
                }
                out.push(py_outer(next_py).0.clone());
                next_py += 1;
                // This eval loop also ran the next frame in if that one is not an entry.
                if next_py >= n_py || py_outer(next_py).1 {
                    break;
                }
            }
        } else {
            out.push(frame.clone());
        }
    }
    if next_py < n_py {
        return python.iter().map(|(l, _)| l.clone()).collect();
    }
    out.reverse();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    fn loc(name: &str, native: bool) -> Location {
        Location { function: Rc::from(name), filename: Rc::from("f"), lineno: 1, native }
    }

    fn names(v: &[Location]) -> Vec<&str> {
        v.iter().map(|l| &*l.function).collect()
    }

    #[test]
    fn eval_frames_replaced_in_order() {
        // main -> eval(outer) -> call_c -> eval(inner) -> PyObject_Malloc
        let native: Vec<Location> =
            ["malloc", "_PyEval_EvalFrameDefault", "call_c", "_PyEval_EvalFrameDefault", "main"].iter().map(|n| loc(n, true)).collect();
        let python = vec![(loc("inner", false), true), (loc("outer", false), true)];
        let h = merge(&python, &native, 0);
        assert_eq!(names(&h), ["malloc", "inner", "call_c", "outer", "main"]);
    }

    #[test]
    fn non_entry_frames_share_their_callers_eval_loop() {
        let native: Vec<Location> = ["malloc", "_PyEval_EvalFrameDefault", "main"].iter().map(|n| loc(n, true)).collect();
        // outer (entry) called inner (not an entry) in the same eval loop.
        let python = vec![(loc("inner", false), false), (loc("outer", false), true)];
        assert_eq!(names(&merge(&python, &native, 0)), ["malloc", "inner", "outer", "main"]);
    }

    #[test]
    fn unpaired_inner_eval_frame_stays_native() {
        let native: Vec<Location> =
            ["malloc", "_PyEval_EvalFrameDefault", "_PyEval_EvalFrameDefault", "main"].iter().map(|n| loc(n, true)).collect();
        let python = vec![(loc("outer", false), true)];
        assert_eq!(names(&merge(&python, &native, 0)), ["malloc", "_PyEval_EvalFrameDefault", "outer", "main"]);
    }

    #[test]
    fn leftover_python_frames_give_the_python_stack() {
        let native: Vec<Location> = ["malloc", "main"].iter().map(|n| loc(n, true)).collect();
        let python = vec![(loc("inner", false), true), (loc("outer", false), true)];
        assert_eq!(names(&merge(&python, &native, 1)), ["inner", "outer"]);
    }

    #[test]
    fn skipped_frames_hide_everything_outside_them() {
        let native: Vec<Location> =
            ["malloc", "_PyEval_EvalFrameDefault", "glue", "_PyEval_EvalFrameDefault", "main"].iter().map(|n| loc(n, true)).collect();
        let python = vec![(loc("work", false), true), (loc("runner", false), true)];
        assert_eq!(names(&merge(&python, &native, 1)), ["malloc", "work"]);
    }
}
