//! Python stacks: per-thread shadow stacks rebuilt from FRAME_PUSH/FRAME_POP, interned
//! in a trie so that an allocation carries one small [`StackId`].
//!
//! Ids are assigned the way Memray's reader assigns them, so that orders derived from
//! them (ties in rankings) come out the same:
//! * a frame is a distinct (code object, instruction offset, entry flag), numbered from 0
//!   in order of first push;
//! * a stack node is a distinct (parent node, frame), numbered from 1 in order of first
//!   push; 0 is the empty stack;
//! * a [`Location`] is a distinct (function, file, line), numbered in the order it is
//!   first asked for (Memray resolves the innermost frame of each allocation as it reads).

use std::collections::HashMap;
use std::rc::Rc;

use memray_capture::{CodeObject, PythonFrame, TraceNode};

use cpython::linetable::line_number;
use memray_capture::fasthash::FastMap;

/// A node of the stack trie; 0 is the empty stack.
pub type StackId = u32;
/// Index of a distinct (code object, instruction offset, entry flag).
pub type FrameId = u32;
/// Index of a distinct (function, file, line).
pub type LocationId = u32;

/// One Python frame as recorded: which code object, and where in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FrameKey {
    pub code_object_id: u64,
    pub instruction_offset: i32,
    pub is_entry: bool,
}

impl From<PythonFrame> for FrameKey {
    fn from(f: PythonFrame) -> Self {
        FrameKey { code_object_id: f.code_object_id, instruction_offset: f.instruction_offset, is_entry: f.is_entry }
    }
}

/// A resolved source position. A frame whose code object was never described resolves
/// to empty strings and line 0 (as in Memray).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Location {
    pub function: Rc<str>,
    pub filename: Rc<str>,
    pub lineno: i32,
    /// A native (C, C++, Rust, interpreter) frame rather than a Python one.
    pub native: bool,
}

struct CodeInfo {
    function: Rc<str>,
    filename: Rc<str>,
    firstlineno: i32,
    linetable: Vec<u8>,
}

#[derive(Clone, Copy)]
struct Node {
    frame: FrameId,
    parent: StackId,
}

/// Code objects, frames, the stack trie, locations, and each thread's current stack.
pub struct StackTable {
    python_version: u32,
    main_tid: u64,
    skipped_frames_on_main_tid: u64,
    code_objects: FastMap<u64, CodeInfo>,
    frames: Vec<FrameKey>,
    frame_ids: FastMap<FrameKey, FrameId>,
    /// Lazily resolved location of each frame (`u32::MAX` = not yet).
    frame_locations: Vec<LocationId>,
    nodes: Vec<Node>,
    node_ids: FastMap<(StackId, FrameId), StackId>,
    locations: Vec<Location>,
    location_ids: HashMap<Location, LocationId>,
    threads: FastMap<u64, ThreadStack>,
    /// The thread whose stack changed last, and its current stack: runs of allocations
    /// between frame changes ask for it again and again.
    last: Option<(u64, StackId)>,
    empty: Rc<str>,
}

const UNRESOLVED: LocationId = LocationId::MAX;

/// The deepest stack kept per thread. Frames pushed beyond it are counted, not interned:
/// a capture that only pushes (corrupt or hostile: a few MB of LZ4 can hold hundreds of
/// millions of FRAME_PUSH records) must not grow memory with its length. Memory is then
/// bounded by the distinct frames and distinct stacks the capture reaches, and by this
/// depth per thread. Our payload records at most 2,048 frames; CPython's recursion limit
/// is 1,000 unless a program raises it.
pub const MAX_DEPTH: usize = 65_536;

/// One thread's current stack: trie nodes, outermost first, and how many frames were
/// pushed past `MAX_DEPTH` (popped first).
#[derive(Default)]
struct ThreadStack {
    nodes: Vec<StackId>,
    beyond: u64,
}

