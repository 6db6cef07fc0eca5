//! Allocation records as Memray 1.20's `FileReader` yields them: every record, or the
//! live allocations at the high-water mark or at the end, aggregated per location.
//!
//! Memray computes these by replaying the capture (up to the peak, or to the end) into
//! C++ hash maps and walking them; the records' order, and which allocation speaks for
//! a location (its address and allocator), follow those maps. [`SnapshotAggregator`]
//! replays them with [`StdHashMap`], so the records here are Memray's, in its order.
//!
//! * [`scan`]: the first pass `FileReader` makes: the high-water mark (its record index
//!   and bytes), the number of allocation records, and the memory snapshots.
//! * [`snapshot_records`]: high-water-mark or leaked records (aggregated captures
//!   included); the temporary-allocation query lives in [`crate::engine::temporary`].
//! * [`CaptureCursor`]: a capture read record by record with stacks and thread names
//!   kept up to date, for callers that want every record.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use memray_capture::{AggregatedAllocation, Allocator, FileFormat, Header, MemorySnapshot, Reader, Record};

use crate::compat::stdhash::StdHashMap;
use crate::engine::estimates::Estimates;
use crate::error::ReportError;
use crate::model::native::{hybrid, NativeStacks};
use crate::model::stacks::{FrameKey, Location, StackId, StackTable};
use crate::structures::addrmap::AddressMap;
use memray_capture::fasthash::FastMap;
use memray_capture::ranges::RangeSet;

/// One allocation record (`memray.AllocationRecord`'s tuple).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllocationRecord {
    pub tid: u64,
    pub address: u64,
    pub size: u64,
    pub allocator: Allocator,
    /// The Python stack (Memray's `stack_id`; 0 for deallocations).
    pub stack: StackId,
    /// 1, or in a sampled capture the allocations the record stands for
    /// ([`crate::engine::estimates`]; deallocations: 1).
    pub n_allocations: u64,
    pub native_frame_id: u64,
    pub native_segment_generation: u64,
}

/// What one step of a [`CaptureCursor`] produced.
#[derive(Clone, Copy, Debug)]
pub enum Event {
    Allocation(AllocationRecord),
    /// An RSS sample (ALL_ALLOCATIONS captures).
    Memory {
        ms_since_epoch: u64,
        rss: u64,
    },
    /// An RSS and heap sample (aggregated captures).
    Snapshot(MemorySnapshot),
    /// A row of an aggregated capture.
    Aggregated(AggregatedAllocation),
    /// A Python object created or destroyed (`track_object_lifetimes`); in an aggregated
    /// capture, one still alive at the end, as a creation with no Python stack.
    Object(ObjectRecord),
}

/// `FileReader.get_object_lifetime_events()`'s record. `stack` is 0 for destructions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectRecord {
    pub tid: u64,
    pub address: u64,
    pub is_created: bool,
    pub stack: StackId,
    pub native_frame_id: u64,
    pub native_segment_generation: u64,
}

/// A capture read record by record, with stacks, thread names and the memory-map
/// generation kept current.
pub struct CaptureCursor<R: Read> {
    reader: Reader<R>,
    pub stacks: StackTable,
    pub thread_names: BTreeMap<u64, String>,
    /// Native frame tree and memory maps (empty without `--native`).
    pub native: NativeStacks,
    generation: u64,
    estimates: Estimates,
    allow_truncated: bool,
}

impl CaptureCursor<File> {
    pub fn open(path: impl AsRef<Path>, allow_truncated: bool) -> Result<Self, ReportError> {
        Ok(Self::new(Reader::open(path)?, allow_truncated))
    }
}

/// What a cursor keeps up to date as records go by (the cursor minus its reader, so
/// that the reader can hand records to it).
struct Tables<'a> {
    stacks: &'a mut StackTable,
    thread_names: &'a mut BTreeMap<u64, String>,
    native: &'a mut NativeStacks,
    generation: &'a mut u64,
    estimates: Estimates,
}

