//! `memray export-records` (hidden): what `memray.FileReader` asks of a capture, as JSON
//! lines on stdout. The Python package stays pure Python and builds its objects from
//! these lines.
//!
//! Queries and their lines:
//! * `metadata`: `{"metadata": {...}}`, then `["S", time_ms, rss, heap]` per memory
//!   snapshot (strided down to `--max-memory-records`).
//! * `all`, `hwm`, `leaks`, `temporary`: records, each preceded by what it refers to
//!   that was not sent yet:
//!   `["F", frame, function, file, line, is_entry]` a Python frame, `["N", stack, parent,
//!   frame]` a stack node (0 is the empty stack), `["T", tid, name]` a thread's name,
//!   and with `--native` captures `["f", id, function, file, line]` a symbolized native
//!   frame and `["X", node, generation, parent, [f ids]]` a native stack node in a
//!   memory-map generation (its address's frames, innermost first: more than one when
//!   calls were inlined); then
//!   `["A", tid, address, size, allocator, stack, n_allocations, native_frame_id,
//!   native_segment_generation]`.
//!
//! * `temporal`, `temporal-hwm`: the same references, then per location
//!   `["R", tid, allocator, stack, native_frame_id, native_segment_generation,
//!   [[allocated_before, deallocated_before or null, n_allocations, n_bytes], ...]]`;
//!   `temporal-hwm` first sends `["H", [high-water mark bytes by snapshot]]`. Snapshots
//!   are every `--snapshot-stride`-th memory record (the `metadata` line says which).
//!
//! * `objects`: object lifetime events (`track_object_lifetimes`), with the same references
//!   for creations, as `["O", tid, address, is_created, stack, native_frame_id,
//!   native_segment_generation]`; an aggregated capture's objects alive at its end come as
//!   creations with no thread and no Python stack.
//!
//! `all` streams as it reads (memory: stacks and threads); the others send Memray's
//! aggregated records once the capture has been read.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use memray_reporter::engine::records::{scan, snapshot_records, AllocationRecord, CaptureCursor, Event, ObjectRecord, SnapshotKind};
use memray_reporter::engine::temporal::TemporalMode;
use memray_reporter::engine::temporal_records::{temporal_records, LocationKey, Span};
use memray_reporter::engine::temporary::temporary_allocations;
use memray_reporter::model::native::NativeStacks;
use memray_reporter::render::format::python_allocator_label;
use memray_reporter::render::transform::json_str;
use memray_reporter::{Location, ReportError, StackId, StackTable};

use super::stats::{capture_failure, check_capture_exists};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Query {
    Metadata,
    All,
    Hwm,
    Leaks,
    Temporary,
    Temporal,
    TemporalHwm,
    Objects,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Capture file
    results: PathBuf,
    #[arg(value_enum)]
    query: Query,
    /// Keep threads apart (records are merged across threads by default)
    #[arg(long)]
    split_threads: bool,
    /// Temporary allocations: how many other allocations may happen before the free
    #[arg(long, default_value_t = 1)]
    threshold: u64,
    /// High-water mark: the peak's record index, when already known from `metadata`
    #[arg(long)]
    peak_index: Option<u64>,
    /// Most memory snapshots to send
    #[arg(long, default_value_t = 10000)]
    max_memory_records: usize,
    /// Temporal queries: a snapshot every this many memory records (0: every one)
    #[arg(long, default_value_t = 0)]
    snapshot_stride: u64,
}

/// Sends frames, stack nodes and thread names once, before the first record needing them.
pub(super) struct Sender<W: Write> {
    out: W,
    sent_nodes: Vec<bool>,
    sent_frames: Vec<bool>,
    sent_threads: BTreeMap<u64, String>,
    native_traces: bool,
    /// Native frames sent, by location.
    native_frames: HashMap<Location, u32>,
    /// (native node, generation) pairs sent.
    native_nodes: HashSet<(u64, u64)>,
}

impl<W: Write> Sender<W> {
    pub(super) fn new(out: W, native_traces: bool) -> Self {
        Sender {
            out,
            sent_nodes: vec![true],
            sent_frames: Vec::new(),
            sent_threads: BTreeMap::new(),
            native_traces,
            native_frames: HashMap::new(),
            native_nodes: HashSet::new(),
        }
    }

