//! Captures written by Memray 1.20.0 itself (see tests/fixtures/README.md): we must
//! decode them completely, agree with `memray parse`, and re-encode them byte for byte.

mod common;

use common::*;
use memray_capture::*;

fn allocations(records: &[Record]) -> Vec<(u64, u64, u64, Allocator, u64)> {
    records
        .iter()
        .filter_map(|r| match *r {
            Record::Allocation { tid, address, size, allocator, native_frame_id } => Some((tid, address, size, allocator, native_frame_id)),
            _ => None,
        })
        .collect()
}

fn code_names(records: &[Record]) -> Vec<(String, String)> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::CodeObject(c) => Some((c.function.clone(), c.filename.clone())),
            _ => None,
        })
        .collect()
}

fn thread_names(records: &[Record]) -> Vec<(u64, String)> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Thread { tid, name } => Some((*tid, name.clone())),
            _ => None,
        })
        .collect()
}

/// The two bytearrays of demo.py: 123456 + 1 bytes on the main thread, 654321 + 1 bytes
/// on the "worker" thread.
fn assert_demo_stream(d: &Decoded, allocator: Allocator) {
    let allocs = allocations(&d.records);
    let main = allocs.iter().find(|a| a.2 == 123457).expect("main thread bytearray");
    assert_eq!((main.0, main.3), (1, allocator));
    let worker = allocs.iter().find(|a| a.2 == 654322).expect("worker bytearray");
    assert_eq!((worker.0, worker.3), (2, allocator));
    // Each bytearray is freed again (same address, no size).
    for a in [main, worker] {
        let freed = allocs.iter().any(|f| f.1 == a.1 && f.3.is_simple_deallocator() && f.2 == 0);
        assert!(freed, "allocation at {:#x} is freed", a.1);
    }
    assert_eq!(thread_names(&d.records), vec![(2, "worker".to_string())]);
    let names = code_names(&d.records);
    for f in ["<module>", "main", "alloc"] {
        assert!(names.contains(&(f.to_string(), "demo.py".to_string())), "code object {f}");
    }
    assert!(d.reached_trailer);
    assert_eq!(d.header.n_allocations, allocs.len() as u64, "header counts every ALLOCATION record");
    assert_eq!(d.header.version, 13);
    assert_eq!(d.header.python_version, 0x030c0df0); // compile-time PY_VERSION_HEX of the memray wheel
    assert_eq!(d.header.main_tid, 1);
    assert_eq!(d.header.skipped_frames_on_main_tid, 4);
    assert_eq!(d.header.python_allocator, PythonAllocator::Pymalloc);
    // The fixture was recorded under pyenv's 3.12.1; only the version-specific tail is
    // asserted so the test names no path of the recording machine.
    assert!(d.header.libdest.ends_with("/versions/3.12.1/lib/python3.12"), "{}", d.header.libdest);
    assert_eq!(d.header.site_packages, vec!["/tmp/oracle/lib/python3.12/site-packages".to_string()]);
    assert_eq!(d.header.sys_path.len(), 5);
    assert!(d.header.end_time_ms >= d.header.start_time_ms);
}

#[test]
fn plain() {
    let d = decode_file("plain.bin");
    assert_eq!(d.header.file_format, FileFormat::AllAllocations);
    assert!(!d.header.native_traces);
    assert_eq!(d.header.command_line, "/tmp/oracle/bin/memray run -q -f --no-compress -o plain.bin demo.py");
    assert_eq!(d.header.n_allocations, 195);
    assert_demo_stream(&d, Allocator::Malloc);
    let frees = allocations(&d.records).iter().filter(|a| a.3 == Allocator::Free).count();
    assert_eq!(frees, 88);
    assert_eq!(d.records.iter().filter(|r| matches!(r, Record::CodeObject(_))).count(), 45);
    assert_eq!(d.records.iter().filter(|r| matches!(r, Record::FramePush { .. })).count(), 66);
}

