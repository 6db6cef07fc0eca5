//! The live view's model: a capture stream folded record by record into the memory that
//! is live now, per (stack, thread), and turned on demand into a [`Snapshot`] of
//! allocation sites per thread and for all threads merged.
//!
//! Folding is O(1) per record (a hash map of live blocks, a range set for `mmap`); the
//! per-site tables are built only when a snapshot is taken, from the per-stack totals, so
//! their cost grows with the number of distinct live stacks, not with the record rate.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use memray_capture::Header;

use crate::engine::records::{AllocationRecord, Event};
use crate::model::stacks::{LocationId, StackId, StackTable};
use crate::render::live::history::HeapHistory;
use crate::render::live::snapshot::{Site, Snapshot, StreamStatus, ThreadSites};
use memray_capture::fasthash::FastMap;
use memray_capture::ranges::{Cut, RangeSet};

/// A live block: its size, the (stack, thread) it was allocated from, and the
/// allocations it stands for (1 unless the capture is sampled).
#[derive(Clone, Copy)]
struct Block {
    size: u64,
    origin: u32,
    count: u64,
}

/// Live memory of one (stack, thread).
#[derive(Clone, Copy)]
struct Origin {
    stack: StackId,
    tid: u64,
    bytes: u64,
    count: u64,
}

/// Everything the view shows, kept current record by record.
pub struct LiveState {
    pid: i32,
    command_line: String,
    sampling_interval: u64,
    start_ms: u64,
    blocks: FastMap<u64, Block>,
    maps: RangeSet<u32>,
    origins: Vec<Origin>,
    origin_ids: FastMap<(StackId, u64), u32>,
    heap: u64,
    peak: u64,
    rss: u64,
    last_ms: u64,
    samples: u64,
    records: u64,
    history: HeapHistory,
    /// (function, file) interned per location id, for the snapshot's grouping.
    site_of_location: Vec<u32>,
    site_names: Vec<(Rc<str>, Rc<str>)>,
    site_ids: HashMap<(Rc<str>, Rc<str>), u32>,
}

impl LiveState {
    pub fn new(header: &Header) -> Self {
        let start_ms = header.start_time_ms.max(0) as u64;
        LiveState {
            pid: header.pid,
            command_line: header.command_line.clone(),
            sampling_interval: header.sampling_interval,
            start_ms,
            blocks: FastMap::default(),
            maps: RangeSet::new(),
            origins: Vec::new(),
            origin_ids: FastMap::default(),
            heap: 0,
            peak: 0,
            rss: 0,
            last_ms: start_ms,
            samples: 0,
            records: 0,
            history: HeapHistory::new(),
            site_of_location: Vec::new(),
            site_names: Vec::new(),
            site_ids: HashMap::new(),
        }
    }

    /// Bytes live now.
    pub fn heap(&self) -> u64 {
        self.heap
    }

    pub fn peak(&self) -> u64 {
        self.peak
    }

    pub fn feed(&mut self, event: &Event) {
        match *event {
            Event::Allocation(ref r) => self.allocation(r),
            Event::Memory { ms_since_epoch, rss } => {
                self.rss = rss;
                self.samples += 1;
                self.last_ms = self.last_ms.max(ms_since_epoch);
                self.history.record(ms_since_epoch.saturating_sub(self.start_ms), self.heap);
            }
            // Aggregated captures never arrive over a socket.
            Event::Snapshot(_) | Event::Aggregated(_) | Event::Object(_) => {}
        }
    }

    fn origin(&mut self, stack: StackId, tid: u64) -> u32 {
        let next = self.origins.len() as u32;
        let id = *self.origin_ids.entry((stack, tid)).or_insert(next);
        if id == next {
            self.origins.push(Origin { stack, tid, bytes: 0, count: 0 });
        }
        id
    }

    fn gain(&mut self, origin: u32, bytes: u64, count: u64) {
        let o = &mut self.origins[origin as usize];
        o.bytes = o.bytes.wrapping_add(bytes);
        o.count += count;
        self.heap = self.heap.wrapping_add(bytes);
        self.peak = self.peak.max(self.heap);
    }

