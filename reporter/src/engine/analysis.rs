//! One streaming pass over a capture: totals, sizes, allocators, per-location figures,
//! the heap's high-water mark, what was live at it and what was live at the end.
//!
//! Memory use is proportional to live allocations, distinct stacks and distinct
//! locations; records are not kept.
//!
//! Definitions follow Memray 1.20 (`snapshot.cpp`):
//! * an *allocation* is any ALLOCATION record whose allocator is not `free`,
//!   `PyMem_Free` or `munmap`; `realloc` counts as an allocation of its new size (the
//!   tracked process records the release of the old block as a separate `free`), and
//!   `calloc` counts its total size;
//! * the *heap* is the sum of the sizes of live malloc-family blocks plus the bytes of
//!   live `mmap` ranges. An allocation at an address that is already live adds its size
//!   and replaces the block (so the earlier one is never subtracted); a free of an
//!   unknown address changes nothing; `munmap` subtracts whatever part of the recorded
//!   ranges it covers;
//! * the *peak* is the heap after the last record at which it was at least as large as
//!   after every earlier record. "At the peak" figures describe that state; "leaked"
//!   ones the state after the last record. A live `mmap` range split by a partial
//!   `munmap` counts once per piece.
//!
//! In a sampled capture a record's size is already an estimate of bytes, and its count
//! is the number of allocations it stands for ([`crate::engine::estimates`]); a free
//! takes back the count its block added. The size histogram counts those allocations at
//! the size they had. `n_allocation_records` stays the number of records.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use memray_capture::{AggregatedAllocation, Allocator, FileFormat, Header, MemorySnapshot, NativeFrame, Reader, Record};

use crate::compat::stdorder::StdUnorderedOrder;
use crate::engine::estimates::Estimates;
use crate::engine::pipeline;
use crate::error::ReportError;
use crate::model::stacks::{FrameKey, LocationId, StackId, StackTable};
use crate::structures::addrmap::AddressMap;
use memray_capture::fasthash::FastMap;
use memray_capture::ranges::RangeSet;

/// Where allocations come from, at the granularity Memray aggregates them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LocationKey {
    pub tid: u64,
    /// Python stack (0 = none).
    pub stack: StackId,
    /// Native stack node (0 = none; always 0 without `--native`).
    pub native_frame_id: u64,
    /// Memory-map generation the native stack must be resolved against.
    pub native_segment_generation: u64,
    pub allocator: Allocator,
}

/// A number of allocations and their bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub count: u64,
    pub bytes: u64,
}

impl Usage {
    fn add(&mut self, other: Usage) {
        self.count = self.count.wrapping_add(other.count);
        self.bytes = self.bytes.wrapping_add(other.bytes);
    }
}

/// Live memory per location at the peak and at the end of the capture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocationUsage {
    pub key: LocationKey,
    pub at_peak: Usage,
    pub leaked: Usage,
}

/// Allocations and bytes attributed to one Python stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackTotals {
    pub stack: StackId,
    pub count: u64,
    pub bytes: u64,
}

/// Everything one pass over a capture yields.
pub struct Analysis {
    pub header: Header,
    /// Whether the capture ended with its trailer (false: the tracked process was killed
    /// or is still running; the figures cover the records present).
    pub reached_trailer: bool,
    pub stacks: StackTable,
    pub thread_names: BTreeMap<u64, String>,
    /// ALLOCATION records read, deallocations included (Memray's "total allocations" in
    /// report metadata).
    pub n_allocation_records: u64,
    pub total_allocations: u64,
    pub total_bytes_allocated: u64,
    /// The high-water mark of the heap (see the module documentation).
    pub peak_memory: u64,
    /// Index among ALLOCATION records of the record that reached the peak.
    pub peak_record_index: u64,
    /// The heap after the last record.
    pub final_heap: u64,
    /// Allocation count per size, by size.
    pub count_by_size: Vec<(u64, u64)>,
    /// Allocation count per allocator, in order of first use.
    pub count_by_allocator: Vec<(Allocator, u64)>,
    /// Bytes and count per innermost location (`None`: no Python stack), in order of
    /// first allocation.
    pub by_location: Vec<(Option<LocationId>, Usage)>,
    /// Count and bytes per Python stack, in order of first allocation.
    pub by_stack: Vec<StackTotals>,
    /// Live memory per location at the peak and at the end. For aggregated captures,
    /// these are the file's rows.
    pub locations: Vec<LocationUsage>,
    /// Memory-map generations seen (MEMORY_MAP_START records).
    pub native_segment_generations: u64,
    pub native_frames: Vec<NativeFrame>,
    pub n_memory_records: u64,
    pub max_rss: u64,
    /// Aggregated captures: the RSS/heap samples.
    pub memory_snapshots: Vec<MemorySnapshot>,
    pub n_object_records: u64,
    pub n_surviving_objects: u64,
}

