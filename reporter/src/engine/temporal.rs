//! Memory over time, and what was live at the high-water mark (or leaked) within any
//! time range, for the HTML reports.
//!
//! The capture's MEMORY_RECORDs (RSS samples, about every 10 ms) cut it into *units*.
//! [`TimelineAnalyzer`] runs the one-pass analysis ([`crate::Analyzer`]'s two halves) and,
//! beside it:
//! * samples RSS and heap at the end of each unit, and the heap's maximum inside it;
//! * with a [`TemporalMode`], records per allocation site the *intervals* of units in
//!   which its blocks were live, so the page can recompute the flame graph for any range
//!   of units without the capture:
//!   - `HighWaterMark`: each unit has one *point*, the state after its last record that
//!     reached the unit's maximum (or its start, if no record did). A block allocated at
//!     or before point `a`'s state and freed after point `f - 1` is live exactly at points
//!     `a..f`. The page picks the unit with the highest maximum in the range and sums the
//!     intervals containing it.
//!   - `Leaks`: `a` is the unit of the allocation, `f` the unit of its free; a block is
//!     leaked in units `n..=e` when `n <= a <= e < f`.
//!
//! Memory stays bounded by the number of units: when they reach `max_records`, pairs of
//! units are merged (exactly: each merged unit keeps the point with the higher maximum)
//! and later units span twice as many memory records. Intervals are aggregated per
//! (site, a, f); a block freed inside the unit it was allocated in never spans a point
//! and is not kept.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use memray_capture::{Allocator, Header, Reader, Record};

use crate::engine::analysis::{Analysis, AnalyzeOptions, HeapEvent, HeapLedger, HeapSide, Scanner, Usage};
use crate::engine::estimates::Estimates;
use crate::engine::pipeline;
use crate::error::ReportError;
use crate::model::stacks::StackId;
use memray_capture::fasthash::FastMap;
use memray_capture::ranges::{Cut, RangeSet};

/// Which per-range figure the intervals answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TemporalMode {
    HighWaterMark,
    Leaks,
}

#[derive(Clone, Copy, Debug)]
pub struct TimelineOptions {
    /// Most units (and chart samples) kept; at least 2 are always kept.
    pub max_records: usize,
    pub temporal: Option<TemporalMode>,
    /// Key sites as Memray's `FileReader` does: allocator, native stack and memory-map
    /// generation too (the flame graph needs only thread and Python stack).
    pub full_sites: bool,
}

impl Default for TimelineOptions {
    fn default() -> Self {
        TimelineOptions { max_records: 10_000, temporal: None, full_sites: false }
    }
}

/// One chart point: the end of a unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    pub ms_since_epoch: u64,
    pub rss: u64,
    pub heap: u64,
}

/// RSS and heap over time.
#[derive(Clone, Debug, Default)]
pub struct Timeline {
    /// One per unit but the last (which runs to the end of the capture).
    pub samples: Vec<Sample>,
    /// The heap's maximum in each unit, the last one included (`samples.len() + 1`
    /// entries for full captures; empty for aggregated ones).
    pub unit_peaks: Vec<u64>,
    /// Memory records per unit.
    pub stride: u64,
}

/// Where allocations come from, as the flame graph groups them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Site {
    pub tid: u64,
    pub stack: StackId,
    /// With [`TimelineOptions::full_sites`] only (else 0).
    pub allocator: u8,
    pub native_frame_id: u64,
    pub native_segment_generation: u64,
}

/// Blocks of one site live at points (or allocated in units) `from..to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interval {
    pub site: u32,
    pub from: u32,
    /// [`Interval::NEVER`]: still live at the end.
    pub to: u32,
    /// Wrapping: a split mapping makes an interval's count negative.
    pub count: u64,
    pub bytes: u64,
}

impl Interval {
    pub const NEVER: u32 = u32::MAX;
}

#[derive(Clone, Debug)]
pub struct TemporalData {
    pub mode: TemporalMode,
    pub sites: Vec<Site>,
    pub intervals: Vec<Interval>,
}

