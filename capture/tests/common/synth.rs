//! Synthetic captures written with our encoders, for Memray to read back.

use memray_capture::*;

pub fn header(format: FileFormat, native_traces: bool) -> Header {
    Header {
        python_version: 0x030c01f0,
        native_traces,
        file_format: format,
        start_time_ms: 1_700_000_000_000,
        end_time_ms: 1_700_000_000_000,
        command_line: "synthetic.py --flag".into(),
        pid: 4242,
        main_tid: 1,
        skipped_frames_on_main_tid: 0,
        python_allocator: PythonAllocator::Pymalloc,
        libdest: "/usr/lib/python3.12".into(),
        site_packages: vec!["/usr/lib/python3.12/site-packages".into()],
        sys_path: vec!["/work".into(), "/usr/lib/python3.12".into()],
        ..Header::default()
    }
}

/// A CPython 3.11+ location table entry without columns ("no column" form, code 13):
/// `lines` code units, line delta `delta`.
fn linetable(entries: &[(u8, i32)]) -> Vec<u8> {
    let mut t = Vec::new();
    for &(units, delta) in entries {
        t.push(0x80 | (13 << 3) | (units - 1));
        let mut v = if delta < 0 { ((-delta as u32) << 1) | 1 } else { (delta as u32) << 1 };
        while v >= 64 {
            t.push(0x40 | (v & 0x3f) as u8);
            v >>= 6;
        }
        t.push(v as u8);
    }
    t
}

/// An ALL_ALLOCATIONS capture: two threads, nested frames, every allocator kind, a
/// memory map and native frames when `native`. Returns the bytes and the records'
/// expected summary (allocation count, total bytes allocated).
pub fn stream_capture(native: bool) -> (Vec<u8>, u64) {
    let mut h = header(FileFormat::AllAllocations, native);
    let mut out = Vec::new();
    h.encode(&mut out);
    let header_len = out.len();
    let mut e = StreamEncoder::new();
    let s = &mut out;
    e.memory_record(s, 30 << 20, 5);
    if native {
        e.memory_map_start(s);
        e.segment_header(s, b"/usr/bin/python3.12", 2, 0x5555_0000_0000);
        e.segment(s, 0, 0x1000);
        e.segment(s, 0x1000, 0x20_0000);
        e.native_trace_index(s, 0x5555_0000_1234, 0);
        e.native_trace_index(s, 0x5555_0000_2345, 1);
        e.native_trace_index(s, 0x5555_0000_0100, 1);
    }
    e.code_object(s, 1, b"<module>", b"/src/synthetic.py", 1, &linetable(&[(4, 0), (4, 9)]));
    e.code_object(s, 2, b"allocate", b"/src/synthetic.py", 3, &linetable(&[(2, 0), (6, 2)]));
    e.code_object(s, 3, b"worker_main", b"/src/worker.py", 120, &[]);
    e.context_switch(s, 1);
    e.thread_record(s, b"MainThread");
    e.frame_push(s, 1, 10, true);
    e.frame_push(s, 2, 6, false);
    let nid = |i| if native { i } else { 0 };
    e.allocation(s, 0x7f00_0000_1000, 1024, Allocator::Malloc, nid(2), native);
    e.allocation(s, 0x7f00_0000_2000, 4096, Allocator::Calloc, nid(3), native);
    e.allocation(s, 0x7f00_0000_1000, 0, Allocator::Free, 0, native);
    e.allocation(s, 0x7f00_0000_3000, 2048, Allocator::Realloc, nid(2), native);
    e.allocation(s, 0x7f10_0000_0000, 1 << 20, Allocator::Mmap, nid(3), native);
    e.allocation(s, 0x7f10_0000_0000, 4096, Allocator::Munmap, nid(3), native);
    e.allocation(s, 0x7f00_0000_4000, 64, Allocator::PosixMemalign, nid(2), native);
    e.allocation(s, 0x7f00_0000_5000, 128, Allocator::AlignedAlloc, nid(2), native);
    e.allocation(s, 0x7f00_0000_6000, 256, Allocator::Valloc, nid(2), native);
    e.frame_pop(s, 1);
    e.frame_push(s, 2, 12, false);
    e.allocation(s, 0x7f20_0000_0010, 48, Allocator::PymallocMalloc, nid(2), native);
    e.allocation(s, 0x7f20_0000_0040, 32, Allocator::PymallocCalloc, nid(2), native);
    e.allocation(s, 0x7f20_0000_0010, 0, Allocator::PymallocFree, 0, native);
    e.allocation(s, 0x7f20_0000_0080, 96, Allocator::PymallocRealloc, nid(2), native);
    e.object_record(s, 0x7f20_0000_0080, true, nid(2), native);
    e.object_record(s, 0x7f20_0000_0080, false, 0, native);
    e.context_switch(s, 2);
    e.thread_record(s, b"worker");
    e.frame_push(s, 3, 0, true);
    for i in 0..40u64 {
        // 40 distinct addresses: exercises cache hits and misses past 15 entries.
        e.allocation(s, 0x7f30_0000_0000 + 64 * (i % 20), 100 + i, Allocator::Malloc, nid(3), native);
    }
    e.memory_record(s, 31 << 20, 15);
    e.frame_pop(s, 1);
    e.context_switch(s, 1);
    e.frame_pop(s, 2);
    e.trailer(s);
    // Final header rewrite, as the tracker does at exit: same length, new counts.
    h.n_allocations = e.n_allocations();
    h.end_time_ms = 1_700_000_000_020;
    let mut final_header = Vec::new();
    h.encode(&mut final_header);
    assert_eq!(final_header.len(), header_len);
    out[..header_len].copy_from_slice(&final_header);
    let allocated = 1024 + 4096 + 2048 + (1 << 20) + 64 + 128 + 256 + 48 + 32 + 96 + (0..40).map(|i| 100 + i).sum::<u64>();
    (out, allocated)
}

