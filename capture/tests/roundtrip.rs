//! Property tests: whatever the encoders write, the reader gives back.

mod common;

use memray_capture::*;
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Switch(u64),
    Push(u64, i32, bool),
    Pop(u32),
    Alloc { address: u64, size: u64, allocator: Allocator, native_id: u64 },
    Object { address: u64, created: bool, native_id: u64 },
    Memory(u64, u64),
    Thread(String),
    Code(CodeObject),
    Native(u64, u64),
    Map(Vec<ImageSegments>),
}

fn allocator() -> impl Strategy<Value = Allocator> {
    (1u8..=15).prop_map(|v| Allocator::from_u8(v).unwrap())
}

/// 8-byte aligned addresses, often repeated so the 15-entry cache both hits and misses.
fn address() -> impl Strategy<Value = u64> {
    prop_oneof![(0u64..40).prop_map(|i| 0x7f00_0000_0000 + 8 * i), any::<u64>().prop_map(|a| a & !7),]
}

fn text() -> impl Strategy<Value = String> {
    "[^\u{0}]{0,24}"
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1u64..6).prop_map(Op::Switch),
        (any::<u64>(), any::<i32>(), any::<bool>()).prop_map(|(c, o, e)| Op::Push(c, o, e)),
        (1u32..40).prop_map(Op::Pop),
        (address(), any::<u64>(), allocator(), any::<u64>()).prop_map(|(address, size, allocator, native_id)| Op::Alloc {
            address,
            size,
            allocator,
            native_id
        }),
        (address(), any::<bool>(), any::<u64>()).prop_map(|(address, created, native_id)| { Op::Object { address, created, native_id } }),
        (any::<u64>(), any::<u64>()).prop_map(|(r, t)| Op::Memory(r, t)),
        text().prop_map(Op::Thread),
        (any::<u64>(), text(), text(), any::<i32>(), prop::collection::vec(any::<u8>(), 0..40)).prop_map(
            |(id, function, filename, firstlineno, linetable)| Op::Code(CodeObject { id, function, filename, firstlineno, linetable })
        ),
        (any::<u64>(), any::<u64>()).prop_map(|(ip, p)| Op::Native(ip, p)),
        prop::collection::vec(
            ("/[a-z/]{1,20}", any::<u64>(), prop::collection::vec((any::<u64>(), any::<u64>()), 0..4)).prop_map(
                |(filename, load_addr, segs)| ImageSegments {
                    filename,
                    load_addr,
                    segments: segs.into_iter().map(|(vaddr, memsz)| Segment { vaddr, memsz }).collect(),
                }
            ),
            0..3
        )
        .prop_map(Op::Map),
    ]
}

fn header() -> impl Strategy<Value = Header> {
    (any::<bool>(), any::<i64>(), text(), prop::collection::vec("/[a-z]{1,8}", 0..3), 1u8..=6, any::<u64>()).prop_map(
        |(native_traces, start, command_line, sys_path, pa, n)| Header {
            python_version: 0x030d00f0,
            native_traces,
            start_time_ms: start,
            end_time_ms: start,
            n_allocations: n,
            command_line,
            pid: 77,
            main_tid: 1,
            python_allocator: PythonAllocator::from_u8(pa).unwrap(),
            libdest: "/lib".into(),
            site_packages: sys_path.clone(),
            sys_path,
            ..Header::default()
        },
    )
}