impl Tables<'_> {
    /// Takes in one record; returns the event it is, if any.
    #[inline(always)]
    fn fold(&mut self, record: Record) -> Result<Option<Event>, ReportError> {
        match record {
            Record::FramePush { tid, code_object_id, instruction_offset, is_entry } => {
                self.stacks.push(tid, FrameKey { code_object_id, instruction_offset, is_entry })
            }
            Record::FramePop { tid, count } => self.stacks.pop(tid, count),
            Record::Allocation { tid, address, size, allocator, native_frame_id } => {
                let (stack, n_allocations) = if allocator.is_deallocator() {
                    (0, 1)
                } else {
                    (self.stacks.current(tid), self.estimates.count(size, address, allocator))
                };
                return Ok(Some(Event::Allocation(AllocationRecord {
                    tid,
                    address,
                    size,
                    allocator,
                    stack,
                    n_allocations,
                    native_frame_id,
                    native_segment_generation: *self.generation,
                })));
            }
            Record::Memory { rss, ms_since_epoch } => return Ok(Some(Event::Memory { ms_since_epoch, rss })),
            other => return self.fold_rare(other),
        }
        Ok(None)
    }

    #[inline(never)]
    fn fold_rare(&mut self, record: Record) -> Result<Option<Event>, ReportError> {
        match record {
            Record::Thread { tid, name } => {
                self.thread_names.insert(tid, name);
            }
            Record::CodeObject(code) => self.stacks.add_code_object(code),
            Record::MemoryMapStart => {
                *self.generation += 1;
                self.native.observe(&record);
            }
            Record::NativeFrame(_) | Record::SegmentHeader { .. } | Record::Segment(_) => {
                self.native.observe(&record);
            }
            Record::MemorySnapshot(s) => return Ok(Some(Event::Snapshot(s))),
            Record::AggregatedAllocation(row) => {
                if !self.stacks.contains(row.frame_index) {
                    return Err(ReportError::CorruptAggregated(format!(
                        "allocation row refers to Python stack {} but only {} exist",
                        row.frame_index,
                        self.stacks.n_stacks()
                    )));
                }
                return Ok(Some(Event::Aggregated(row)));
            }
            Record::PythonFrame { frame, .. } => self.stacks.add_indexed_frame(frame),
            Record::PythonTraceNode(node) => self.stacks.add_indexed_node(node)?,
            Record::Object { tid, address, is_created, native_frame_id } => {
                let stack = if is_created { self.stacks.current(tid) } else { 0 };
                let generation = *self.generation;
                return Ok(Some(Event::Object(ObjectRecord {
                    tid,
                    address,
                    is_created,
                    stack,
                    native_frame_id,
                    native_segment_generation: generation,
                })));
            }
            Record::SurvivingObject(o) => {
                let generation = *self.generation;
                return Ok(Some(Event::Object(ObjectRecord {
                    tid: 0,
                    address: o.address,
                    is_created: true,
                    stack: 0,
                    native_frame_id: o.native_frame_id,
                    native_segment_generation: generation,
                })));
            }
            // Handled by `fold`, or nothing to keep.
            Record::FramePush { .. }
            | Record::FramePop { .. }
            | Record::Allocation { .. }
            | Record::Memory { .. }
            | Record::ContextSwitch { .. } => {}
        }
        Ok(None)
    }
}

impl<R: Read> CaptureCursor<R> {
    /// `allow_truncated`: a capture cut inside a record ends there (as in Memray's
    /// reader) instead of being an error.
    pub fn new(reader: Reader<R>, allow_truncated: bool) -> Self {
        let h = reader.header();
        let stacks = StackTable::new(h.python_version, h.main_tid, h.skipped_frames_on_main_tid);
        let estimates = Estimates::new(h.sampling_interval);
        CaptureCursor {
            reader,
            stacks,
            thread_names: BTreeMap::new(),
            native: NativeStacks::new(),
            generation: 0,
            estimates,
            allow_truncated,
        }
    }

