//! Self-contained HTML reports: `memray flamegraph` and `memray table`.
//!
//! One pass over the capture ([`TimelineAnalyzer`]) gives the rows to show (live at the
//! peak, leaked, or temporary), the memory-over-time samples and, with `--temporal`, the
//! per-unit intervals. The page gets them as JSON in a `<script type="application/json">`
//! element (every `<`, `>`, `&`, U+2028 and U+2029 escaped), and its scripts, written for
//! this project and inlined from `reporter/assets/`, render every capture string with
//! `textContent`. A Content-Security-Policy forbids any network access.

mod page;
pub mod tree;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use memray_capture::{Allocator, CaptureError, FileFormat, Reader, Record};
use serde::Serialize;

use crate::engine::analysis::{LocationKey, Usage};
use crate::engine::estimates::Estimates;
use crate::engine::records::{hybrid_stack_trace, snapshot_records, AllocationRecord, SnapshotKind};
use crate::engine::temporal::{Interval, TemporalMode, TimelineAnalysis, TimelineAnalyzer, TimelineOptions};
use crate::engine::temporary::TemporaryAggregator;
use crate::error::ReportError;
use crate::model::native::NativeStacks;
use crate::model::stacks::StackId;
use crate::render::format::{python_allocator_label, sampling_notice};
use memray_capture::fasthash::FastMap;
use tree::{Strings, Tree, TreeBuilder, NODE_BUDGET};

/// Which allocations a report shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportKind {
    /// Live at the heap's high-water mark.
    Peak,
    /// Live at the end of tracking.
    Leaks,
    /// Freed with at most this many other allocations in between.
    Temporary(u64),
}

#[derive(Clone, Copy, Debug)]
pub struct HtmlOptions {
    pub kind: ReportKind,
    pub temporal: bool,
    pub split_threads: bool,
    pub inverted: bool,
    pub max_memory_records: usize,
    pub allow_truncated: bool,
}

