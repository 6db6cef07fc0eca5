//! The analyses against what Memray 1.20 reported for the same captures (see
//! tests/fixtures/README.md for how each capture and reference was made).

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::PathBuf;

use memray_capture::{dump::memray_parse_dump, Reader, Record, StreamEncoder};
use memray_reporter::compat::localtime::format_millis_with_offset;
use memray_reporter::{analyze, analyze_file, Analysis, AnalyzeOptions, ReportError, Stats};
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn load(name: &str) -> Analysis {
    analyze_file(fixture(name), AnalyzeOptions::default()).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn reference(name: &str) -> Value {
    let text = std::fs::read_to_string(fixture(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Captures of CPython 3.10+ (Memray's line numbers are right there).
const MODERN: [&str; 5] = ["memray-py310", "memray-py311-pyalloc", "memray-py312", "memray-py313", "ours-py3.12"];
/// Captures of 3.8/3.9, where Memray 1.20 reports line 0 for code objects with an empty
/// `co_lnotab` (one-line functions); we report their first line.
const OLD: [&str; 2] = ["memray-py39", "ours-py3.8"];

fn our_stats_json(name: &str, num_largest: usize) -> Value {
    let analysis = load(&format!("{name}.bin"));
    let stats = Stats::compute(&analysis, num_largest).unwrap();
    serde_json::from_str(&stats.to_json()).unwrap()
}

/// Drops the metadata timestamps (local-time strings), checked separately.
fn without_times(mut v: Value) -> (Value, String, String) {
    let md = v["metadata"].as_object_mut().unwrap();
    let start = md.remove("start_time").unwrap().as_str().unwrap().to_string();
    let end = md.remove("end_time").unwrap().as_str().unwrap().to_string();
    (v, start, end)
}

#[test]
fn stats_json_equals_memray() {
    for name in MODERN {
        let (ours, _, _) = without_times(our_stats_json(name, 5));
        let (theirs, _, _) = without_times(reference(&format!("{name}.stats.json")));
        assert_eq!(ours, theirs, "{name}");
    }
}

#[test]
fn stats_json_on_old_pythons_differs_only_in_fixed_lines() {
    for name in OLD {
        let (mut ours, _, _) = without_times(our_stats_json(name, 5));
        let (mut theirs, _, _) = without_times(reference(&format!("{name}.stats.json")));
        for key in ["top_allocations_by_size", "top_allocations_by_count"] {
            let (a, b) = (ours[key].take(), theirs[key].take());
            let (a, b) = (a.as_array().unwrap(), b.as_array().unwrap());
            assert_eq!(a.len(), b.len(), "{name} {key}");
            for (x, y) in a.iter().zip(b) {
                let (lx, ly) = (x["location"].as_str().unwrap(), y["location"].as_str().unwrap());
                let same_place = lx == ly || (ly.ends_with(":0") && lx.rsplit_once(':').unwrap().0 == &ly[..ly.len() - 2]);
                assert!(same_place, "{name} {key}: {lx} vs {ly}");
                assert_eq!(x.get("size"), y.get("size"));
                assert_eq!(x.get("count"), y.get("count"));
            }
        }
        assert_eq!(ours, theirs, "{name}");
    }
    // The one-line functions' real lines.
    let v = our_stats_json("memray-py39", 5);
    let tops: Vec<&str> = v["top_allocations_by_size"].as_array().unwrap().iter().map(|x| x["location"].as_str().unwrap()).collect();
    assert!(tops.contains(&"one_liner:/tmp/rep/fx/fixture_workload.py:16"), "{tops:?}");
    assert!(tops.contains(&"other_one_liner:/tmp/rep/fx/fixture_workload.py:19"), "{tops:?}");
}

#[test]
fn concrete_figures_of_a_312_capture() {
    let a = load("memray-py312.bin");
    assert!(a.reached_trailer);
    assert_eq!(a.total_allocations, 26);
    assert_eq!(a.total_bytes_allocated, 4_444_161);
    assert_eq!(a.peak_memory, 3_355_732);
    assert_eq!(a.n_allocation_records, 44);
    let s = Stats::compute(&a, 5).unwrap();
    let names: Vec<String> = s.allocator_distribution.iter().map(|(al, n)| format!("{}={n}", al.name())).collect();
    assert_eq!(names, ["malloc=16", "calloc=7", "mmap=3"]);
    let top = memray_reporter::render::format::format_location(s.top_allocations_by_size[0].0.as_ref());
    assert_eq!((top.as_str(), s.top_allocations_by_size[0].1), ("main:/tmp/rep/fx/fixture_workload.py:40", 3_145_729));
    assert_eq!(s.top_modules_by_allocation_size[0].module, "fixture_workload");
    assert_eq!(s.top_modules_by_allocation_size[0].total_bytes, 4_411_329);
}

#[test]
fn stats_text_equals_memray() {
    let a = load("memray-py312.bin");
    let text = Stats::compute(&a, 5).unwrap().render_text(false);
    assert_eq!(text, std::fs::read_to_string(fixture("memray-py312.stats.txt")).unwrap());
    let a = load("ours-py3.12.bin");
    let text = Stats::compute(&a, 3).unwrap().render_text(false);
    assert_eq!(text, std::fs::read_to_string(fixture("ours-py3.12.stats-n3.txt")).unwrap());
}

#[test]
fn timestamps_format_like_memray() {
    // The references were written in UTC.
    for name in MODERN {
        let a = load(&format!("{name}.bin"));
        let (_, start, end) = without_times(reference(&format!("{name}.stats.json")));
        assert_eq!(format_millis_with_offset(a.header.start_time_ms, 0), start);
        assert_eq!(format_millis_with_offset(a.header.end_time_ms, 0), end);
    }
}

/// Per (thread, resolved stack): bytes and count, from Memray's `FileReader` dump.
fn reader_rows(v: &Value, mode: &str, with_lines: bool) -> BTreeMap<(u64, String), (u64, u64)> {
    let mut out = BTreeMap::new();
    for r in v[mode].as_array().unwrap() {
        let stack: Vec<String> = r["stack"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                let f = f.as_array().unwrap();
                let line = if with_lines { f[2].to_string() } else { String::new() };
                format!("{}:{}:{line}", f[0].as_str().unwrap(), f[1].as_str().unwrap())
            })
            .collect();
        let e = out.entry((r["tid"].as_u64().unwrap(), stack.join("|"))).or_insert((0, 0));
        e.0 += r["size"].as_u64().unwrap();
        e.1 += r["n_allocations"].as_u64().unwrap();
    }
    out
}

fn our_rows(a: &Analysis, leaks: bool, with_lines: bool) -> BTreeMap<(u64, String), (u64, u64)> {
    let mut out = BTreeMap::new();
    for u in &a.locations {
        let usage = if leaks { u.leaked } else { u.at_peak };
        if usage.count == 0 && usage.bytes == 0 {
            continue;
        }
        let stack: Vec<String> = a
            .stacks
            .visible_frames(u.key.stack, u.key.tid)
            .into_iter()
            .map(|f| {
                let l = a.stacks.resolve(f);
                let line = if with_lines { l.lineno.to_string() } else { String::new() };
                format!("{}:{}:{line}", l.function, l.filename)
            })
            .collect();
        let e = out.entry((u.key.tid, stack.join("|"))).or_insert((0, 0));
        e.0 += usage.bytes;
        e.1 += usage.count;
    }
    out
}

#[test]
fn high_water_mark_and_leaks_equal_memray_readers() {
    let all: Vec<&str> = MODERN.iter().chain(OLD.iter()).copied().chain(["memray-py312-aggregated"]).collect();
    for name in all {
        let a = load(&format!("{name}.bin"));
        let r = reference(&format!("{name}.readers.json"));
        let with_lines = !OLD.contains(&name);
        assert_eq!(a.peak_memory, r["metadata"]["peak_memory"].as_u64().unwrap(), "{name} peak");
        assert_eq!(a.n_allocation_records, r["metadata"]["total_allocations"].as_u64().unwrap(), "{name}");
        assert_eq!(our_rows(&a, false, with_lines), reader_rows(&r, "hwm", with_lines), "{name} hwm");
        assert_eq!(our_rows(&a, true, with_lines), reader_rows(&r, "leaks", with_lines), "{name} leaks");
    }
}

#[test]
fn aggregated_capture() {
    let a = load("memray-py312-aggregated.bin");
    assert!(a.is_aggregated());
    assert_eq!(a.peak_memory, 3_355_732);
    assert!(matches!(Stats::compute(&a, 5), Err(ReportError::AggregatedStats)));
    let leaked: u64 = a.locations.iter().map(|l| l.leaked.bytes).sum();
    let r = reference("memray-py312-aggregated.readers.json");
    let expected: u64 = r["leaks"].as_array().unwrap().iter().map(|x| x["size"].as_u64().unwrap()).sum();
    assert_eq!(leaked, expected);
    assert!(a.stacks.n_stacks() > 0 && a.stacks.n_frames() > 0);
}

#[test]
fn parse_dump_equals_memray() {
    let mut reader = Reader::open(fixture("memray-py312.bin")).unwrap();
    let mut out = Vec::new();
    memray_parse_dump(&mut reader, &mut out).unwrap();
    assert_eq!(String::from_utf8(out).unwrap(), std::fs::read_to_string(fixture("memray-py312.parse.txt")).unwrap());
}

/// The fixture re-encoded uncompressed, so it can be cut at any byte.
fn plain_bytes(name: &str) -> Vec<u8> {
    let mut reader = Reader::open(fixture(name)).unwrap();
    let header = reader.header().clone();
    let mut out = Vec::new();
    header.encode(&mut out);
    let mut e = StreamEncoder::new();
    let native = header.native_traces;
    while let Some(r) = reader.next_record().unwrap() {
        let s = &mut out;
        match r {
            Record::ContextSwitch { tid } => e.context_switch(s, tid),
            Record::FramePush { code_object_id, instruction_offset, is_entry, .. } => {
                e.frame_push(s, code_object_id, instruction_offset, is_entry)
            }
            Record::FramePop { count, .. } => e.frame_pop(s, count),
            Record::Allocation { address, size, allocator, native_frame_id, .. } => {
                e.allocation(s, address, size, allocator, native_frame_id, native)
            }
            Record::Object { address, is_created, native_frame_id, .. } => e.object_record(s, address, is_created, native_frame_id, native),
            Record::Memory { rss, ms_since_epoch } => e.memory_record(s, rss, ms_since_epoch.wrapping_sub(header.start_time_ms as u64)),
            Record::Thread { name, .. } => e.thread_record(s, name.as_bytes()),
            Record::CodeObject(c) => e.code_object(s, c.id, c.function.as_bytes(), c.filename.as_bytes(), c.firstlineno, &c.linetable),
            Record::NativeFrame(f) => e.native_trace_index(s, f.ip, f.parent),
            Record::MemoryMapStart => e.memory_map_start(s),
            Record::SegmentHeader { filename, num_segments, load_addr } => {
                e.segment_header(s, filename.as_bytes(), num_segments, load_addr)
            }
            Record::Segment(seg) => e.segment(s, seg.vaddr, seg.memsz),
            other => panic!("unexpected record {other:?}"),
        }
    }
    e.trailer(&mut out);
    out
}

#[test]
fn truncated_and_corrupt_captures_never_panic() {
    let bytes = plain_bytes("memray-py312.bin");
    let full = analyze(Reader::new(Cursor::new(bytes.clone())).unwrap(), AnalyzeOptions::default()).unwrap();
    assert_eq!(full.peak_memory, 3_355_732);
    let mut errors = 0;
    for cut in 0..bytes.len() {
        let data = bytes[..cut].to_vec();
        match Reader::new(Cursor::new(data)) {
            Err(_) => errors += 1,
            Ok(reader) => {
                // Strict: a cut inside a record is an error; lenient: a partial result.
                if analyze(reader, AnalyzeOptions::default()).is_err() {
                    errors += 1;
                    let reader = Reader::new(Cursor::new(bytes[..cut].to_vec())).unwrap();
                    let partial = analyze(reader, AnalyzeOptions { allow_truncated: true });
                    if let Ok(p) = partial {
                        assert!(!p.reached_trailer);
                        assert!(p.total_allocations <= full.total_allocations);
                    }
                }
            }
        }
    }
    assert!(errors > bytes.len() / 2, "most cuts land inside a record or the header");
    // Flip every byte after the header in turn: errors or results, never a panic.
    let header_len = full.header.encoded_len();
    for i in header_len..bytes.len() {
        let mut data = bytes.clone();
        data[i] ^= 0xa5;
        if let Ok(reader) = Reader::new(Cursor::new(data)) {
            let _ = analyze(reader, AnalyzeOptions::default()).map(|a| Stats::compute(&a, 5));
        }
    }
}
