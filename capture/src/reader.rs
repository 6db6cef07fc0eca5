//! Streaming decoder for both file formats, plain or LZ4-framed.

use std::fs::File;
use std::io::{self, Chain, Cursor, Read, Seek, SeekFrom};
use std::path::Path;

use crate::decompress::Decompressing;
use crate::encoder::AddressCache;
use crate::header::Header;
use crate::input::Input;
use crate::progress::ProgressProbe;
use crate::types::{
    AggregatedAllocation, Allocator, CodeObject, FileFormat, MemorySnapshot, NativeFrame, PythonAllocator, PythonFrame, Segment,
    SurvivingObject, TraceNode,
};
use crate::varint::{unzigzag, MAX_VARINT_LEN};
use crate::{agg_tag, tag, CaptureError, LZ4_MAGIC, MAGIC, MAX_STRING_LEN, VERSION};

/// One decoded record, with deltas and the address cache already undone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// Later thread-specific records belong to `tid` (Memray's own thread counter).
    ContextSwitch {
        tid: u64,
    },
    FramePush {
        tid: u64,
        code_object_id: u64,
        instruction_offset: i32,
        is_entry: bool,
    },
    /// 1 to 16 frames; longer pops arrive as several records.
    FramePop {
        tid: u64,
        count: u32,
    },
    /// `size` is 0 and `native_frame_id` 0 for `free`/`PyMem_Free`; `native_frame_id`
    /// is 0 unless the header has `native_traces`.
    Allocation {
        tid: u64,
        address: u64,
        size: u64,
        allocator: Allocator,
        native_frame_id: u64,
    },
    /// Object lifetime tracking: a PyObject created or destroyed.
    Object {
        tid: u64,
        address: u64,
        is_created: bool,
        native_frame_id: u64,
    },
    /// RSS sample; the wire holds ms since `header.start_time_ms`, this is absolute.
    Memory {
        rss: u64,
        ms_since_epoch: u64,
    },
    /// Names `tid` (the current thread).
    Thread {
        tid: u64,
        name: String,
    },
    CodeObject(CodeObject),
    /// NATIVE_TRACE_INDEX: node ids are 1, 2, ... in the order these records appear.
    NativeFrame(NativeFrame),
    /// A new memory-map generation starts; the segment list is replaced.
    MemoryMapStart,
    /// Followed by exactly `num_segments` [`Record::Segment`] records.
    SegmentHeader {
        filename: String,
        num_segments: u64,
        load_addr: u64,
    },
    Segment(Segment),
    // Aggregated files only:
    MemorySnapshot(MemorySnapshot),
    AggregatedAllocation(AggregatedAllocation),
    /// PYTHON_FRAME_INDEX; frame ids are dense from 0 (checked).
    PythonFrame {
        frame_id: u64,
        frame: PythonFrame,
    },
    /// PYTHON_TRACE_INDEX; node indices are 1, 2, ... in order (0 is the root).
    PythonTraceNode(TraceNode),
    SurvivingObject(SurvivingObject),
}

type Prefixed<R> = Chain<Cursor<Vec<u8>>, R>;

/// The decompressed byte stream.
enum Source<R: Read> {
    Plain(Prefixed<R>),
    Lz4(Box<lz4_flex::frame::FrameDecoder<Prefixed<R>>>),
    /// LZ4 decompressed on a second thread (files).
    Decompressing(Decompressing),
}

impl<R: Read> Read for Source<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Source::Plain(r) => r.read(buf),
            Source::Lz4(r) => r.read(buf),
            Source::Decompressing(r) => r.read(buf),
        }
    }
}

