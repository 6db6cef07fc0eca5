//! AGGREGATED_ALLOCATIONS: instead of streaming every record, keep per-location totals in
//! memory and write one summary file at stop: what was live at the high-water mark and
//! what was still live at the end, per (thread, allocator, Python stack).
//!
//! Memory grows with distinct stacks and live allocations, never with the run's length.

use std::collections::{BTreeMap, HashMap};

use memray_capture::{
    AggregatedAllocation, AggregatedCapture, Allocator, CodeObject, Header, ImageSegments, MemorySnapshot, NativeFrame, PythonFrame,
    TraceNode,
};

use crate::writer::PtrMap;

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct LocationKey {
    tid: u64,
    allocator: Allocator,
    frame_index: u64,
    /// Native frame tree node and memory-map generation (0 without native traces).
    native_frame_id: u64,
    native_segment_generation: u64,
}

/// Totals of one location. `at_peak_*` hold the values at the latest peak, taken lazily:
/// a location untouched since the peak still holds its peak values in `count`/`bytes`.
#[derive(Default)]
struct Location {
    count: u64,
    bytes: u64,
    at_peak_count: u64,
    at_peak_bytes: u64,
    peak_version: u64,
}

pub struct Aggregator {
    code_objects: Vec<CodeObject>,
    frames: Vec<PythonFrame>,
    frame_ids: HashMap<PythonFrame, u64>,
    /// Trie of Python stacks: node index i + 1 is tree[i]; 0 is the empty stack.
    tree: Vec<TraceNode>,
    tree_ids: HashMap<(u64, u64), u64>,
    /// Per thread, the trie nodes of its current stack, outermost first.
    stacks: HashMap<u64, Vec<u64>>,
    threads: Vec<(u64, String)>,
    keys: HashMap<LocationKey, usize>,
    locations: Vec<(LocationKey, Location)>,
    live: PtrMap<(u64, usize)>,
    /// Live mmap ranges: start -> (length, location).
    ranges: BTreeMap<u64, (u64, usize)>,
    heap: u64,
    peak: u64,
    peak_version: u64,
    snapshots: Vec<MemorySnapshot>,
    native_frames: Vec<NativeFrame>,
    memory_maps: Vec<Vec<ImageSegments>>,
}

impl Aggregator {
    pub fn new() -> Self {
        Aggregator {
            code_objects: Vec::new(),
            frames: Vec::new(),
            frame_ids: HashMap::new(),
            tree: Vec::new(),
            tree_ids: HashMap::new(),
            stacks: HashMap::new(),
            threads: Vec::new(),
            keys: HashMap::new(),
            locations: Vec::new(),
            live: PtrMap::default(),
            ranges: BTreeMap::new(),
            heap: 0,
            peak: 0,
            peak_version: 0,
            snapshots: Vec::new(),
            native_frames: Vec::new(),
            memory_maps: Vec::new(),
        }
    }

    pub fn code_object(&mut self, code: CodeObject) {
        self.code_objects.push(code);
    }

    pub fn thread_name(&mut self, tid: u64, name: &[u8]) {
        let name = String::from_utf8_lossy(name).into_owned();
        match self.threads.iter_mut().find(|(t, _)| *t == tid) {
            Some(entry) => entry.1 = name,
            None => self.threads.push((tid, name)),
        }
    }

    pub fn pop(&mut self, tid: u64, n: usize) {
        let stack = self.stacks.entry(tid).or_default();
        let keep = stack.len().saturating_sub(n);
        stack.truncate(keep);
    }

    pub fn push(&mut self, tid: u64, frame: PythonFrame) {
        let next_frame_id = self.frames.len() as u64;
        let frame_id = *self.frame_ids.entry(frame).or_insert_with(|| next_frame_id);
        if frame_id == next_frame_id {
            self.frames.push(frame);
        }
        let stack = self.stacks.entry(tid).or_default();
        let parent = stack.last().copied().unwrap_or(0);
        let next_node = self.tree.len() as u64 + 1;
        let node = *self.tree_ids.entry((parent, frame_id)).or_insert(next_node);
        if node == next_node {
            self.tree.push(TraceNode { frame_id, parent_index: parent });
        }
        stack.push(node);
    }

