//! The record writer: one per capture, behind one lock. Owns the output (`sink.rs`), the
//! stream encoder's state and the code-object ids.

use memray_capture::{
    Allocator, ByteSink, CodeObject, FileFormat, Header, ImageSegments, NativeFrame, PythonFrame, Segment, StreamEncoder, SurvivingObject,
};

use crate::aggregate::Aggregator;
use crate::native::objects::LoadedObject;
use crate::native::trie::{NativeTrie, Prefix};

use crate::python::frames::RawFrame;
use crate::sink::FdSink;

/// Maps keyed by addresses (code objects, threads, objects).
pub type PtrMap<V> = memray_capture::fasthash::FastMap<usize, V>;

struct CodeEntry {
    id: u64,
    identity: crate::python::code::CodeIdentity,
}

/// ALL_ALLOCATIONS streams every record as it happens; AGGREGATED_ALLOCATIONS keeps
/// totals in memory and writes the file at the end.
// One Writer exists per capture; the stream encoder (with its address cache) stays inline
// so the record path in every hook does not chase a pointer to it.
#[allow(clippy::large_enum_variant)]
enum Output {
    Stream(StreamEncoder),
    Aggregate(Box<Aggregator>),
}

pub struct Writer {
    pub sink: FdSink,
    out: Output,
    header: Header,
    last_tid: u64,
    codes: PtrMap<CodeEntry>,
    next_code_id: u64,
    name_buf: Vec<u8>,
    file_buf: Vec<u8>,
    /// Names given to threads (keyed by pthread_t) before they wrote anything.
    pending_names: PtrMap<Vec<u8>>,
    /// pthread_t -> capture tid of every thread seen, so a name set from another thread
    /// (Python names threads from the parent) reaches the right one.
    tids_by_ident: PtrMap<u64>,
    /// `track_object_lifetimes`: objects created while tracking and not yet destroyed, with
    /// the native stack they were created at.
    live_objects: PtrMap<u64>,
    pub n_allocations: u64,
    pub start_ms: i64,
    pub interp: &'static crate::python::Interpreter,
    /// Native stacks: the frame tree and how many memory maps were written (the
    /// "segment generation" a reader is in when it meets an allocation).
    native: NativeTrie,
    map_generation: u64,
    /// Sampled mappings smaller than the sampling interval, recorded at synthetic addresses.
    pub sampled_mappings: crate::sampled_mappings::SampledMappings,
}

impl Writer {
    pub fn new(fd: i32, buffered: bool, header: Header, interp: &'static crate::python::Interpreter) -> Self {
        let start_ms = header.start_time_ms;
        let out = match header.file_format {
            FileFormat::AggregatedAllocations => Output::Aggregate(Box::new(Aggregator::new(header.sampling_interval))),
            _ => Output::Stream(StreamEncoder::new()),
        };
        let mut w = Writer {
            sink: FdSink::new(fd, buffered),
            out,
            header,
            last_tid: 0,
            codes: PtrMap::default(),
            next_code_id: 1,
            name_buf: Vec::with_capacity(256),
            file_buf: Vec::with_capacity(1024),
            pending_names: PtrMap::default(),
            tids_by_ident: PtrMap::default(),
            live_objects: PtrMap::default(),
            n_allocations: 0,
            start_ms,
            interp,
            native: NativeTrie::default(),
            map_generation: 0,
            sampled_mappings: Default::default(),
        };
        if matches!(w.out, Output::Stream(_)) {
            let mut bytes = Vec::new();
            w.header.encode(&mut bytes);
            w.sink.put(&bytes);
            w.sink.flush();
        }
        w
    }

    #[inline]
    fn switch_to(&mut self, tid: u64) {
        if self.last_tid != tid {
            if let Output::Stream(enc) = &mut self.out {
                enc.context_switch(&mut self.sink, tid);
            }
            self.last_tid = tid;
        }
    }

