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

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use memray_capture::{AggregatedAllocation, Allocator, FileFormat, Header, MemorySnapshot, NativeFrame, Reader, Record};

use crate::error::ReportError;
use crate::fasthash::FastMap;
use crate::ranges::{Cut, RangeSet};
use crate::stacks::{FrameKey, LocationId, StackId, StackTable};
use crate::stdorder::StdUnorderedOrder;

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

/// Analyses a capture from an open reader, consuming all of its records.
pub fn analyze<R: Read>(mut reader: Reader<R>, options: AnalyzeOptions) -> Result<Analysis, ReportError> {
    let mut analyzer = Analyzer::new(reader.header().clone());
    reader.for_each_record(options.allow_truncated, #[inline(always)] |record| analyzer.feed(record).map(|()| true))?;
    Ok(analyzer.finish(reader.reached_trailer()))
}

/// Where a location stood at the last peak it has seen (see `Analyzer::delta`).
struct LocationState {
    key: LocationKey,
    /// The peak counter when this location last changed.
    epoch: u64,
    at_peak: Usage,
    /// Changes since `epoch` (wrapping: they may be negative).
    since: Usage,
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

    #[inline]
    fn add(&mut self, size: u64) {
        if size < Self::SMALL {
            *slot_for_count(&mut self.small, size as usize) += 1;
        } else {
            *self.large.entry(size).or_insert(0) += 1;
        }
    }

    fn into_sorted(self) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> =
            self.small.iter().enumerate().filter(|(_, &n)| n > 0).map(|(s, &n)| (s as u64, n)).collect();
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

/// Where one Python stack's figures live.
#[derive(Clone, Copy)]
struct StackSlots {
    /// Index into `by_location` (the stack's innermost location).
    by_location: u32,
    /// Index into `by_stack`; `NO_SLOT` until the stack's first allocation.
    by_stack: u32,
    /// The location state of the stack's latest allocation (`NO_SLOT`: none yet).
    last_location: u32,
}

impl StackSlots {
    const NONE: StackSlots = StackSlots { by_location: NO_SLOT, by_stack: NO_SLOT, last_location: NO_SLOT };
}

#[derive(Clone, Copy)]
struct LiveBlock {
    size: u64,
    location: u32,
}

/// The streaming state behind [`analyze`]; feed it records in order.
pub struct Analyzer {
    header: Header,
    aggregated: bool,
    stacks: StackTable,
    thread_names: BTreeMap<u64, String>,
    n_allocation_records: u64,
    total_allocations: u64,
    total_bytes_allocated: u64,
    count_by_size: SizeCounts,
    /// `tid`'s current stack, valid until the next FRAME_PUSH or FRAME_POP (runs of
    /// allocations between frame changes are the common case).
    current_stack: Option<(u64, StackId)>,
    count_by_allocator: Vec<(Allocator, u64)>,
    by_location: Vec<(Option<LocationId>, Usage)>,
    /// Index into `by_location` per location id, plus one for "no stack" (dense ids:
    /// vectors instead of hash maps on the per-record path).
    location_slot: Vec<u32>,
    no_stack_slot: u32,
    by_stack: Vec<StackTotals>,
    /// Per Python stack id: where its figures live (see [`StackSlots`]).
    stack_slots: Vec<StackSlots>,
    generation: u64,
    native_frames: Vec<NativeFrame>,
    n_memory_records: u64,
    max_rss: u64,
    memory_snapshots: Vec<MemorySnapshot>,
    n_object_records: u64,
    n_surviving_objects: u64,
    // High-water mark bookkeeping.
    heap: u64,
    peak: u64,
    peak_record_index: u64,
    /// Incremented after each record that leaves the heap at a new (or equal) peak.
    peak_epoch: u64,
    live: FastMap<u64, LiveBlock>,
    mappings: RangeSet<u32>,
    location_index: FastMap<LocationKey, u32>,
    location_states: Vec<LocationState>,
    rows: Vec<AggregatedAllocation>,
}

impl Analyzer {
    pub fn new(header: Header) -> Self {
        let stacks = StackTable::new(header.python_version, header.main_tid, header.skipped_frames_on_main_tid);
        let aggregated = header.file_format == FileFormat::AggregatedAllocations;
        Analyzer {
            header,
            aggregated,
            stacks,
            thread_names: BTreeMap::new(),
            n_allocation_records: 0,
            total_allocations: 0,
            total_bytes_allocated: 0,
            count_by_size: SizeCounts::default(),
            current_stack: None,
            count_by_allocator: Vec::new(),
            by_location: Vec::new(),
            location_slot: Vec::new(),
            no_stack_slot: NO_SLOT,
            by_stack: Vec::new(),
            stack_slots: Vec::new(),
            generation: 0,
            native_frames: Vec::new(),
            n_memory_records: 0,
            max_rss: 0,
            memory_snapshots: Vec::new(),
            n_object_records: 0,
            n_surviving_objects: 0,
            heap: 0,
            peak: 0,
            peak_record_index: 0,
            peak_epoch: 0,
            live: FastMap::default(),
            mappings: RangeSet::new(),
            location_index: FastMap::default(),
            location_states: Vec::new(),
            rows: Vec::new(),
        }
    }

    /// The heap after the records fed so far (memory-over-time charts sample it).
    pub fn heap(&self) -> u64 {
        self.heap
    }

    /// The stacks read so far (each thread's current stack included).
    pub fn stacks(&self) -> &StackTable {
        &self.stacks
    }

    // Inlined into the read loop: a record handed over in memory costs a store-forwarding
    // stall per field, more than the bookkeeping itself.
    #[inline(always)]
    pub fn feed(&mut self, record: Record) -> Result<(), ReportError> {
        match record {
            Record::ContextSwitch { .. } => {}
            Record::FramePush { tid, code_object_id, instruction_offset, is_entry } => {
                self.current_stack = None;
                self.stacks.push(tid, FrameKey { code_object_id, instruction_offset, is_entry })
            }
            Record::FramePop { tid, count } => {
                self.current_stack = None;
                self.stacks.pop(tid, count)
            }
            Record::Allocation { tid, address, size, allocator, native_frame_id } => {
                self.allocation(tid, address, size, allocator, native_frame_id)
            }
            Record::Object { .. } => self.n_object_records += 1,
            Record::Memory { rss, .. } => {
                self.n_memory_records += 1;
                self.max_rss = self.max_rss.max(rss);
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

    fn allocation(&mut self, tid: u64, address: u64, size: u64, allocator: Allocator, native_frame_id: u64) {
        let index = self.n_allocation_records;
        self.n_allocation_records += 1;
        let mut location = u32::MAX;
        if !allocator.is_deallocator() {
            let stack = match self.current_stack {
                Some((t, stack)) if t == tid => stack,
                _ => {
                    let stack = self.stacks.current(tid);
                    self.current_stack = Some((tid, stack));
                    stack
                }
            };
            self.count_allocation(stack, size, allocator);
            let key = LocationKey {
                tid,
                stack,
                native_frame_id,
                native_segment_generation: self.generation,
                allocator,
            };
            location = self.location(key);
        }
        match (allocator.is_ranged(), allocator.is_deallocator()) {
            (false, false) => {
                self.heap = self.heap.wrapping_add(size);
                if let Some(old) = self.live.insert(address, LiveBlock { size, location }) {
                    // The old block is replaced, never freed: it leaves the snapshot.
                    self.delta(old.location, 1u64.wrapping_neg(), old.size.wrapping_neg());
                }
                self.delta(location, 1, size);
            }
            (false, true) => {
                if let Some(old) = self.live.remove(&address) {
                    self.heap = self.heap.wrapping_sub(old.size);
                    self.delta(old.location, 1u64.wrapping_neg(), old.size.wrapping_neg());
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
                    let count = match released.cut {
                        Cut::Freed => 1u64.wrapping_neg(),
                        Cut::Shrunk => 0,
                        Cut::Split => 1,
                    };
                    self.delta(released.owner, count, released.bytes.wrapping_neg());
                }
            }
        }
        if self.heap >= self.peak {
            self.peak = self.heap;
            self.peak_record_index = index;
            self.peak_epoch += 1;
        }
    }

    /// Totals, sizes, allocators, per-location and per-stack figures of one allocation.
    fn count_allocation(&mut self, stack: StackId, size: u64, allocator: Allocator) {
        self.total_allocations += 1;
        self.total_bytes_allocated = self.total_bytes_allocated.wrapping_add(size);
        self.count_by_size.add(size);
        match self.count_by_allocator.iter_mut().find(|(a, _)| *a == allocator) {
            Some((_, n)) => *n += 1,
            None => self.count_by_allocator.push((allocator, 1)),
        }
        let slots = self.stack_slots(stack);
        let usage = &mut self.by_location[slots.by_location as usize].1;
        usage.count += 1;
        usage.bytes = usage.bytes.wrapping_add(size);
        let totals = &mut self.by_stack[slots.by_stack as usize];
        totals.count += 1;
        totals.bytes = totals.bytes.wrapping_add(size);
    }

    /// `stack`'s slots, assigned on its first allocation.
    #[inline]
    fn stack_slots(&mut self, stack: StackId) -> StackSlots {
        if let Some(slots) = self.stack_slots.get(stack as usize) {
            if slots.by_stack != NO_SLOT {
                return *slots;
            }
        }
        self.new_stack_slots(stack)
    }

    #[cold]
    fn new_stack_slots(&mut self, stack: StackId) -> StackSlots {
        let top = self.stacks.top_location(stack);
        let slot = match top {
            Some(id) => slot_for(&mut self.location_slot, id as usize),
            None => &mut self.no_stack_slot,
        };
        if *slot == NO_SLOT {
            *slot = self.by_location.len() as u32;
            self.by_location.push((top, Usage::default()));
        }
        let slots = StackSlots { by_location: *slot, by_stack: self.by_stack.len() as u32, last_location: NO_SLOT };
        self.by_stack.push(StackTotals { stack, count: 0, bytes: 0 });
        if stack as usize >= self.stack_slots.len() {
            self.stack_slots.resize((stack as usize + 1).next_power_of_two(), StackSlots::NONE);
        }
        self.stack_slots[stack as usize] = slots;
        slots
    }

    /// The location state of `key`; `key.stack` has its slots already.
    fn location(&mut self, key: LocationKey) -> u32 {
        // Most allocations from a stack share the rest of the key with the previous one.
        let cached = self.stack_slots[key.stack as usize].last_location;
        if cached != NO_SLOT && self.location_states[cached as usize].key == key {
            return cached;
        }
        let i = match self.location_index.get(&key) {
            Some(&i) => i,
            None => {
                let i = self.location_states.len() as u32;
                self.location_states.push(LocationState {
                    key,
                    epoch: self.peak_epoch,
                    at_peak: Usage::default(),
                    since: Usage::default(),
                });
                self.location_index.insert(key, i);
                i
            }
        };
        self.stack_slots[key.stack as usize].last_location = i;
        i
    }

    /// Changes a location's live memory. Changes made before the latest peak belong to
    /// it: they are folded into `at_peak` lazily, the next time the location changes
    /// (or at the end), so each record costs O(1) whatever the number of locations.
    fn delta(&mut self, location: u32, count: u64, bytes: u64) {
        let Some(state) = self.location_states.get_mut(location as usize) else { return };
        if state.epoch != self.peak_epoch {
            state.at_peak.count = state.at_peak.count.wrapping_add(state.since.count);
            state.at_peak.bytes = state.at_peak.bytes.wrapping_add(state.since.bytes);
            state.since = Usage::default();
            state.epoch = self.peak_epoch;
        }
        state.since.count = state.since.count.wrapping_add(count);
        state.since.bytes = state.since.bytes.wrapping_add(bytes);
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
        self.heap = self.heap.wrapping_add(row.bytes_in_high_water_mark);
        self.peak = self.heap;
        self.rows.push(row);
        Ok(())
    }

    pub fn finish(self, reached_trailer: bool) -> Analysis {
        let peak_epoch = self.peak_epoch;
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
            self.location_states
                .iter()
                .map(|s| {
                    let at_end = Usage {
                        count: s.at_peak.count.wrapping_add(s.since.count),
                        bytes: s.at_peak.bytes.wrapping_add(s.since.bytes),
                    };
                    // Changes made at or after the last peak are not part of it.
                    let at_peak = if s.epoch != peak_epoch { at_end } else { s.at_peak };
                    LocationUsage { key: s.key, at_peak, leaked: at_end }
                })
                .filter(|u| u.at_peak != Usage::default() || u.leaked != Usage::default())
                .collect()
        };
        Analysis {
            header: self.header,
            reached_trailer,
            stacks: self.stacks,
            thread_names: self.thread_names,
            n_allocation_records: self.n_allocation_records,
            total_allocations: self.total_allocations,
            total_bytes_allocated: self.total_bytes_allocated,
            peak_memory: self.peak,
            peak_record_index: self.peak_record_index,
            final_heap: self.heap,
            count_by_size: self.count_by_size.into_sorted(),
            count_by_allocator: self.count_by_allocator,
            by_location: self.by_location,
            by_stack: self.by_stack,
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