impl Default for HtmlOptions {
    fn default() -> Self {
        HtmlOptions {
            kind: ReportKind::Peak,
            temporal: false,
            split_threads: false,
            inverted: false,
            max_memory_records: 10_000,
            allow_truncated: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HtmlError {
    #[error("{0}")]
    Report(#[from] ReportError),
    /// What the capture cannot give (one line).
    #[error("{0}")]
    Unsupported(String),
    /// One of several captures failed.
    #[error("{}: {source}", path.display())]
    InCapture { path: std::path::PathBuf, source: Box<HtmlError> },
}

impl HtmlError {
    fn in_capture(path: &Path, e: HtmlError) -> HtmlError {
        HtmlError::InCapture { path: path.to_path_buf(), source: Box::new(e) }
    }
}

impl From<CaptureError> for HtmlError {
    fn from(e: CaptureError) -> Self {
        HtmlError::Report(e.into())
    }
}

/// A rendered page.
pub struct HtmlReport {
    pub html: String,
    /// False: the capture has no trailer (the process was killed or is still running).
    pub reached_trailer: bool,
    /// One line naming object files the native frames could not be symbolized from.
    pub warning: Option<String>,
}

/// Allocations of one (thread, stack, allocator).
#[derive(Clone, Copy, Debug)]
struct Row {
    tid: u64,
    stack: StackId,
    allocator: Allocator,
    count: u64,
    bytes: u64,
    native_frame_id: u64,
    generation: u64,
}

impl From<&AllocationRecord> for Row {
    fn from(r: &AllocationRecord) -> Row {
        Row {
            tid: r.tid,
            stack: r.stack,
            allocator: r.allocator,
            count: r.n_allocations,
            bytes: r.size,
            native_frame_id: r.native_frame_id,
            generation: r.native_segment_generation,
        }
    }
}

impl Row {
    /// A location's row with the given usage.
    fn at(key: &LocationKey, u: Usage) -> Row {
        Row {
            tid: key.tid,
            stack: key.stack,
            allocator: key.allocator,
            count: u.count,
            bytes: u.bytes,
            native_frame_id: key.native_frame_id,
            generation: key.native_segment_generation,
        }
    }

    /// The record whose hybrid stack this row shows.
    fn record(&self) -> AllocationRecord {
        AllocationRecord {
            tid: self.tid,
            address: 0,
            size: self.bytes,
            allocator: self.allocator,
            stack: self.stack,
            n_allocations: self.count,
            native_frame_id: self.native_frame_id,
            native_segment_generation: self.generation,
        }
    }
}

struct Collected {
    ta: TimelineAnalysis,
    rows: Vec<Row>,
    /// Native frame tree and memory maps (captures with native traces).
    native: NativeStacks,
}

/// One pass: the analysis, the timeline, and the rows `options.kind` asks for.
fn collect(path: &Path, options: &HtmlOptions) -> Result<Collected, HtmlError> {
    let mut reader = Reader::open(path)?;
    let aggregated = reader.header().file_format == FileFormat::AggregatedAllocations;
    if aggregated {
        if options.temporal {
            return Err(HtmlError::Unsupported(
                "the aggregated capture format cannot support temporal reports (it was written with --aggregate)".into(),
            ));
        }
        if let ReportKind::Temporary(_) = options.kind {
            return Err(ReportError::AggregatedTemporary.into());
        }
    }
    let temporal = options.temporal.then_some(match options.kind {
        ReportKind::Leaks => TemporalMode::Leaks,
        _ => TemporalMode::HighWaterMark,
    });
    let t = TimelineAnalyzer::new(
        reader.header().clone(),
        TimelineOptions { max_records: options.max_memory_records, temporal, full_sites: false },
    );
    let mut temporary = match options.kind {
        ReportKind::Temporary(threshold) => Some(TemporaryAggregator::new(threshold, !options.split_threads)),
        _ => None,
    };
    let mut native = NativeStacks::new();
    let mut generation = 0u64;
    let estimates = Estimates::new(reader.header().sampling_interval);
    // One pass; the closure is inlined so common records never go through memory.
    let ta = t.run(
        &mut reader,
        options.allow_truncated,
        #[inline(always)]
        |record, stacks| {
            if native.observe(record) && matches!(record, Record::MemoryMapStart) {
                generation += 1;
            }
            if let (Some(agg), Record::Allocation { tid, address, size, allocator, native_frame_id }) = (&mut temporary, record) {
                let (stack, n_allocations) =
                    if allocator.is_deallocator() { (0, 1) } else { (stacks.current(*tid), estimates.count(*size, *address, *allocator)) };
                agg.add(&AllocationRecord {
                    tid: *tid,
                    address: *address,
                    size: *size,
                    allocator: *allocator,
                    stack,
                    n_allocations,
                    native_frame_id: *native_frame_id,
                    native_segment_generation: generation,
                });
            }
        },
    )?;
    let rows = match (options.kind, temporary) {
        (ReportKind::Temporary(_), Some(agg)) => agg.records().into_iter().map(|r| Row::from(&r)).collect(),
        (kind, _) if aggregated => {
            // Memray re-aggregates the file's rows per location (the allocator is not
            // part of it): the first row keeps its count, each further one adds 1
            // (`LocationMap::for_aggregated_rows`; sampled captures add their estimates).
            let mut seen: FastMap<(StackId, u64, u64), usize> = FastMap::default();
            let mut rows: Vec<Row> = Vec::new();
            for l in &ta.analysis.locations {
                let u = if kind == ReportKind::Leaks { l.leaked } else { l.at_peak };
                if u.count == 0 {
                    continue;
                }
                let tid = if options.split_threads { l.key.tid } else { 0 };
                match seen.get(&(l.key.stack, l.key.native_frame_id, tid)) {
                    Some(&i) => {
                        rows[i].bytes = rows[i].bytes.wrapping_add(u.bytes);
                        rows[i].count += if estimates.is_sampled() { u.count } else { 1 };
                    }
                    None => {
                        seen.insert((l.key.stack, l.key.native_frame_id, tid), rows.len());
                        rows.push(Row::at(&l.key, u));
                    }
                }
            }
            rows
        }
        (kind, _) => ta
            .analysis
            .locations
            .iter()
            .map(|l| Row::at(&l.key, if kind == ReportKind::Leaks { l.leaked } else { l.at_peak }))
            .filter(|r| r.count != 0 || r.bytes != 0)
            .collect(),
    };
    Ok(Collected { ta, rows, native })
}

/// Memray's `format_thread_name`.
fn thread_label(tid: u64, names: &BTreeMap<u64, String>, merged: bool) -> String {
    if merged {
        return "merged thread".into();
    }
    match names.get(&tid) {
        Some(name) if !name.is_empty() => format!("0x{tid:x} ({name})"),
        _ => format!("0x{tid:x}"),
    }
}

#[derive(Serialize)]
struct MemoryJson {
    start_ms: i64,
    end_ms: i64,
    /// [ms since the epoch, rss, heap]
    samples: Vec<[u64; 3]>,
    /// Per unit (the tail included); empty for aggregated captures.
    unit_peaks: Vec<u64>,
    stride: u64,
}

#[derive(Serialize)]
struct StatsJson {
    command_line: String,
    pid: i32,
    start_time_ms: i64,
    end_time_ms: i64,
    total_allocations: u64,
    total_frames: u64,
    peak_memory: u64,
    python_allocator: &'static str,
    file_format: &'static str,
    native_traces: bool,
    trace_python_allocators: bool,
    complete: bool,
    /// Several captures merged: their processes (`pid` is the first's).
    #[serde(skip_serializing_if = "Option::is_none")]
    processes: Option<Vec<i32>>,
    /// Each capture's sampling interval (0: not sampled); the page says so in its markup.
    #[serde(skip)]
    sampling_intervals: Vec<u64>,
}

/// [node, from, to (-1: never), count, bytes]
type IntervalRow = (u32, u32, i64, i64, u64);

#[derive(Serialize)]
struct TemporalJson {
    mode: &'static str,
    intervals: Vec<IntervalRow>,
    no_imports_intervals: Option<Vec<IntervalRow>>,
}

#[derive(Serialize)]
struct FlameJson {
    kind: &'static str,
    title: String,
    mode: &'static str,
    threshold: Option<u64>,
    inverted: bool,
    merge_threads: bool,
    node_budget: usize,
    pruned: bool,
    strings: Vec<String>,
    tree: Tree,
    no_imports_tree: Option<Tree>,
    threads: Vec<u32>,
    memory: MemoryJson,
    stats: StatsJson,
    temporal: Option<TemporalJson>,
}

#[derive(Serialize)]
struct TableJson {
    kind: &'static str,
    title: String,
    mode: &'static str,
    threshold: Option<u64>,
    merge_threads: bool,
    strings: Vec<String>,
    /// [thread, bytes, allocations, allocator, location]
    rows: Vec<(u32, u64, u64, u32, u32)>,
    /// Locations (string ids) that are native frames: coloured on the page.
    native_locations: Vec<u32>,
    memory: MemoryJson,
    stats: StatsJson,
}

fn mode_name(kind: ReportKind) -> (&'static str, Option<u64>) {
    match kind {
        ReportKind::Peak => ("peak", None),
        ReportKind::Leaks => ("leaks", None),
        ReportKind::Temporary(n) => ("temporary", Some(n)),
    }
}

/// Memray's report titles: "flamegraph report", "inverted flamegraph report (memory leaks)".
fn title(report: &str, options: &HtmlOptions) -> String {
    let mut parts = Vec::new();
    if options.inverted {
        parts.push("inverted");
    }
    if options.temporal {
        parts.push("temporal");
    }
    parts.push(report);
    parts.push("report");
    match options.kind {
        ReportKind::Leaks => parts.push("(memory leaks)"),
        ReportKind::Temporary(_) => parts.push("(temporary allocations)"),
        ReportKind::Peak => {}
    }
    format!("memray {}", parts.join(" "))
}

fn memory_json(ta: &TimelineAnalysis) -> MemoryJson {
    let h = &ta.analysis.header;
    let samples: Vec<[u64; 3]> = ta.timeline.samples.iter().map(|s| [s.ms_since_epoch, s.rss, s.heap]).collect();
    let last = samples.last().map(|s| s[0] as i64).unwrap_or(h.start_time_ms);
    MemoryJson {
        start_ms: h.start_time_ms,
        end_ms: h.end_time_ms.max(last).max(h.start_time_ms),
        samples,
        unit_peaks: ta.timeline.unit_peaks.clone(),
        stride: ta.timeline.stride,
    }
}

fn stats_json(ta: &TimelineAnalysis) -> StatsJson {
    let a = &ta.analysis;
    let h = &a.header;
    StatsJson {
        command_line: h.command_line.clone(),
        pid: h.pid,
        start_time_ms: h.start_time_ms,
        end_time_ms: h.end_time_ms,
        total_allocations: a.n_allocation_records,
        total_frames: a.stacks.n_frames() as u64,
        peak_memory: a.peak_memory,
        python_allocator: python_allocator_label(h.python_allocator),
        file_format: if a.is_aggregated() { "AGGREGATED_ALLOCATIONS" } else { "ALL_ALLOCATIONS" },
        native_traces: h.native_traces,
        trace_python_allocators: h.trace_python_allocators,
        complete: a.reached_trailer,
        processes: None,
        sampling_intervals: vec![h.sampling_interval],
    }
}

/// Maps intervals to pruned nodes, merging those that fall together.
fn intervals_json(intervals: &[Interval], leaf_of_site: &[u32], remap: &[u32]) -> Vec<IntervalRow> {
    let mut merged: FastMap<(u32, u32, u32), (u64, u64)> = FastMap::default();
    for i in intervals {
        let node = remap[leaf_of_site[i.site as usize] as usize];
        let e = merged.entry((node, i.from, i.to)).or_default();
        e.0 = e.0.wrapping_add(i.count);
        e.1 = e.1.wrapping_add(i.bytes);
    }
    let mut out: Vec<IntervalRow> = merged
        .into_iter()
        .filter(|(_, (c, b))| *c != 0 || *b != 0)
        .map(|((node, from, to), (c, b))| (node, from, if to == Interval::NEVER { -1 } else { to as i64 }, c as i64, b))
        .collect();
    out.sort_unstable();
    out
}

/// `memray flamegraph`.
pub fn flamegraph(path: impl AsRef<Path>, options: &HtmlOptions) -> Result<HtmlReport, HtmlError> {
    let Collected { mut ta, rows, native } = collect(path.as_ref(), options)?;
    let merged = !options.split_threads;
    let hybrid = ta.analysis.header.native_traces;
    if hybrid {
        native.prepare(rows.iter().map(|r| (r.native_frame_id, r.generation)));
    }
    let mut strings = Strings::default();
    let names = ta.analysis.thread_names.clone();
    let mut threads = BTreeSet::new();
    let mut thread_id = |tid: u64, strings: &mut Strings| {
        let label = thread_label(tid, &names, merged);
        let id = strings.intern(&label);
        threads.insert(label);
        id
    };
    let stacks = &mut ta.analysis.stacks;
    let mut main = TreeBuilder::new(&mut strings, options.inverted, false);
    let mut no_imports = options.inverted.then(|| TreeBuilder::new(&mut strings, true, true));
    let (tree, no_imports_tree, temporal) = if let Some(data) = &ta.temporal {
        // Sites weighted by the bytes of their intervals (what pruning compares).
        let mut weight = vec![(0u64, 0u64); data.sites.len()];
        for i in &data.intervals {
            let w = &mut weight[i.site as usize];
            w.0 = w.0.wrapping_add(i.count);
            w.1 = w.1.wrapping_add(i.bytes);
        }
        let mut leaves = Vec::with_capacity(data.sites.len());
        let mut leaves_ni = Vec::new();
        for (site, &(count, bytes)) in data.sites.iter().zip(&weight) {
            let th = thread_id(site.tid, &mut strings);
            leaves.push(main.add(stacks, &mut strings, site.stack, site.tid, th, count, bytes));
            if let Some(b) = &mut no_imports {
                leaves_ni.push(b.add(stacks, &mut strings, site.stack, site.tid, th, count, bytes));
            }
        }
        let (tree, remap) = main.finish(&mut strings, NODE_BUDGET);
        let intervals = intervals_json(&data.intervals, &leaves, &remap);
        let (ni_tree, ni_intervals) = match no_imports {
            Some(b) => {
                let (t, r) = b.finish(&mut strings, NODE_BUDGET);
                (Some(t), Some(intervals_json(&data.intervals, &leaves_ni, &r)))
            }
            None => (None, None),
        };
        let mode = if data.mode == TemporalMode::Leaks { "leaks" } else { "peak" };
        (tree, ni_tree, Some(TemporalJson { mode, intervals, no_imports_intervals: ni_intervals }))
    } else {
        let mut trees = Trees { main, no_imports };
        trees.add_rows(&mut strings, stacks, &native, hybrid, &rows, thread_id);
        let (tree, no_imports_tree) = trees.finish(&mut strings);
        (tree, no_imports_tree, None)
    };
    let parts = FlameParts { strings, tree, no_imports_tree, threads, temporal, memory: memory_json(&ta), stats: stats_json(&ta) };
    let html = flame_page(parts, options, title("flamegraph", options))?;
    Ok(HtmlReport { html, reached_trailer: ta.analysis.reached_trailer, warning: native.missing_warning() })
}

/// The flame graph's trees: all frames, and (inverted) without the import system.
struct Trees {
    main: TreeBuilder,
    no_imports: Option<TreeBuilder>,
}

impl Trees {
    /// Adds one capture's rows; `thread_id` gives each thread's label (a string id).
    fn add_rows(
        &mut self,
        strings: &mut Strings,
        stacks: &mut crate::model::stacks::StackTable,
        native: &NativeStacks,
        hybrid: bool,
        rows: &[Row],
        mut thread_id: impl FnMut(u64, &mut Strings) -> u32,
    ) {
        for r in rows {
            let th = thread_id(r.tid, strings);
            if hybrid {
                // Memray's flame graph of a native capture: hybrid stacks.
                let stack = hybrid_stack_trace(stacks, native, true, &r.record(), None);
                self.main.add_hybrid(strings, &stack, th, r.count, r.bytes);
                if let Some(b) = &mut self.no_imports {
                    b.add_hybrid(strings, &stack, th, r.count, r.bytes);
                }
                continue;
            }
            self.main.add(stacks, strings, r.stack, r.tid, th, r.count, r.bytes);
            if let Some(b) = &mut self.no_imports {
                b.add(stacks, strings, r.stack, r.tid, th, r.count, r.bytes);
            }
        }
    }

    fn finish(self, strings: &mut Strings) -> (Tree, Option<Tree>) {
        let (tree, _) = self.main.finish(strings, NODE_BUDGET);
        (tree, self.no_imports.map(|b| b.finish(strings, NODE_BUDGET).0))
    }
}

/// What a flame graph page shows, however many captures it was made from.
struct FlameParts {
    strings: Strings,
    tree: Tree,
    no_imports_tree: Option<Tree>,
    /// Thread labels, for the filter.
    threads: BTreeSet<String>,
    temporal: Option<TemporalJson>,
    memory: MemoryJson,
    stats: StatsJson,
}

fn flame_page(parts: FlameParts, options: &HtmlOptions, title: String) -> Result<String, HtmlError> {
    let FlameParts { mut strings, tree, no_imports_tree, threads, temporal, memory, stats } = parts;
    let notice = sampling_notice(&stats.sampling_intervals);
    let pruned = tree.flags.iter().any(|f| f & tree::OTHER != 0);
    let thread_ids: Vec<u32> = threads.iter().map(|t| strings.intern(t)).collect();
    let (mode, threshold) = mode_name(options.kind);
    let data = FlameJson {
        kind: "flamegraph",
        title: title.clone(),
        mode,
        threshold,
        inverted: options.inverted,
        merge_threads: !options.split_threads,
        node_budget: NODE_BUDGET,
        pruned,
        strings: strings.into_vec(),
        tree,
        no_imports_tree,
        threads: thread_ids,
        memory,
        stats,
        temporal,
    };
    let json = serde_json::to_string(&data).map_err(|e| HtmlError::Unsupported(format!("cannot encode the report: {e}")))?;
    Ok(page::flamegraph_page(&title, &json, notice.as_deref()))
}

/// `memray table`: the rows of Memray's table reporter. Peak and leak rows are the
/// records Memray's `FileReader` yields (one per location, labelled with the allocator
/// of the allocation that speaks for it), so a second pass replays the capture up to
/// the peak; temporary rows come from the first pass.
pub fn table(path: impl AsRef<Path>, options: &HtmlOptions) -> Result<HtmlReport, HtmlError> {
    let options = HtmlOptions { temporal: false, inverted: false, ..*options };
    let merged = !options.split_threads;
    let input = table_input(path.as_ref(), &options)?;
    let mut table = TableRows::default();
    table.add(&input.rows, &input.stacks, &input.native, input.hybrid, |tid| thread_label(tid, &input.names, merged));
    let html = table_page(table, &options, title("table", &options), input.memory, input.stats)?;
    Ok(HtmlReport { html, reached_trailer: input.reached_trailer, warning: input.native.missing_warning() })
}

/// What the table takes from one capture.
struct TableInput {
    rows: Vec<Row>,
    stacks: crate::model::stacks::StackTable,
    names: BTreeMap<u64, String>,
    native: NativeStacks,
    hybrid: bool,
    memory: MemoryJson,
    stats: StatsJson,
    reached_trailer: bool,
}

fn table_input(path: &Path, options: &HtmlOptions) -> Result<TableInput, HtmlError> {
    let Collected { ta, rows, native } = collect(path, options)?;
    let merged = !options.split_threads;
    let memory = memory_json(&ta);
    let stats = stats_json(&ta);
    let reached_trailer = ta.analysis.reached_trailer;
    let snapshot = match options.kind {
        ReportKind::Peak => Some(SnapshotKind::HighWaterMark),
        ReportKind::Leaks => Some(SnapshotKind::Leaks),
        ReportKind::Temporary(_) => None,
    };
    let hybrid = ta.analysis.header.native_traces;
    let (rows, stacks, names, native) = match snapshot {
        Some(kind) => {
            let set = snapshot_records(path, kind, merged, Some(ta.analysis.peak_record_index), options.allow_truncated)?;
            let rows = set.records.iter().map(Row::from).collect();
            (rows, set.stacks, set.thread_names, set.native)
        }
        None => (rows, ta.analysis.stacks, ta.analysis.thread_names, native),
    };
    if hybrid {
        native.prepare(rows.iter().map(|r: &Row| (r.native_frame_id, r.generation)));
    }
    Ok(TableInput { rows, stacks, names, native, hybrid, memory, stats, reached_trailer })
}

/// The table's rows, one per (thread, allocator, innermost location), over one or more
/// captures.
#[derive(Default)]
struct TableRows {
    strings: Strings,
    index: FastMap<(u32, u32, u32), usize>,
    /// [thread, bytes, allocations, allocator, location]
    out: Vec<(u32, u64, u64, u32, u32)>,
    native_locations: BTreeSet<u32>,
}

impl TableRows {
    /// Adds one capture's rows; `thread` labels a thread.
    fn add(
        &mut self,
        rows: &[Row],
        stacks: &crate::model::stacks::StackTable,
        native: &NativeStacks,
        hybrid: bool,
        mut thread: impl FnMut(u64) -> String,
    ) {
        let strings = &mut self.strings;
        for r in rows {
            let thread = strings.intern(&thread(r.tid));
            let allocator = strings.intern(r.allocator.name());
            // Memray's `stack_trace(max_stacks=1)` (`hybrid_stack_trace(max_stacks=1)`
            // with native traces): the innermost frame, hidden or not.
            let innermost = if hybrid {
                hybrid_stack_trace(stacks, native, true, &r.record(), Some(1)).pop()
            } else {
                stacks.frames(r.stack).next().map(|f| stacks.resolve(f))
            };
            let location = match innermost {
                Some(l) => {
                    let id = strings.intern(&format!("{} at {}:{}", l.function, l.filename, l.lineno));
                    if l.native {
                        self.native_locations.insert(id);
                    }
                    id
                }
                None => strings.intern("???"),
            };
            let key = (thread, allocator, location);
            match self.index.get(&key) {
                Some(&i) => {
                    let row = &mut self.out[i];
                    row.1 = row.1.wrapping_add(r.bytes);
                    row.2 = row.2.wrapping_add(r.count);
                }
                None => {
                    self.index.insert(key, self.out.len());
                    self.out.push((thread, r.bytes, r.count, allocator, location));
                }
            }
        }
    }
}

fn table_page(table: TableRows, options: &HtmlOptions, title: String, memory: MemoryJson, stats: StatsJson) -> Result<String, HtmlError> {
    let (mode, threshold) = mode_name(options.kind);
    let notice = sampling_notice(&stats.sampling_intervals);
    let data = TableJson {
        kind: "table",
        title: title.clone(),
        mode,
        threshold,
        merge_threads: !options.split_threads,
        strings: table.strings.into_vec(),
        rows: table.out,
        native_locations: table.native_locations.into_iter().collect(),
        memory,
        stats,
    };
    let json = serde_json::to_string(&data).map_err(|e| HtmlError::Unsupported(format!("cannot encode the report: {e}")))?;
    Ok(page::table_page(&title, &json, notice.as_deref()))
}

// ---- several captures (the processes of a tree) --------------------------------------

/// A thread's label in a report over several captures: split threads say their process
/// (thread ids repeat across processes).
fn thread_label_in(tid: u64, names: &BTreeMap<u64, String>, merged: bool, pid: i32) -> String {
    let label = thread_label(tid, names, merged);
    if merged {
        label
    } else {
        format!("{label} in process {pid}")
    }
}

/// "memray flamegraph report, 4 processes merged".
fn merged_title(report: &str, options: &HtmlOptions, n: usize) -> String {
    format!("{}, {n} processes merged", title(report, options))
}

fn check_several<P: AsRef<Path>>(paths: &[P], options: &HtmlOptions) -> Result<(), HtmlError> {
    if paths.len() < 2 {
        return Err(HtmlError::Unsupported("a report over several captures needs at least two".into()));
    }
    if options.temporal {
        return Err(HtmlError::Unsupported("a temporal report shows one process's timeline: give one capture, or drop --temporal".into()));
    }
    Ok(())
}

/// `memray flamegraph` over several captures: one tree whose figures are summed over the
/// processes, each taken at its own peak (or, with --leaks, at its end). Not temporal.
pub fn flamegraph_merged<P: AsRef<Path>>(paths: &[P], options: &HtmlOptions) -> Result<HtmlReport, HtmlError> {
    check_several(paths, options)?;
    let merged = !options.split_threads;
    let mut strings = Strings::default();
    let main = TreeBuilder::new(&mut strings, options.inverted, false);
    let no_imports = options.inverted.then(|| TreeBuilder::new(&mut strings, true, true));
    let mut trees = Trees { main, no_imports };
    let mut threads = BTreeSet::new();
    let mut each = Vec::with_capacity(paths.len());
    let mut warnings = Vec::new();
    for (i, path) in paths.iter().enumerate() {
        let path = path.as_ref();
        let Collected { mut ta, rows, native } = collect(path, options).map_err(|e| HtmlError::in_capture(path, e))?;
        if i > 0 {
            trees.main.next_capture();
            if let Some(b) = &mut trees.no_imports {
                b.next_capture();
            }
        }
        let hybrid = ta.analysis.header.native_traces;
        if hybrid {
            native.prepare(rows.iter().map(|r| (r.native_frame_id, r.generation)));
        }
        let names = std::mem::take(&mut ta.analysis.thread_names);
        let pid = ta.analysis.header.pid;
        trees.add_rows(&mut strings, &mut ta.analysis.stacks, &native, hybrid, &rows, |tid, strings| {
            let label = thread_label_in(tid, &names, merged, pid);
            let id = strings.intern(&label);
            threads.insert(label);
            id
        });
        warnings.extend(native.missing_warning());
        each.push((memory_json(&ta), stats_json(&ta)));
    }
    let (tree, no_imports_tree) = trees.finish(&mut strings);
    let reached_trailer = each.iter().all(|(_, s)| s.complete);
    let (memory, stats) = merge_figures(each, options.max_memory_records);
    let parts = FlameParts { strings, tree, no_imports_tree, threads, temporal: None, memory, stats };
    let html = flame_page(parts, options, merged_title("flamegraph", options, paths.len()))?;
    Ok(HtmlReport { html, reached_trailer, warning: join_warnings(warnings) })
}

/// `memray table` over several captures: rows of the same thread label, allocator and
/// location are one row, summed over the processes.
pub fn table_merged<P: AsRef<Path>>(paths: &[P], options: &HtmlOptions) -> Result<HtmlReport, HtmlError> {
    let options = HtmlOptions { inverted: false, ..*options };
    check_several(paths, &options)?;
    let merged = !options.split_threads;
    let mut table = TableRows::default();
    let mut each = Vec::with_capacity(paths.len());
    let mut warnings = Vec::new();
    for path in paths {
        let path = path.as_ref();
        let input = table_input(path, &options).map_err(|e| HtmlError::in_capture(path, e))?;
        let pid = input.stats.pid;
        table.add(&input.rows, &input.stacks, &input.native, input.hybrid, |tid| thread_label_in(tid, &input.names, merged, pid));
        warnings.extend(input.native.missing_warning());
        each.push((input.memory, input.stats));
    }
    let reached_trailer = each.iter().all(|(_, s)| s.complete);
    let (memory, stats) = merge_figures(each, options.max_memory_records);
    let html = table_page(table, &options, merged_title("table", &options, paths.len()), memory, stats)?;
    Ok(HtmlReport { html, reached_trailer, warning: join_warnings(warnings) })
}

fn join_warnings(mut warnings: Vec<String>) -> Option<String> {
    warnings.dedup();
    (!warnings.is_empty()).then(|| warnings.join("; "))
}

/// The statistics and the memory chart of several processes: figures summed (the peak is
/// the sum of each process's own peak), the chart the sum of their heaps and RSS over time.
fn merge_figures(each: Vec<(MemoryJson, StatsJson)>, max_samples: usize) -> (MemoryJson, StatsJson) {
    let (memories, stats): (Vec<MemoryJson>, Vec<StatsJson>) = each.into_iter().unzip();
    let mut commands: Vec<&str> = Vec::new();
    for s in &stats {
        if !commands.contains(&s.command_line.as_str()) {
            commands.push(&s.command_line);
        }
    }
    let merged = StatsJson {
        command_line: commands.join(" | "),
        pid: stats[0].pid,
        start_time_ms: stats.iter().map(|s| s.start_time_ms).min().unwrap_or(0),
        // 0 (unknown) if any capture has no end.
        end_time_ms: if stats.iter().any(|s| s.end_time_ms <= 0) { 0 } else { stats.iter().map(|s| s.end_time_ms).max().unwrap_or(0) },
        total_allocations: stats.iter().map(|s| s.total_allocations).sum(),
        total_frames: stats.iter().map(|s| s.total_frames).sum(),
        peak_memory: stats.iter().map(|s| s.peak_memory).sum(),
        python_allocator: if stats.iter().all(|s| s.python_allocator == stats[0].python_allocator) {
            stats[0].python_allocator
        } else {
            "mixed"
        },
        file_format: if stats.iter().all(|s| s.file_format == stats[0].file_format) { stats[0].file_format } else { "mixed" },
        native_traces: stats.iter().any(|s| s.native_traces),
        trace_python_allocators: stats.iter().all(|s| s.trace_python_allocators),
        complete: stats.iter().all(|s| s.complete),
        processes: Some(stats.iter().map(|s| s.pid).collect()),
        sampling_intervals: stats.iter().flat_map(|s| s.sampling_intervals.iter().copied()).collect(),
    };
    (sum_memory(&memories, max_samples), merged)
}

/// The processes' samples on one time axis: at each instant one of them sampled, the sum
/// of each process's latest sample (0 before its first and after its capture ended).
fn sum_memory(memories: &[MemoryJson], max_samples: usize) -> MemoryJson {
    let start_ms = memories.iter().map(|m| m.start_ms).min().unwrap_or(0);
    let end_ms = memories.iter().map(|m| m.end_ms).max().unwrap_or(start_ms);
    let mut times: Vec<u64> = memories.iter().flat_map(|m| m.samples.iter().map(|s| s[0])).collect();
    times.sort_unstable();
    times.dedup();
    let mut cursors = vec![0usize; memories.len()];
    let mut samples = Vec::with_capacity(times.len());
    for &t in &times {
        let (mut rss, mut heap) = (0u64, 0u64);
        for (m, cursor) in memories.iter().zip(cursors.iter_mut()) {
            while *cursor < m.samples.len() && m.samples[*cursor][0] <= t {
                *cursor += 1;
            }
            if *cursor > 0 && t as i64 <= m.end_ms {
                let s = m.samples[*cursor - 1];
                rss = rss.saturating_add(s[1]);
                heap = heap.saturating_add(s[2]);
            }
        }
        samples.push([t, rss, heap]);
    }
    // As many samples as one capture may show: every n-th, the last kept.
    let n = samples.len().div_ceil(max_samples.max(1)).max(1);
    if n > 1 {
        let last = samples.last().copied();
        samples = samples.into_iter().step_by(n).collect();
        if let (Some(l), Some(&kept)) = (last, samples.last()) {
            if kept != l {
                samples.push(l);
            }
        }
    }
    MemoryJson { start_ms, end_ms, samples, unit_peaks: Vec::new(), stride: 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory(end_ms: i64, samples: &[[u64; 3]]) -> MemoryJson {
        MemoryJson { start_ms: samples[0][0] as i64, end_ms, samples: samples.to_vec(), unit_peaks: vec![1], stride: 1 }
    }

    #[test]
    fn memory_of_several_processes_is_summed_on_one_time_axis() {
        // Process a from 10 to 30 ms, b from 20 to 50 ms.
        let a = memory(30, &[[10, 100, 10], [30, 300, 30]]);
        let b = memory(50, &[[20, 1000, 100], [40, 2000, 200]]);
        let m = sum_memory(&[a, b], 100);
        assert_eq!((m.start_ms, m.end_ms), (10, 50));
        // Before b's first sample only a counts; after a's end only b does.
        assert_eq!(m.samples, vec![[10, 100, 10], [20, 1100, 110], [30, 1300, 130], [40, 2000, 200]]);
        assert!(m.unit_peaks.is_empty());
        // At most `max_samples` (and the last one kept).
        let many: Vec<[u64; 3]> = (0..1000).map(|i| [i, i, i]).collect();
        let m = sum_memory(&[memory(999, &many), memory(999, &many)], 10);
        assert!(m.samples.len() <= 11, "{}", m.samples.len());
        assert_eq!(m.samples.last(), Some(&[999, 1998, 1998]));
    }
}