impl Analysis {
    pub fn is_aggregated(&self) -> bool {
        self.header.file_format == FileFormat::AggregatedAllocations
    }

    /// Per-allocator counts in the order Memray 1.20 lists them before sorting: the
    /// iteration order of its C++ map (ties in the sorted distribution keep this order).
    pub fn allocators_in_memray_order(&self) -> Vec<(Allocator, u64)> {
        let mut order = StdUnorderedOrder::new();
        self.count_by_allocator.iter().for_each(|(a, _)| order.insert(*a as u64));
        order.iteration_order().into_iter().map(|i| self.count_by_allocator[i]).collect()
    }

    /// Per-stack totals in the iteration order of Memray's C++ map.
    pub fn stacks_in_memray_order(&self) -> Vec<StackTotals> {
        let mut order = StdUnorderedOrder::new();
        self.by_stack.iter().for_each(|s| order.insert(s.stack as u64));
        order.iteration_order().into_iter().map(|i| self.by_stack[i]).collect()
    }
}

/// What to do when the data ends inside a record.
#[derive(Clone, Copy, Debug, Default)]
pub struct AnalyzeOptions {
    /// Treat a capture cut inside a record like one without a trailer: report what was
    /// read (Memray does this). Otherwise the truncation is an error.
    pub allow_truncated: bool,
}

/// Opens and analyses a capture file.
pub fn analyze_file(path: impl AsRef<Path>, options: AnalyzeOptions) -> Result<Analysis, ReportError> {
    analyze(Reader::open(path)?, options)
}

/// Analyses a capture from an open reader, consuming all of its records. The heap's
/// bookkeeping runs on a second thread (see [`crate::engine::pipeline`]).
pub fn analyze<R: Read>(mut reader: Reader<R>, options: AnalyzeOptions) -> Result<Analysis, ReportError> {
    let mut scanner = Scanner::new(reader.header().clone());
    let ledger = if scanner.aggregated {
        // A few rows and no heap events: nothing to share out.
        let mut ledger = HeapLedger::new(scanner.estimates);
        reader.for_each_record(options.allow_truncated, |record| scanner.feed(record, &mut ledger).map(|()| true))?;
        ledger
    } else {
        pipeline::run(
            &mut reader,
            options.allow_truncated,
            HeapLedger::new(scanner.estimates),
            #[inline(always)]
            |record, emit| scanner.feed(record, emit),
        )?
    };
    Ok(scanner.finish(ledger, reader.reached_trailer()))
}

const NO_SLOT: u32 = u32::MAX;

/// `v[i]`, growing `v` with `NO_SLOT`s as needed.
fn slot_for(v: &mut Vec<u32>, i: usize) -> &mut u32 {
    if i >= v.len() {
        v.resize(i + 1, NO_SLOT);
    }
    &mut v[i]
}

/// Allocation count per size: an array for the small sizes nearly all allocations have,
/// a map for the rest.
#[derive(Default)]
struct SizeCounts {
    small: Vec<u64>,
    large: FastMap<u64, u64>,
}

impl SizeCounts {
    const SMALL: u64 = 1 << 16;

    #[inline(always)]
    fn add(&mut self, size: u64, count: u64) {
        match self.small.get_mut(size as usize) {
            Some(n) => *n += count,
            None => self.add_new(size, count),
        }
    }

    #[cold]
    fn add_new(&mut self, size: u64, count: u64) {
        if size < Self::SMALL {
            *slot_for_count(&mut self.small, size as usize) += count;
        } else {
            *self.large.entry(size).or_insert(0) += count;
        }
    }

    fn into_sorted(self) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = self.small.iter().enumerate().filter(|(_, &n)| n > 0).map(|(s, &n)| (s as u64, n)).collect();
        let mut large: Vec<(u64, u64)> = self.large.into_iter().collect();
        large.sort_unstable();
        out.extend(large);
        out
    }
}