/// Everything [`analyze_over_time`] yields.
pub struct TimelineAnalysis {
    pub analysis: Analysis,
    pub timeline: Timeline,
    pub temporal: Option<TemporalData>,
}

/// Opens and analyses a capture, with its timeline.
pub fn analyze_over_time(
    path: impl AsRef<Path>,
    options: TimelineOptions,
    analyze_options: AnalyzeOptions,
) -> Result<TimelineAnalysis, ReportError> {
    let reader = Reader::open(path)?;
    analyze_reader_over_time(reader, options, analyze_options)
}

pub fn analyze_reader_over_time<R: Read>(
    mut reader: Reader<R>,
    options: TimelineOptions,
    analyze_options: AnalyzeOptions,
) -> Result<TimelineAnalysis, ReportError> {
    let t = TimelineAnalyzer::new(reader.header().clone(), options);
    t.run(&mut reader, analyze_options.allow_truncated, |_, _| {})
}

/// Units closed so far, with their end samples and maxima.
struct Units {
    cap: usize,
    stride: u64,
    records_in_unit: u64,
    samples: Vec<Sample>,
    peaks: Vec<u64>,
    current_peak: u64,
}

impl Units {
    fn new(max_records: usize) -> Self {
        // Even, so that closed units always merge in whole pairs.
        let cap = (max_records.max(2)) & !1;
        Units { cap, stride: 1, records_in_unit: 0, samples: Vec::new(), peaks: Vec::new(), current_peak: 0 }
    }
}

/// The one-pass analysis plus the timeline and, optionally, the temporal intervals.
pub struct TimelineAnalyzer {
    header: Header,
    scanner: Scanner,
    back: TimelineHeap,
    aggregated: bool,
    snapshots_seen: u64,
    full_sites: bool,
}

/// The heap side of a [`TimelineAnalyzer`]: the analysis's ledger, the units, and the
/// intervals' tracker (fed from [`TimelineAnalyzer::feed`], which needs both sides).
struct TimelineHeap {
    ledger: HeapLedger,
    units: Units,
    tracker: Option<Tracker>,
}

impl HeapSide for TimelineHeap {
    #[inline(always)]
    fn apply(&mut self, event: HeapEvent) {
        self.ledger.apply(event);
        match event {
            HeapEvent::Allocation { .. } => {
                self.units.current_peak = self.units.current_peak.max(self.ledger.heap());
            }
            HeapEvent::Memory { rss, ms_since_epoch } => self.memory_record(Sample { ms_since_epoch, rss, heap: self.ledger.heap() }),
        }
    }

    #[inline(always)]
    fn prefetch(&self, event: &HeapEvent) {
        self.ledger.prefetch(event)
    }
}

impl TimelineHeap {
    fn memory_record(&mut self, sample: Sample) {
        let u = &mut self.units;
        u.records_in_unit += 1;
        if u.records_in_unit < u.stride {
            return;
        }
        u.records_in_unit = 0;
        u.samples.push(sample);
        u.peaks.push(u.current_peak);
        // The next unit's maximum starts from the state at its boundary.
        u.current_peak = sample.heap;
        if let Some(t) = &mut self.tracker {
            t.close_unit(sample.heap);
        }
        if u.peaks.len() >= u.cap {
            let choices: Vec<bool> = u.peaks.chunks(2).map(|p| p.len() == 2 && p[1] >= p[0]).collect();
            halve(&mut u.samples, |pair| pair[1]);
            halve(&mut u.peaks, |pair| pair[0].max(pair[1]));
            u.stride *= 2;
            if let Some(t) = &mut self.tracker {
                t.merge_pairs(&choices);
            }
        }
    }
}

impl TimelineAnalyzer {
    pub fn new(header: Header, options: TimelineOptions) -> Self {
        let aggregated = header.file_format == memray_capture::FileFormat::AggregatedAllocations;
        let scanner = Scanner::new(header.clone());
        let estimates = scanner.estimates();
        let tracker = if aggregated { None } else { options.temporal.map(|mode| Tracker::new(mode, estimates)) };
        TimelineAnalyzer {
            header,
            scanner,
            back: TimelineHeap { ledger: HeapLedger::new(estimates), units: Units::new(options.max_records), tracker },
            aggregated,
            snapshots_seen: 0,
            full_sites: options.full_sites,
        }
    }