    pub fn header(&self) -> &Header {
        self.reader.header()
    }

    pub fn reached_trailer(&self) -> bool {
        self.reader.reached_trailer()
    }

    pub fn is_aggregated(&self) -> bool {
        self.header().file_format == FileFormat::AggregatedAllocations
    }

    fn split(&mut self) -> (&mut Reader<R>, Tables<'_>) {
        let CaptureCursor { reader, stacks, thread_names, native, generation, estimates, .. } = self;
        (reader, Tables { stacks, thread_names, native, generation, estimates: *estimates })
    }

    /// The next allocation, memory sample or aggregated row; `None` at the end.
    pub fn next_event(&mut self) -> Result<Option<Event>, ReportError> {
        let allow_truncated = self.allow_truncated;
        let (reader, mut tables) = self.split();
        loop {
            let record = match reader.next_record() {
                Ok(Some(r)) => r,
                Ok(None) => return Ok(None),
                Err(e) if e.is_truncation() && allow_truncated => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            if let Some(event) = tables.fold(record)? {
                return Ok(Some(event));
            }
        }
    }

    /// Hands each remaining event to `f` until the data ends or `f` returns `false`.
    /// Much faster than a `next_event` loop on large captures: with `f` inlined, records
    /// go from the read buffer to `f` without passing through memory.
    #[inline]
    pub fn for_each_event(&mut self, mut f: impl FnMut(Event) -> Result<bool, ReportError>) -> Result<(), ReportError> {
        let allow_truncated = self.allow_truncated;
        let (reader, mut tables) = self.split();
        reader.for_each_record(
            allow_truncated,
            #[inline(always)]
            |record| match tables.fold(record)? {
                Some(event) => f(event),
                None => Ok(true),
            },
        )
    }

    /// Gives up the reader's state: stacks and thread names as of the last record read.
    pub fn into_tables(self) -> (Header, StackTable, BTreeMap<u64, String>) {
        (self.reader.header().clone(), self.stacks, self.thread_names)
    }

    /// `records` with what resolves their stacks (Python and native).
    pub fn into_record_set(self, records: Vec<AllocationRecord>) -> RecordSet {
        RecordSet {
            header: self.reader.header().clone(),
            stacks: self.stacks,
            thread_names: self.thread_names,
            native: self.native,
            records,
        }
    }

    /// `AllocationRecord.native_stack_trace()` / `hybrid_stack_trace()` of a record read
    /// so far (see [`RecordSet`]).
    pub fn native_stack_trace(&self, record: &AllocationRecord, max_stacks: Option<usize>) -> Vec<Location> {
        native_stack_trace(&self.native, record, max_stacks)
    }

    pub fn hybrid_stack_trace(&self, record: &AllocationRecord, max_stacks: Option<usize>) -> Vec<Location> {
        hybrid_stack_trace(&self.stacks, &self.native, self.header().native_traces, record, max_stacks)
    }
}

/// What `FileReader`'s constructor computes in its first pass.
#[derive(Clone, Debug)]
pub struct Scan {
    pub header: Header,
    /// Index among allocation records (deallocations included) of the record after
    /// which the heap was at its peak.
    pub peak_index: u64,
    pub peak_memory: u64,
    /// Allocation records (or aggregated rows) read: Memray's `total_allocations`.
    pub n_records: u64,
    /// RSS and heap samples, strided down to at most `max_memory_records`.
    pub snapshots: Vec<MemorySnapshot>,
    /// `snapshots` is every `snapshot_stride`-th sample from the first (0: every one).
    pub snapshot_stride: usize,
    pub reached_trailer: bool,
}

/// Memray's `HighWatermarkFinder`: the heap after each record and where it peaked.
#[derive(Default)]
pub struct PeakFinder {
    live: AddressMap<u64>,
    mappings: RangeSet<()>,
    current: u64,
    peak: u64,
    peak_index: u64,
    seen: u64,
}

impl PeakFinder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn process(&mut self, record: &AllocationRecord) {
        let index = self.seen;
        self.seen += 1;
        let a = record.allocator;
        match (a.is_ranged(), a.is_deallocator()) {
            (false, false) => {
                // A block at a live address is replaced without being subtracted.
                self.current = self.current.wrapping_add(record.size);
                self.live.insert(record.address, record.size);
            }
            (false, true) => {
                if let Some(size) = self.live.remove(record.address) {
                    self.current = self.current.wrapping_sub(size);
                }
            }
            (true, false) => {
                self.mappings.add(record.address, record.size, ());
                self.current = self.current.wrapping_add(record.size);
            }
            (true, true) => {
                for released in self.mappings.remove(record.address, record.size) {
                    self.current = self.current.wrapping_sub(released.bytes);
                }
            }
        }
        if self.current >= self.peak {
            self.peak = self.current;
            self.peak_index = index;
        }
    }

