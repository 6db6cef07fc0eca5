//! AGGREGATED_ALLOCATIONS: instead of streaming every record, keep per-location totals in
//! memory and write one summary file at stop: what was live at the high-water mark and
//! what was still live at the end, per (thread, allocator, Python stack).
//!
//! Memory grows with distinct stacks and live allocations, never with the run's length.
//!
//! The heap and its peak follow the reporter's rules for a full capture record by record
//! (`reporter/src/engine/analysis.rs` documents them): an aggregated capture must say what
//! the full capture of the same run would. The property test below holds them together.

use std::collections::HashMap;

use memray_capture::ranges::RangeSet;
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

/// Totals of one location. `at_peak_*` hold the values at the latest peak, taken lazily
/// at the location's first change after it: a location untouched since the peak still
/// holds its peak values in `count`/`bytes`.
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
    /// Live blocks: (bytes, location, allocations it stands for).
    live: PtrMap<(u64, usize, u64)>,
    /// The capture's sampling interval (0: every allocation is recorded).
    sampling_interval: u64,
    /// Live mmap ranges, owned by their locations.
    ranges: RangeSet<usize>,
    heap: u64,
    peak: u64,
    /// Incremented after each record that leaves the heap at a new or equal peak (the
    /// peak is the last such record, as in the reporter).
    peak_version: u64,
    snapshots: Vec<MemorySnapshot>,
    native_frames: Vec<NativeFrame>,
    memory_maps: Vec<Vec<ImageSegments>>,
}

impl Aggregator {
    pub fn new(sampling_interval: u64) -> Self {
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
            sampling_interval,
            ranges: RangeSet::new(),
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
        match (allocator.is_ranged(), allocator.is_deallocator()) {
            (false, true) => {
                if let Some((size, loc, count)) = self.live.remove(&(address as usize)) {
                    self.heap = self.heap.wrapping_sub(size);
                    self.change(loc, count.wrapping_neg(), size.wrapping_neg());
                }
            }
            (true, true) => {
                for released in self.ranges.remove(address, size) {
                    self.heap = self.heap.wrapping_sub(released.bytes);
                    self.change(released.owner, released.cut.count_change(), released.bytes.wrapping_neg());
                }
            }
            (ranged, false) => {
                let loc = self.location(tid, allocator, native_frame_id, generation);
                self.heap = self.heap.wrapping_add(size);
                if ranged {
                    if size > 0 {
                        self.ranges.add(address, size, loc);
                        self.change(loc, 1, size);
                    }
                } else {
                    // A sampled record stands for several allocations, as in the reporter.
                    let count = memray_capture::sampling::estimated_count(size, self.sampling_interval, address, false);
                    if let Some((old_size, old_loc, old_count)) = self.live.insert(address as usize, (size, loc, count)) {
                        // Its free was never seen (made before tracking started, or
                        // missed): the block leaves its location but, as in the
                        // reporter, its bytes stay in the heap.
                        self.change(old_loc, old_count.wrapping_neg(), old_size.wrapping_neg());
                    }
                    self.change(loc, count, size);
                }
            }
        }
        if self.heap >= self.peak {
            self.peak = self.heap;
            self.peak_version += 1;
        }
    }

    fn location(&mut self, tid: u64, allocator: Allocator, native_frame_id: u64, generation: u64) -> usize {
        let frame_index = self.stacks.get(&tid).and_then(|s| s.last().copied()).unwrap_or(0);
        let key = LocationKey { tid, allocator, frame_index, native_frame_id, native_segment_generation: generation };
        let next = self.locations.len();
        let loc = *self.keys.entry(key).or_insert(next);
        if loc == next {
            self.locations.push((key, Location::default()));
        }
        loc
    }

    /// Adds (wrapping) deltas to a location's live totals.
    fn change(&mut self, loc: usize, count_delta: u64, bytes_delta: u64) {
        let peak_version = self.peak_version;
        let Some((_, l)) = self.locations.get_mut(loc) else { return };
        if l.peak_version != peak_version {
            // First change since the latest peak: its values are still the peak's.
            l.at_peak_count = l.count;
            l.at_peak_bytes = l.bytes;
            l.peak_version = peak_version;
        }
        l.count = l.count.wrapping_add(count_delta);
        l.bytes = l.bytes.wrapping_add(bytes_delta);
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
        let mut a = Aggregator::new(0);
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
        let mut a = Aggregator::new(0);
        a.allocation(1, 0x10000, 0x4000, Allocator::Mmap, 0, 0);
        a.allocation(1, 0x11000, 0x1000, Allocator::Munmap, 0, 0);
        let rows = rows(a);
        assert_eq!(rows[0].bytes_leaked, 0x3000);
        assert_eq!(rows[0].bytes_in_high_water_mark, 0x4000);
    }

    #[test]
    fn trie_shares_common_prefixes() {
        let mut a = Aggregator::new(0);
        a.push(1, frame(1));
        a.push(1, frame(2));
        a.pop(1, 1);
        a.push(1, frame(3));
        a.push(2, frame(1));
        let cap = a.into_capture(Header::default());
        assert_eq!(cap.python_trace_tree.len(), 3);
        assert_eq!(cap.python_frames.len(), 3);
    }

    /// One record of a tracked run, as the writer hands it to both outputs.
    #[derive(Clone, Debug)]
    enum Event {
        Push { tid: u64, code: u64, offset: i32 },
        Pop { tid: u64, n: usize },
        Alloc { tid: u64, slot: u64, size: u64, allocator: Allocator },
        Free { tid: u64, slot: u64 },
        Map { tid: u64, page: u64, pages: u64 },
        Unmap { tid: u64, page: u64, pages: u64 },
    }