    /// The stacks read so far (a thread's current stack is its next allocation's).
    pub fn stacks(&self) -> &crate::model::stacks::StackTable {
        self.scanner.stacks()
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The heap after the records fed so far.
    pub fn heap(&self) -> u64 {
        self.back.ledger.heap()
    }

    // Inlined into the read loop, as `Scanner::feed` is.
    #[inline(always)]
    pub fn feed(&mut self, record: Record) -> Result<(), ReportError> {
        match record {
            Record::Allocation { tid, address, size, allocator, native_frame_id } => {
                self.scanner.feed(record, &mut self.back)?;
                if let Some(t) = &mut self.back.tracker {
                    let stack = self.scanner.stacks().current(tid);
                    let site = if self.full_sites {
                        Site {
                            tid,
                            stack,
                            allocator: allocator as u8,
                            native_frame_id,
                            native_segment_generation: self.scanner.generation(),
                        }
                    } else {
                        Site { tid, stack, allocator: 0, native_frame_id: 0, native_segment_generation: 0 }
                    };
                    t.allocation(address, size, allocator, site, self.back.ledger.heap());
                }
            }
            Record::MemorySnapshot(s) => {
                self.snapshots_seen += 1;
                self.scanner.feed(record, &mut self.back)?;
                // Aggregated captures: the samples are the file's; only strided here.
                let units = &mut self.back.units;
                units.samples.push(Sample { ms_since_epoch: s.ms_since_epoch, rss: s.rss, heap: s.heap });
                if units.samples.len() >= units.cap {
                    halve(&mut units.samples, |pair| pair[1]);
                }
            }
            other => self.scanner.feed(other, &mut self.back)?,
        }
        Ok(())
    }

    /// Feeds every remaining record of `reader`, handing each to `observe` first (with
    /// the stacks as they stand before it), and finishes. Without temporal intervals,
    /// the heap's side runs on a second thread (see [`crate::engine::pipeline`]).
    pub fn run<R: Read>(
        mut self,
        reader: &mut Reader<R>,
        allow_truncated: bool,
        mut observe: impl FnMut(&Record, &crate::model::stacks::StackTable),
    ) -> Result<TimelineAnalysis, ReportError> {
        if self.aggregated || self.back.tracker.is_some() {
            reader.for_each_record(
                allow_truncated,
                #[inline(always)]
                |record| {
                    observe(&record, self.scanner.stacks());
                    self.feed(record).map(|()| true)
                },
            )?;
            return Ok(self.finish(reader.reached_trailer()));
        }
        let TimelineAnalyzer { header, mut scanner, back, aggregated, snapshots_seen, full_sites } = self;
        let back = pipeline::run(
            reader,
            allow_truncated,
            back,
            #[inline(always)]
            |record, batcher| {
                observe(&record, scanner.stacks());
                scanner.feed(record, batcher)
            },
        )?;
        let t = TimelineAnalyzer { header, scanner, back, aggregated, snapshots_seen, full_sites };
        Ok(t.finish(reader.reached_trailer()))
    }

    pub fn finish(mut self, reached_trailer: bool) -> TimelineAnalysis {
        let units = &mut self.back.units;
        let mut timeline = Timeline { samples: std::mem::take(&mut units.samples), unit_peaks: Vec::new(), stride: units.stride };
        if !self.aggregated {
            let mut peaks = std::mem::take(&mut units.peaks);
            peaks.push(units.current_peak);
            timeline.unit_peaks = peaks;
        }
        let temporal = self.back.tracker.take().map(|t| t.finish());
        TimelineAnalysis { analysis: self.scanner.finish(self.back.ledger, reached_trailer), timeline, temporal }
    }
}

/// Replaces each pair of `v` by `f(pair)`; an odd last element stays as it is.
fn halve<T: Copy>(v: &mut Vec<T>, f: impl Fn(&[T]) -> T) {
    let merged: Vec<T> = v.chunks(2).map(|c| if c.len() == 2 { f(c) } else { c[0] }).collect();
    *v = merged;
}

#[derive(Clone, Copy)]
struct Block {
    size: u64,
    site: u32,
    /// HighWaterMark: the token of the allocating record; Leaks: its unit.
    mark: u64,
}

/// Interval bookkeeping (see the module documentation).
///
/// HighWaterMark tokens: with `g` the number of records so far that reached their
/// unit's running maximum (each unit's start counts as one), a record that reaches it
/// gets token `2g`, any other record `2g + 1`. Tokens never decrease, a unit's point is
/// the token `2g` of its last maximum, and a record happened at or before point `P` iff
/// its token is `<= P`. So a block's `a` (or `f`) is the first unit whose point token is
/// `>=` its allocation (or free) token. Only tokens after the open unit's latest maximum
/// are undecided; frees there wait in `pending` until the next maximum (they precede the
/// point: `f` is the open unit) or the unit's end (`f` is the next unit).
struct Tracker {
    mode: TemporalMode,
    /// What a block counts for (a sampled record stands for several allocations).
    estimates: Estimates,
    site_ids: FastMap<Site, u32>,
    sites: Vec<Site>,
    live: FastMap<u64, Block>,
    /// Owner: (site, mark, mapping id).
    mappings: RangeSet<(u32, u64, u64)>,
    mappings_made: u64,
    /// Leaks: pieces left of each mapping (Memray counts a mapping once, see `unmap`).
    pieces: FastMap<u64, u32>,
    intervals: FastMap<(u32, u32, u32), Usage>,
    // HighWaterMark state.
    g: u64,
    unit_peak: u64,
    point_tokens: Vec<u64>,
    pending: FastMap<(u32, u32), Usage>,
    // Leaks: the open unit.
    unit: u32,
}

impl Tracker {
    fn new(mode: TemporalMode, estimates: Estimates) -> Self {
        Tracker {
            mode,
            estimates,
            site_ids: FastMap::default(),
            sites: Vec::new(),
            live: FastMap::default(),
            mappings: RangeSet::new(),
            mappings_made: 0,
            pieces: FastMap::default(),
            intervals: FastMap::default(),
            g: 1,
            unit_peak: 0,
            point_tokens: Vec::new(),
            pending: FastMap::default(),
            unit: 0,
        }
    }