    pub fn current(&self) -> u64 {
        self.current
    }

    pub fn peak(&self) -> (u64, u64) {
        (self.peak_index, self.peak)
    }
}

/// `FileReader`'s first pass over a capture.
pub fn scan(path: impl AsRef<Path>, max_memory_records: usize, allow_truncated: bool) -> Result<Scan, ReportError> {
    let mut cursor = CaptureCursor::open(path, allow_truncated)?;
    let mut finder = PeakFinder::new();
    let mut snapshots = Vec::new();
    let mut n_records = 0u64;
    cursor.for_each_event(
        #[inline(always)]
        |event| {
            match event {
                Event::Allocation(r) => {
                    finder.process(&r);
                    n_records += 1;
                }
                Event::Aggregated(row) => {
                    // The finder sees each row's contribution to the peak as one allocation
                    // at address 0, so Memray's peak of such a file is the sum of them.
                    finder.process(&contribution(&row, false));
                    n_records += 1;
                }
                Event::Memory { ms_since_epoch, rss } => snapshots.push(MemorySnapshot { ms_since_epoch, rss, heap: finder.current() }),
                Event::Snapshot(s) => snapshots.push(s),
                Event::Object(_) => {}
            }
            Ok(true)
        },
    )?;
    let max = max_memory_records.max(1);
    let mut snapshot_stride = 0;
    if snapshots.len() > max {
        snapshot_stride = snapshots.len().div_ceil(max);
        snapshots = snapshots.into_iter().step_by(snapshot_stride).collect();
    }
    let (peak_index, peak_memory) = finder.peak();
    let reached_trailer = cursor.reached_trailer();
    Ok(Scan { header: cursor.header().clone(), peak_index, peak_memory, n_records, snapshots, snapshot_stride, reached_trailer })
}

/// An aggregated row's contribution to the peak or to the leaks, as an allocation.
pub fn contribution(row: &AggregatedAllocation, leaks: bool) -> AllocationRecord {
    let (size, n) = if leaks {
        (row.bytes_leaked, row.n_allocations_leaked)
    } else {
        (row.bytes_in_high_water_mark, row.n_allocations_in_high_water_mark)
    };
    AllocationRecord {
        tid: row.tid,
        address: 0,
        size,
        allocator: row.allocator,
        stack: row.frame_index as StackId,
        n_allocations: n,
        native_frame_id: row.native_frame_id,
        native_segment_generation: row.native_segment_generation,
    }
}

/// Memray's `reduced_snapshot_map_t`: records merged per location. The first record
/// added for a location keeps its tid, address and allocator; the records come out in
/// the order of each location's earliest allocation (`seq`: the allocation's index in
/// the capture, or an aggregated row's index), as Memray 1.20 yields them.
#[derive(Default)]
pub struct LocationMap {
    index: FastMap<(u64, u64, u64), usize>,
    entries: Vec<(AllocationRecord, u64)>,
    /// Memray's count for merged aggregated rows: one per further row.
    one_per_row: bool,
}

impl LocationMap {
    /// For allocation records: counts are summed.
    pub fn new() -> Self {
        Self::default()
    }