#[test]
fn compressed() {
    let r = Reader::open(fixture("compressed.bin")).unwrap();
    assert!(r.is_compressed());
    let d = decode_file("compressed.bin");
    assert_eq!(d.header.n_allocations, 198);
    assert_demo_stream(&d, Allocator::Malloc);
}

#[test]
fn native() {
    let d = decode_file("native.bin");
    assert!(d.header.native_traces);
    assert_demo_stream(&d, Allocator::Malloc);
    let allocs = allocations(&d.records);
    assert_eq!(allocs.iter().find(|a| a.2 == 123457).unwrap().4, 477);
    assert_eq!(allocs.iter().find(|a| a.2 == 654322).unwrap().4, 530);
    let frames: Vec<NativeFrame> = d.records.iter().filter_map(|r| if let Record::NativeFrame(f) = r { Some(*f) } else { None }).collect();
    assert_eq!(frames.len(), 530);
    assert_eq!(frames[0].parent, 0);
    assert_eq!(frames[1].parent, 1);
    // Every native id used by an allocation names an existing node.
    assert!(allocs.iter().all(|a| a.4 as usize <= frames.len()));
    let headers: Vec<&str> = d
        .records
        .iter()
        .filter_map(|r| if let Record::SegmentHeader { filename, .. } = r { Some(filename.as_str()) } else { None })
        .collect();
    assert_eq!(headers.len(), 56);
    assert!(headers[0].ends_with("/versions/3.12.1/bin/python3.12"), "{}", headers[0]);
    assert_eq!(d.records.iter().filter(|r| matches!(r, Record::Segment(_))).count(), 233);
}

#[test]
fn python_allocators() {
    let d = decode_file("pyalloc.bin");
    assert!(d.header.trace_python_allocators);
    assert_demo_stream(&d, Allocator::PymallocRealloc);
    let allocs = allocations(&d.records);
    assert_eq!(allocs.len(), 5231);
    let mmap = allocs.iter().find(|a| a.3 == Allocator::Mmap).unwrap();
    assert_eq!(mmap.2, 16384);
    assert!(allocs.iter().any(|a| a.3 == Allocator::Munmap && a.1 == mmap.1 && a.2 == 16384));
}

#[test]
fn killed_mid_run() {
    // SIGKILLed while sleeping: zero padding after the data, no trailer, header never
    // rewritten. Reads to the end without error, like Memray.
    let d = decode_file("killed.bin");
    assert!(!d.reached_trailer);
    assert_eq!(d.header.n_allocations, 0);
    let sizes: Vec<u64> = allocations(&d.records).iter().map(|a| a.2).filter(|&s| s > 1000 && s % 1000 == 1).collect();
    assert_eq!(sizes, (1..50).map(|i| i * 1000 + 1).collect::<Vec<_>>());
    assert!(matches!(d.records.last(), Some(Record::Memory { .. })));
    assert_eq!(d.records.iter().filter(|r| matches!(r, Record::Memory { .. })).count(), 127);
}

#[test]
fn aggregated() {
    let d = decode_file("aggregated.bin");
    assert_eq!(d.header.file_format, FileFormat::AggregatedAllocations);
    assert_eq!(d.header.n_allocations, 0, "Memray's aggregating writer never counts");
    assert!(d.reached_trailer);
    let rows: Vec<AggregatedAllocation> =
        d.records.iter().filter_map(|r| if let Record::AggregatedAllocation(a) = r { Some(*a) } else { None }).collect();
    assert_eq!(rows.len(), 13);
    let worker = rows.iter().find(|a| a.bytes_in_high_water_mark == 654322).unwrap();
    assert_eq!((worker.tid, worker.allocator, worker.frame_index), (2, Allocator::Malloc, 66));
    assert_eq!((worker.n_allocations_in_high_water_mark, worker.n_allocations_leaked), (1, 0));
    let main = rows.iter().find(|a| a.bytes_in_high_water_mark == 123457).unwrap();
    assert_eq!((main.tid, main.frame_index), (1, 52));
    let snaps: Vec<MemorySnapshot> =
        d.records.iter().filter_map(|r| if let Record::MemorySnapshot(m) = r { Some(*m) } else { None }).collect();
    assert_eq!(snaps.len(), 3);
    assert_eq!(snaps[2].heap, 1186774);
    assert_eq!(thread_names(&d.records), vec![(2, "worker".to_string())]);
    let nodes = d.records.iter().filter(|r| matches!(r, Record::PythonTraceNode(_))).count();
    assert_eq!(nodes, 66);
    assert_eq!(d.records.iter().filter(|r| matches!(r, Record::PythonFrame { .. })).count(), 64);
}