    fn site(&mut self, site: Site) -> u32 {
        if let Some(&id) = self.site_ids.get(&site) {
            return id;
        }
        let id = self.sites.len() as u32;
        self.sites.push(site);
        self.site_ids.insert(site, id);
        id
    }

    fn open_unit(&self) -> u32 {
        match self.mode {
            TemporalMode::HighWaterMark => self.point_tokens.len() as u32,
            TemporalMode::Leaks => self.unit,
        }
    }

    /// The unit whose point first follows `token`; `None`: after the open unit's latest
    /// maximum (undecided).
    fn point(&self, token: u64) -> Option<u32> {
        let i = self.point_tokens.partition_point(|&p| p < token);
        // Past the closed units' points: the open unit's, if it is not after its maximum.
        (i < self.point_tokens.len() || token <= 2 * self.g).then_some(i as u32)
    }

    fn add(&mut self, key: (u32, u32, u32), count: u64, bytes: u64) {
        let u = self.intervals.entry(key).or_default();
        u.count = u.count.wrapping_add(count);
        u.bytes = u.bytes.wrapping_add(bytes);
    }

    fn flush_pending(&mut self, to: u32) {
        if self.pending.is_empty() {
            return;
        }
        for ((site, from), u) in std::mem::take(&mut self.pending) {
            if from < to {
                self.add((site, from, to), u.count, u.bytes);
            }
        }
    }