    /// For an aggregated capture's rows: as Memray, a location counts the first row's
    /// count plus one per further row, unless the capture is sampled (Memray cannot
    /// read those, and their counts are estimates worth adding up).
    pub fn for_aggregated_rows(sampled: bool) -> Self {
        LocationMap { one_per_row: !sampled, ..Self::default() }
    }

    pub fn add(&mut self, record: &AllocationRecord, seq: u64, merge_threads: bool) {
        let key = (record.stack as u64, record.native_frame_id, if merge_threads { 0 } else { record.tid });
        match self.index.get(&key) {
            Some(&i) => {
                let (r, first) = &mut self.entries[i];
                r.size = r.size.wrapping_add(record.size);
                // A full capture's records count 1 each, so both agree with Memray there.
                r.n_allocations += if self.one_per_row { 1 } else { record.n_allocations };
                *first = (*first).min(seq);
            }
            None => {
                self.index.insert(key, self.entries.len());
                self.entries.push((*record, seq));
            }
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The records in Memray's order.
    pub fn into_records(mut self) -> Vec<AllocationRecord> {
        self.entries.sort_by_key(|&(_, seq)| seq);
        self.entries.into_iter().map(|(r, _)| r).collect()
    }
}

/// Memray's `SnapshotAllocationAggregator`: the live allocations after the records fed.
#[derive(Default)]
pub struct SnapshotAggregator {
    /// Live blocks by address, with their allocation's index. Which block of a
    /// location speaks for it depends on this map's (libstdc++) iteration order.
    live: StdHashMap<u64, (AllocationRecord, u64)>,
    /// Live `mmap` pieces in Memray's interval-list order.
    intervals: Vec<(u64, u64, AllocationRecord, u64)>,
    /// Records added so far (the next record's index in the capture).
    seq: u64,
}

impl SnapshotAggregator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feed the capture's allocation records in order.
    pub fn add(&mut self, record: &AllocationRecord) {
        let seq = self.seq;
        self.seq += 1;
        let a = record.allocator;
        match (a.is_ranged(), a.is_deallocator()) {
            (false, false) => self.live.insert(record.address, (*record, seq)),
            (false, true) => {
                self.live.remove(&record.address);
            }
            (true, false) => {
                if record.size > 0 {
                    self.intervals.push((record.address, record.address.saturating_add(record.size), *record, seq));
                }
            }
            (true, true) => self.unmap(record.address, record.size),
        }
    }

    /// `IntervalTree::removeInterval`: pieces keep their place; a split leaves two.
    fn unmap(&mut self, address: u64, size: u64) {
        if size == 0 {
            return;
        }
        let (begin, end) = (address, address.saturating_add(size));
        if !self.intervals.iter().any(|&(b, e, _, _)| b.max(begin) < e.min(end)) {
            return;
        }
        let mut kept = Vec::with_capacity(self.intervals.len() + 1);
        for &(b, e, r, seq) in &self.intervals {
            let (lo, hi) = (b.max(begin), e.min(end));
            if hi <= lo {
                kept.push((b, e, r, seq));
            } else if lo == b && hi == e {
            } else if lo == b {
                kept.push((hi, e, r, seq));
            } else if hi == e {
                kept.push((b, lo, r, seq));
            } else {
                kept.push((b, lo, r, seq));
                kept.push((hi, e, r, seq));
            }
        }
        self.intervals = kept;
    }

    /// The live allocations merged per location, in Memray's order.
    pub fn records(&self, merge_threads: bool) -> Vec<AllocationRecord> {
        let mut out = LocationMap::new();
        for (_, (r, seq)) in self.live.iter() {
            out.add(r, *seq, merge_threads);
        }
        for &(b, e, r, seq) in &self.intervals {
            out.add(&AllocationRecord { size: e - b, ..r }, seq, merge_threads);
        }
        out.into_records()
    }
}

/// Which live allocations to report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotKind {
    /// Live at the high-water mark.
    HighWaterMark,
    /// Live at the end of the capture.
    Leaks,
}