impl StackTable {
    /// `python_version` selects the line-table layout; the main thread's outermost
    /// `skipped_frames_on_main_tid` frames are hidden by [`StackTable::visible_frames`].
    pub fn new(python_version: u32, main_tid: u64, skipped_frames_on_main_tid: u64) -> Self {
        StackTable {
            python_version,
            main_tid,
            skipped_frames_on_main_tid,
            code_objects: FastMap::default(),
            frames: Vec::new(),
            frame_ids: FastMap::default(),
            frame_locations: Vec::new(),
            nodes: vec![Node { frame: 0, parent: 0 }],
            node_ids: FastMap::default(),
            locations: Vec::new(),
            location_ids: HashMap::new(),
            threads: FastMap::default(),
            last: None,
            empty: Rc::from(""),
        }
    }

    pub fn add_code_object(&mut self, code: CodeObject) {
        let info = CodeInfo {
            function: Rc::from(code.function),
            filename: Rc::from(code.filename),
            firstlineno: code.firstlineno,
            linetable: code.linetable,
        };
        self.code_objects.insert(code.id, info);
    }

    /// FRAME_PUSH on `tid`'s stack.
    pub fn push(&mut self, tid: u64, frame: FrameKey) {
        let stack = self.threads.entry(tid).or_default();
        if stack.nodes.len() >= MAX_DEPTH {
            stack.beyond += 1;
            self.last = Some((tid, stack.nodes.last().copied().unwrap_or(0)));
            return;
        }
        let frame = self.intern_frame(frame);
        let stack = self.threads.entry(tid).or_default();
        let parent = stack.nodes.last().copied().unwrap_or(0);
        let node = match self.node_ids.get(&(parent, frame)) {
            Some(&n) => n,
            None => {
                let n = self.nodes.len() as StackId;
                self.nodes.push(Node { frame, parent });
                self.node_ids.insert((parent, frame), n);
                n
            }
        };
        stack.nodes.push(node);
        self.last = Some((tid, node));
    }

    /// FRAME_POP of `count` frames from `tid`'s stack (popping past empty is ignored).
    pub fn pop(&mut self, tid: u64, count: u32) {
        if let Some(stack) = self.threads.get_mut(&tid) {
            let from_beyond = stack.beyond.min(count as u64);
            stack.beyond -= from_beyond;
            let keep = stack.nodes.len().saturating_sub((count as u64 - from_beyond) as usize);
            stack.nodes.truncate(keep);
            self.last = Some((tid, stack.nodes.last().copied().unwrap_or(0)));
        }
    }

    /// `tid`'s current stack.
    #[inline]
    pub fn current(&self, tid: u64) -> StackId {
        match self.last {
            Some((t, stack)) if t == tid => stack,
            _ => self.threads.get(&tid).and_then(|s| s.nodes.last().copied()).unwrap_or(0),
        }
    }

    fn intern_frame(&mut self, frame: FrameKey) -> FrameId {
        if let Some(&id) = self.frame_ids.get(&frame) {
            return id;
        }
        let id = self.frames.len() as FrameId;
        self.frames.push(frame);
        self.frame_locations.push(UNRESOLVED);
        self.frame_ids.insert(frame, id);
        id
    }

    /// Aggregated files: PYTHON_FRAME_INDEX records give frame ids explicitly (dense from
    /// 0, checked by the decoder), so frames are appended without deduplication.
    pub fn add_indexed_frame(&mut self, frame: PythonFrame) {
        let key = FrameKey::from(frame);
        let id = self.frames.len() as FrameId;
        self.frames.push(key);
        self.frame_locations.push(UNRESOLVED);
        self.frame_ids.entry(key).or_insert(id);
    }

    /// Aggregated files: PYTHON_TRACE_INDEX records are the trie's nodes 1, 2, ... in
    /// order. A node naming an unknown frame or a later parent means a corrupt file.
    pub fn add_indexed_node(&mut self, node: TraceNode) -> Result<(), crate::ReportError> {
        let id = self.nodes.len() as u64;
        if node.frame_id >= self.frames.len() as u64 || node.parent_index >= id {
            return Err(crate::ReportError::CorruptAggregated(format!(
                "Python trace node {id} names frame {} or parent {} before it exists",
                node.frame_id, node.parent_index
            )));
        }
        let (frame, parent) = (node.frame_id as FrameId, node.parent_index as StackId);
        self.nodes.push(Node { frame, parent });
        self.node_ids.entry((parent, frame)).or_insert(id as StackId);
        Ok(())
    }