    /// A block (or part of a mapping) allocated at `mark` leaves at the current record,
    /// whose token is `token` (HighWaterMark).
    fn release(&mut self, site: u32, mark: u64, count: u64, bytes: u64, token: u64) {
        match self.mode {
            TemporalMode::Leaks => {
                if mark as u32 != self.unit {
                    self.add((site, mark as u32, self.unit), count, bytes);
                }
            }
            TemporalMode::HighWaterMark => {
                let Some(from) = self.point(mark) else { return }; // freed before any point
                match self.point(token) {
                    Some(to) => {
                        if from < to {
                            self.add((site, from, to), count, bytes);
                        }
                    }
                    None => {
                        let u = self.pending.entry((site, from)).or_default();
                        u.count = u.count.wrapping_add(count);
                        u.bytes = u.bytes.wrapping_add(bytes);
                    }
                }
            }
        }
    }

    /// One ALLOCATION record; `heap` is the heap after it.
    fn allocation(&mut self, address: u64, size: u64, allocator: Allocator, site: Site, heap: u64) {
        let mark = match self.mode {
            TemporalMode::Leaks => self.unit as u64,
            TemporalMode::HighWaterMark => {
                if heap >= self.unit_peak {
                    self.unit_peak = heap;
                    self.g += 1;
                    // Frees waiting since the previous maximum precede this one.
                    let open = self.open_unit();
                    self.flush_pending(open);
                    2 * self.g
                } else {
                    2 * self.g + 1
                }
            }
        };
        let site = if allocator.is_deallocator() { u32::MAX } else { self.site(site) };
        match (allocator.is_ranged(), allocator.is_deallocator()) {
            (false, false) => {
                if let Some(old) = self.live.insert(address, Block { size, site, mark }) {
                    // A block replaced without a free: Memray's lifetimes forget it.
                    if self.mode == TemporalMode::HighWaterMark {
                        let count = self.estimates.count(old.size, address, Allocator::Malloc);
                        self.release(old.site, old.mark, count, old.size, mark);
                    }
                }
            }
            (false, true) => {
                if let Some(old) = self.live.remove(&address) {
                    let count = self.estimates.count(old.size, address, Allocator::Malloc);
                    self.release(old.site, old.mark, count, old.size, mark);
                }
            }
            (true, false) => {
                if size != 0 {
                    self.mappings_made += 1;
                    self.mappings.add(address, size, (site, mark, self.mappings_made));
                    if self.mode == TemporalMode::Leaks {
                        self.pieces.insert(self.mappings_made, 1);
                    }
                }
            }
            (true, true) => self.unmap(address, size, mark),
        }
    }

    fn unmap(&mut self, address: u64, size: u64, mark: u64) {
        let released = self.mappings.remove(address, size);
        if self.mode == TemporalMode::HighWaterMark {
            // Counts at each point: a split leaves two pieces that each count 1.
            for r in released {
                let count = match r.cut {
                    Cut::Freed => 1,
                    Cut::Shrunk => 0,
                    Cut::Split => 1u64.wrapping_neg(),
                };
                self.release(r.owner.0, r.owner.1, count, r.bytes, mark);
            }
            return;
        }
        // Leaks, as Memray's lifetimes count: one allocation when the last piece of a
        // mapping goes, unless the same munmap released other pieces of it too.
        let mut hits: FastMap<u64, u32> = FastMap::default();
        for r in &released {
            *hits.entry(r.owner.2).or_default() += 1;
            if let Some(p) = self.pieces.get_mut(&r.owner.2) {
                match r.cut {
                    Cut::Freed => *p -= 1,
                    Cut::Shrunk => {}
                    Cut::Split => *p += 1,
                }
            }
        }
        for r in released {
            let id = r.owner.2;
            let gone = self.pieces.get(&id) == Some(&0);
            self.release(r.owner.0, r.owner.1, u64::from(gone && hits[&id] == 1), r.bytes, mark);
        }
        for id in hits.keys() {
            if self.pieces.get(id) == Some(&0) {
                self.pieces.remove(id);
            }
        }
    }

    /// The open unit ends (at a memory record); the next one starts with `heap`.
    fn close_unit(&mut self, heap: u64) {
        match self.mode {
            TemporalMode::Leaks => self.unit += 1,
            TemporalMode::HighWaterMark => {
                self.point_tokens.push(2 * self.g);
                // Frees after the closed unit's point: not live at the next one's.
                let next = self.open_unit();
                self.flush_pending(next);
                // The boundary state is the new unit's first candidate point.
                self.g += 1;
                self.unit_peak = heap;
            }
        }
    }