    /// The native stack `node` in `generation`, node by node from the first one not sent.
    fn native(&mut self, native: &NativeStacks, node: u64, generation: u64) -> std::io::Result<()> {
        let mut missing = Vec::new();
        let mut n = node;
        while n != 0 && !self.native_nodes.contains(&(n, generation)) {
            let Some(parent) = native.parent(n) else { break };
            missing.push((n, parent));
            n = parent;
        }
        for &(n, parent) in missing.iter().rev() {
            let mut ids = Vec::new();
            for l in native.node_frames(n, generation) {
                let next = self.native_frames.len() as u32;
                let id = *self.native_frames.entry(l.clone()).or_insert(next);
                if id == next {
                    writeln!(self.out, "[\"f\",{id},{},{},{}]", json_str(&l.function), json_str(&l.filename), l.lineno)?;
                }
                ids.push(id.to_string());
            }
            writeln!(self.out, "[\"X\",{n},{generation},{parent},[{}]]", ids.join(","))?;
            self.native_nodes.insert((n, generation));
        }
        Ok(())
    }

    fn stack(&mut self, stacks: &StackTable, stack: StackId) -> std::io::Result<()> {
        let mut missing = Vec::new();
        let mut s = stack;
        while (s as usize) >= self.sent_nodes.len() || !self.sent_nodes[s as usize] {
            let Some((frame, parent)) = stacks.split(s) else { break };
            missing.push((s, frame, parent));
            // Parents have smaller ids; anything else would loop.
            if parent >= s {
                break;
            }
            s = parent;
        }
        for &(s, frame, parent) in missing.iter().rev() {
            if (frame as usize) >= self.sent_frames.len() {
                self.sent_frames.resize(frame as usize + 1, false);
            }
            if !self.sent_frames[frame as usize] {
                let l = stacks.resolve(frame);
                let entry = stacks.frame(frame).is_some_and(|k| k.is_entry) as u8;
                writeln!(self.out, "[\"F\",{frame},{},{},{},{entry}]", json_str(&l.function), json_str(&l.filename), l.lineno)?;
                self.sent_frames[frame as usize] = true;
            }
            writeln!(self.out, "[\"N\",{s},{parent},{frame}]")?;
            if (s as usize) >= self.sent_nodes.len() {
                self.sent_nodes.resize(s as usize + 1, false);
            }
            self.sent_nodes[s as usize] = true;
        }
        Ok(())
    }

    /// What a record refers to: its thread's name, Python stack and native stack.
    fn references(&mut self, tables: Tables, tid: u64, stack: StackId, native_id: u64, generation: u64) -> std::io::Result<()> {
        let (stacks, native, names) = tables;
        if let Some(name) = names.get(&tid) {
            if self.sent_threads.get(&tid) != Some(name) {
                writeln!(self.out, "[\"T\",{},{}]", tid, json_str(name))?;
                self.sent_threads.insert(tid, name.clone());
            }
        }
        self.stack(stacks, stack)?;
        if self.native_traces && native_id != 0 {
            self.native(native, native_id, generation)?;
        }
        Ok(())
    }

    fn object(&mut self, tables: Tables, o: &ObjectRecord) -> std::io::Result<()> {
        if o.is_created {
            self.references(tables, o.tid, o.stack, o.native_frame_id, o.native_segment_generation)?;
        }
        writeln!(
            self.out,
            "[\"O\",{},{},{},{},{},{}]",
            o.tid, o.address, o.is_created as u8, o.stack, o.native_frame_id, o.native_segment_generation
        )
    }

    pub(super) fn out(&mut self) -> &mut W {
        &mut self.out
    }

    pub(super) fn record(&mut self, tables: Tables, r: &AllocationRecord) -> std::io::Result<()> {
        let native_id = if r.allocator.is_deallocator() { 0 } else { r.native_frame_id };
        self.references(tables, r.tid, r.stack, native_id, r.native_segment_generation)?;
        writeln!(
            self.out,
            "[\"A\",{},{},{},{},{},{},{},{}]",
            r.tid, r.address, r.size, r.allocator as u8, r.stack, r.n_allocations, r.native_frame_id, r.native_segment_generation
        )
    }
}

/// Stacks, native stacks and thread names, as a query's records refer to them.
pub(super) type Tables<'a> = (&'a StackTable, &'a NativeStacks, &'a BTreeMap<u64, String>);

fn temporal_record(sender: &mut Sender<impl Write>, tables: Tables, key: &LocationKey, spans: &[Span]) -> std::io::Result<()> {
    sender.references(tables, key.tid, key.stack, key.native_frame_id, key.native_segment_generation)?;
    let spans: Vec<String> = spans
        .iter()
        .map(|s| match s.to {
            Some(to) => format!("[{},{},{},{}]", s.from, to, s.count, s.bytes),
            None => format!("[{},null,{},{}]", s.from, s.count, s.bytes),
        })
        .collect();
    writeln!(
        sender.out,
        "[\"R\",{},{},{},{},{},[{}]]",
        key.tid,
        key.allocator,
        key.stack,
        key.native_frame_id,
        key.native_segment_generation,
        spans.join(",")
    )
}

enum Failure {
    Io(std::io::Error),
    Report(ReportError),
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Io(e)
    }
}

impl From<ReportError> for Failure {
    fn from(e: ReportError) -> Self {
        Failure::Report(e)
    }
}

