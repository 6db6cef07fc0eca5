#![allow(dead_code)]

pub mod synth;

use std::path::PathBuf;

use memray_capture::*;

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

pub struct Decoded {
    pub header: Header,
    pub records: Vec<Record>,
    pub reached_trailer: bool,
}

pub fn decode_file(name: &str) -> Decoded {
    let mut r = Reader::open(fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut records = Vec::new();
    while let Some(rec) = r.next_record().unwrap_or_else(|e| panic!("{name}: {e}")) {
        records.push(rec);
    }
    Decoded { header: r.header().clone(), records, reached_trailer: r.reached_trailer() }
}

pub fn decode_bytes(bytes: &[u8]) -> Result<(Header, Vec<Record>, bool), CaptureError> {
    let mut r = Reader::new(bytes)?;
    let mut records = Vec::new();
    while let Some(rec) = r.next_record()? {
        records.push(rec);
    }
    Ok((r.header().clone(), records, r.reached_trailer()))
}

pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x100000001b3))
}

/// The capture's bytes with any LZ4 framing removed.
pub fn raw_bytes(name: &str) -> Vec<u8> {
    let data = std::fs::read(fixture(name)).unwrap();
    if data.starts_with(&LZ4_MAGIC) {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut lz4_flex::frame::FrameDecoder::new(&data[..]), &mut out).unwrap();
        out
    } else {
        data
    }
}

/// Re-encodes decoded ALL_ALLOCATIONS records with our encoder.
pub fn encode_stream(header: &Header, records: &[Record], trailer: bool) -> Vec<u8> {
    let mut out = Vec::new();
    header.encode(&mut out);
    let mut e = StreamEncoder::new();
    let s = &mut out;
    let native = header.native_traces;
    for r in records {
        match r {
            Record::ContextSwitch { tid } => e.context_switch(s, *tid),
            Record::FramePush { code_object_id, instruction_offset, is_entry, .. } => {
                e.frame_push(s, *code_object_id, *instruction_offset, *is_entry)
            }
            Record::FramePop { count, .. } => e.frame_pop(s, *count),
            Record::Allocation { address, size, allocator, native_frame_id, .. } => {
                e.allocation(s, *address, *size, *allocator, *native_frame_id, native)
            }
            Record::Object { address, is_created, native_frame_id, .. } => {
                e.object_record(s, *address, *is_created, *native_frame_id, native)
            }
            Record::Memory { rss, ms_since_epoch } => e.memory_record(s, *rss, ms_since_epoch.wrapping_sub(header.start_time_ms as u64)),
            Record::Thread { name, .. } => e.thread_record(s, name.as_bytes()),
            Record::CodeObject(c) => e.code_object(s, c.id, c.function.as_bytes(), c.filename.as_bytes(), c.firstlineno, &c.linetable),
            Record::NativeFrame(f) => e.native_trace_index(s, f.ip, f.parent),
            Record::MemoryMapStart => e.memory_map_start(s),
            Record::SegmentHeader { filename, num_segments, load_addr } => {
                e.segment_header(s, filename.as_bytes(), *num_segments, *load_addr)
            }
            Record::Segment(seg) => e.segment(s, seg.vaddr, seg.memsz),
            other => panic!("not a stream record: {other:?}"),
        }
    }
    if trailer {
        e.trailer(s);
    }
    out
}

/// Re-encodes decoded AGGREGATED_ALLOCATIONS records record by record.
pub fn encode_aggregated(header: &Header, records: &[Record]) -> Vec<u8> {
    let mut out = Vec::new();
    header.encode(&mut out);
    let mut e = AggregatedEncoder::new();
    let s = &mut out;
    let mut pending_tid = None;
    let mut iter = records.iter().peekable();
    while let Some(r) = iter.next() {
        match r {
            Record::MemorySnapshot(m) => e.memory_snapshot(s, m),
            Record::ContextSwitch { tid } => pending_tid = Some(*tid),
            Record::Thread { tid, name } => {
                assert_eq!(pending_tid.take(), Some(*tid));
                e.thread(s, *tid, name.as_bytes())
            }
            Record::MemoryMapStart => {
                let mut images = Vec::new();
                while let Some(Record::SegmentHeader { filename, num_segments, load_addr }) = iter.peek().cloned() {
                    iter.next();
                    let segments = (0..*num_segments)
                        .map(|_| match iter.next() {
                            Some(Record::Segment(seg)) => *seg,
                            other => panic!("expected segment, got {other:?}"),
                        })
                        .collect();
                    images.push(ImageSegments { filename: filename.clone(), load_addr: *load_addr, segments });
                }
                e.memory_map(s, &images)
            }
            Record::CodeObject(c) => e.code_object(s, c),
            Record::NativeFrame(f) => e.native_frame(s, f),
            Record::PythonFrame { frame_id, frame } => e.python_frame(s, *frame_id, frame),
            Record::PythonTraceNode(n) => e.python_trace_node(s, n),
            Record::SurvivingObject(o) => e.surviving_object(s, o, header.native_traces),
            Record::AggregatedAllocation(a) => e.allocation(s, a),
            other => panic!("not an aggregated record: {other:?}"),
        }
    }
    e.trailer(s);
    out
}