/// `v[i]`, growing `v` with zeros (by doubling, to amortise) as needed.
#[inline]
fn slot_for_count(v: &mut Vec<u64>, i: usize) -> &mut u64 {
    if i >= v.len() {
        v.resize((i + 1).next_power_of_two().max(1024), 0);
    }
    &mut v[i]
}

/// What the heap's bookkeeping needs of a record. The [`Scanner`] turns records into
/// these and a [`HeapSide`] applies them, on the same thread or on another
/// ([`crate::engine::pipeline`]).
#[derive(Clone, Copy, Debug)]
pub(crate) enum HeapEvent {
    /// An ALLOCATION record; `location` is `NO_SLOT` for deallocators.
    Allocation { address: u64, size: u64, location: u32, allocator: Allocator },
    /// A MEMORY_RECORD (timelines sample the heap there).
    Memory { rss: u64, ms_since_epoch: u64 },
}

// Events cross threads in batches: keep them small.
const _: () = assert!(std::mem::size_of::<HeapEvent>() <= 24);

/// Where [`HeapEvent`]s go: the heap's bookkeeping, or a batch bound for it.
pub(crate) trait HeapSide {
    fn apply(&mut self, event: HeapEvent);

    /// A hint that `event` will be applied soon (see [`crate::engine::pipeline`]).
    #[inline(always)]
    fn prefetch(&self, _event: &HeapEvent) {}
}

/// The record side of the analysis: stacks, locations, sizes, threads and everything
/// else that does not depend on which blocks are live. Allocations are passed on as
/// [`HeapEvent`]s carrying their location's dense index.
pub(crate) struct Scanner {
    header: Header,
    aggregated: bool,
    estimates: Estimates,
    stacks: StackTable,
    thread_names: BTreeMap<u64, String>,
    n_allocation_records: u64,
    count_by_size: SizeCounts,
    /// Per Python stack id: the location of its latest allocation (`NO_SLOT`: none
    /// yet). Most allocations from a stack share the rest of the key with it.
    last_location: Vec<u32>,
    generation: u64,
    native_frames: Vec<NativeFrame>,
    n_memory_records: u64,
    max_rss: u64,
    memory_snapshots: Vec<MemorySnapshot>,
    n_object_records: u64,
    n_surviving_objects: u64,
    location_index: FastMap<LocationKey, u32>,
    /// Location keys by dense index, in order of first allocation.
    locations: Vec<LocationKey>,
    /// Aggregated captures: the stored rows, and the sum of their peak bytes (Memray's
    /// high-water mark of such a capture).
    rows: Vec<AggregatedAllocation>,
    rows_peak: u64,
}

impl Scanner {
    pub fn new(header: Header) -> Self {
        let stacks = StackTable::new(header.python_version, header.main_tid, header.skipped_frames_on_main_tid);
        let aggregated = header.file_format == FileFormat::AggregatedAllocations;
        Scanner {
            estimates: Estimates::new(header.sampling_interval),
            header,
            aggregated,
            stacks,
            thread_names: BTreeMap::new(),
            n_allocation_records: 0,
            count_by_size: SizeCounts::default(),
            last_location: Vec::new(),
            generation: 0,
            native_frames: Vec::new(),
            n_memory_records: 0,
            max_rss: 0,
            memory_snapshots: Vec::new(),
            n_object_records: 0,
            n_surviving_objects: 0,
            location_index: FastMap::default(),
            locations: Vec::new(),
            rows: Vec::new(),
            rows_peak: 0,
        }
    }

    pub fn stacks(&self) -> &StackTable {
        &self.stacks
    }

    pub fn estimates(&self) -> Estimates {
        self.estimates
    }