    /// A new node of the native frame tree (its id is its position + 1).
    pub fn native_frame(&mut self, frame: NativeFrame) {
        self.native_frames.push(frame);
    }

    /// A memory-map generation (numbered from 1 in write order).
    pub fn memory_map(&mut self, images: Vec<ImageSegments>) {
        self.memory_maps.push(images);
    }

    pub fn allocation(&mut self, tid: u64, address: u64, size: u64, allocator: Allocator, native_frame_id: u64, generation: u64) {
        match allocator {
            Allocator::Free | Allocator::PymallocFree => {
                if let Some((size, loc)) = self.live.remove(&(address as usize)) {
                    self.change(loc, -1, -(size as i64));
                }
            }
            Allocator::Munmap => self.unmap(address, size),
            _ => {
                let frame_index = self.stacks.get(&tid).and_then(|s| s.last().copied()).unwrap_or(0);
                let key = LocationKey { tid, allocator, frame_index, native_frame_id, native_segment_generation: generation };
                let next = self.locations.len();
                let loc = *self.keys.entry(key).or_insert(next);
                if loc == next {
                    self.locations.push((key, Location::default()));
                }
                if allocator == Allocator::Mmap {
                    self.ranges.insert(address, (size, loc));
                } else if let Some((old_size, old_loc)) = self.live.insert(address as usize, (size, loc)) {
                    // A free we never saw (made before tracking started, or missed).
                    self.change(old_loc, -1, -(old_size as i64));
                }
                self.change(loc, 1, size as i64);
            }
        }
    }

    /// Removes [address, address + len) from the live mappings, splitting partly
    /// unmapped ranges.
    fn unmap(&mut self, address: u64, len: u64) {
        let end = address.saturating_add(len);
        let overlapping: Vec<(u64, (u64, usize))> = self
            .ranges
            .range(..end)
            .rev()
            .take_while(|(start, (l, _))| start.saturating_add(*l) > address)
            .map(|(s, v)| (*s, *v))
            .collect();
        for (start, (l, loc)) in overlapping {
            let range_end = start + l;
            if range_end <= address {
                continue;
            }
            self.ranges.remove(&start);
            let cut_start = start.max(address);
            let cut_end = range_end.min(end);
            let removed = cut_end - cut_start;
            let whole = cut_start == start && cut_end == range_end;
            self.change(loc, if whole { -1 } else { 0 }, -(removed as i64));
            if start < cut_start {
                self.ranges.insert(start, (cut_start - start, loc));
            }
            if cut_end < range_end {
                self.ranges.insert(cut_end, (range_end - cut_end, loc));
            }
        }
    }

    fn change(&mut self, loc: usize, count_delta: i64, bytes_delta: i64) {
        let peak_version = self.peak_version;
        let Some((_, l)) = self.locations.get_mut(loc) else { return };
        if l.peak_version != peak_version {
            // First change since the latest peak: its values are still the peak's.
            l.at_peak_count = l.count;
            l.at_peak_bytes = l.bytes;
            l.peak_version = peak_version;
        }
        l.count = l.count.saturating_add_signed(count_delta);
        l.bytes = l.bytes.saturating_add_signed(bytes_delta);
        self.heap = self.heap.saturating_add_signed(bytes_delta);
        if self.heap > self.peak {
            self.peak = self.heap;
            self.peak_version += 1;
            // This location changed at the new peak: record it there; every other
            // location is untouched since, so its current values are its peak values.
            l.peak_version = self.peak_version;
            l.at_peak_count = l.count;
            l.at_peak_bytes = l.bytes;
        }
    }