    /// Writes the stack change (pops, then pushes outermost first) for `tid`.
    pub fn write_stack_change(&mut self, tid: u64, pops: usize, pushes: &[RawFrame]) {
        self.switch_to(tid);
        if pops > 0 {
            match &mut self.out {
                Output::Stream(enc) => enc.frame_pop(&mut self.sink, pops as u32),
                Output::Aggregate(agg) => agg.pop(tid, pops),
            }
        }
        for f in pushes {
            let id = self.code_id(f.code);
            match &mut self.out {
                Output::Stream(enc) => enc.frame_push(&mut self.sink, id, f.instr_offset, f.is_entry),
                Output::Aggregate(agg) => {
                    agg.push(tid, PythonFrame { code_object_id: id, instruction_offset: f.instr_offset, is_entry: f.is_entry })
                }
            }
        }
    }

    /// `native_id` is the allocation's node in the native frame tree (0 without native
    /// traces, and for deallocations).
    pub fn write_allocation(&mut self, tid: u64, address: usize, size: usize, allocator: Allocator, native_id: u64) {
        self.switch_to(tid);
        let native_traces = self.header.native_traces;
        match &mut self.out {
            Output::Stream(enc) => enc.allocation(&mut self.sink, address as u64, size as u64, allocator, native_id, native_traces),
            Output::Aggregate(agg) => agg.allocation(tid, address as u64, size as u64, allocator, native_id, self.map_generation),
        }
        // Memray's header count covers every ALLOCATION record, frees included.
        self.n_allocations += 1;
    }

    /// A Python object created while tracking (`track_object_lifetimes`).
    pub fn write_object_created(&mut self, tid: u64, address: usize, native_id: u64) {
        self.live_objects.insert(address, native_id);
        self.switch_to(tid);
        let native_traces = self.header.native_traces;
        if let Output::Stream(enc) = &mut self.out {
            enc.object_record(&mut self.sink, address as u64, true, native_id, native_traces);
        }
    }

    /// The end of an object (recorded for every object, as Memray records them, also those
    /// created before tracking started).
    pub fn write_object_destroyed(&mut self, tid: u64, address: usize) {
        self.live_objects.remove(&address);
        self.switch_to(tid);
        let native_traces = self.header.native_traces;
        if let Output::Stream(enc) = &mut self.out {
            enc.object_record(&mut self.sink, address as u64, false, 0, native_traces);
        }
    }