    pub fn n_stacks(&self) -> usize {
        self.nodes.len() - 1
    }

    pub fn n_frames(&self) -> usize {
        self.frames.len()
    }

    /// Whether `stack` names a node of the trie.
    pub fn contains(&self, stack: u64) -> bool {
        (stack as usize) < self.nodes.len()
    }

    pub fn frame(&self, frame: FrameId) -> Option<FrameKey> {
        self.frames.get(frame as usize).copied()
    }

    /// The innermost frame of `stack` and the stack without it (`None` for the empty stack).
    pub fn split(&self, stack: StackId) -> Option<(FrameId, StackId)> {
        if stack == 0 {
            return None;
        }
        self.nodes.get(stack as usize).map(|n| (n.frame, n.parent))
    }

    /// Frames of `stack`, innermost first.
    pub fn frames(&self, stack: StackId) -> Frames<'_> {
        Frames { table: self, stack }
    }

    /// Frames of `stack` innermost first, without the outermost frames Memray hides on the
    /// thread that started tracking (`skipped_frames_on_main_tid` in the header).
    pub fn visible_frames(&self, stack: StackId, tid: u64) -> Vec<FrameId> {
        let mut frames: Vec<FrameId> = self.frames(stack).collect();
        if tid == self.main_tid {
            let keep = frames.len().saturating_sub(self.skipped_frames_on_main_tid as usize);
            frames.truncate(keep);
        }
        frames
    }

    /// Resolves a frame without registering a location id.
    pub fn resolve(&self, frame: FrameId) -> Location {
        let key = match self.frames.get(frame as usize) {
            Some(k) => *k,
            None => return Location { function: self.empty.clone(), filename: self.empty.clone(), lineno: 0, native: false },
        };
        match self.code_objects.get(&key.code_object_id) {
            Some(code) => Location {
                function: code.function.clone(),
                filename: code.filename.clone(),
                lineno: line_number(self.python_version, &code.linetable, code.firstlineno, key.instruction_offset),
                native: false,
            },
            None => Location { function: self.empty.clone(), filename: self.empty.clone(), lineno: 0, native: false },
        }
    }

    /// The location id of a frame, registering the location on first use.
    pub fn location_of_frame(&mut self, frame: FrameId) -> LocationId {
        if let Some(&id) = self.frame_locations.get(frame as usize) {
            if id != UNRESOLVED {
                return id;
            }
        }
        let location = self.resolve(frame);
        let next = self.locations.len() as LocationId;
        let id = *self.location_ids.entry(location.clone()).or_insert(next);
        if id == next {
            self.locations.push(location);
        }
        if let Some(slot) = self.frame_locations.get_mut(frame as usize) {
            *slot = id;
        }
        id
    }

    /// The location of `stack`'s innermost frame (`None` for the empty stack).
    pub fn top_location(&mut self, stack: StackId) -> Option<LocationId> {
        let (frame, _) = self.split(stack)?;
        Some(self.location_of_frame(frame))
    }

    pub fn location(&self, id: LocationId) -> &Location {
        &self.locations[id as usize]
    }

    pub fn n_locations(&self) -> usize {
        self.locations.len()
    }

    pub fn python_version(&self) -> u32 {
        self.python_version
    }

    pub fn main_tid(&self) -> u64 {
        self.main_tid
    }

    pub fn skipped_frames_on_main_tid(&self) -> u64 {
        self.skipped_frames_on_main_tid
    }
}

/// Iterator over a stack's frames, innermost first.
pub struct Frames<'a> {
    table: &'a StackTable,
    stack: StackId,
}