pub(crate) fn read_header<S: Read>(input: &mut Input<S>) -> Result<Header, CaptureError> {
    input.begin("header");
    let mut magic = [0u8; 7];
    let got = input.read_up_to(&mut magic)?;
    if got == 0 {
        return Err(CaptureError::Empty);
    }
    if magic[..got] != MAGIC[..got] {
        return Err(CaptureError::NotACapture);
    }
    if got < magic.len() {
        return Err(input.truncated());
    }
    let version = i32::from_ne_bytes(input.array()?);
    if version != VERSION {
        return Err(CaptureError::UnsupportedVersion(version));
    }
    let python_version = u32::from_ne_bytes(input.array()?);
    let native_traces = input.u8()? != 0;
    let format_byte = input.u8()?;
    let file_format =
        FileFormat::from_u8(format_byte).ok_or_else(|| input.corrupt(format!("unknown file format {format_byte} in header")))?;
    let n_allocations = input.u64()?;
    let sampling_interval = input.u64()?;
    let start_time_ms = input.u64()? as i64;
    let end_time_ms = input.u64()? as i64;
    let command_line = input.cstr()?;
    let pid = i32::from_ne_bytes(input.array()?);
    let main_tid = input.u64()?;
    let skipped_frames_on_main_tid = input.u64()?;
    // Memray accepts any byte here and prints unknown ones as nothing in particular.
    let python_allocator = PythonAllocator::from_u8(input.u8()?).unwrap_or(PythonAllocator::Other);
    let trace_python_allocators = input.u8()? != 0;
    let track_object_lifetimes = input.u8()? != 0;
    let libdest = input.cstr()?;
    let mut lists = [Vec::new(), Vec::new()];
    for list in &mut lists {
        loop {
            let entry = input.cstr()?;
            if entry.is_empty() {
                break;
            }
            list.push(entry);
        }
    }
    let [site_packages, sys_path] = lists;
    Ok(Header {
        version,
        python_version,
        native_traces,
        file_format,
        n_allocations,
        sampling_interval,
        start_time_ms,
        end_time_ms,
        command_line,
        pid,
        main_tid,
        skipped_frames_on_main_tid,
        python_allocator,
        trace_python_allocators,
        track_object_lifetimes,
        libdest,
        site_packages,
        sys_path,
    })
}

/// The reader side of the delta encoding and address cache.
#[derive(Default)]
struct DecodeState {
    recent: AddressCache,
    last_data_pointer: u64,
    last_ip: u64,
    last_native_frame_id: u64,
    last_firstlineno: i32,
    tid: Option<u64>,
    pending_segments: u64,
    segments_expected: u64,
    next_python_frame_id: u64,
}

/// Longest ALLOCATION or FRAME_PUSH record: a tag, an allocator byte and three
/// 10-byte varints at most.
const FAST_RECORD_MAX: usize = 32;

/// A varint from `b` at `*at` (which moves past it); `None` if longer than 10 bytes.
/// `b` must hold at least `*at + 10` bytes.
#[inline(always)]
fn slice_varint(b: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for i in 0..MAX_VARINT_LEN {
        let byte = b[*at + i];
        v |= ((byte & 0x7f) as u64) << (7 * i);
        if byte & 0x80 == 0 {
            *at += i + 1;
            return Some(v);
        }
    }
    None
}

/// Reads a capture record by record. Obtain one with [`Reader::open`] (which also skips
/// the zero padding Memray leaves at the end of plain files) or [`Reader::new`].
pub struct Reader<R: Read> {
    input: Input<Source<R>>,
    header: Header,
    compressed: bool,
    state: DecodeState,
    done: bool,
    complete: bool,
    progress: Option<ProgressProbe>,
    /// The file read, for messages.
    source: Option<std::path::PathBuf>,
}