    /// Memory-map generation (MEMORY_MAP_START records seen).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    // Inlined into the read loop: a record handed over in memory costs a store-forwarding
    // stall per field, more than the bookkeeping itself.
    #[inline(always)]
    pub fn feed(&mut self, record: Record, heap: &mut impl HeapSide) -> Result<(), ReportError> {
        match record {
            Record::ContextSwitch { .. } => {}
            Record::FramePush { tid, code_object_id, instruction_offset, is_entry } => {
                self.stacks.push(tid, FrameKey { code_object_id, instruction_offset, is_entry })
            }
            Record::FramePop { tid, count } => self.stacks.pop(tid, count),
            Record::Allocation { tid, address, size, allocator, native_frame_id } => {
                self.n_allocation_records += 1;
                let location = if allocator.is_deallocator() {
                    NO_SLOT
                } else {
                    if self.estimates.is_sampled() {
                        let (size, count) = self.estimates.size_and_count(size, address, allocator);
                        self.count_by_size.add(size, count);
                    } else {
                        self.count_by_size.add(size, 1);
                    }
                    self.location(tid, native_frame_id, allocator)
                };
                heap.apply(HeapEvent::Allocation { address, size, location, allocator })
            }
            Record::Object { .. } => self.n_object_records += 1,
            Record::Memory { rss, ms_since_epoch } => {
                self.n_memory_records += 1;
                self.max_rss = self.max_rss.max(rss);
                heap.apply(HeapEvent::Memory { rss, ms_since_epoch })
            }
            Record::Thread { tid, name } => {
                self.thread_names.insert(tid, name);
            }
            Record::CodeObject(code) => self.stacks.add_code_object(code),
            Record::NativeFrame(f) => self.native_frames.push(f),
            Record::MemoryMapStart => self.generation += 1,
            Record::SegmentHeader { .. } | Record::Segment(_) => {}
            Record::MemorySnapshot(s) => self.memory_snapshots.push(s),
            Record::AggregatedAllocation(row) => self.aggregated_row(row)?,
            Record::PythonFrame { frame, .. } => self.stacks.add_indexed_frame(frame),
            Record::PythonTraceNode(node) => self.stacks.add_indexed_node(node)?,
            Record::SurvivingObject(_) => self.n_surviving_objects += 1,
        }
        Ok(())
    }

    /// The dense index of the location of an allocation by `tid` now.
    #[inline]
    fn location(&mut self, tid: u64, native_frame_id: u64, allocator: Allocator) -> u32 {
        let stack = self.stacks.current(tid);
        let key = LocationKey { tid, stack, native_frame_id, native_segment_generation: self.generation, allocator };
        let cached = self.last_location.get(stack as usize).copied().unwrap_or(NO_SLOT);
        if cached != NO_SLOT && self.locations[cached as usize] == key {
            return cached;
        }
        self.new_location(key)
    }

    #[cold]
    fn new_location(&mut self, key: LocationKey) -> u32 {
        let i = match self.location_index.get(&key) {
            Some(&i) => i,
            None => {
                let i = self.locations.len() as u32;
                self.locations.push(key);
                self.location_index.insert(key, i);
                i
            }
        };
        *slot_for(&mut self.last_location, key.stack as usize) = i;
        i
    }

    fn aggregated_row(&mut self, row: AggregatedAllocation) -> Result<(), ReportError> {
        if !self.stacks.contains(row.frame_index) {
            return Err(ReportError::CorruptAggregated(format!(
                "allocation row refers to Python stack {} but only {} exist",
                row.frame_index,
                self.stacks.n_stacks()
            )));
        }
        self.n_allocation_records += 1;
        // Memray's high-water mark of an aggregated capture adds up every row's
        // contribution to the peak.
        self.rows_peak = self.rows_peak.wrapping_add(row.bytes_in_high_water_mark);
        self.rows.push(row);
        Ok(())
    }

    /// The locations' totals summed per allocator, innermost location and stack, each in
    /// order of first allocation (locations are numbered in that order).
    fn totals(&mut self, counters: &[LocationCounters]) -> Totals {
        let mut t = Totals::default();
        // Dense ids: vectors indexed by stack and by location id, plus "no stack".
        let mut stack_slot: Vec<u32> = Vec::new();
        let mut location_slot: Vec<u32> = Vec::new();
        let mut no_stack_slot = NO_SLOT;
        // Per `by_stack` entry: its innermost location's index in `by_location`.
        let mut stack_location: Vec<usize> = Vec::new();
        for (key, counter) in self.locations.iter().zip(counters) {
            let total = counter.total;
            t.all.add(total);
            match t.by_allocator.iter_mut().find(|(a, _)| *a == key.allocator) {
                Some((_, n)) => *n += total.count,
                None => t.by_allocator.push((key.allocator, total.count)),
            }
            let slot = slot_for(&mut stack_slot, key.stack as usize);
            if *slot == NO_SLOT {
                *slot = t.by_stack.len() as u32;
                t.by_stack.push(StackTotals { stack: key.stack, count: 0, bytes: 0 });
                let top = self.stacks.top_location(key.stack);
                let location = match top {
                    Some(id) => slot_for(&mut location_slot, id as usize),
                    None => &mut no_stack_slot,
                };
                if *location == NO_SLOT {
                    *location = t.by_location.len() as u32;
                    t.by_location.push((top, Usage::default()));
                }
                stack_location.push(*location as usize);
            }
            let i = *slot as usize;
            let by_stack = &mut t.by_stack[i];
            by_stack.count += total.count;
            by_stack.bytes = by_stack.bytes.wrapping_add(total.bytes);
            t.by_location[stack_location[i]].1.add(total);
        }
        t
    }

