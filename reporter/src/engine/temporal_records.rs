//! Memray's `FileReader.get_temporal_allocation_records()` and
//! `get_temporal_high_water_mark_allocation_records()`: per location (thread, Python
//! stack, native stack, memory-map generation, allocator), intervals of *snapshots*.
//! A snapshot is a MEMORY record (an RSS sample), one every `stride` of them when the
//! reader strides its memory records. The intervals come from [`TimelineAnalyzer`]'s
//! tracker, with one unit per snapshot:
//! * leaks: `(allocated before snapshot a, freed before snapshot f or never, count,
//!   bytes)`, blocks freed within the snapshot they were allocated in left out;
//! * high-water mark: Memray's run-length form of each location's contribution to each
//!   snapshot's high-water mark, then to what is left at the end (snapshot `n + 1`).

use std::collections::BTreeMap;
use std::path::Path;

use memray_capture::{FileFormat, Reader, Record};

use crate::engine::temporal::{Interval, Site, TemporalData, TemporalMode, TimelineAnalyzer, TimelineOptions};
use crate::error::ReportError;
use crate::model::native::NativeStacks;
use crate::model::stacks::{StackId, StackTable};

/// Memray's `HighWaterMarkLocationKey`, in its sort order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LocationKey {
    pub tid: u64,
    pub stack: StackId,
    pub native_frame_id: u64,
    pub native_segment_generation: u64,
    pub allocator: u8,
}

/// One of Memray's `Interval`s; `to` is `None` for "never".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub from: u64,
    pub to: Option<u64>,
    pub count: u64,
    pub bytes: u64,
}

pub struct TemporalRecords {
    pub native_traces: bool,
    pub stacks: StackTable,
    pub thread_names: BTreeMap<u64, String>,
    pub native: NativeStacks,
    /// In Memray's order: by key, then by interval.
    pub records: Vec<(LocationKey, Vec<Span>)>,
    /// High-water mark mode: the heap's high-water mark in each snapshot, the last one
    /// (to the end of the capture) included.
    pub high_water_mark_by_snapshot: Vec<u64>,
}

/// Reads the capture once. `stride`: snapshots are every `stride`-th memory record from
/// the first (0 or 1: every one). Threads merged: tid 0, as Memray does here.
pub fn temporal_records(
    path: impl AsRef<Path>,
    mode: TemporalMode,
    merge_threads: bool,
    stride: u64,
    allow_truncated: bool,
) -> Result<TemporalRecords, ReportError> {
    let mut reader = Reader::open(path)?;
    if reader.header().file_format == FileFormat::AggregatedAllocations {
        return Err(ReportError::AggregatedTemporal);
    }
    // No halving of units: one unit per snapshot.
    let options = TimelineOptions { max_records: usize::MAX, temporal: Some(mode), full_sites: true };
    let mut t = TimelineAnalyzer::new(reader.header().clone(), options);
    let mut native = NativeStacks::new();
    let stride = stride.max(1);
    let mut memory_records = 0u64;
    // Memray's final high-water mark: the highest heap a decrease started from in the
    // last snapshot, or the heap at its start.
    let mut last_fall_peak = 0u64;
    // Memray stops at the last allocation record: snapshots after it do not count.
    let mut pending: Vec<Record> = Vec::new();
    reader.for_each_record(allow_truncated, |record| -> Result<bool, ReportError> {
        native.observe(&record);
        match record {
            Record::Memory { .. } => {
                memory_records += 1;
                if (memory_records - 1).is_multiple_of(stride) {
                    pending.push(record);
                }
            }
            Record::Allocation { .. } => {
                for snapshot in pending.drain(..) {
                    t.feed(snapshot)?;
                    last_fall_peak = t.heap();
                }
                let before = t.heap();
                t.feed(record)?;
                if t.heap() < before {
                    last_fall_peak = last_fall_peak.max(before);
                }
            }
            other => t.feed(other)?,
        }
        Ok(true)
    })?;
    let ta = t.finish(reader.reached_trailer());
    let data = ta.temporal.expect("a temporal mode was asked for");
    let mut out = TemporalRecords {
        native_traces: ta.analysis.header.native_traces,
        stacks: ta.analysis.stacks,
        thread_names: ta.analysis.thread_names,
        native,
        records: Vec::new(),
        high_water_mark_by_snapshot: Vec::new(),
    };
    let n_snapshots = ta.timeline.unit_peaks.len().saturating_sub(1) as u64;
    let by_key = merged(&data, merge_threads);
    out.records = match mode {
        TemporalMode::Leaks => by_key
            .into_iter()
            .map(|(key, intervals)| {
                let mut spans: Vec<Span> = intervals
                    .into_iter()
                    .map(|((from, to), (count, bytes))| Span {
                        from: from as u64,
                        to: (to != Interval::NEVER).then_some(to as u64),
                        count,
                        bytes,
                    })
                    .collect();
                // Memray's order: "never" is SIZE_MAX, then by bytes.
                spans.sort_by_key(|s| (s.from, s.to.unwrap_or(u64::MAX), s.bytes));
                (key, spans)
            })
            .collect(),
        TemporalMode::HighWaterMark => {
            let mut peaks = ta.timeline.unit_peaks;
            if let Some(last) = peaks.last_mut() {
                *last = last_fall_peak;
            }
            out.high_water_mark_by_snapshot = peaks;
            by_key.into_iter().map(|(key, intervals)| (key, contributions(&intervals, n_snapshots))).collect()
        }
    };
    if out.native_traces {
        out.native.prepare(out.records.iter().map(|(k, _)| (k.native_frame_id, k.native_segment_generation)));
    }
    Ok(out)
}