/// Records of a query, with what is needed to resolve their stacks.
pub struct RecordSet {
    pub header: Header,
    pub stacks: StackTable,
    pub thread_names: BTreeMap<u64, String>,
    pub native: NativeStacks,
    /// In the order Memray's `FileReader` yields them.
    pub records: Vec<AllocationRecord>,
}

/// Reads up to `limit` allocation records (all if `None`) into `aggregate`, with
/// each record's index.
pub(crate) fn replay<R: Read>(
    cursor: &mut CaptureCursor<R>,
    limit: Option<u64>,
    mut aggregate: impl FnMut(&AllocationRecord, u64),
) -> Result<(), ReportError> {
    let limit = limit.unwrap_or(u64::MAX);
    let mut seq = 0;
    if limit == 0 {
        return Ok(());
    }
    cursor.for_each_event(
        #[inline(always)]
        |event| {
            if let Event::Allocation(r) = event {
                aggregate(&r, seq);
                seq += 1;
            }
            Ok(seq < limit)
        },
    )
}

/// High-water-mark or leaked records of a capture, as `FileReader`'s
/// `get_high_watermark_allocation_records` / `get_leaked_allocation_records` yield them.
/// `peak_index`: the high-water mark's record index if known (from [`scan`]); otherwise
/// a first pass finds it.
pub fn snapshot_records(
    path: impl AsRef<Path>,
    kind: SnapshotKind,
    merge_threads: bool,
    peak_index: Option<u64>,
    allow_truncated: bool,
) -> Result<RecordSet, ReportError> {
    let path = path.as_ref();
    let mut cursor = CaptureCursor::open(path, allow_truncated)?;
    let records = if cursor.is_aggregated() {
        // AggregatedCaptureReaggregator: each row's contribution, when it has any.
        let mut map = LocationMap::for_aggregated_rows(cursor.header().sampling_interval != 0);
        let mut seq = 0;
        while let Some(event) = cursor.next_event()? {
            if let Event::Aggregated(row) = event {
                let r = contribution(&row, kind == SnapshotKind::Leaks);
                if r.n_allocations != 0 {
                    map.add(&r, seq, merge_threads);
                }
                seq += 1;
            }
        }
        map.into_records()
    } else {
        let limit = match kind {
            SnapshotKind::Leaks => None,
            SnapshotKind::HighWaterMark => Some(match peak_index {
                Some(i) => i + 1,
                None => scan(path, 1, allow_truncated)?.peak_index + 1,
            }),
        };
        let mut aggregator = SnapshotAggregator::new();
        replay(&mut cursor, limit, |r, _| aggregator.add(r))?;
        aggregator.records(merge_threads)
    };
    Ok(cursor.into_record_set(records))
}

impl RecordSet {
    /// The thread's name, or "" (as Memray's reader answers for unnamed threads).
    pub fn thread_name(&self, tid: u64) -> &str {
        self.thread_names.get(&tid).map(String::as_str).unwrap_or("")
    }

    /// `AllocationRecord.stack_trace(max_stacks)`: innermost first. Without
    /// `max_stacks`, the frames Memray hides on the thread that started tracking are
    /// dropped; with it, nothing is dropped (as in Memray).
    pub fn stack_trace(&self, record: &AllocationRecord, max_stacks: Option<usize>) -> Vec<Location> {
        stack_trace(&self.stacks, record, max_stacks)
    }

    /// `AllocationRecord.native_stack_trace(max_stacks)`: innermost first, inlined
    /// frames included; `max_stacks` counts instruction pointers, as in Memray.
    pub fn native_stack_trace(&self, record: &AllocationRecord, max_stacks: Option<usize>) -> Vec<Location> {
        native_stack_trace(&self.native, record, max_stacks)
    }