    /// Everything the pass yields, from this side and the heap's.
    pub fn finish(mut self, ledger: HeapLedger, reached_trailer: bool) -> Analysis {
        let totals = self.totals(&ledger.counters);
        let peak_epoch = ledger.peak_epoch;
        let locations = if self.aggregated {
            self.rows
                .iter()
                .map(|r| LocationUsage {
                    key: LocationKey {
                        tid: r.tid,
                        stack: r.frame_index as StackId,
                        native_frame_id: r.native_frame_id,
                        native_segment_generation: r.native_segment_generation,
                        allocator: r.allocator,
                    },
                    at_peak: Usage { count: r.n_allocations_in_high_water_mark, bytes: r.bytes_in_high_water_mark },
                    leaked: Usage { count: r.n_allocations_leaked, bytes: r.bytes_leaked },
                })
                .collect()
        } else {
            self.locations
                .iter()
                .zip(&ledger.counters)
                .map(|(key, c)| {
                    let mut at_end = c.at_peak;
                    at_end.add(c.since);
                    // Changes made at or after the last peak are not part of it.
                    let at_peak = if c.epoch != peak_epoch { at_end } else { c.at_peak };
                    LocationUsage { key: *key, at_peak, leaked: at_end }
                })
                .filter(|u| u.at_peak != Usage::default() || u.leaked != Usage::default())
                .collect()
        };
        let (peak_memory, final_heap) = if self.aggregated { (self.rows_peak, self.rows_peak) } else { (ledger.peak, ledger.heap) };
        Analysis {
            header: self.header,
            reached_trailer,
            stacks: self.stacks,
            thread_names: self.thread_names,
            n_allocation_records: self.n_allocation_records,
            total_allocations: totals.all.count,
            total_bytes_allocated: totals.all.bytes,
            peak_memory,
            peak_record_index: ledger.peak_record_index,
            final_heap,
            count_by_size: self.count_by_size.into_sorted(),
            count_by_allocator: totals.by_allocator,
            by_location: totals.by_location,
            by_stack: totals.by_stack,
            locations,
            native_segment_generations: self.generation,
            native_frames: self.native_frames,
            n_memory_records: self.n_memory_records,
            max_rss: self.max_rss,
            memory_snapshots: self.memory_snapshots,
            n_object_records: self.n_object_records,
            n_surviving_objects: self.n_surviving_objects,
        }
    }
}

/// Sums of the location counters (see [`Scanner::totals`]).
#[derive(Default)]
struct Totals {
    all: Usage,
    by_allocator: Vec<(Allocator, u64)>,
    by_location: Vec<(Option<LocationId>, Usage)>,
    by_stack: Vec<StackTotals>,
}

#[derive(Clone, Copy, Default)]
struct LiveBlock {
    size: u64,
    location: u32,
    /// The allocations it stands for (1 unless sampled; in what would be padding, and
    /// saturated: no real record stands for 4 billion allocations).
    count: u32,
}

/// One location's figures on the heap side: everything it allocated, and where it stood
/// at the last peak it has seen (see [`HeapLedger::delta`]). The per-stack,
/// per-innermost-location and per-allocator totals are sums of `total` made at the end.
#[derive(Clone, Copy)]
struct LocationCounters {
    total: Usage,
    /// The peak counter when this location last changed.
    epoch: u64,
    at_peak: Usage,
    /// Changes since `epoch` (wrapping: they may be negative).
    since: Usage,
}

/// The heap side of the analysis: live blocks and mappings, the heap, its high-water
/// mark, and each location's live memory at the peak.
pub(crate) struct HeapLedger {
    estimates: Estimates,
    heap: u64,
    peak: u64,
    peak_record_index: u64,
    /// Incremented after each record that leaves the heap at a new (or equal) peak.
    peak_epoch: u64,
    n_allocation_records: u64,
    live: AddressMap<LiveBlock>,
    mappings: RangeSet<u32>,
    /// By location index.
    counters: Vec<LocationCounters>,
}