    /// Merges closed units `2j, 2j+1` into `j`; `later_is_point[j]`: the merged unit's
    /// point is `2j+1`'s (higher or equal maximum). Called right after a unit closed,
    /// with an even number of closed units and nothing pending.
    fn merge_pairs(&mut self, later_is_point: &[bool]) {
        let remap: Box<dyn Fn(u32) -> u32> = match self.mode {
            TemporalMode::Leaks => Box::new(|x: u32| if x == Interval::NEVER { x } else { x / 2 }),
            TemporalMode::HighWaterMark => {
                let choice = later_is_point.to_vec();
                // First merged unit whose point is at or after old point x.
                Box::new(move |x: u32| {
                    if x == Interval::NEVER {
                        return x;
                    }
                    let j = x / 2;
                    match choice.get(j as usize) {
                        Some(&later) if x % 2 == 1 && !later => j + 1,
                        _ => j,
                    }
                })
            }
        };
        let old = std::mem::take(&mut self.intervals);
        for ((site, from, to), u) in old {
            let (from, to) = (remap(from), remap(to));
            if from < to {
                self.add((site, from, to), u.count, u.bytes);
            }
        }
        match self.mode {
            TemporalMode::Leaks => {
                self.unit /= 2;
                for b in self.live.values_mut() {
                    b.mark /= 2;
                }
                let pieces: Vec<(u64, u64, (u32, u64, u64))> = self.mappings.iter().collect();
                let mut mappings = RangeSet::new();
                for (begin, end, (site, unit, id)) in pieces {
                    mappings.add(begin, end - begin, (site, unit / 2, id));
                }
                self.mappings = mappings;
            }
            TemporalMode::HighWaterMark => {
                // Tokens are global: only the points change.
                let tokens: Vec<u64> = self
                    .point_tokens
                    .chunks(2)
                    .zip(later_is_point)
                    .map(|(p, &later)| if later && p.len() == 2 { p[1] } else { p[0] })
                    .collect();
                self.point_tokens = tokens;
            }
        }
    }

