//! Temporary allocations: allocations freed soon after they were made.
//!
//! Memray 1.20's definition (`TemporaryAllocationsAggregator`): each thread remembers
//! its last `threshold + 1` allocations, newest first. A deallocation on that thread
//! looks for the newest remembered allocation at the same address (and, for `munmap`,
//! of the same size); if there is one, that allocation is temporary. So an allocation
//! is temporary when at most `threshold` other allocations happen on its thread before
//! it is freed: with 0, only when it is freed before the thread allocates anything
//! else. Matched allocations stay remembered (a second free of the address counts them
//! again), and frees on another thread never match. The temporary allocations are then
//! merged per location in Memray's order (see [`crate::engine::records`]).
//!
//! Memory: `threshold + 1` records per thread plus one record per location.

use std::collections::VecDeque;
use std::path::Path;

use crate::engine::records::{replay, AllocationRecord, CaptureCursor, LocationMap, RecordSet};
use crate::error::ReportError;
use memray_capture::fasthash::FastMap;

/// Finds temporary allocations in a stream of allocation records.
pub struct TemporaryAggregator {
    max_items: usize,
    merge_threads: bool,
    recent: FastMap<u64, VecDeque<(AllocationRecord, u64)>>,
    found: LocationMap,
    /// Records added so far (the next record's index in the capture).
    seq: u64,
}

impl TemporaryAggregator {
    /// `threshold`: how many other allocations may happen before the free.
    pub fn new(threshold: u64, merge_threads: bool) -> Self {
        TemporaryAggregator {
            max_items: usize::try_from(threshold).unwrap_or(usize::MAX).saturating_add(1),
            merge_threads,
            recent: FastMap::default(),
            found: LocationMap::new(),
            seq: 0,
        }
    }

    /// Feed every allocation record of the capture, in order.
    pub fn add(&mut self, record: &AllocationRecord) {
        let seq = self.seq;
        self.seq += 1;
        let a = record.allocator;
        if !a.is_deallocator() {
            let recent = self.recent.entry(record.tid).or_default();
            recent.push_front((*record, seq));
            if recent.len() > self.max_items {
                recent.pop_back();
            }
            return;
        }
        let Some(recent) = self.recent.get(&record.tid) else { return };
        let ranged = a.is_ranged();
        let hit = recent.iter().find(|(r, _)| r.address == record.address && (!ranged || r.size == record.size));
        if let Some((hit, seq)) = hit {
            // Merged as found: the first found speaks for its location, as in Memray.
            self.found.add(hit, *seq, self.merge_threads);
        }
    }

    /// The temporary allocations merged per location, in Memray's order.
    pub fn records(self) -> Vec<AllocationRecord> {
        self.found.into_records()
    }
}

/// `FileReader.get_temporary_allocation_records(merge_threads, threshold)`: the
/// temporary allocations of a capture. Aggregated captures cannot answer this.
pub fn temporary_allocations(
    path: impl AsRef<Path>,
    threshold: u64,
    merge_threads: bool,
    allow_truncated: bool,
) -> Result<RecordSet, ReportError> {
    let mut cursor = CaptureCursor::open(path, allow_truncated)?;
    if cursor.is_aggregated() {
        return Err(ReportError::AggregatedTemporary);
    }
    let mut aggregator = TemporaryAggregator::new(threshold, merge_threads);
    replay(&mut cursor, None, |r, _| aggregator.add(r))?;
    let records = aggregator.records();
    Ok(cursor.into_record_set(records))
}

#[cfg(test)]
mod tests {
    use super::*;
    use memray_capture::Allocator;

    fn rec(tid: u64, address: u64, size: u64, allocator: Allocator, stack: u32) -> AllocationRecord {
        AllocationRecord { tid, address, size, allocator, stack, n_allocations: 1, native_frame_id: 0, native_segment_generation: 0 }
    }

    fn run(threshold: u64, records: &[AllocationRecord]) -> Vec<(u32, u64, u64)> {
        let mut t = TemporaryAggregator::new(threshold, false);
        records.iter().for_each(|r| t.add(r));
        let mut out: Vec<_> = t.records().iter().map(|r| (r.stack, r.size, r.n_allocations)).collect();
        out.sort();
        out
    }

    #[test]
    fn threshold_counts_allocations_in_between() {
        let seq = [
            rec(1, 0x10, 8, Allocator::Malloc, 1),
            rec(1, 0x20, 16, Allocator::Malloc, 2),
            rec(1, 0x30, 32, Allocator::Malloc, 3),
            rec(1, 0x10, 0, Allocator::Free, 0),
        ];
        // Two allocations happened after 0x10's: temporary only with threshold >= 2.
        assert_eq!(run(1, &seq), vec![]);
        assert_eq!(run(2, &seq), vec![(1, 8, 1)]);
        let immediate = [rec(1, 0x10, 8, Allocator::Malloc, 1), rec(1, 0x10, 0, Allocator::Free, 0)];
        assert_eq!(run(0, &immediate), vec![(1, 8, 1)]);
    }

    #[test]
    fn per_thread_and_munmap_needs_same_size() {
        let seq = [
            rec(1, 0x10, 8, Allocator::Malloc, 1),
            rec(2, 0x10, 0, Allocator::Free, 0),
            rec(1, 0x1000, 4096, Allocator::Mmap, 2),
            rec(1, 0x1000, 1024, Allocator::Munmap, 0),
            rec(1, 0x1000, 4096, Allocator::Munmap, 0),
            rec(1, 0x10, 0, Allocator::Free, 0),
            rec(1, 0x10, 0, Allocator::Free, 0),
        ];
        // Free on thread 2 does not match; the partial munmap does not; the double free
        // of 0x10 counts it twice (Memray never forgets a matched allocation).
        assert_eq!(run(5, &seq), vec![(1, 16, 2), (2, 4096, 1)]);
    }
}