    fn lose(&mut self, origin: u32, bytes: u64, count: u64) {
        let o = &mut self.origins[origin as usize];
        o.bytes = o.bytes.saturating_sub(bytes);
        o.count = o.count.saturating_sub(count);
        self.heap = self.heap.saturating_sub(bytes);
    }

    fn allocation(&mut self, r: &AllocationRecord) {
        self.records += 1;
        let a = r.allocator;
        match (a.is_ranged(), a.is_deallocator()) {
            (false, false) => {
                let origin = self.origin(r.stack, r.tid);
                if let Some(old) = self.blocks.insert(r.address, Block { size: r.size, origin, count: r.n_allocations }) {
                    // A block we never saw freed (e.g. realloc in place): replace it.
                    self.lose(old.origin, old.size, old.count);
                }
                self.gain(origin, r.size, r.n_allocations);
            }
            (false, true) => {
                if let Some(old) = self.blocks.remove(&r.address) {
                    self.lose(old.origin, old.size, old.count);
                }
            }
            (true, false) => {
                if r.size > 0 {
                    let origin = self.origin(r.stack, r.tid);
                    self.maps.add(r.address, r.size, origin);
                    self.gain(origin, r.size, 1);
                }
            }
            (true, true) => {
                for piece in self.maps.remove(r.address, r.size) {
                    // A mapping split in two counts as two live pieces, as in Memray.
                    match piece.cut {
                        Cut::Freed => self.lose(piece.owner, piece.bytes, 1),
                        Cut::Shrunk => self.lose(piece.owner, piece.bytes, 0),
                        Cut::Split => {
                            self.lose(piece.owner, piece.bytes, 0);
                            self.origins[piece.owner as usize].count += 1;
                        }
                    }
                }
            }
        }
    }

    fn site_of(&mut self, stacks: &StackTable, location: LocationId) -> u32 {
        let i = location as usize;
        if i >= self.site_of_location.len() {
            self.site_of_location.resize(i + 1, u32::MAX);
        }
        if self.site_of_location[i] == u32::MAX {
            let loc = stacks.location(location);
            let key = (loc.function.clone(), loc.filename.clone());
            let next = self.site_names.len() as u32;
            let id = *self.site_ids.entry(key.clone()).or_insert(next);
            if id == next {
                self.site_names.push(key);
            }
            self.site_of_location[i] = id;
        }
        self.site_of_location[i]
    }