    /// `AllocationRecord.hybrid_stack_trace(max_stacks)` (see [`hybrid::merge`]).
    /// Without native frames Memray pairs none and returns the whole Python stack.
    pub fn hybrid_stack_trace(&self, record: &AllocationRecord, max_stacks: Option<usize>) -> Vec<Location> {
        hybrid_stack_trace(&self.stacks, &self.native, self.header.native_traces, record, max_stacks)
    }

    /// Symbolizes, in one batch, the native stacks of all records (reports call this
    /// before walking their stacks; each distinct address is symbolized once).
    pub fn prepare_native(&self) {
        if self.header.native_traces {
            self.native.prepare(self.records.iter().map(|r| (r.native_frame_id, r.native_segment_generation)));
        }
    }

    /// The stack reporters use: hybrid with native traces, else Python.
    pub fn report_stack(&self, record: &AllocationRecord) -> Vec<Location> {
        if self.header.native_traces {
            self.hybrid_stack_trace(record, None)
        } else {
            self.stack_trace(record, None)
        }
    }
}

/// See [`RecordSet::native_stack_trace`].
pub fn native_stack_trace(native: &NativeStacks, record: &AllocationRecord, max_stacks: Option<usize>) -> Vec<Location> {
    native.stack(record.native_frame_id, record.native_segment_generation, max_stacks)
}

/// See [`RecordSet::hybrid_stack_trace`].
pub fn hybrid_stack_trace(
    stacks: &StackTable,
    native: &NativeStacks,
    native_traces: bool,
    record: &AllocationRecord,
    max_stacks: Option<usize>,
) -> Vec<Location> {
    let python: Vec<(Location, bool)> =
        stacks.frames(record.stack).map(|f| (stacks.resolve(f), stacks.frame(f).is_some_and(|k| k.is_entry))).collect();
    let mut out = if native_traces {
        let native = native.stack(record.native_frame_id, record.native_segment_generation, None);
        let skip = if record.tid == stacks.main_tid() { stacks.skipped_frames_on_main_tid() as usize } else { 0 };
        hybrid::merge(&python, &native, skip)
    } else {
        python.into_iter().map(|(l, _)| l).collect()
    };
    if let Some(n) = max_stacks {
        out.truncate(n);
    }
    out
}

/// See [`RecordSet::stack_trace`].
pub fn stack_trace(stacks: &StackTable, record: &AllocationRecord, max_stacks: Option<usize>) -> Vec<Location> {
    let frames = match max_stacks {
        Some(n) => stacks.frames(record.stack).take(n).collect(),
        None => stacks.visible_frames(record.stack, record.tid),
    };
    frames.into_iter().map(|f| stacks.resolve(f)).collect()
}

/// Memray's `format_thread_name`: `0x1 (name)`, `0x1`, or `merged thread`.
pub fn format_thread_name(tid: i64, name: &str) -> String {
    if tid == -1 {
        return "merged thread".into();
    }
    let hex = if tid < 0 { format!("-0x{:x}", tid.unsigned_abs()) } else { format!("0x{tid:x}") };
    if name.is_empty() {
        hex
    } else {
        format!("{hex} ({name})")
    }
}