    fn event() -> impl proptest::strategy::Strategy<Value = Event> {
        use proptest::prelude::*;
        let tid = 1u64..3;
        let allocator = prop_oneof![Just(Allocator::Malloc), Just(Allocator::Calloc), Just(Allocator::Realloc)];
        prop_oneof![
            (tid.clone(), 1u64..4, 0i32..3).prop_map(|(tid, code, offset)| Event::Push { tid, code, offset }),
            (tid.clone(), 1usize..3).prop_map(|(tid, n)| Event::Pop { tid, n }),
            // Few addresses and sizes: reused addresses, missed frees and equal peaks.
            (tid.clone(), 0u64..8, 1u64..6, allocator).prop_map(|(tid, slot, size, allocator)| Event::Alloc {
                tid,
                slot,
                size: size * 1000,
                allocator
            }),
            (tid.clone(), 0u64..8).prop_map(|(tid, slot)| Event::Free { tid, slot }),
            (tid.clone(), 0u64..8, 0u64..4).prop_map(|(tid, page, pages)| Event::Map { tid, page, pages }),
            (tid, 0u64..8, 1u64..4).prop_map(|(tid, page, pages)| Event::Unmap { tid, page, pages }),
        ]
    }

    /// (tid, allocator, Python stack innermost first) -> (live at the peak, live at the end),
    /// as the reporter computes them from a capture.
    type Usages = std::collections::BTreeMap<(u64, u8, Vec<(u64, i32)>), ((u64, u64), (u64, u64))>;

    fn usages(bytes: Vec<u8>) -> (Usages, u64) {
        let reader = memray_capture::Reader::new(std::io::Cursor::new(bytes)).unwrap();
        let analysis = memray_reporter::analyze(reader, Default::default()).unwrap();
        let mut out = Usages::new();
        for u in &analysis.locations {
            if u.at_peak == Default::default() && u.leaked == Default::default() {
                continue;
            }
            let stack = analysis
                .stacks
                .frames(u.key.stack)
                .map(|f| analysis.stacks.frame(f).map(|k| (k.code_object_id, k.instruction_offset)).unwrap())
                .collect();
            let usage = ((u.at_peak.count, u.at_peak.bytes), (u.leaked.count, u.leaked.bytes));
            let previous = out.insert((u.key.tid, u.key.allocator as u8, stack), usage);
            assert!(previous.is_none(), "two rows for one location");
        }
        (out, analysis.peak_memory)
    }

    fn header(file_format: memray_capture::FileFormat, sampling_interval: u64) -> Header {
        Header { python_version: 0x030c_00f0, file_format, sampling_interval, ..Header::default() }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// The aggregated capture's rows are what the reporter computes from the full
        /// capture of the same records: the same high-water mark, location by location;
        /// in sampled captures, the same estimated counts.
        #[test]
        fn aggregated_rows_equal_the_full_captures_analysis(
            events in proptest::collection::vec(event(), 1..120),
            interval in proptest::prop_oneof![proptest::strategy::Just(0u64), proptest::strategy::Just(4096u64)],
        ) {
            let mut agg = Aggregator::new(interval);
            let mut enc = memray_capture::StreamEncoder::new();
            let mut full = Vec::new();
            header(memray_capture::FileFormat::AllAllocations, interval).encode(&mut full);
            let mut depth: HashMap<u64, usize> = HashMap::new();
            for e in events {
                let tid = match e {
                    Event::Push { tid, .. } | Event::Pop { tid, .. } | Event::Alloc { tid, .. } | Event::Free { tid, .. }
                    | Event::Map { tid, .. } | Event::Unmap { tid, .. } => tid,
                };
                enc.context_switch(&mut full, tid);
                let mut record = |agg: &mut Aggregator, address: u64, size: u64, allocator: Allocator| {
                    agg.allocation(tid, address, size, allocator, 0, 0);
                    enc.allocation(&mut full, address, size, allocator, 0, false);
                };
                match e {
                    Event::Push { code, offset, .. } => {
                        *depth.entry(tid).or_default() += 1;
                        agg.push(tid, PythonFrame { code_object_id: code, instruction_offset: offset, is_entry: true });
                        enc.frame_push(&mut full, code, offset, true);
                    }
                    Event::Pop { n, .. } => {
                        // The writer never pops more frames than it pushed.
                        let d = depth.entry(tid).or_default();
                        let n = n.min(*d);
                        *d -= n;
                        if n > 0 {
                            agg.pop(tid, n);
                            enc.frame_pop(&mut full, n as u32);
                        }
                    }
                    Event::Alloc { slot, size, allocator, .. } => record(&mut agg, 0x1000 + slot * 0x10, size, allocator),
                    Event::Free { slot, .. } => record(&mut agg, 0x1000 + slot * 0x10, 0, Allocator::Free),
                    Event::Map { page, pages, .. } => record(&mut agg, 0x10_0000 + page * 0x1000, pages * 0x1000, Allocator::Mmap),
                    Event::Unmap { page, pages, .. } => record(&mut agg, 0x10_0000 + page * 0x1000, pages * 0x1000, Allocator::Munmap),
                }
            }
            enc.trailer(&mut full);
            let mut aggregated = Vec::new();
            agg.into_capture(header(memray_capture::FileFormat::AggregatedAllocations, interval)).encode(&mut aggregated);
            let (expected, _) = usages(full);
            let (got, _) = usages(aggregated);
            proptest::prop_assert_eq!(got, expected);
        }
    }
}