impl HeapSide for HeapLedger {
    #[inline(always)]
    fn apply(&mut self, event: HeapEvent) {
        if let HeapEvent::Allocation { address, size, location, allocator } = event {
            self.allocation(address, size, location, allocator)
        }
    }

    #[inline(always)]
    fn prefetch(&self, event: &HeapEvent) {
        if let HeapEvent::Allocation { address, allocator, .. } = event {
            if !allocator.is_ranged() {
                self.live.prefetch(*address);
            }
        }
    }
}

impl HeapLedger {
    pub fn new(estimates: Estimates) -> Self {
        HeapLedger {
            estimates,
            heap: 0,
            peak: 0,
            peak_record_index: 0,
            peak_epoch: 0,
            n_allocation_records: 0,
            live: AddressMap::new(),
            mappings: RangeSet::new(),
            counters: Vec::new(),
        }
    }

    /// The heap after the events applied so far.
    pub fn heap(&self) -> u64 {
        self.heap
    }

    #[inline]
    fn allocation(&mut self, address: u64, size: u64, location: u32, allocator: Allocator) {
        let index = self.n_allocation_records;
        self.n_allocation_records += 1;
        let mut count = 1;
        if location != NO_SLOT {
            if location as usize >= self.counters.len() {
                self.new_counters(location);
            }
            count = self.estimates.count(size, address, allocator);
            let total = &mut self.counters[location as usize].total;
            total.count += count;
            total.bytes = total.bytes.wrapping_add(size);
        }
        match (allocator.is_ranged(), allocator.is_deallocator()) {
            (false, false) => {
                self.heap = self.heap.wrapping_add(size);
                let block = LiveBlock { size, location, count: count.min(u32::MAX as u64) as u32 };
                if let Some(old) = self.live.insert(address, block) {
                    // The old block is replaced, never freed: it leaves the snapshot.
                    self.release(old);
                }
                self.delta(location, block.count as u64, size);
            }
            (false, true) => {
                if let Some(old) = self.live.remove(address) {
                    self.heap = self.heap.wrapping_sub(old.size);
                    self.release(old);
                }
            }
            (true, false) => {
                self.heap = self.heap.wrapping_add(size);
                if size > 0 {
                    self.mappings.add(address, size, location);
                    self.delta(location, 1, size);
                }
            }
            (true, true) => {
                for released in self.mappings.remove(address, size) {
                    self.heap = self.heap.wrapping_sub(released.bytes);
                    self.delta(released.owner, released.cut.count_change(), released.bytes.wrapping_neg());
                }
            }
        }
        if self.heap >= self.peak {
            self.peak = self.heap;
            self.peak_record_index = index;
            self.peak_epoch += 1;
        }
    }

    /// A live block leaves its location, taking back the count its allocation added.
    #[inline]
    fn release(&mut self, block: LiveBlock) {
        self.delta(block.location, (block.count as u64).wrapping_neg(), block.size.wrapping_neg());
    }

    /// Counters for every location up to `location` (indices are handed out densely, in
    /// order of first allocation, so this runs once per new location).
    #[cold]
    fn new_counters(&mut self, location: u32) {
        let fresh =
            LocationCounters { total: Usage::default(), epoch: self.peak_epoch, at_peak: Usage::default(), since: Usage::default() };
        self.counters.resize(location as usize + 1, fresh);
    }

    /// Changes a location's live memory. Changes made before the latest peak belong to
    /// it: they are folded into `at_peak` lazily, the next time the location changes
    /// (or at the end), so each record costs O(1) whatever the number of locations.
    #[inline]
    fn delta(&mut self, location: u32, count: u64, bytes: u64) {
        let Some(c) = self.counters.get_mut(location as usize) else { return };
        if c.epoch != self.peak_epoch {
            let since = std::mem::take(&mut c.since);
            c.at_peak.add(since);
            c.epoch = self.peak_epoch;
        }
        c.since.count = c.since.count.wrapping_add(count);
        c.since.bytes = c.since.bytes.wrapping_add(bytes);
    }
}

/// The whole analysis on one thread: feed it records in order. ([`analyze`] runs the
/// same two halves on two threads.)
pub struct Analyzer {
    scanner: Scanner,
    ledger: HeapLedger,
}