/// Offset one past the last non-zero byte, or `None` if the file is all zeros.
fn readable_size(file: &mut File) -> io::Result<Option<u64>> {
    const CHUNK: u64 = 64 * 1024;
    let mut end = file.seek(SeekFrom::End(0))?;
    let mut buf = vec![0u8; CHUNK as usize];
    while end > 0 {
        let start = end.saturating_sub(CHUNK);
        let chunk = &mut buf[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(chunk)?;
        if let Some(i) = chunk.iter().rposition(|&b| b != 0) {
            return Ok(Some(start + i as u64 + 1));
        }
        end = start;
    }
    Ok(None)
}

impl Reader<File> {
    /// Opens a capture file. For an uncompressed file, the zero bytes Memray preallocates
    /// past the end of the data are excluded (as `FileSource::findReadableSize` does).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, CaptureError> {
        let path = path.as_ref();
        let open_err = |source| CaptureError::Open { path: path.to_path_buf(), source };
        let mut file = File::open(path).map_err(open_err)?;
        let mut magic = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            match file.read(&mut magic[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(CaptureError::Io(e)),
            }
        }
        let compressed = got == 4 && magic == LZ4_MAGIC;
        let limit = if compressed { None } else { readable_size(&mut file)? };
        file.seek(SeekFrom::Start(0))?;
        let progress = ProgressProbe::new(&file, path);
        let mut reader = if compressed {
            // Compressed: decompress on a second thread when one can be started.
            match Decompressing::start(file) {
                Ok(stream) => Reader::from_source(Source::Decompressing(stream), true, None)?,
                Err(file) => Reader::with_limit(file, limit)?,
            }
        } else {
            Reader::with_limit(file, limit)?
        };
        reader.progress = progress;
        reader.source = Some(path.to_path_buf());
        Ok(reader)
    }
}

impl<R: Read> Reader<R> {
    /// Reads a capture from any byte stream (a pipe, a socket, an in-memory buffer).
    /// Without a known end, zero padding is recognised when a record tag is 0 and only
    /// zeros follow.
    pub fn new(inner: R) -> Result<Self, CaptureError> {
        Reader::with_limit(inner, None)
    }

    fn with_limit(mut inner: R, limit: Option<u64>) -> Result<Self, CaptureError> {
        let mut magic = Vec::with_capacity(4);
        (&mut inner).take(4).read_to_end(&mut magic)?;
        let compressed = magic == LZ4_MAGIC;
        let prefixed = Cursor::new(magic).chain(inner);
        let source = if compressed { Source::Lz4(Box::new(lz4_flex::frame::FrameDecoder::new(prefixed))) } else { Source::Plain(prefixed) };
        Reader::from_source(source, compressed, limit)
    }