    pub fn memory_snapshot(&mut self, ms_since_epoch: u64, rss: u64) {
        self.snapshots.push(MemorySnapshot { ms_since_epoch, rss, heap: self.heap });
    }

    pub fn into_capture(self, header: Header) -> AggregatedCapture {
        let peak_version = self.peak_version;
        let allocations = self
            .locations
            .iter()
            .map(|(key, l)| {
                let (hwm_count, hwm_bytes) =
                    if l.peak_version == peak_version { (l.at_peak_count, l.at_peak_bytes) } else { (l.count, l.bytes) };
                AggregatedAllocation {
                    tid: key.tid,
                    allocator: key.allocator,
                    native_frame_id: key.native_frame_id,
                    frame_index: key.frame_index,
                    native_segment_generation: key.native_segment_generation,
                    n_allocations_in_high_water_mark: hwm_count,
                    n_allocations_leaked: l.count,
                    bytes_in_high_water_mark: hwm_bytes,
                    bytes_leaked: l.bytes,
                }
            })
            .collect();
        AggregatedCapture {
            header,
            memory_snapshots: self.snapshots,
            threads: self.threads,
            memory_maps: self.memory_maps,
            code_objects: self.code_objects,
            native_frames: self.native_frames,
            python_frames: self.frames,
            python_trace_tree: self.tree,
            surviving_objects: Vec::new(),
            allocations,
        }
    }

    #[cfg(test)]
    pub fn peak(&self) -> u64 {
        self.peak
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(code: u64) -> PythonFrame {
        PythonFrame { code_object_id: code, instruction_offset: 0, is_entry: true }
    }

    fn rows(a: Aggregator) -> Vec<AggregatedAllocation> {
        a.into_capture(Header::default()).allocations
    }

    #[test]
    fn peak_and_leaks_per_location() {
        let mut a = Aggregator::new();
        a.push(1, frame(1));
        a.allocation(1, 0x1000, 100, Allocator::Malloc, 0, 0); // heap 100
        a.pop(1, 1);
        a.push(1, frame(2));
        a.allocation(1, 0x2000, 300, Allocator::Malloc, 0, 0); // heap 400: the peak
        a.allocation(1, 0x2000, 0, Allocator::Free, 0, 0); // heap 100
        a.allocation(1, 0x3000, 50, Allocator::Malloc, 0, 0); // heap 150
        assert_eq!(a.peak(), 400);
        let rows = rows(a);
        let by_frame = |f: u64| rows.iter().find(|r| r.frame_index == f).unwrap();
        let first = by_frame(1);
        assert_eq!((first.bytes_in_high_water_mark, first.n_allocations_in_high_water_mark), (100, 1));
        assert_eq!((first.bytes_leaked, first.n_allocations_leaked), (100, 1));
        let second = by_frame(2);
        assert_eq!((second.bytes_in_high_water_mark, second.n_allocations_in_high_water_mark), (300, 1));
        assert_eq!((second.bytes_leaked, second.n_allocations_leaked), (50, 1));
    }

    #[test]
    fn partial_munmap_keeps_the_rest_live() {
        let mut a = Aggregator::new();
        a.allocation(1, 0x10000, 0x4000, Allocator::Mmap, 0, 0);
        a.allocation(1, 0x11000, 0x1000, Allocator::Munmap, 0, 0);
        let rows = rows(a);
        assert_eq!(rows[0].bytes_leaked, 0x3000);
        assert_eq!(rows[0].bytes_in_high_water_mark, 0x4000);
    }

    #[test]
    fn trie_shares_common_prefixes() {
        let mut a = Aggregator::new();
        a.push(1, frame(1));
        a.push(1, frame(2));
        a.pop(1, 1);
        a.push(1, frame(3));
        a.push(2, frame(1));
        let cap = a.into_capture(Header::default());
        assert_eq!(cap.python_trace_tree.len(), 3);
        assert_eq!(cap.python_frames.len(), 3);
    }
}