impl Analyzer {
    pub fn new(header: Header) -> Self {
        let scanner = Scanner::new(header);
        let ledger = HeapLedger::new(scanner.estimates);
        Analyzer { scanner, ledger }
    }

    /// The heap after the records fed so far (memory-over-time charts sample it).
    pub fn heap(&self) -> u64 {
        if self.scanner.aggregated {
            self.scanner.rows_peak
        } else {
            self.ledger.heap
        }
    }

    /// The stacks read so far (each thread's current stack included).
    pub fn stacks(&self) -> &StackTable {
        &self.scanner.stacks
    }

    #[inline(always)]
    pub fn feed(&mut self, record: Record) -> Result<(), ReportError> {
        self.scanner.feed(record, &mut self.ledger)
    }

    pub fn finish(self, reached_trailer: bool) -> Analysis {
        self.scanner.finish(self.ledger, reached_trailer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::estimates::test_capture;
    use memray_capture::sampling::{estimated_count, weight};

    const T: u64 = 64 * 1024;

    /// Count and bytes left at the end per (function of the innermost frame, allocator).
    fn leaked(a: &mut Analysis) -> BTreeMap<(String, Allocator), Usage> {
        let mut out = BTreeMap::new();
        for l in &a.locations {
            let function = a.stacks.top_location(l.key.stack).map(|id| a.stacks.location(id).function.to_string()).unwrap_or_default();
            out.entry((function, l.key.allocator)).or_insert_with(Usage::default).add(l.leaked);
        }
        out
    }

    #[test]
    fn sampled_records_count_the_allocations_they_stand_for() {
        let bytes = test_capture(T);
        let mut a = analyze(Reader::new(&bytes[..]).unwrap(), AnalyzeOptions::default()).unwrap();
        let c = |size, address| estimated_count(weight(size, T), T, address, false);
        let (ca, cb, cc, cd, ce) = (c(100, 0x10), c(1000, 0x20), c(100, 0x30), c(5000, 0x40), c(300, 0x10));
        assert!(ca > 100 && cb > 10 && cd > 1, "small blocks stand for many: {ca} {cb} {cd}");
        assert_eq!(a.n_allocation_records, 7, "Memray's total: records, frees included");
        assert_eq!(a.total_allocations, ca + cb + cc + 1 + cd + ce);
        assert_eq!(a.count_by_allocator, vec![(Allocator::Malloc, ca + cb + cc + cd + ce), (Allocator::Mmap, 1)]);
        // At the sizes the allocations had (to a byte); the mapping is exact.
        let sizes: Vec<u64> = a.count_by_size.iter().map(|&(size, _)| size).collect();
        let counts: Vec<u64> = a.count_by_size.iter().map(|&(_, n)| n).collect();
        assert!(sizes.iter().zip([100, 300, 1000, 5000, 0x4000]).all(|(&got, size)| got.abs_diff(size) <= 1), "{sizes:?}");
        assert_eq!(counts, vec![ca + cc, ce, cb, cd, 1]);
        // The free takes back the 100 bytes' count; the replaced block at 0x10 leaves too.
        let w = |size| weight(size, T);
        let expected = BTreeMap::from([
            (("build".to_string(), Allocator::Malloc), Usage { count: cb, bytes: w(1000) }),
            (("build".to_string(), Allocator::Mmap), Usage { count: 1, bytes: 0x4000 }),
            (("main".to_string(), Allocator::Malloc), Usage { count: cd + ce, bytes: w(5000) + w(300) }),
        ]);
        assert_eq!(leaked(&mut a), expected);
        // The heap keeps growing (the replaced block's bytes stay): the peak is the end.
        assert!(a.locations.iter().all(|l| l.at_peak == l.leaked));
    }

    #[test]
    fn full_captures_count_one_per_record() {
        let bytes = test_capture(0);
        let mut a = analyze(Reader::new(&bytes[..]).unwrap(), AnalyzeOptions::default()).unwrap();
        assert_eq!((a.n_allocation_records, a.total_allocations), (7, 6));
        assert_eq!(a.count_by_size, vec![(100, 2), (300, 1), (1000, 1), (5000, 1), (0x4000, 1)]);
        let counts: Vec<u64> = leaked(&mut a).values().map(|u| u.count).collect();
        assert_eq!(counts, vec![1, 1, 2]);
    }
}