    fn from_source(source: Source<R>, compressed: bool, limit: Option<u64>) -> Result<Self, CaptureError> {
        let mut input = Input::new(source, 64 * 1024);
        let header = match read_header(&mut input) {
            Err(CaptureError::Empty) if compressed => return Err(CaptureError::Truncated { offset: 0, record: "LZ4 frame (no data)" }),
            other => other?,
        };
        // The limit only applies to records: the header's own trailing NULs may have
        // been counted as padding when the file holds nothing else.
        if let Some(limit) = limit {
            input.set_limit(limit);
        }
        Ok(Reader { input, header, compressed, state: DecodeState::default(), done: false, complete: false, progress: None, source: None })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Whether the file was an LZ4 frame.
    pub fn is_compressed(&self) -> bool {
        self.compressed
    }

    /// Bytes of the (decompressed) capture consumed so far, header included.
    pub fn offset(&self) -> u64 {
        self.input.offset()
    }

    /// Whether the end-of-data trailer was seen. `false` after the last record means the
    /// tracked process did not finish writing (killed, or still running).
    pub fn reached_trailer(&self) -> bool {
        self.complete
    }

    /// The next record, `Ok(None)` at the end of the data (trailer, end of input, or
    /// zero padding). After an error it returns `Ok(None)`.
    #[inline]
    pub fn next_record(&mut self) -> Result<Option<Record>, CaptureError> {
        if let Some(record) = self.fast_stream_record() {
            return Ok(Some(record));
        }
        self.next_record_checked()
    }

    /// Hands every remaining record to `f`, in order, until the data ends, `f` returns
    /// `Ok(false)` (stop) or fails, or the capture turns out truncated, corrupt or
    /// unreadable. A truncation ends the records without an error when
    /// `stop_at_truncation` (Memray reads a cut capture up to the cut); any other problem
    /// is returned as `E`.
    ///
    /// Faster than a `next_record` loop: with `f` inlined, the common records go from
    /// the buffer to `f` in registers.
    #[inline]
    pub fn for_each_record<E: From<CaptureError>>(
        &mut self,
        stop_at_truncation: bool,
        mut f: impl FnMut(Record) -> Result<bool, E>,
    ) -> Result<(), E> {
        loop {
            if let Some(record) = self.fast_stream_record() {
                if !f(record)? {
                    return Ok(());
                }
                continue;
            }
            match self.next_record_checked() {
                Ok(Some(record)) => {
                    if !f(record)? {
                        return Ok(());
                    }
                }
                Ok(None) => return Ok(()),
                Err(e) if stop_at_truncation && e.is_truncation() => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The records that make up nearly all of a capture (ALLOCATION, FRAME_PUSH,
    /// FRAME_POP), decoded straight from the buffer when a whole record of the longest
    /// kind is there. `None` leaves everything untouched for [`Reader::next_record_checked`],
    /// which also reports any problem with the record.
    // Inlined into the caller's loop so the record stays in registers: returning it
    // through memory stalls on store forwarding and cost more than decoding it.
    #[inline(always)]
    fn fast_stream_record(&mut self) -> Option<Record> {
        if self.done || self.state.pending_segments != 0 || self.header.file_format != FileFormat::AllAllocations {
            return None;
        }
        let tid = self.state.tid?;
        let b = self.input.buffered();
        if b.len() < FAST_RECORD_MAX {
            return None;
        }
        let t = b[0];
        let mut at = 1;
        let record = if t & tag::ALLOCATION != 0 {
            let index = (t >> 3) & 0x0f;
            let (address, new_pointer) = if index != 15 {
                (self.state.recent.get(index as usize), None)
            } else {
                let delta = unzigzag(slice_varint(b, &mut at)?);
                let pointer = self.state.last_data_pointer.wrapping_add(delta as u64);
                (pointer << 3, Some(pointer))
            };
            let id = match t & 0x07 {
                0 => {
                    at += 1;
                    b[at - 1]
                }
                id => id,
            };
            let allocator = Allocator::from_u8(id)?;
            let (mut size, mut native) = (0, None);
            if !allocator.is_simple_deallocator() {
                if self.header.native_traces {
                    let delta = unzigzag(slice_varint(b, &mut at)?);
                    native = Some(self.state.last_native_frame_id.wrapping_add(delta as u64));
                }
                size = slice_varint(b, &mut at)?;
            }
            // The record is whole and valid: now the decoder state may change.
            if let Some(pointer) = new_pointer {
                self.state.last_data_pointer = pointer;
                self.state.recent.insert(address);
            }
            if let Some(id) = native {
                self.state.last_native_frame_id = id;
            }
            Record::Allocation { tid, address, size, allocator, native_frame_id: native.unwrap_or(0) }
        } else if t & tag::FRAME_PUSH != 0 {
            let code_object_id = slice_varint(b, &mut at)?;
            let instruction_offset = unzigzag(slice_varint(b, &mut at)?) as i32;
            Record::FramePush { tid, code_object_id, instruction_offset, is_entry: t & 1 != 0 }
        } else if t & tag::OBJECT_RECORD == 0 && t & tag::FRAME_POP != 0 {
            Record::FramePop { tid, count: (t & 0x0f) as u32 + 1 }
        } else {
            return None;
        };
        self.input.consume(at);
        Some(record)
    }

    #[inline(never)]
    fn next_record_checked(&mut self) -> Result<Option<Record>, CaptureError> {
        if self.done {
            return Ok(None);
        }
        // Here at least once per buffer refill (the fast path stops short of the
        // buffer's end), which is often enough for a progress bar.
        if let Some(p) = &mut self.progress {
            p.tick();
        }
        let result = match self.header.file_format {
            FileFormat::AllAllocations => self.next_stream_record(),
            FileFormat::AggregatedAllocations => self.next_aggregated_record(),
        };
        match result {
            Ok(Some(r)) => Ok(Some(r)),
            Ok(None) => {
                self.done = true;
                if let Some(p) = &mut self.progress {
                    p.finish();
                }
                Ok(None)
            }
            Err(e) => {
                self.done = true;
                if let Some(p) = &mut self.progress {
                    p.finish();
                }
                if crate::cut::take_as_end(self.source.as_deref(), &e) {
                    return Ok(None);
                }
                Err(e)
            }
        }
    }

    /// Reads the tag byte; handles end of data, padding and pending segments.
    fn next_tag(&mut self, trailer: u8) -> Result<Option<u8>, CaptureError> {
        self.input.begin("record");
        let Some(t) = self.input.try_u8()? else {
            return self.end_of_data();
        };
        if t == tag::FILLER {
            // Preallocated padding: legitimate only if nothing but zeros follows.
            if self.input.rest_is_zero()? {
                return self.end_of_data();
            }
            return Err(self.input.corrupt("zero record type (FILLER) followed by more data"));
        }
        if t == trailer {
            self.complete = true;
            return Ok(None);
        }
        if self.state.pending_segments > 0 && t != tag::SEGMENT {
            let (left, total) = (self.state.pending_segments, self.state.segments_expected);
            return Err(self.input.corrupt(format!("record type {t:#04x} where SEGMENT {} of {total} was expected", total - left + 1)));
        }
        Ok(Some(t))
    }

    /// The data ended (or only padding is left) before a trailer.
    fn end_of_data(&mut self) -> Result<Option<u8>, CaptureError> {
        if self.state.pending_segments > 0 {
            self.input.record = "memory map";
            return Err(self.input.truncated());
        }
        if self.compressed {
            // Files are compressed only after the trailer is written, so a frame that
            // ends without one was cut (the LZ4 decoder reports a cut between blocks as
            // a clean end).
            self.input.record = "LZ4 frame (no trailer)";
            return Err(self.input.truncated());
        }
        Ok(None)
    }

    fn current_tid(&self, what: &str) -> Result<u64, CaptureError> {
        self.state.tid.ok_or_else(|| self.input.corrupt(format!("{what} before any CONTEXT_SWITCH")))
    }

    /// Undoes the address cache: index 15 is a miss carrying a delta of `address >> 3`.
    fn cached_address(&mut self, index: u8) -> Result<u64, CaptureError> {
        if index != 15 {
            return Ok(self.state.recent.get(index as usize));
        }
        let delta = self.input.svarint()?;
        self.state.last_data_pointer = self.state.last_data_pointer.wrapping_add(delta as u64);
        let address = self.state.last_data_pointer << 3;
        self.state.recent.insert(address);
        Ok(address)
    }

    fn native_delta(&mut self) -> Result<u64, CaptureError> {
        let d = self.input.svarint()?;
        self.state.last_native_frame_id = self.state.last_native_frame_id.wrapping_add(d as u64);
        Ok(self.state.last_native_frame_id)
    }

    fn next_stream_record(&mut self) -> Result<Option<Record>, CaptureError> {
        let Some(t) = self.next_tag(tag::TRAILER)? else {
            return Ok(None);
        };
        let record = if t & tag::ALLOCATION != 0 {
            self.input.record = "ALLOCATION record";
            let tid = self.current_tid("ALLOCATION")?;
            let address = self.cached_address((t >> 3) & 0x0f)?;
            let id = match t & 0x07 {
                0 => self.input.u8()?,
                id => id,
            };
            let allocator = Allocator::from_u8(id).ok_or_else(|| self.input.corrupt(format!("unknown allocator {id}")))?;
            let (mut size, mut native_frame_id) = (0, 0);
            if !allocator.is_simple_deallocator() {
                if self.header.native_traces {
                    native_frame_id = self.native_delta()?;
                }
                size = self.input.varint()?;
            }
            Record::Allocation { tid, address, size, allocator, native_frame_id }
        } else if t & tag::FRAME_PUSH != 0 {
            self.input.record = "FRAME_PUSH record";
            let tid = self.current_tid("FRAME_PUSH")?;
            let code_object_id = self.input.varint()?;
            let instruction_offset = self.input.svarint()? as i32;
            Record::FramePush { tid, code_object_id, instruction_offset, is_entry: t & 1 != 0 }
        } else if t & tag::OBJECT_RECORD != 0 {
            self.input.record = "OBJECT_RECORD record";
            let tid = self.state.tid.unwrap_or(0);
            let address = self.cached_address((t >> 1) & 0x0f)?;
            let is_created = t & 1 != 0;
            let native_frame_id = if self.header.native_traces && is_created { self.native_delta()? } else { 0 };
            Record::Object { tid, address, is_created, native_frame_id }
        } else if t & tag::FRAME_POP != 0 {
            let tid = self.current_tid("FRAME_POP")?;
            Record::FramePop { tid, count: (t & 0x0f) as u32 + 1 }
        } else {
            match t {
                tag::MEMORY_RECORD => {
                    self.input.record = "MEMORY_RECORD record";
                    let rss = self.input.varint()?;
                    let since = self.input.varint()?;
                    Record::Memory { rss, ms_since_epoch: since.wrapping_add(self.header.start_time_ms as u64) }
                }
                tag::CONTEXT_SWITCH => self.context_switch()?,
                tag::THREAD_RECORD => self.thread_record()?,
                tag::CODE_OBJECT => self.code_object()?,
                tag::NATIVE_TRACE_INDEX => self.native_frame()?,
                tag::MEMORY_MAP_START => Record::MemoryMapStart,
                tag::SEGMENT_HEADER => self.segment_header()?,
                tag::SEGMENT => self.segment()?,
                _ => return Err(self.input.corrupt(format!("unknown record type {t:#04x}"))),
            }
        };
        Ok(Some(record))
    }

    fn next_aggregated_record(&mut self) -> Result<Option<Record>, CaptureError> {
        let Some(t) = self.next_tag(agg_tag::AGGREGATED_TRAILER)? else {
            return Ok(None);
        };
        let record = match t {
            agg_tag::MEMORY_SNAPSHOT => {
                self.input.record = "MEMORY_SNAPSHOT record";
                let ms_since_epoch = self.input.u64()?;
                let rss = self.input.u64()?;
                let heap = self.input.u64()?;
                Record::MemorySnapshot(MemorySnapshot { ms_since_epoch, rss, heap })
            }
            agg_tag::AGGREGATED_ALLOCATION => {
                self.input.record = "AGGREGATED_ALLOCATION record";
                let raw = self.input.array::<{ AggregatedAllocation::ENCODED_LEN }>()?;
                let row =
                    AggregatedAllocation::from_bytes(&raw).ok_or_else(|| self.input.corrupt(format!("unknown allocator {}", raw[8])))?;
                Record::AggregatedAllocation(row)
            }
            agg_tag::PYTHON_TRACE_INDEX => {
                self.input.record = "PYTHON_TRACE_INDEX record";
                let frame_id = self.input.varint()?;
                let parent_index = self.input.varint()?;
                Record::PythonTraceNode(TraceNode { frame_id, parent_index })
            }
            agg_tag::PYTHON_FRAME_INDEX => {
                self.input.record = "PYTHON_FRAME_INDEX record";
                let frame_id = self.input.varint()?;
                let code_object_id = self.input.varint()?;
                let instruction_offset = self.input.svarint()? as i32;
                let is_entry = self.input.u8()? != 0;
                let expected = self.state.next_python_frame_id;
                if frame_id != expected {
                    return Err(self.input.corrupt(format!("Python frame id {frame_id} out of order (expected {expected})")));
                }
                self.state.next_python_frame_id += 1;
                Record::PythonFrame { frame_id, frame: PythonFrame { code_object_id, instruction_offset, is_entry } }
            }
            agg_tag::SURVIVING_OBJECT => {
                self.input.record = "SURVIVING_OBJECT record";
                let address = self.input.varint()? << 3;
                let native_frame_id = if self.header.native_traces { self.input.varint()? } else { 0 };
                Record::SurvivingObject(SurvivingObject { address, native_frame_id })
            }
            agg_tag::CONTEXT_SWITCH => self.context_switch()?,
            agg_tag::THREAD_RECORD => self.thread_record()?,
            agg_tag::CODE_OBJECT => self.code_object()?,
            agg_tag::NATIVE_TRACE_INDEX => self.native_frame()?,
            agg_tag::MEMORY_MAP_START => Record::MemoryMapStart,
            agg_tag::SEGMENT_HEADER => self.segment_header()?,
            agg_tag::SEGMENT => self.segment()?,
            _ => return Err(self.input.corrupt(format!("unknown aggregated record type {t:#04x}"))),
        };
        Ok(Some(record))
    }

    fn context_switch(&mut self) -> Result<Record, CaptureError> {
        self.input.record = "CONTEXT_SWITCH record";
        let tid = self.input.u64()?;
        self.state.tid = Some(tid);
        Ok(Record::ContextSwitch { tid })
    }

    fn thread_record(&mut self) -> Result<Record, CaptureError> {
        self.input.record = "THREAD_RECORD record";
        let name = self.input.cstr()?;
        Ok(Record::Thread { tid: self.state.tid.unwrap_or(0), name })
    }

    fn code_object(&mut self) -> Result<Record, CaptureError> {
        self.input.record = "CODE_OBJECT record";
        let id = self.input.varint()?;
        let function = self.input.cstr()?;
        let filename = self.input.cstr()?;
        let d = self.input.svarint()?;
        self.state.last_firstlineno = (self.state.last_firstlineno as i64).wrapping_add(d) as i32;
        let len = self.input.varint()?;
        if len > MAX_STRING_LEN as u64 {
            return Err(self.input.corrupt(format!("line table of {len} bytes exceeds {MAX_STRING_LEN}")));
        }
        let linetable = self.input.bytes(len)?;
        Ok(Record::CodeObject(CodeObject { id, function, filename, firstlineno: self.state.last_firstlineno, linetable }))
    }

    fn native_frame(&mut self) -> Result<Record, CaptureError> {
        self.input.record = "NATIVE_TRACE_INDEX record";
        let d = self.input.svarint()?;
        self.state.last_ip = self.state.last_ip.wrapping_add(d as u64);
        let parent = self.native_delta()?;
        Ok(Record::NativeFrame(NativeFrame { ip: self.state.last_ip, parent }))
    }

    fn segment_header(&mut self) -> Result<Record, CaptureError> {
        self.input.record = "SEGMENT_HEADER record";
        let filename = self.input.cstr()?;
        let num_segments = self.input.varint()?;
        let load_addr = self.input.u64()?;
        self.state.pending_segments = num_segments;
        self.state.segments_expected = num_segments;
        Ok(Record::SegmentHeader { filename, num_segments, load_addr })
    }

    fn segment(&mut self) -> Result<Record, CaptureError> {
        self.input.record = "SEGMENT record";
        if self.state.pending_segments == 0 {
            return Err(self.input.corrupt("SEGMENT record outside a SEGMENT_HEADER"));
        }
        let vaddr = self.input.u64()?;
        let memsz = self.input.varint()?;
        self.state.pending_segments -= 1;
        Ok(Record::Segment(Segment { vaddr, memsz }))
    }
}

impl<R: Read> Iterator for Reader<R> {
    type Item = Result<Record, CaptureError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_record().transpose()
    }
}
