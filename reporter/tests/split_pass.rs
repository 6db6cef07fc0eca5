//! The reading pass split over two threads (`analyze`, `analyze_reader_over_time` without
//! temporal intervals) against the same analysis fed record by record on one thread.
//! The synthetic capture is long enough to cross many batches, and mixes every kind of
//! heap change: allocations, frees, reallocs, an address reused while live, frees of
//! unknown addresses, and mmap ranges split and shrunk by partial munmaps.

use std::io::Cursor;
use std::path::PathBuf;

use memray_capture::{Allocator, Reader, StreamEncoder};
use memray_reporter::engine::temporal::{analyze_reader_over_time, TimelineAnalyzer, TimelineOptions};
use memray_reporter::{analyze, Analysis, AnalyzeOptions, Analyzer};

/// xorshift: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn capture(n_records: usize) -> Vec<u8> {
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/memray-py312.bin");
    let mut header = Reader::open(fixture).unwrap().header().clone();
    header.native_traces = false;
    let mut out = Vec::new();
    header.encode(&mut out);
    let mut e = StreamEncoder::new();
    let s = &mut out;
    for code in 1..=4u64 {
        e.code_object(s, code, format!("f{code}").as_bytes(), b"work.py", 1, &[]);
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut live: Vec<u64> = Vec::new();
    let mut maps: Vec<(u64, u64)> = Vec::new();
    let mut depth = 0u32;
    let mut ms = 0u64;
    for i in 0..n_records {
        if i % 997 == 0 {
            // Alternate threads now and then; each keeps its own stack.
            e.context_switch(s, 1 + (i as u64 / 997) % 2);
        }
        let r = rng.next();
        match r % 100 {
            0..=4 if depth < 6 => {
                e.frame_push(s, 1 + r % 4, (r >> 8) as i32 % 50, depth == 0);
                depth += 1;
            }
            5..=8 if depth > 0 => {
                e.frame_pop(s, 1);
                depth -= 1;
            }
            9 => {
                ms += 10;
                e.memory_record(s, 1 << 20 | (r & 0xffff), ms);
            }
            10..=11 => {
                let address = 0x7f00_0000_0000 + (r >> 20) % 64 * 0x10_0000;
                let size = 0x1000 * (1 + (r >> 40) % 16);
                e.allocation(s, address, size, Allocator::Mmap, 0, false);
                maps.push((address, size));
            }
            12 if !maps.is_empty() => {
                // A part of a mapping: its start, its end or its middle.
                let (address, size) = maps[(r >> 10) as usize % maps.len()];
                let pages = size / 0x1000;
                let first = (r >> 30) % pages;
                let n = 1 + (r >> 40) % (pages - first);
                e.allocation(s, address + first * 0x1000, n * 0x1000, Allocator::Munmap, 0, false);
            }
            13..=14 => {
                // Unknown address, or one already live (replaced, never freed).
                let address = if live.is_empty() || r & 1 == 0 { 0x5000_0000 + (r >> 8) % 4096 * 8 } else { live[0] };
                e.allocation(s, address, 24, Allocator::Free, 0, false);
                e.allocation(s, address, 48, Allocator::Malloc, 0, false);
            }
            15..=54 if !live.is_empty() => {
                let k = (r >> 8) as usize % live.len();
                let address = live.swap_remove(k);
                e.allocation(s, address, 0, Allocator::Free, 0, false);
            }
            _ => {
                let address = 0x5555_0000_0000 + (r >> 16) % 200_000 * 16;
                let allocator = if r & 0x100 != 0 { Allocator::Malloc } else { Allocator::Realloc };
                e.allocation(s, address, 1 + (r >> 24) % 5000, allocator, 0, false);
                live.push(address);
            }
        }
    }
    e.trailer(s);
    out
}

fn reader(bytes: &[u8]) -> Reader<Cursor<Vec<u8>>> {
    Reader::new(Cursor::new(bytes.to_vec())).unwrap()
}

fn assert_same(split: &Analysis, inline: &Analysis) {
    assert_eq!(split.n_allocation_records, inline.n_allocation_records);
    assert_eq!(split.total_allocations, inline.total_allocations);
    assert_eq!(split.total_bytes_allocated, inline.total_bytes_allocated);
    assert_eq!(split.peak_memory, inline.peak_memory);
    assert_eq!(split.peak_record_index, inline.peak_record_index);
    assert_eq!(split.final_heap, inline.final_heap);
    assert_eq!(split.count_by_size, inline.count_by_size);
    assert_eq!(split.count_by_allocator, inline.count_by_allocator);
    assert_eq!(split.by_location, inline.by_location);
    assert_eq!(split.by_stack, inline.by_stack);
    assert_eq!(split.locations, inline.locations);
    assert_eq!(split.n_memory_records, inline.n_memory_records);
}

#[test]
fn two_threads_give_what_one_gives() {
    let bytes = capture(300_000);
    let split = analyze(reader(&bytes), AnalyzeOptions::default()).unwrap();

    let mut r = reader(&bytes);
    let mut analyzer = Analyzer::new(r.header().clone());
    while let Some(record) = r.next_record().unwrap() {
        analyzer.feed(record).unwrap();
    }
    let inline = analyzer.finish(r.reached_trailer());

    // The capture exercises what it should: many batches, a real peak, leaks, mappings.
    assert!(inline.n_allocation_records > 200_000, "{}", inline.n_allocation_records);
    assert!(inline.peak_memory > inline.final_heap);
    assert!(inline.final_heap > 0);
    assert!(inline.count_by_allocator.iter().any(|(a, _)| *a == Allocator::Mmap));
    assert!(inline.locations.len() > 20, "{}", inline.locations.len());
    assert_same(&split, &inline);
}

#[test]
fn timeline_on_two_threads_equals_timeline_on_one() {
    let bytes = capture(200_000);
    let options = TimelineOptions { max_records: 64, temporal: None, full_sites: false };
    let split = analyze_reader_over_time(reader(&bytes), options, AnalyzeOptions::default()).unwrap();

    let mut r = reader(&bytes);
    let mut t = TimelineAnalyzer::new(r.header().clone(), options);
    while let Some(record) = r.next_record().unwrap() {
        t.feed(record).unwrap();
    }
    let inline = t.finish(r.reached_trailer());

    // Enough memory records that the units were halved a few times.
    assert!(inline.timeline.stride >= 4, "stride {}", inline.timeline.stride);
    assert_eq!(split.timeline.samples, inline.timeline.samples);
    assert_eq!(split.timeline.unit_peaks, inline.timeline.unit_peaks);
    assert_eq!(split.timeline.stride, inline.timeline.stride);
    assert_same(&split.analysis, &inline.analysis);
}

#[test]
fn a_cut_capture_reads_to_the_cut_on_two_threads() {
    let bytes = capture(100_000);
    let cut = &bytes[..bytes.len() * 2 / 3 + 1];
    let options = AnalyzeOptions { allow_truncated: true };
    let split = analyze(reader(cut), options).unwrap();
    assert!(!split.reached_trailer);
    let full = analyze(reader(&bytes), options).unwrap();
    assert!(split.n_allocation_records < full.n_allocation_records);
    assert!(split.n_allocation_records > full.n_allocation_records / 2);
    // Without leave to stop at the cut, it is an error, and no thread is left behind.
    assert!(analyze(reader(cut), AnalyzeOptions::default()).is_err());
}