/// An AGGREGATED_ALLOCATIONS capture with two threads and a three-node Python tree.
pub fn aggregated_capture(native: bool) -> AggregatedCapture {
    let header = header(FileFormat::AggregatedAllocations, native);
    let code = |id, function: &str, firstlineno, lt: Vec<u8>| CodeObject {
        id,
        function: function.into(),
        filename: "/src/synthetic.py".into(),
        firstlineno,
        linetable: lt,
    };
    let row = |tid, allocator, frame_index, hwm: u64, leaked: u64, bytes: u64| AggregatedAllocation {
        tid,
        allocator,
        native_frame_id: if native { 2 } else { 0 },
        frame_index,
        native_segment_generation: if native { 1 } else { 0 },
        n_allocations_in_high_water_mark: hwm,
        n_allocations_leaked: leaked,
        bytes_in_high_water_mark: hwm * bytes,
        bytes_leaked: leaked * bytes,
    };
    AggregatedCapture {
        header,
        memory_snapshots: vec![
            MemorySnapshot { ms_since_epoch: 1_700_000_000_005, rss: 30 << 20, heap: 0 },
            MemorySnapshot { ms_since_epoch: 1_700_000_000_015, rss: 31 << 20, heap: 5000 },
        ],
        threads: vec![(1, "MainThread".into()), (2, "worker".into())],
        memory_maps: if native {
            vec![vec![ImageSegments {
                filename: "/usr/bin/python3.12".into(),
                load_addr: 0x5555_0000_0000,
                segments: vec![Segment { vaddr: 0, memsz: 0x1000 }, Segment { vaddr: 0x1000, memsz: 0x20_0000 }],
            }]]
        } else {
            vec![]
        },
        code_objects: vec![
            code(1, "<module>", 1, linetable(&[(4, 0), (4, 9)])),
            code(2, "allocate", 3, linetable(&[(2, 0), (6, 2)])),
            code(3, "worker_main", 120, vec![]),
        ],
        native_frames: if native {
            vec![NativeFrame { ip: 0x5555_0000_1234, parent: 0 }, NativeFrame { ip: 0x5555_0000_2345, parent: 1 }]
        } else {
            vec![]
        },
        python_frames: vec![
            PythonFrame { code_object_id: 1, instruction_offset: 10, is_entry: true },
            PythonFrame { code_object_id: 2, instruction_offset: 6, is_entry: false },
            PythonFrame { code_object_id: 3, instruction_offset: 0, is_entry: true },
        ],
        python_trace_tree: vec![
            TraceNode { frame_id: 0, parent_index: 0 },
            TraceNode { frame_id: 1, parent_index: 1 },
            TraceNode { frame_id: 2, parent_index: 0 },
        ],
        surviving_objects: vec![],
        allocations: vec![
            row(1, Allocator::Malloc, 2, 3, 1, 1000),
            row(1, Allocator::Calloc, 2, 1, 0, 4096),
            row(2, Allocator::Mmap, 3, 1, 1, 1 << 20),
            row(2, Allocator::Malloc, 3, 0, 0, 1), // skipped: both counts are 0
        ],
    }
}