/// The records live at the end of an in-memory capture, merged per location (tests of
/// the renderers).
#[cfg(test)]
pub(crate) fn leaked_record_set(capture: &[u8]) -> RecordSet {
    let mut cursor = CaptureCursor::new(Reader::new(capture).unwrap(), false);
    let mut aggregator = SnapshotAggregator::new();
    replay(&mut cursor, None, |r, _| aggregator.add(r)).unwrap();
    let records = aggregator.records(true);
    cursor.into_record_set(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::estimates::test_capture;
    use memray_capture::sampling::{estimated_count, weight};

    #[test]
    fn sampled_records_carry_their_estimated_counts() {
        let t = 64 * 1024;
        let bytes = test_capture(t);
        let mut cursor = CaptureCursor::new(Reader::new(&bytes[..]).unwrap(), false);
        let mut counts = Vec::new();
        while let Some(event) = cursor.next_event().unwrap() {
            if let Event::Allocation(r) = event {
                counts.push((r.address, r.n_allocations));
            }
        }
        let c = |size, address| estimated_count(weight(size, t), t, address, false);
        assert_eq!(
            counts,
            vec![
                (0x10, c(100, 0x10)),
                (0x20, c(1000, 0x20)),
                (0x30, c(100, 0x30)),
                (0x30, 1),
                (0x10_0000, 1),
                (0x40, c(5000, 0x40)),
                (0x10, c(300, 0x10))
            ]
        );
        // Live at the end, merged per stack: the counts of the live blocks, summed.
        let set = leaked_record_set(&bytes);
        let by_function: Vec<(String, u64)> =
            set.records.iter().map(|r| (set.stack_trace(r, None)[0].function.to_string(), r.n_allocations)).collect();
        let main = c(5000, 0x40) + c(300, 0x10);
        let build = c(1000, 0x20) + 1;
        assert_eq!(by_function, vec![("build".to_string(), build), ("main".to_string(), main)]);
    }

    #[test]
    fn aggregated_rows_merge_as_memray_unless_sampled() {
        let row = |stack, n| AllocationRecord { n_allocations: n, ..alloc(0, 10, Allocator::Malloc, stack) };
        for (sampled, expected) in [(false, 5 + 1), (true, 5 + 7)] {
            let mut m = LocationMap::for_aggregated_rows(sampled);
            m.add(&row(1, 5), 0, true);
            m.add(&row(1, 7), 1, true);
            assert_eq!(m.into_records()[0].n_allocations, expected);
        }
    }

    fn alloc(address: u64, size: u64, allocator: Allocator, stack: StackId) -> AllocationRecord {
        AllocationRecord { tid: 1, address, size, allocator, stack, n_allocations: 1, native_frame_id: 0, native_segment_generation: 0 }
    }

    #[test]
    fn snapshot_merges_by_location_keeping_the_first_record() {
        let mut s = SnapshotAggregator::new();
        let seq = [
            alloc(0x1000, 0x3000, Allocator::Mmap, 5),
            alloc(0x10, 100, Allocator::Malloc, 3),
            alloc(0x20, 50, Allocator::Realloc, 3),
            alloc(0x30, 7, Allocator::Malloc, 4),
            alloc(0x30, 0, Allocator::Free, 0),
            alloc(0x2000, 0x1000, Allocator::Munmap, 0),
        ];
        seq.iter().for_each(|r| s.add(r));
        let recs = s.records(true);
        assert_eq!(recs.iter().map(|r| r.stack).collect::<Vec<_>>(), vec![5, 3], "earliest allocation first");
        let by_stack = |st| recs.iter().find(|r| r.stack == st).copied().unwrap();
        // Iteration of the address map: 0x20 then 0x10 (newest node first in its list).
        assert_eq!((by_stack(3).size, by_stack(3).n_allocations, by_stack(3).address), (150, 2, 0x20));
        assert_eq!(by_stack(3).allocator, Allocator::Realloc);
        assert_eq!((by_stack(5).size, by_stack(5).n_allocations), (0x2000, 2), "a split mapping counts twice");
    }

    #[test]
    fn peak_finder_like_memray() {
        let mut f = PeakFinder::new();
        f.process(&alloc(0x10, 100, Allocator::Malloc, 1));
        f.process(&alloc(0x10, 0, Allocator::Free, 0));
        f.process(&alloc(0x20, 60, Allocator::Malloc, 1));
        f.process(&alloc(0x30, 40, Allocator::Malloc, 1));
        assert_eq!(f.peak(), (3, 100), "ties move the peak later");
        f.process(&alloc(0x99, 0, Allocator::Free, 0));
        assert_eq!(f.peak(), (4, 100), "a free of an unknown address at the peak is the peak");
    }

    #[test]
    fn thread_names() {
        assert_eq!(format_thread_name(1, ""), "0x1");
        assert_eq!(format_thread_name(26, "worker"), "0x1a (worker)");
        assert_eq!(format_thread_name(-1, "x"), "merged thread");
    }
}