impl Iterator for Frames<'_> {
    type Item = FrameId;

    fn next(&mut self) -> Option<FrameId> {
        let (frame, parent) = self.table.split(self.stack)?;
        // Parents always have smaller ids, so this terminates even on odd input.
        self.stack = if parent < self.stack { parent } else { 0 };
        Some(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A capture that pushes without end (what a few MB of hostile LZ4 expand to) keeps
    /// memory bounded: past MAX_DEPTH nothing is interned, and pops come off the frames
    /// beyond the bound first, so the stack underneath is exact again afterwards.
    #[test]
    fn depth_is_bounded_and_pops_stay_exact() {
        let mut t = StackTable::new(0x030C_00F0, 1, 0);
        t.push(1, key(7, 0));
        let base = t.current(1);
        for i in 0..(MAX_DEPTH as u64 + 1_000_000) {
            t.push(1, key(8 + i % 3, 2));
        }
        assert!(t.nodes.len() <= MAX_DEPTH + 2, "{} trie nodes", t.nodes.len());
        assert_eq!(t.frames(t.current(1)).count(), MAX_DEPTH);
        t.pop(1, 1_000_000 + MAX_DEPTH as u32);
        assert_eq!(t.current(1), base);
        t.pop(1, 5);
        assert_eq!(t.current(1), 0);
    }

    fn key(code: u64, off: i32) -> FrameKey {
        FrameKey { code_object_id: code, instruction_offset: off, is_entry: true }
    }

    #[test]
    fn trie_interns_stacks_per_thread() {
        let mut t = StackTable::new(0x030c01f0, 1, 1);
        t.add_code_object(CodeObject { id: 1, function: "f".into(), filename: "a.py".into(), firstlineno: 3, linetable: vec![] });
        t.push(1, key(1, 0));
        t.push(1, key(1, 4));
        let s1 = t.current(1);
        t.push(2, key(1, 0));
        t.push(2, key(1, 4));
        assert_eq!(t.current(2), s1, "same frames, same stack id on another thread");
        t.pop(1, 1);
        t.push(1, key(1, 8));
        assert_ne!(t.current(1), s1);
        assert_eq!(t.frames(s1).count(), 2);
        assert_eq!(t.visible_frames(s1, 1).len(), 1, "outermost frame hidden on the main thread");
        assert_eq!(t.visible_frames(s1, 2).len(), 2);
        t.pop(1, 5);
        assert_eq!(t.current(1), 0);
        assert_eq!(t.top_location(0), None);
        let loc = t.top_location(s1).unwrap();
        assert_eq!(t.location(loc).lineno, 3);
        assert_eq!(&*t.location(loc).function, "f");
    }

    #[test]
    fn current_follows_each_thread_through_interleaved_changes() {
        // A model: each thread's stack as the list of pushed keys.
        let mut t = StackTable::new(0x030c01f0, 1, 0);
        let mut model: Vec<Vec<FrameKey>> = vec![Vec::new(); 3];
        let mut ids: HashMap<Vec<FrameKey>, StackId> = HashMap::new();
        let mut x = 7u64;
        for _ in 0..2000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let tid = (x >> 60) % 3;
            if (x >> 40).is_multiple_of(3) {
                let n = 1 + (x >> 20) % 3;
                t.pop(tid, n as u32);
                let keep = model[tid as usize].len().saturating_sub(n as usize);
                model[tid as usize].truncate(keep);
            } else {
                let k = key(1 + (x >> 30) % 3, 0);
                t.push(tid, k);
                model[tid as usize].push(k);
                ids.entry(model[tid as usize].clone()).or_insert(t.current(tid));
            }
            for other in 0..3u64 {
                let want = match model[other as usize].as_slice() {
                    [] => 0,
                    m => ids[m],
                };
                assert_eq!(t.current(other), want, "thread {other}");
            }
        }
    }

    #[test]
    fn unknown_code_object_resolves_empty() {
        let mut t = StackTable::new(0x030c01f0, 1, 0);
        t.push(1, key(9, 0));
        let l = t.top_location(t.current(1)).unwrap();
        assert_eq!((&*t.location(l).function, &*t.location(l).filename, t.location(l).lineno), ("", "", 0));
    }
}
