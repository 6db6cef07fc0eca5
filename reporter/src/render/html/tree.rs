//! The flame graph's tree: one node per distinct path of frames (per thread with
//! `--split-threads`), as Memray's flame graph reporter builds it, then pruned to a
//! bounded number of nodes so that huge captures still render.

use std::collections::HashMap;

use serde::Serialize;

use crate::model::stacks::{FrameId, Location, LocationId, StackId, StackTable};
use memray_capture::fasthash::FastMap;

/// Memray's `MAX_STACKS` with the default recursion limit (1000 // 2.5): deeper frames
/// are cut and the last node shown is `<STACK TOO DEEP>`.
pub const MAX_DEPTH: usize = 400;

/// Most nodes sent to the page. Beyond it the smallest nodes are folded into one
/// "other" node per parent: they would be under a pixel wide at the top level anyway,
/// and the page must stay fast with 100,000 distinct stacks.
pub const NODE_BUDGET: usize = 20_000;

pub const INTERESTING: u8 = 1;
pub const IMPORT_SYSTEM: u8 = 2;
pub const OTHER: u8 = 4;
pub const TOO_DEEP: u8 = 8;
/// A native frame (C, C++, Rust, the interpreter) of a hybrid stack.
pub const NATIVE: u8 = 32;

/// The flags of a Python frame's location.
fn python_flags(loc: &Location) -> u8 {
    let mut flags = 0;
    if is_interesting(&loc.function, &loc.filename) {
        flags |= INTERESTING;
    }
    if is_import_system(&loc.filename) {
        flags |= IMPORT_SYSTEM;
    }
    flags
}

/// Strings sent to the page, each once.
#[derive(Default)]
pub struct Strings {
    list: Vec<String>,
    ids: HashMap<String, u32>,
}

impl Strings {
    pub fn intern(&mut self, s: &str) -> u32 {
        if let Some(&id) = self.ids.get(s) {
            return id;
        }
        let id = self.list.len() as u32;
        self.list.push(s.to_string());
        self.ids.insert(s.to_string(), id);
        id
    }

    pub fn into_vec(self) -> Vec<String> {
        self.list
    }
}

/// Memray's `is_frame_from_import_system` (Python frames only).
pub fn is_import_system(file: &str) -> bool {
    file.contains("frozen importlib")
}

/// Frames a reader never cares about: `runpy` (how `-m` and `memray run` start the
/// program, as in Memray's `is_frame_interesting`), this package's own Python frames,
/// and the import system.
pub fn is_interesting(function: &str, file: &str) -> bool {
    let _ = function;
    if file.ends_with("runpy.py") || file == "<frozen runpy>" || file == "<memray>" {
        return false;
    }
    if is_memray_module(file) {
        return false;
    }
    !is_import_system(file)
}