fn export(args: &ExportArgs, out: &mut impl Write) -> Result<(), Failure> {
    let path = &args.results;
    let merge = !args.split_threads;
    // Memray's reader stops quietly where a capture is cut short.
    let lenient = true;
    match args.query {
        Query::Metadata => {
            let s = scan(path, args.max_memory_records, lenient)?;
            let h = &s.header;
            writeln!(
                out,
                "{{\"metadata\": {{\"start_time\": {}, \"end_time\": {}, \"total_allocations\": {}, \"total_frames\": {}, \
                 \"peak_memory\": {}, \"command_line\": {}, \"pid\": {}, \"main_thread_id\": {}, \"python_allocator\": {}, \
                 \"has_native_traces\": {}, \"trace_python_allocators\": {}, \"file_format\": {}, \
                 \"skipped_frames_on_main_tid\": {}, \"peak_index\": {}, \"python_version\": {}, \"snapshot_stride\": {}}}}}",
                h.start_time_ms,
                h.end_time_ms,
                s.n_records,
                h.sampling_interval,
                s.peak_memory,
                json_str(&h.command_line),
                h.pid,
                h.main_tid,
                json_str(python_allocator_label(h.python_allocator)),
                h.native_traces,
                h.trace_python_allocators,
                h.file_format as u8,
                h.skipped_frames_on_main_tid,
                s.peak_index,
                h.python_version,
                s.snapshot_stride
            )?;
            for snap in &s.snapshots {
                writeln!(out, "[\"S\",{},{},{}]", snap.ms_since_epoch, snap.rss, snap.heap)?;
            }
        }
        Query::All => {
            let mut cursor = CaptureCursor::open(path, lenient)?;
            if cursor.is_aggregated() {
                return Err(ReportError::AggregatedAllRecords.into());
            }
            let mut sender = Sender::new(out, cursor.header().native_traces);
            while let Some(event) = cursor.next_event()? {
                if let Event::Allocation(r) = event {
                    sender.record((&cursor.stacks, &cursor.native, &cursor.thread_names), &r)?;
                }
            }
            warn_missing(&cursor.native);
        }
        Query::Objects => {
            let mut cursor = CaptureCursor::open(path, lenient)?;
            let mut sender = Sender::new(out, cursor.header().native_traces);
            while let Some(event) = cursor.next_event()? {
                if let Event::Object(o) = event {
                    sender.object((&cursor.stacks, &cursor.native, &cursor.thread_names), &o)?;
                }
            }
            warn_missing(&cursor.native);
        }
        Query::Hwm | Query::Leaks | Query::Temporary => {
            let set = match args.query {
                Query::Temporary => temporary_allocations(path, args.threshold, merge, lenient)?,
                Query::Leaks => snapshot_records(path, SnapshotKind::Leaks, merge, None, lenient)?,
                _ => snapshot_records(path, SnapshotKind::HighWaterMark, merge, args.peak_index, lenient)?,
            };
            set.prepare_native();
            let mut sender = Sender::new(out, set.header.native_traces);
            for r in &set.records {
                sender.record((&set.stacks, &set.native, &set.thread_names), r)?;
            }
            warn_missing(&set.native);
        }
        Query::Temporal | Query::TemporalHwm => {
            let mode = if args.query == Query::Temporal { TemporalMode::Leaks } else { TemporalMode::HighWaterMark };
            let t = temporal_records(path, mode, merge, args.snapshot_stride, lenient)?;
            if mode == TemporalMode::HighWaterMark {
                let peaks: Vec<String> = t.high_water_mark_by_snapshot.iter().map(u64::to_string).collect();
                writeln!(out, "[\"H\",[{}]]", peaks.join(","))?;
            }
            let mut sender = Sender::new(out, t.native_traces);
            for (key, spans) in &t.records {
                temporal_record(&mut sender, (&t.stacks, &t.native, &t.thread_names), key, spans)?;
            }
            warn_missing(&t.native);
        }
    }
    Ok(())
}

/// One line on stderr naming the object files that could not be read.
fn warn_missing(native: &NativeStacks) {
    if let Some(w) = native.missing_warning() {
        eprintln!("memray: {w}");
    }
}

pub fn run(args: ExportArgs) -> Result<ExitCode> {
    check_capture_exists(&args.results)?;
    let stdout = std::io::stdout();
    let mut out = BufWriter::with_capacity(1 << 16, stdout.lock());
    let result = export(&args, &mut out).and_then(|_| out.flush().map_err(Failure::Io));
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        // The reader stopped listening (a generator dropped early).
        Err(Failure::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(Failure::Io(e)) => bail!("writing to stdout: {e}"),
        Err(Failure::Report(e)) => Err(capture_failure(&args.results, e)),
    }
}