    /// The objects created while tracking that are still alive.
    pub fn live_objects(&self) -> impl Iterator<Item = usize> + '_ {
        self.live_objects.keys().copied()
    }

    pub fn write_thread_name(&mut self, tid: u64, name: &[u8]) {
        self.switch_to(tid);
        match &mut self.out {
            Output::Stream(enc) => enc.thread_record(&mut self.sink, name),
            Output::Aggregate(agg) => agg.thread_name(tid, name),
        }
    }

    /// Names the thread `ident` (a pthread_t): at once if it has written records (or is
    /// the caller), else with its first record.
    pub fn set_thread_name(&mut self, ident: usize, name: &[u8], caller_tid: Option<u64>) {
        match caller_tid.or_else(|| self.tids_by_ident.get(&ident).copied()) {
            Some(tid) => self.write_thread_name(tid, name),
            None => {
                self.pending_names.insert(ident, name.to_vec());
            }
        }
    }

    /// Called on a thread's first record in this capture.
    pub fn thread_first_seen(&mut self, tid: u64) {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() } as usize;
        self.tids_by_ident.insert(me, tid);
        if let Some(name) = self.pending_names.remove(&me) {
            self.write_thread_name(tid, &name);
        }
    }

    pub fn write_memory_record(&mut self, rss: u64, now_ms: i64) {
        match &mut self.out {
            Output::Stream(enc) => {
                let since = (now_ms - self.start_ms).max(0) as u64;
                enc.memory_record(&mut self.sink, rss, since);
                self.sink.flush();
            }
            Output::Aggregate(agg) => agg.memory_snapshot(now_ms.max(0) as u64, rss),
        }
    }

    /// The native frame tree node of `ips` (innermost first), writing a NATIVE_TRACE_INDEX
    /// record for each new node. `prefix` is the calling thread's previous path.
    pub fn native_frame_id(&mut self, ips: &[u64], prefix: &mut Prefix) -> u64 {
        let Writer { native, out, sink, .. } = self;
        native.intern(ips, prefix, |ip, parent| match out {
            Output::Stream(enc) => enc.native_trace_index(sink, ip, parent),
            Output::Aggregate(agg) => agg.native_frame(NativeFrame { ip, parent }),
        })
    }

    /// MEMORY_MAP_START and the segments of every loaded object (the vdso excepted, which
    /// nothing can symbolize), as Memray writes them at start and after dlopen/dlclose.
    pub fn write_memory_map(&mut self, objects: &[LoadedObject]) {
        self.map_generation += 1;
        let images = objects.iter().filter(|o| !o.is_vdso);
        match &mut self.out {
            Output::Stream(enc) => {
                enc.memory_map_start(&mut self.sink);
                for o in images {
                    enc.segment_header(&mut self.sink, o.name.as_bytes(), o.segments.len() as u64, o.bias);
                    for &(vaddr, memsz) in &o.segments {
                        enc.segment(&mut self.sink, vaddr, memsz);
                    }
                }
            }
            Output::Aggregate(agg) => agg.memory_map(
                images
                    .map(|o| ImageSegments {
                        filename: o.name.clone(),
                        load_addr: o.bias,
                        segments: o.segments.iter().map(|&(vaddr, memsz)| Segment { vaddr, memsz }).collect(),
                    })
                    .collect(),
            ),
        }
    }

    /// The id of a code object, writing its CODE_OBJECT record the first time it is seen
    /// (or when its address was reused by another code object).
    fn code_id(&mut self, code: usize) -> u64 {
        // SAFETY: `code` came from the walker, which only returns objects whose type is
        // PyCode_Type, referenced by a live frame of the calling thread, so the code object
        // and its fields stay alive during this call.
        let identity = unsafe { crate::python::code::identity(self.interp, code) };
        if let Some(e) = self.codes.get(&code) {
            if e.identity == identity {
                return e.id;
            }
        }
        let id = self.next_code_id;
        self.next_code_id += 1;
        self.name_buf.clear();
        self.file_buf.clear();
        // SAFETY: as above: a live code object from the walker.
        let (firstlineno, linetable) = unsafe {
            crate::python::code::write_name(self.interp, code, &mut self.name_buf);
            crate::python::code::write_filename(self.interp, code, &mut self.file_buf);
            (crate::python::code::firstlineno(self.interp, code), crate::python::code::linetable(self.interp, code))
        };
        match &mut self.out {
            Output::Stream(enc) => enc.code_object(&mut self.sink, id, &self.name_buf, &self.file_buf, firstlineno, linetable),
            Output::Aggregate(agg) => agg.code_object(CodeObject {
                id,
                function: String::from_utf8_lossy(&self.name_buf).into_owned(),
                filename: String::from_utf8_lossy(&self.file_buf).into_owned(),
                firstlineno,
                linetable: linetable.to_vec(),
            }),
        }
        self.codes.insert(code, CodeEntry { id, identity });
        id
    }

    /// Ends the capture: trailer, flush, and the header rewritten with the final counts
    /// (files only: a socket cannot seek).
    pub fn finish(&mut self, end_ms: i64, seekable: bool) {
        if let Output::Aggregate(_) = self.out {
            let Output::Aggregate(agg) = std::mem::replace(&mut self.out, Output::Stream(StreamEncoder::new())) else {
                return;
            };
            // Memray's aggregating writer never counts: its files say 0.
            self.header.n_allocations = 0;
            self.header.end_time_ms = end_ms;
            let mut capture = agg.into_capture(self.header.clone());
            capture.surviving_objects = self
                .live_objects
                .iter()
                .map(|(&address, &native_frame_id)| SurvivingObject { address: address as u64, native_frame_id })
                .collect();
            capture.encode(&mut self.sink);
            self.sink.finish();
            return;
        }
        if let Output::Stream(enc) = &mut self.out {
            enc.trailer(&mut self.sink);
        }
        self.sink.flush();
        if seekable && !self.sink.failed {
            self.header.n_allocations = self.n_allocations;
            self.header.end_time_ms = end_ms;
            let mut bytes = Vec::new();
            self.header.encode(&mut bytes);
            // SAFETY: pwrite from a valid buffer to our own fd; the header keeps its length.
            // (A mapped window over the header sees the same page cache.)
            unsafe { libc::pwrite(self.sink.fd(), bytes.as_ptr() as *const libc::c_void, bytes.len(), 0) };
        }
        self.sink.finish();
    }
}