/// `.../memray/__init__.py`, `.../memray/_api.py`, ...: the tracker's own modules.
fn is_memray_module(file: &str) -> bool {
    let Some((before, name)) = file.rsplit_once("memray/") else { return false };
    if !(before.is_empty() || before.ends_with('/')) {
        return false;
    }
    let Some(stem) = name.strip_suffix(".py") else { return false };
    (stem.starts_with('_')) && stem.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Desc {
    function: u32,
    file: u32,
    line: i32,
    flags: u8,
}

#[derive(Clone, Copy)]
struct Node {
    parent: u32,
    desc: u32,
    thread: u32,
    value: u64,
    count: u64,
    flags: u8,
}

/// Builds the tree path by path.
pub struct TreeBuilder {
    inverted: bool,
    /// Inverted trees built for "hide import system": each stack cut at its first
    /// import-system frame from the outermost (Memray's `_drop_import_system_frames`).
    drop_imports: bool,
    descs: Vec<Desc>,
    desc_of_location: FastMap<LocationId, u32>,
    /// Hybrid stacks' frames (Python and native), by location.
    desc_of_hybrid: HashMap<Location, u32>,
    too_deep_desc: u32,
    nodes: Vec<Node>,
    children: FastMap<(u32, u32, u32), u32>,
    /// Past the first capture of several: location ids are per capture, so frames are
    /// matched by what they show (the same function and line in two processes is one
    /// frame of the merged tree), through `desc_of_content`.
    merging: bool,
    desc_of_content: HashMap<Desc, u32>,
}

impl TreeBuilder {
    pub fn new(strings: &mut Strings, inverted: bool, drop_imports: bool) -> Self {
        let root = Desc { function: strings.intern("<root>"), file: strings.intern(""), line: 0, flags: INTERESTING };
        let too_deep = Desc { function: strings.intern("<STACK TOO DEEP>"), file: strings.intern("..."), line: 0, flags: TOO_DEEP };
        TreeBuilder {
            inverted,
            drop_imports,
            descs: vec![root, too_deep],
            desc_of_location: FastMap::default(),
            desc_of_hybrid: HashMap::new(),
            too_deep_desc: 1,
            nodes: vec![Node { parent: 0, desc: 0, thread: strings.intern(""), value: 0, count: 0, flags: INTERESTING }],
            children: FastMap::default(),
            merging: false,
            desc_of_content: HashMap::new(),
        }
    }

    /// The paths added from now on come from another capture (another stack table).
    pub fn next_capture(&mut self) {
        self.desc_of_location.clear();
        self.merging = true;
    }

    fn push_desc(&mut self, strings: &mut Strings, loc: &Location, flags: u8) -> u32 {
        let desc = Desc { function: strings.intern(&loc.function), file: strings.intern(&loc.filename), line: loc.lineno, flags };
        if self.merging {
            if let Some(&d) = self.desc_of_content.get(&desc) {
                return d;
            }
        }
        let d = self.descs.len() as u32;
        self.descs.push(desc);
        self.desc_of_content.insert(desc, d);
        d
    }

    fn desc(&mut self, stacks: &mut StackTable, strings: &mut Strings, frame: FrameId) -> u32 {
        let location = stacks.location_of_frame(frame);
        if let Some(&d) = self.desc_of_location.get(&location) {
            return d;
        }
        let loc = stacks.location(location).clone();
        let d = self.push_desc(strings, &loc, python_flags(&loc));
        self.desc_of_location.insert(location, d);
        d
    }

    fn hybrid_desc(&mut self, strings: &mut Strings, loc: &Location) -> u32 {
        if let Some(&d) = self.desc_of_hybrid.get(loc) {
            return d;
        }
        let flags = if loc.native {
            // Memray's `is_frame_interesting` for native frames: not CPython's own.
            let frame = (loc.function.to_string(), loc.filename.to_string(), loc.lineno);
            NATIVE | if crate::render::tree::is_frame_interesting(&frame) { INTERESTING } else { 0 }
        } else {
            python_flags(loc)
        };
        let d = self.push_desc(strings, loc, flags);
        self.desc_of_hybrid.insert(loc.clone(), d);
        d
    }

    /// Like [`TreeBuilder::add`] for a hybrid stack (Python and native frames,
    /// innermost first, as [`crate::engine::records::hybrid_stack_trace`] gives it).
    pub fn add_hybrid(&mut self, strings: &mut Strings, stack: &[Location], thread: u32, count: u64, bytes: u64) -> u32 {
        let mut frames: Vec<&Location> = stack.iter().collect();
        if self.drop_imports {
            let keep = frames.iter().rev().take_while(|l| l.native || !is_import_system(&l.filename)).count();
            frames.drain(..frames.len() - keep);
        }
        if !self.inverted {
            frames.reverse();
        }
        let descs: Vec<u32> = frames.iter().map(|l| self.hybrid_desc(strings, l)).collect();
        self.add_descs(&descs, thread, count, bytes)
    }

    fn add_descs(&mut self, descs: &[u32], thread: u32, count: u64, bytes: u64) -> u32 {
        let mut node = 0u32;
        self.bump(node, count, bytes);
        let mut in_import = false;
        for (depth, &desc) in descs.iter().enumerate() {
            if depth >= MAX_DEPTH {
                let d = self.too_deep_desc;
                node = self.child(node, d, thread, TOO_DEEP);
                self.bump(node, count, bytes);
                break;
            }
            let mut flags = self.descs[desc as usize].flags;
            // Memray marks a frame's whole subtree as import system (not when inverted).
            if !self.inverted {
                in_import |= flags & IMPORT_SYSTEM != 0;
                if in_import {
                    flags |= IMPORT_SYSTEM;
                }
            } else {
                flags &= !IMPORT_SYSTEM;
            }
            node = self.child(node, desc, thread, flags);
            self.bump(node, count, bytes);
        }
        node
    }

    fn child(&mut self, parent: u32, desc: u32, thread: u32, flags: u8) -> u32 {
        let key = (parent, desc, thread);
        if let Some(&n) = self.children.get(&key) {
            return n;
        }
        let n = self.nodes.len() as u32;
        self.nodes.push(Node { parent, desc, thread, value: 0, count: 0, flags });
        self.children.insert(key, n);
        n
    }

    /// Adds `count` allocations of `bytes` made by `stack` on a thread shown as `thread`
    /// (a string id); returns the node they end at.
    #[allow(clippy::too_many_arguments)]
    pub fn add(
        &mut self,
        stacks: &mut StackTable,
        strings: &mut Strings,
        stack: StackId,
        tid: u64,
        thread: u32,
        count: u64,
        bytes: u64,
    ) -> u32 {
        let mut frames = stacks.visible_frames(stack, tid); // innermost first
        if self.drop_imports {
            // Outermost frames up to the first import-system one.
            let keep = frames.iter().rev().take_while(|&&f| !is_import_system(&stacks.resolve(f).filename)).count();
            frames.drain(..frames.len() - keep);
        }
        if !self.inverted {
            frames.reverse();
        }
        // Descriptions of frames past MAX_DEPTH are never shown: not resolved.
        let descs: Vec<u32> = frames.iter().take(MAX_DEPTH + 1).map(|&frame| self.desc(stacks, strings, frame)).collect();
        self.add_descs(&descs, thread, count, bytes)
    }

    fn bump(&mut self, node: u32, count: u64, bytes: u64) {
        let n = &mut self.nodes[node as usize];
        n.count = n.count.wrapping_add(count);
        n.value = n.value.wrapping_add(bytes);
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.len() <= 1
    }

    /// The tree with at most about `budget` nodes (see [`NODE_BUDGET`]); also returns,
    /// for each node built, the node that stands for it in the pruned tree.
    pub fn finish(self, strings: &mut Strings, budget: usize) -> (Tree, Vec<u32>) {
        let n = self.nodes.len();
        let mut keep = vec![true; n];
        if budget > 0 && n > budget + 1 {
            // Keep the `budget` largest nodes, ties going to the shallower (then the
            // earlier) node. A child is never worth more than its parent and is deeper,
            // so the kept nodes stay connected.
            let mut depth = vec![0u32; n];
            for i in 1..n {
                depth[i] = depth[self.nodes[i].parent as usize] + 1;
            }
            let rank = |&i: &usize| (std::cmp::Reverse(self.nodes[i].value), depth[i], i);
            let mut order: Vec<usize> = (1..n).collect();
            order.select_nth_unstable_by_key(budget - 1, rank);
            keep.iter_mut().skip(1).for_each(|k| *k = false);
            for &i in &order[..budget] {
                keep[i] = true;
            }
        }
        let other_fn = strings.intern("<other>");
        let other_file = strings.intern("");
        let mut tree = Tree::default();
        let mut new_id = vec![u32::MAX; n];
        let mut other_of: FastMap<(u32, u32), u32> = FastMap::default();
        let mut others: Vec<(u32, u32, u64, u64, u32)> = Vec::new(); // parent, thread, value, count, folded
        for (i, node) in self.nodes.iter().enumerate() {
            if keep[i] {
                new_id[i] = tree.parent.len() as u32;
                let d = self.descs[node.desc as usize];
                tree.push(
                    if i == 0 { 0 } else { new_id[node.parent as usize] },
                    d.function,
                    d.file,
                    d.line,
                    node.thread,
                    node.value,
                    node.count,
                    node.flags,
                    0,
                );
                continue;
            }
            let parent = node.parent as usize;
            if keep[parent] {
                // The topmost pruned node under a kept parent: folded into its "other"
                // (one per thread: the root's children belong to different threads).
                let p = new_id[parent];
                let slot = *other_of.entry((p, node.thread)).or_insert_with(|| {
                    others.push((p, node.thread, 0, 0, 0));
                    (others.len() - 1) as u32
                });
                let o = &mut others[slot as usize];
                o.2 = o.2.wrapping_add(node.value);
                o.3 = o.3.wrapping_add(node.count);
                o.4 += 1;
                new_id[i] = u32::MAX - 1 - slot; // resolved below
            } else {
                new_id[i] = new_id[parent];
            }
        }
        let base = tree.parent.len() as u32;
        for &(parent, thread, value, count, folded) in &others {
            let flags = OTHER | INTERESTING | (tree.flags[parent as usize] & IMPORT_SYSTEM);
            tree.push(parent, other_fn, other_file, 0, thread, value, count, flags, folded);
        }
        for id in new_id.iter_mut() {
            if *id >= u32::MAX - others.len() as u32 && *id != u32::MAX {
                *id = base + (u32::MAX - 1 - *id);
            }
        }
        (tree, new_id)
    }
}

/// The page's columnar node arrays; nodes come after their parents.
#[derive(Default, Serialize)]
pub struct Tree {
    pub parent: Vec<u32>,
    #[serde(rename = "fn")]
    pub function: Vec<u32>,
    pub file: Vec<u32>,
    pub line: Vec<i32>,
    pub thread: Vec<u32>,
    pub value: Vec<u64>,
    pub count: Vec<i64>,
    pub flags: Vec<u8>,
    /// "other" nodes: how many nodes they fold.
    pub folded: Vec<u32>,
}

impl Tree {
    #[allow(clippy::too_many_arguments)]
    fn push(&mut self, parent: u32, function: u32, file: u32, line: i32, thread: u32, value: u64, count: u64, flags: u8, folded: u32) {
        self.parent.push(parent);
        self.function.push(function);
        self.file.push(file);
        self.line.push(line);
        self.thread.push(thread);
        self.value.push(value);
        self.count.push(count as i64);
        self.flags.push(flags);
        self.folded.push(folded);
    }

    pub fn len(&self) -> usize {
        self.parent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.parent.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::stacks::FrameKey;
    use memray_capture::CodeObject;

    fn table(n_codes: u64) -> StackTable {
        let mut t = StackTable::new(0x030c01f0, 1, 0);
        for id in 1..=n_codes {
            t.add_code_object(CodeObject {
                id,
                function: format!("f{id}"),
                filename: if id == 9 { "<frozen importlib._bootstrap>".into() } else { "a.py".into() },
                firstlineno: id as i32,
                linetable: vec![],
            });
        }
        t
    }

    fn push(t: &mut StackTable, tid: u64, code: u64) {
        t.push(tid, FrameKey { code_object_id: code, instruction_offset: 0, is_entry: true });
    }

    #[test]
    fn builds_merges_and_prunes() {
        let mut st = table(9);
        let mut strings = Strings::default();
        let mut b = TreeBuilder::new(&mut strings, false, false);
        let th = strings.intern("merged thread");
        // f1 -> f2 (100 bytes), f1 -> f3 (1 byte) x 5 distinct leaves, f1 -> f9 (import) -> f4
        push(&mut st, 1, 1);
        push(&mut st, 1, 2);
        let s12 = st.current(1);
        b.add(&mut st, &mut strings, s12, 1, th, 1, 100);
        b.add(&mut st, &mut strings, s12, 2, th, 1, 100);
        st.pop(1, 1);
        for code in 3..=7 {
            push(&mut st, 1, code);
            let s = st.current(1);
            b.add(&mut st, &mut strings, s, 1, th, 1, 1);
            st.pop(1, 1);
        }
        push(&mut st, 1, 9);
        push(&mut st, 1, 4);
        let s = st.current(1);
        b.add(&mut st, &mut strings, s, 1, th, 1, 3);
        assert_eq!(b.len(), 1 + 1 + 1 + 5 + 1 + 1);
        let (full, _) = TreeBuilder { ..b_clone(&b) }.finish(&mut strings, 1000);
        assert_eq!(full.value[0], 208);
        assert_eq!(full.count[0], 8);
        // f4 under the import frame inherits the import flag.
        let f4 = full.function.iter().rposition(|&f| f == strings.intern("f4")).unwrap();
        assert!(full.flags[f4] & IMPORT_SYSTEM != 0 && full.flags[f4] & INTERESTING != 0);

        let (small, map) = b.finish(&mut strings, 4);
        // root, f1, f2, f9(3), f4(3) kept; the five 1-byte leaves folded into one other.
        let other: Vec<usize> = (0..small.len()).filter(|&i| small.flags[i] & OTHER != 0).collect();
        assert_eq!(other.len(), 1);
        assert_eq!(small.value[other[0]], 5);
        assert_eq!(small.folded[other[0]], 5);
        assert!(small.len() <= 4 + 1 + 1);
        assert!(map.iter().all(|&m| (m as usize) < small.len()));
        for i in 1..small.len() {
            assert!((small.parent[i] as usize) < i);
        }
    }

    fn b_clone(b: &TreeBuilder) -> TreeBuilder {
        TreeBuilder {
            inverted: b.inverted,
            drop_imports: b.drop_imports,
            descs: b.descs.clone(),
            desc_of_location: b.desc_of_location.clone(),
            desc_of_hybrid: b.desc_of_hybrid.clone(),
            too_deep_desc: b.too_deep_desc,
            nodes: b.nodes.clone(),
            children: b.children.clone(),
            merging: b.merging,
            desc_of_content: b.desc_of_content.clone(),
        }
    }

    #[test]
    fn deep_stacks_are_cut() {
        let mut st = table(1);
        let mut strings = Strings::default();
        let mut b = TreeBuilder::new(&mut strings, false, false);
        for _ in 0..1000 {
            push(&mut st, 1, 1);
        }
        let s = st.current(1);
        let leaf = b.add(&mut st, &mut strings, s, 1, 0, 1, 10);
        assert_eq!(b.len(), MAX_DEPTH + 2);
        let (tree, map) = b.finish(&mut strings, NODE_BUDGET);
        assert_eq!(tree.flags[map[leaf as usize] as usize], TOO_DEEP);
    }

    #[test]
    fn inverted_and_import_cut() {
        let mut st = table(9);
        let mut strings = Strings::default();
        push(&mut st, 1, 1);
        push(&mut st, 1, 9);
        push(&mut st, 1, 2);
        let s = st.current(1);
        let mut inv = TreeBuilder::new(&mut strings, true, false);
        inv.add(&mut st, &mut strings, s, 1, 0, 1, 10);
        let (t, _) = inv.finish(&mut strings, 100);
        assert_eq!(t.function[1], strings.intern("f2"), "innermost first");
        let mut cut = TreeBuilder::new(&mut strings, true, true);
        cut.add(&mut st, &mut strings, s, 1, 0, 1, 10);
        let (t, _) = cut.finish(&mut strings, 100);
        assert_eq!(t.len(), 2, "only f1 stays");
        assert_eq!(t.function[1], strings.intern("f1"));
        assert!(is_memray_module("/x/python/memray/_api.py") && !is_memray_module("/x/memray/api.py"));
        assert!(!is_memray_module("/x/notmemray/_api.py"));
    }
}