    /// The sites of the memory live now: every distinct (function, file) of a live
    /// block's stack gets its size in "total", the innermost one in "own" too (Memray's
    /// live view and `memray summary` count the same way). Blocks without a Python stack
    /// go to `???`.
    pub fn snapshot(&mut self, stacks: &mut StackTable, thread_names: &BTreeMap<u64, String>, status: StreamStatus) -> Snapshot {
        const UNKNOWN: u32 = u32::MAX;
        let mut per_thread: BTreeMap<u64, FastMap<u32, Site>> = BTreeMap::new();
        let mut merged: FastMap<u32, Site> = FastMap::default();
        let mut seen: Vec<u32> = Vec::new();
        for i in 0..self.origins.len() {
            let o = self.origins[i];
            let table = per_thread.entry(o.tid).or_default();
            if o.count == 0 && o.bytes == 0 {
                continue;
            }
            seen.clear();
            for frame in stacks.visible_frames(o.stack, o.tid) {
                let location = stacks.location_of_frame(frame);
                let site = self.site_of(stacks, location);
                if !seen.contains(&site) {
                    seen.push(site);
                }
            }
            if seen.is_empty() {
                seen.push(UNKNOWN);
            }
            for (depth, &site) in seen.iter().enumerate() {
                for acc in [table.entry(site).or_default(), merged.entry(site).or_default()] {
                    acc.total += o.bytes;
                    acc.count += o.count;
                    if depth == 0 {
                        acc.own += o.bytes;
                    }
                }
            }
        }
        let names = |site: u32| -> (String, String) {
            match self.site_names.get(site as usize) {
                Some((f, file)) => (f.to_string(), file.to_string()),
                None => ("???".to_string(), "???".to_string()),
            }
        };
        let finish = |table: FastMap<u32, Site>| -> Vec<Site> {
            let mut rows: Vec<Site> = table
                .into_iter()
                .filter(|(_, s)| s.total > 0 || s.count > 0)
                .map(|(id, s)| {
                    let (function, file) = names(id);
                    Site { function, file, ..s }
                })
                .collect();
            rows.sort_by(|a, b| b.total.cmp(&a.total).then_with(|| a.function.cmp(&b.function)));
            rows
        };
        let threads = per_thread
            .into_iter()
            .map(|(tid, table)| ThreadSites { tid, name: thread_names.get(&tid).cloned().unwrap_or_default(), sites: finish(table) })
            .collect();
        Snapshot {
            pid: self.pid,
            command_line: self.command_line.clone(),
            sampling_interval: self.sampling_interval,
            heap: self.heap,
            peak: self.peak,
            rss: self.rss,
            duration_ms: self.last_ms.saturating_sub(self.start_ms),
            samples: self.samples,
            records: self.records,
            history: self.history.points().to_vec(),
            history_step_ms: self.history.step_ms(),
            merged: finish(merged),
            threads,
            status,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use memray_capture::{Allocator, Reader, StreamEncoder};

    use crate::engine::records::CaptureCursor;

    /// A small live stream: two threads, three functions, frees, an mmap split by munmap.
    fn stream() -> Vec<u8> {
        let header = Header {
            python_version: 0x030c0000,
            command_line: "python app.py".into(),
            pid: 4242,
            main_tid: 1,
            start_time_ms: 1_000,
            ..Header::default()
        };
        let mut out = Vec::new();
        header.encode(&mut out);
        let mut e = StreamEncoder::new();
        let s = &mut out;
        e.code_object(s, 1, b"main", b"app.py", 1, b"");
        e.code_object(s, 2, b"build", b"app.py", 10, b"");
        e.code_object(s, 3, b"worker", b"work.py", 1, b"");
        e.context_switch(s, 1);
        e.thread_record(s, b"MainThread");
        e.frame_push(s, 1, 0, true);
        e.allocation(s, 0x1000, 100, Allocator::Malloc, 0, false); // main: own 100
        e.frame_push(s, 2, 0, true);
        e.allocation(s, 0x2000, 300, Allocator::Malloc, 0, false); // build: own 300
        e.allocation(s, 0x3000, 50, Allocator::Malloc, 0, false);
        e.allocation(s, 0x3000, 0, Allocator::Free, 0, false); // freed again
        e.allocation(s, 0x10_0000, 0x3000, Allocator::Mmap, 0, false);
        e.context_switch(s, 2);
        e.thread_record(s, b"worker-1");
        e.frame_push(s, 3, 0, true);
        e.allocation(s, 0x4000, 1000, Allocator::Calloc, 0, false);
        e.allocation(s, 0x10_1000, 0x1000, Allocator::Munmap, 0, false); // splits main's mapping
        e.memory_record(s, 5 << 20, 250);
        out
    }

    fn fold(bytes: &[u8]) -> (LiveState, CaptureCursor<&[u8]>) {
        let reader = Reader::new(bytes).unwrap();
        let mut cursor = CaptureCursor::new(reader, true);
        let mut state = LiveState::new(cursor.header());
        while let Some(ev) = cursor.next_event().unwrap() {
            state.feed(&ev);
        }
        (state, cursor)
    }

    fn site<'a>(rows: &'a [Site], function: &str) -> &'a Site {
        rows.iter().find(|s| s.function == function).unwrap_or_else(|| panic!("no row for {function}"))
    }