    fn finish(mut self) -> TemporalData {
        // The last unit ends with the capture.
        if self.mode == TemporalMode::HighWaterMark {
            self.point_tokens.push(2 * self.g);
            let end = self.point_tokens.len() as u32;
            self.flush_pending(end);
        }
        let estimates = self.estimates;
        let live: Vec<(u64, Block)> = self.live.iter().map(|(&address, &b)| (address, b)).collect();
        let pieces: Vec<(u64, u64, (u32, u64, u64))> = self.mappings.iter().collect();
        // Leaks: a mapping split in pieces is still one allocation.
        let mut counted = std::collections::HashSet::new();
        let leaks = self.mode == TemporalMode::Leaks;
        let blocks = live.into_iter().map(|(a, b)| (b.site, b.mark, estimates.count(b.size, a, Allocator::Malloc), b.size)).chain(
            pieces.into_iter().map(|(begin, end, (site, mark, id))| (site, mark, u64::from(!leaks || counted.insert(id)), end - begin)),
        );
        let after_last_point = self.point_tokens.len() as u32;
        let mut rest: Vec<(u32, u32, u64, u64)> = Vec::new();
        for (site, mark, count, size) in blocks {
            let from = match self.mode {
                TemporalMode::Leaks => mark as u32,
                // Allocated after the last point: live at no point, but leaked.
                TemporalMode::HighWaterMark => self.point(mark).unwrap_or(after_last_point),
            };
            rest.push((site, from, count, size));
        }
        for (site, from, count, size) in rest {
            self.add((site, from, Interval::NEVER), count, size);
        }
        // Deterministic output order.
        let ordered: BTreeMap<(u32, u32, u32), Usage> = self.intervals.into_iter().filter(|(_, u)| *u != Usage::default()).collect();
        let intervals =
            ordered.into_iter().map(|((site, from, to), u)| Interval { site, from, to, count: u.count, bytes: u.bytes }).collect();
        TemporalData { mode: self.mode, sites: self.sites, intervals }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use memray_capture::{CodeObject, FileFormat};

    fn header() -> Header {
        Header { file_format: FileFormat::AllAllocations, python_version: 0x030c01f0, main_tid: 1, ..Header::default() }
    }

    fn alloc(address: u64, size: u64) -> Record {
        Record::Allocation { tid: 1, address, size, allocator: Allocator::Malloc, native_frame_id: 0 }
    }
    fn free(address: u64) -> Record {
        Record::Allocation { tid: 1, address, size: 0, allocator: Allocator::Free, native_frame_id: 0 }
    }
    fn mem(ms: u64) -> Record {
        Record::Memory { rss: 1000 + ms, ms_since_epoch: ms }
    }
    fn push(code: u64) -> Record {
        Record::FramePush { tid: 1, code_object_id: code, instruction_offset: 0, is_entry: true }
    }
    fn pop() -> Record {
        Record::FramePop { tid: 1, count: 1 }
    }

    /// Sum of intervals live at point `t` (HWM) per site.
    fn live_at(d: &TemporalData, t: u32) -> BTreeMap<u32, u64> {
        let mut m = BTreeMap::new();
        for i in &d.intervals {
            if i.from <= t && t < i.to {
                *m.entry(i.site).or_insert(0u64) += i.bytes;
            }
        }
        m.retain(|_, v| *v != 0);
        m
    }

    fn run(records: Vec<Record>, max: usize, mode: TemporalMode) -> TimelineAnalysis {
        let mut t = TimelineAnalyzer::new(header(), TimelineOptions { max_records: max, temporal: Some(mode), full_sites: false });
        for code in 1..=3 {
            t.feed(Record::CodeObject(CodeObject {
                id: code,
                function: format!("f{code}"),
                filename: "a.py".into(),
                firstlineno: 1,
                linetable: vec![],
            }))
            .unwrap();
        }
        for r in records {
            t.feed(r).unwrap();
        }
        t.finish(true)
    }

    /// A pseudo-random workload: allocations and frees across three stacks and many
    /// memory records.
    fn workload(n: usize, seed: u64) -> Vec<Record> {
        let mut x = seed;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut v = vec![push(1)];
        let mut live: Vec<u64> = Vec::new();
        let mut maps: Vec<(u64, u64)> = Vec::new();
        let mut addr = 0x1000;
        for i in 0..n {
            let r = next() % 12;
            if r == 10 {
                // A mapping, later cut in its middle, at its start or whole.
                addr += 0x10_000;
                v.push(Record::Allocation { tid: 1, address: addr, size: 0x4000, allocator: Allocator::Mmap, native_frame_id: 0 });
                let (off, len) = [(0x1000, 0x1000), (0, 0x800), (0, 0x4000)][(next() % 3) as usize];
                maps.push((addr + off, len));
            } else if r == 11 && !maps.is_empty() {
                let (a, len) = maps.swap_remove((next() as usize) % maps.len());
                v.push(Record::Allocation { tid: 1, address: a, size: len, allocator: Allocator::Munmap, native_frame_id: 0 });
            } else if r < 5 || live.is_empty() {
                v.push(push(1 + next() % 3));
                addr += 16;
                v.push(alloc(addr, 1 + next() % 1000));
                live.push(addr);
                v.push(pop());
            } else if r < 9 {
                let k = (next() as usize) % live.len();
                v.push(free(live.swap_remove(k)));
            } else if r == 9 {
                v.push(mem(i as u64));
            }
        }
        v
    }

    #[test]
    fn full_range_peak_matches_the_analysis() {
        for (seed, max) in [(1u64, 10_000usize), (2, 8), (3, 2), (4, 5), (5, 64)] {
            let t = run(workload(4000, seed), max, TemporalMode::HighWaterMark);
            let d = t.temporal.as_ref().unwrap();
            let peaks = &t.timeline.unit_peaks;
            assert_eq!(peaks.len(), t.timeline.samples.len() + 1);
            assert!(peaks.len() <= max.max(2), "{} units for max {max}", peaks.len());
            let best = (0..peaks.len()).rev().max_by_key(|&i| peaks[i]).unwrap();
            assert_eq!(peaks[best], t.analysis.peak_memory);
            // Same live bytes per stack at the last unit reaching the peak as the analysis.
            let mut expected: BTreeMap<StackId, u64> = BTreeMap::new();
            for l in &t.analysis.locations {
                *expected.entry(l.key.stack).or_default() += l.at_peak.bytes;
            }
            expected.retain(|_, v| *v != 0);
            let got: BTreeMap<StackId, u64> = live_at(d, best as u32).into_iter().map(|(s, b)| (d.sites[s as usize].stack, b)).collect();
            assert_eq!(got, expected, "seed {seed} max {max}");
            // Each unit's point holds exactly its maximum (no replaced blocks here).
            for (u, &p) in peaks.iter().enumerate() {
                assert_eq!(live_at(d, u as u32).values().sum::<u64>(), p, "unit {u} seed {seed} max {max}");
            }
        }
    }

    #[test]
    fn leaks_over_the_full_range_match_the_analysis() {
        for (seed, max) in [(7u64, 10_000usize), (8, 4), (9, 7)] {
            let t = run(workload(3000, seed), max, TemporalMode::Leaks);
            let d = t.temporal.as_ref().unwrap();
            let last = t.timeline.unit_peaks.len() as u32 - 1;
            let mut got = 0u64;
            for i in &d.intervals {
                if i.to > last {
                    got += i.bytes;
                }
            }
            assert_eq!(got, t.analysis.final_heap);
        }
    }

    #[test]
    fn peak_inside_a_range() {
        // Unit 0: 100 live then freed; unit 1: 50 live; unit 2 (tail): nothing.
        let recs = vec![push(1), alloc(0x10, 100), free(0x10), mem(1), push(2), alloc(0x20, 50), mem(2), free(0x20)];
        let t = run(recs, 100, TemporalMode::HighWaterMark);
        let d = t.temporal.unwrap();
        assert_eq!(t.timeline.unit_peaks, vec![100, 50, 50]);
        assert_eq!(live_at(&d, 0).values().sum::<u64>(), 100);
        assert_eq!(live_at(&d, 1).values().sum::<u64>(), 50);
        // The tail's point is its start (50 live); the free comes after it.
        assert_eq!(live_at(&d, 2).values().sum::<u64>(), 50);
        assert_eq!(t.timeline.samples.len(), 2);
        assert_eq!(t.timeline.samples[0].heap, 0);
        assert_eq!(t.timeline.samples[1].heap, 50);
    }

    #[test]
    fn sampled_blocks_count_their_estimates_over_time() {
        let bytes = crate::engine::estimates::test_capture(64 * 1024);
        for mode in [TemporalMode::HighWaterMark, TemporalMode::Leaks] {
            let options = TimelineOptions { temporal: Some(mode), ..TimelineOptions::default() };
            let t = analyze_reader_over_time(Reader::new(&bytes[..]).unwrap(), options, AnalyzeOptions::default()).unwrap();
            let d = t.temporal.as_ref().unwrap();
            // The capture's heap only grows: its peak is its end, in the last unit.
            let last = t.timeline.unit_peaks.len() as u32 - 1;
            let live = |u: u32| d.intervals.iter().filter(|i| i.from <= u && u < i.to).fold(0u64, |n, i| n.wrapping_add(i.count));
            let leaked: u64 = t.analysis.locations.iter().map(|l| l.leaked.count).sum();
            assert!(leaked > 100);
            assert_eq!(live(last), leaked, "{mode:?}");
        }
    }

    #[test]
    fn samples_are_strided() {
        let mut recs = vec![push(1)];
        for i in 0..1000u64 {
            recs.push(alloc(0x100 + i * 8, 1));
            recs.push(mem(i));
        }
        let t = run(recs, 10, TemporalMode::Leaks);
        assert!(t.timeline.samples.len() < 10);
        assert!(t.timeline.stride >= 100);
        let d = t.temporal.unwrap();
        assert_eq!(d.intervals.iter().map(|i| i.bytes).sum::<u64>(), 1000);
    }
}