#[test]
fn aggregated_native() {
    let d = decode_file("aggregated_native.bin");
    assert!(d.header.native_traces);
    assert_eq!(d.records.iter().filter(|r| matches!(r, Record::NativeFrame(_))).count(), 530);
    assert_eq!(d.records.iter().filter(|r| matches!(r, Record::AggregatedAllocation(_))).count(), 14);
}

/// Our `memray parse` rendition equals Memray's output (hashes recorded when the fixtures
/// were made).
#[test]
fn dump_matches_memray_parse() {
    let expected = std::fs::read_to_string(fixture("memray_parse.fnv")).unwrap();
    let mut checked = 0;
    for line in expected.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let mut parts = line.split_whitespace();
        let (name, lines, hash) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
        let mut reader = Reader::open(fixture(name)).unwrap();
        let mut out = Vec::new();
        dump::memray_parse_dump(&mut reader, &mut out).unwrap();
        let count = out.iter().filter(|&&b| b == b'\n').count();
        assert_eq!(count.to_string(), lines, "{name}: line count");
        assert_eq!(format!("{:016x}", fnv1a64(&out)), hash, "{name}: output differs from memray parse");
        checked += 1;
    }
    assert_eq!(checked, 7);
}

/// Decoding then encoding with our encoders reproduces Memray's bytes exactly (up to the
/// trailer; what follows is zero padding).
#[test]
fn reencode_is_byte_identical() {
    for name in ["plain.bin", "compressed.bin", "native.bin", "pyalloc.bin", "killed.bin"] {
        let d = decode_file(name);
        let ours = encode_stream(&d.header, &d.records, d.reached_trailer);
        let theirs = raw_bytes(name);
        assert_eq!(ours[..], theirs[..ours.len()], "{name}");
        assert!(theirs[ours.len()..].iter().all(|&b| b == 0), "{name}: only padding after the data");
    }
    for name in ["aggregated.bin", "aggregated_native.bin"] {
        let d = decode_file(name);
        let ours = encode_aggregated(&d.header, &d.records);
        let theirs = raw_bytes(name);
        assert!(ours.len() <= theirs.len(), "{name}");
        assert!(theirs[ours.len()..].iter().all(|&b| b == 0), "{name}: only padding after the data");
        // AggregatedAllocation's 7 padding bytes are whatever was in memory: compare the rest.
        let mut masked = theirs[..ours.len()].to_vec();
        for body in find_rows(&ours) {
            masked[body + 9..body + 16].fill(0);
        }
        assert_eq!(ours, masked, "{name}");
    }
}

/// Offsets of AGGREGATED_ALLOCATION bodies in our own encoding (found by re-reading it).
fn find_rows(bytes: &[u8]) -> Vec<usize> {
    let mut r = Reader::new(bytes).unwrap();
    let mut rows = Vec::new();
    loop {
        let before = r.offset() as usize;
        match r.next_record().unwrap() {
            Some(Record::AggregatedAllocation(_)) => rows.push(before + 1),
            Some(_) => {}
            None => break,
        }
    }
    rows
}