/// Encodes `ops` and returns the bytes and the records a reader must yield.
fn encode(header: &Header, ops: &[Op]) -> (Vec<u8>, Vec<Record>) {
    let mut out = Vec::new();
    header.encode(&mut out);
    let mut e = StreamEncoder::new();
    let mut expected = Vec::new();
    let native = header.native_traces;
    let s = &mut out;
    let mut tid = 1;
    e.context_switch(s, tid);
    expected.push(Record::ContextSwitch { tid });
    for op in ops {
        match op.clone() {
            Op::Switch(t) => {
                tid = t;
                e.context_switch(s, t);
                expected.push(Record::ContextSwitch { tid });
            }
            Op::Push(c, o, is_entry) => {
                e.frame_push(s, c, o, is_entry);
                expected.push(Record::FramePush { tid, code_object_id: c, instruction_offset: o, is_entry });
            }
            Op::Pop(n) => {
                e.frame_pop(s, n);
                let mut left = n;
                while left > 0 {
                    let k = left.min(16);
                    expected.push(Record::FramePop { tid, count: k });
                    left -= k;
                }
            }
            Op::Alloc { address, size, allocator, native_id } => {
                e.allocation(s, address, size, allocator, native_id, native);
                let simple_free = allocator.is_simple_deallocator();
                expected.push(Record::Allocation {
                    tid,
                    address,
                    size: if simple_free { 0 } else { size },
                    allocator,
                    native_frame_id: if native && !simple_free { native_id } else { 0 },
                });
            }
            Op::Object { address, created, native_id } => {
                e.object_record(s, address, created, native_id, native);
                expected.push(Record::Object {
                    tid,
                    address,
                    is_created: created,
                    native_frame_id: if native && created { native_id } else { 0 },
                });
            }
            Op::Memory(rss, ms) => {
                e.memory_record(s, rss, ms);
                expected.push(Record::Memory { rss, ms_since_epoch: ms.wrapping_add(header.start_time_ms as u64) });
            }
            Op::Thread(name) => {
                e.thread_record(s, name.as_bytes());
                expected.push(Record::Thread { tid, name });
            }
            Op::Code(c) => {
                e.code_object(s, c.id, c.function.as_bytes(), c.filename.as_bytes(), c.firstlineno, &c.linetable);
                expected.push(Record::CodeObject(c));
            }
            Op::Native(ip, parent) => {
                e.native_trace_index(s, ip, parent);
                expected.push(Record::NativeFrame(NativeFrame { ip, parent }));
            }
            Op::Map(images) => {
                e.memory_map_start(s);
                expected.push(Record::MemoryMapStart);
                for im in images {
                    e.segment_header(s, im.filename.as_bytes(), im.segments.len() as u64, im.load_addr);
                    expected.push(Record::SegmentHeader {
                        filename: im.filename.clone(),
                        num_segments: im.segments.len() as u64,
                        load_addr: im.load_addr,
                    });
                    for seg in im.segments {
                        e.segment(s, seg.vaddr, seg.memsz);
                        expected.push(Record::Segment(seg));
                    }
                }
            }
        }
    }
    e.trailer(s);
    (out, expected)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn stream_roundtrip(h in header(), ops in prop::collection::vec(op(), 0..120), compress in any::<bool>()) {
        let (bytes, expected) = encode(&h, &ops);
        let bytes = if compress {
            let mut enc = lz4_frame_encoder(Vec::new());
            std::io::Write::write_all(&mut enc, &bytes).unwrap();
            enc.finish().unwrap()
        } else {
            bytes
        };
        let (header, records, trailer) = common::decode_bytes(&bytes).unwrap();
        prop_assert_eq!(header, h);
        prop_assert!(trailer);
        prop_assert_eq!(records, expected);
    }

    /// Unaligned addresses lose their low 3 bits, consistently for hits and misses.
    #[test]
    fn unaligned_addresses(addrs in prop::collection::vec(prop_oneof![0u64..64, any::<u64>()], 1..60)) {
        let h = Header { main_tid: 1, ..Header::default() };
        let ops: Vec<Op> = addrs
            .iter()
            .map(|&address| Op::Alloc { address, size: 1, allocator: Allocator::Malloc, native_id: 0 })
            .collect();
        let (bytes, _) = encode(&h, &ops);
        let (_, records, _) = common::decode_bytes(&bytes).unwrap();
        let got: Vec<u64> = records
            .iter()
            .filter_map(|r| if let Record::Allocation { address, .. } = r { Some(*address) } else { None })
            .collect();
        prop_assert_eq!(got, addrs.iter().map(|a| a & !7).collect::<Vec<_>>());
    }

    #[test]
    fn aggregated_roundtrip(
        h in header(),
        snaps in prop::collection::vec((any::<u64>(), any::<u64>(), any::<u64>()), 0..4),
        threads in prop::collection::vec((any::<u64>(), "[a-z]{1,10}"), 0..3),
        codes in prop::collection::vec((any::<u64>(), text(), any::<i32>(), prop::collection::vec(any::<u8>(), 0..10)), 0..5),
        natives in prop::collection::vec((any::<u64>(), any::<u64>()), 0..6),
        frames in prop::collection::vec((any::<u64>(), any::<i32>(), any::<bool>()), 0..6),
        nodes in prop::collection::vec((any::<u64>(), any::<u64>()), 0..6),
        survivors in prop::collection::vec((any::<u64>(), any::<u64>()), 0..3),
        rows in prop::collection::vec((any::<u64>(), allocator(), any::<[u64; 7]>()), 0..6),
    ) {
        let cap = AggregatedCapture {
            header: Header { file_format: FileFormat::AggregatedAllocations, ..h },
            memory_snapshots: snaps.iter().map(|&(ms_since_epoch, rss, heap)| MemorySnapshot { ms_since_epoch, rss, heap }).collect(),
            threads: threads.clone(),
            memory_maps: vec![vec![ImageSegments { filename: "/bin/x".into(), load_addr: 4096, segments: vec![Segment { vaddr: 0, memsz: 10 }] }]],
            code_objects: codes.iter().map(|(id, f, l, t)| CodeObject { id: *id, function: f.clone(), filename: f.clone(), firstlineno: *l, linetable: t.clone() }).collect(),
            native_frames: natives.iter().map(|&(ip, parent)| NativeFrame { ip, parent }).collect(),
            python_frames: frames.iter().map(|&(code_object_id, instruction_offset, is_entry)| PythonFrame { code_object_id, instruction_offset, is_entry }).collect(),
            python_trace_tree: nodes.iter().map(|&(frame_id, parent_index)| TraceNode { frame_id, parent_index }).collect(),
            surviving_objects: survivors.iter().map(|&(a, n)| SurvivingObject { address: a & !7, native_frame_id: if h.native_traces { n } else { 0 } }).collect(),
            allocations: rows.iter().map(|&(tid, allocator, w)| AggregatedAllocation {
                tid, allocator, native_frame_id: w[0], frame_index: w[1], native_segment_generation: w[2],
                n_allocations_in_high_water_mark: w[3] % 3, n_allocations_leaked: w[4] % 2,
                bytes_in_high_water_mark: w[5], bytes_leaked: w[6],
            }).collect(),
        };
        let mut bytes = Vec::new();
        cap.encode(&mut bytes);
        let (header, records, trailer) = common::decode_bytes(&bytes).unwrap();
        prop_assert!(trailer);
        prop_assert_eq!(&header, &cap.header);
        let mut back = AggregatedCapture { header, ..AggregatedCapture::default() };
        let mut tid = None;
        let mut image: Option<ImageSegments> = None;
        for r in records {
            match r {
                Record::MemorySnapshot(m) => back.memory_snapshots.push(m),
                Record::ContextSwitch { tid: t } => tid = Some(t),
                Record::Thread { tid: t, name } => { prop_assert_eq!(tid, Some(t)); back.threads.push((t, name)) }
                Record::MemoryMapStart => back.memory_maps.push(vec![]),
                Record::SegmentHeader { filename, load_addr, .. } => image = Some(ImageSegments { filename, load_addr, segments: vec![] }),
                Record::Segment(s) => {
                    let mut im = image.take().unwrap();
                    im.segments.push(s);
                    back.memory_maps.last_mut().unwrap().push(im);
                }
                Record::CodeObject(c) => back.code_objects.push(c),
                Record::NativeFrame(f) => back.native_frames.push(f),
                Record::PythonFrame { frame_id, frame } => { prop_assert_eq!(frame_id as usize, back.python_frames.len()); back.python_frames.push(frame) }
                Record::PythonTraceNode(n) => back.python_trace_tree.push(n),
                Record::SurvivingObject(o) => back.surviving_objects.push(o),
                Record::AggregatedAllocation(a) => back.allocations.push(a),
                other => prop_assert!(false, "unexpected {:?}", other),
            }
        }
        let mut expected = cap.clone();
        expected.allocations.retain(|a| a.n_allocations_in_high_water_mark != 0 || a.n_allocations_leaked != 0);
        prop_assert_eq!(back, expected);
    }
}