type Intervals = BTreeMap<(u32, u32), (u64, u64)>;

/// Intervals per location key, threads merged or not.
fn merged(data: &TemporalData, merge_threads: bool) -> BTreeMap<LocationKey, Intervals> {
    let key = |s: &Site| LocationKey {
        tid: if merge_threads { 0 } else { s.tid },
        stack: s.stack,
        native_frame_id: s.native_frame_id,
        native_segment_generation: s.native_segment_generation,
        allocator: s.allocator,
    };
    let mut out: BTreeMap<LocationKey, Intervals> = BTreeMap::new();
    if data.mode == TemporalMode::HighWaterMark {
        // Memray keeps a history for every location that allocated.
        for s in &data.sites {
            out.entry(key(s)).or_default();
        }
    }
    for i in &data.intervals {
        let e = out.entry(key(&data.sites[i.site as usize])).or_default().entry((i.from, i.to)).or_default();
        e.0 = e.0.wrapping_add(i.count);
        e.1 = e.1.wrapping_add(i.bytes);
    }
    out
}

/// A location's contribution to the high-water mark of snapshots `0..=n`, then what it
/// leaves at the end, run-length encoded from an implicit zero as Memray does (a
/// location never at a high-water mark still gets one entry, at snapshot `n`).
fn contributions(intervals: &Intervals, n: u64) -> Vec<Span> {
    // Changes in (count, bytes) at each snapshot; live at the end: "snapshot" n + 1.
    let end = n + 1;
    let mut changes: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    let mut shift = |at: u64, count: u64, bytes: u64| {
        let c = changes.entry(at.min(end)).or_default();
        c.0 = c.0.wrapping_add(count);
        c.1 = c.1.wrapping_add(bytes);
    };
    for (&(from, to), &(count, bytes)) in intervals {
        shift(from as u64, count, bytes);
        if to != Interval::NEVER {
            shift(to as u64, count.wrapping_neg(), bytes.wrapping_neg());
        }
    }
    let mut entries: Vec<(u64, (u64, u64))> = Vec::new();
    let mut value = (0u64, 0u64);
    let mut last = (0u64, 0u64);
    for (at, (count, bytes)) in changes {
        if at == end && entries.is_empty() {
            entries.push((n, value));
            last = value;
        }
        value = (value.0.wrapping_add(count), value.1.wrapping_add(bytes));
        if value != last {
            entries.push((at, value));
            last = value;
        }
    }
    if entries.is_empty() {
        entries.push((n, value));
    }
    let mut spans = Vec::with_capacity(entries.len());
    for (i, &(from, (count, bytes))) in entries.iter().enumerate() {
        spans.push(Span { from, to: entries.get(i + 1).map(|e| e.0), count, bytes });
    }
    spans
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spans(v: &[(u64, Option<u64>, u64, u64)]) -> Vec<Span> {
        v.iter().map(|&(from, to, count, bytes)| Span { from, to, count, bytes }).collect()
    }

    #[test]
    fn contributions_are_run_length_encoded_like_memray() {
        // Live at points 2..4, then freed for good.
        let one: Intervals = [((2, 4), (1, 32))].into_iter().collect();
        assert_eq!(contributions(&one, 6), spans(&[(2, Some(4), 1, 32), (4, None, 0, 0)]));
        // Never at a high-water mark: one empty entry at the last snapshot.
        assert_eq!(contributions(&Intervals::new(), 6), spans(&[(6, None, 0, 0)]));
        // Leaked after the last point only.
        let late: Intervals = [((7, Interval::NEVER), (1, 10))].into_iter().collect();
        assert_eq!(contributions(&late, 6), spans(&[(6, Some(7), 0, 0), (7, None, 1, 10)]));
        // Live from 1 to the end; another block freed after the last point.
        let both: Intervals = [((1, Interval::NEVER), (1, 5)), ((3, 7), (2, 8))].into_iter().collect();
        assert_eq!(contributions(&both, 6), spans(&[(1, Some(3), 1, 5), (3, Some(7), 3, 13), (7, None, 1, 5)]));
    }
}