    #[test]
    fn live_memory_per_site_and_thread() {
        let bytes = stream();
        let (mut state, mut cursor) = fold(&bytes);
        assert_eq!(state.heap(), 100 + 300 + 0x2000 + 1000);
        assert_eq!(state.peak(), 100 + 300 + 0x3000 + 1000);
        let names = cursor.thread_names.clone();
        let snap = state.snapshot(&mut cursor.stacks, &names, StreamStatus::Live);
        assert_eq!((snap.pid, snap.command_line.as_str()), (4242, "python app.py"));
        assert_eq!((snap.rss, snap.duration_ms, snap.samples), (5 << 20, 250, 1));

        let build = site(&snap.merged, "build");
        assert_eq!((build.own, build.total, build.count), (300 + 0x2000, 300 + 0x2000, 3), "mmap split in two pieces");
        let main = site(&snap.merged, "main");
        assert_eq!((main.own, main.total, main.count), (100, 100 + 300 + 0x2000, 4));
        assert_eq!(site(&snap.merged, "worker").own, 1000);
        assert_eq!(snap.merged[0].function, "main", "sorted by total memory");

        assert_eq!(snap.threads.len(), 2);
        assert_eq!((snap.threads[0].tid, snap.threads[0].name.as_str()), (1, "MainThread"));
        assert_eq!((snap.threads[1].tid, snap.threads[1].name.as_str()), (2, "worker-1"));
        assert!(snap.threads[0].sites.iter().all(|s| s.function != "worker"));
        assert_eq!(snap.threads[1].sites.len(), 1);
        assert_eq!(snap.threads[1].sites[0].file, "work.py");
    }

    #[test]
    fn sampled_blocks_count_their_estimates_until_freed() {
        use memray_capture::sampling::{estimated_count, weight};
        let t = 64 * 1024;
        let bytes = crate::engine::estimates::test_capture(t);
        let (mut state, mut cursor) = fold(&bytes);
        let names = cursor.thread_names.clone();
        let snap = state.snapshot(&mut cursor.stacks, &names, StreamStatus::Live);
        assert_eq!(snap.sampling_interval, t);
        let c = |size, address| estimated_count(weight(size, t), t, address, false);
        // The freed block at 0x30 and the replaced one at 0x10 took back their counts.
        assert_eq!(site(&snap.merged, "build").count, c(1000, 0x20) + 1);
        assert_eq!(site(&snap.merged, "main").count, c(1000, 0x20) + 1 + c(5000, 0x40) + c(300, 0x10));
    }

    #[test]
    fn freed_sites_drop_out_and_unknown_stacks_are_question_marks() {
        let header = Header { python_version: 0x030c0000, main_tid: 1, ..Header::default() };
        let mut out = Vec::new();
        header.encode(&mut out);
        let mut e = StreamEncoder::new();
        let s = &mut out;
        e.context_switch(s, 1);
        e.allocation(s, 0x10, 64, Allocator::Malloc, 0, false);
        e.code_object(s, 1, b"gone", b"x.py", 1, b"");
        e.frame_push(s, 1, 0, true);
        e.allocation(s, 0x20, 32, Allocator::Malloc, 0, false);
        e.allocation(s, 0x20, 0, Allocator::Free, 0, false);
        let (mut state, mut cursor) = fold(&out);
        let names = cursor.thread_names.clone();
        let snap = state.snapshot(&mut cursor.stacks, &names, StreamStatus::Live);
        assert_eq!(snap.merged.len(), 1);
        assert_eq!((snap.merged[0].function.as_str(), snap.merged[0].own), ("???", 64));
    }

    #[test]
    fn skipped_bootstrap_frames_are_hidden_on_the_main_thread() {
        let header = Header { python_version: 0x030c0000, main_tid: 1, skipped_frames_on_main_tid: 1, ..Header::default() };
        let mut out = Vec::new();
        header.encode(&mut out);
        let mut e = StreamEncoder::new();
        let s = &mut out;
        e.code_object(s, 1, b"<module>", b"<string>", 1, b"");
        e.code_object(s, 2, b"user", b"u.py", 1, b"");
        e.context_switch(s, 1);
        e.frame_push(s, 1, 0, true);
        e.frame_push(s, 2, 0, true);
        e.allocation(s, 0x10, 10, Allocator::Malloc, 0, false);
        let (mut state, mut cursor) = fold(&out);
        let names = cursor.thread_names.clone();
        let snap = state.snapshot(&mut cursor.stacks, &names, StreamStatus::Live);
        let functions: Vec<&str> = snap.merged.iter().map(|s| s.function.as_str()).collect();
        assert_eq!(functions, ["user"]);
    }
}
