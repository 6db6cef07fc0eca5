//! Truncated, padded and corrupted captures: never a panic or a hang, and errors that say
//! what is wrong.

mod common;

use std::io::Write;

use common::*;
use memray_capture::*;

/// Hands out one byte per `read`, so the reader never has a whole record buffered and
/// decodes everything on its checked path (no fast path).
struct ByteByByte<'a>(&'a [u8]);

impl std::io::Read for ByteByByte<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match (self.0.split_first(), buf.first_mut()) {
            (Some((&b, rest)), Some(out)) => {
                *out = b;
                self.0 = rest;
                Ok(1)
            }
            _ => Ok(0),
        }
    }
}

/// Decodes to the end; returns the records and the error that stopped it, if any.
fn decode_all(bytes: &[u8]) -> (Vec<Record>, Option<CaptureError>) {
    decode_all_from(bytes)
}

fn decode_all_from(source: impl std::io::Read) -> (Vec<Record>, Option<CaptureError>) {
    let mut r = match Reader::new(source) {
        Ok(r) => r,
        Err(e) => return (Vec::new(), Some(e)),
    };
    let mut records = Vec::new();
    // Each record consumes at least one byte, so the loop ends unless the reader loops
    // (the captures here are small: a runaway loop is caught by the record bound).
    for _ in 0..10_000_000 {
        match r.next_record() {
            Ok(Some(rec)) => records.push(rec),
            Ok(None) => {
                assert!(r.next_record().unwrap().is_none(), "stays at the end");
                return (records, None);
            }
            Err(e) => {
                assert!(r.next_record().unwrap().is_none(), "ends after an error");
                return (records, Some(e));
            }
        }
    }
    panic!("reader did not terminate");
}

fn small_captures() -> Vec<(&'static str, Vec<u8>)> {
    let mut agg = Vec::new();
    synth::aggregated_capture(true).encode(&mut agg);
    vec![("stream", synth::stream_capture(false).0), ("stream_native", synth::stream_capture(true).0), ("aggregated", agg)]
}

#[test]
fn truncation_at_every_offset() {
    for (name, bytes) in small_captures().into_iter().chain([("plain.bin", raw_bytes("plain.bin"))]) {
        let (full, err) = decode_all(&bytes);
        assert!(err.is_none(), "{name}");
        let header_len = Header::decode(&bytes).unwrap().1;
        for cut in 0..bytes.len() {
            let (records, err) = decode_all(&bytes[..cut]);
            assert_eq!(records[..], full[..records.len()], "{name} cut at {cut}: a prefix of the records");
            match err {
                None => assert!(cut >= header_len, "{name} cut at {cut}"),
                Some(CaptureError::Empty) => assert_eq!(cut, 0),
                Some(CaptureError::Truncated { offset, .. }) => {
                    assert!(offset as usize <= cut, "{name} cut at {cut}: offset {offset}");
                    if cut < header_len {
                        assert_eq!(offset, 0);
                    }
                }
                Some(other) => panic!("{name} cut at {cut}: unexpected {other}"),
            }
        }
    }
}

#[test]
fn truncated_lz4_at_every_offset() {
    let data = std::fs::read(fixture("aggregated.bin")).unwrap();
    let (full, _) = decode_all(&data);
    let mut kinds = [0; 2];
    for cut in 0..data.len() {
        let (records, err) = decode_all(&data[..cut]);
        assert_eq!(records[..], full[..records.len()], "cut at {cut}");
        match err {
            Some(CaptureError::Empty) => assert!(cut <= 4, "cut at {cut}"),
            // A cut inside the 4-byte LZ4 magic leaves something that is not a capture.
            Some(CaptureError::NotACapture) => assert!(cut < 4),
            Some(CaptureError::Truncated { .. }) => kinds[0] += 1,
            Some(CaptureError::Decompression { .. }) => kinds[1] += 1,
            Some(other) => panic!("cut at {cut}: unexpected {other}"),
            // Only the end mark (or the zero padding's blocks) after the trailer was cut.
            None => assert_eq!(records, full, "cut at {cut}: a cut LZ4 frame must not look complete"),
        }
    }
    eprintln!("truncated: {}, decompression errors: {}", kinds[0], kinds[1]);
}

#[test]
fn corruption_at_every_offset_never_panics() {
    for (name, bytes) in small_captures() {
        for pos in 0..bytes.len() {
            for v in [0x00, 0xff, 0x80, 0x0f, bytes[pos] ^ 0x01, bytes[pos] ^ 0x40] {
                let mut b = bytes.clone();
                b[pos] = v;
                // The fast path (whole records buffered) and the checked path (one byte
                // at a time) must agree on every record and on the error.
                let (fast, fast_err) = decode_all(&b);
                let (checked, checked_err) = decode_all_from(ByteByByte(&b));
                assert_eq!(fast, checked, "{name}: byte {pos} set to {v:#x}");
                assert_eq!(fast_err.map(|e| e.to_string()), checked_err.map(|e| e.to_string()), "{name}: byte {pos} set to {v:#x}");
            }
        }
        // And compressed: corrupt the LZ4 stream itself.
        let mut enc = lz4_frame_encoder(Vec::new());
        enc.write_all(&bytes).unwrap();
        let lz = enc.finish().unwrap();
        for pos in 0..lz.len() {
            let mut b = lz.clone();
            b[pos] ^= 0x5a;
            let _ = decode_all(&b);
        }
        let _ = name;
    }
}

#[test]
fn huge_lengths_are_refused_without_allocating() {
    // A CODE_OBJECT claiming a 2^60-byte line table.
    let mut bytes = Vec::new();
    Header::default().encode(&mut bytes);
    bytes.extend_from_slice(&[tag::CODE_OBJECT, 1, b'f', 0, b'x', 0, 0]);
    bytes.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x10]);
    let (_, err) = decode_all(&bytes);
    let msg = err.unwrap().to_string();
    assert!(msg.contains("line table of 1152921504606846976 bytes exceeds"), "{msg}");
    // An over-long varint.
    let mut bytes = Vec::new();
    Header::default().encode(&mut bytes);
    bytes.push(tag::MEMORY_RECORD);
    bytes.extend_from_slice(&[0xff; 11]);
    let (_, err) = decode_all(&bytes);
    assert!(err.unwrap().to_string().contains("varint longer than 10 bytes"));
}

#[test]
fn error_messages() {
    let msg = |bytes: &[u8]| Reader::new(bytes).err().expect("an error").to_string();
    assert_eq!(msg(b"PK\x03\x04 this is a zip file"), "not a memray capture file");
    assert_eq!(msg(b""), "capture file is empty (the tracked process may have been killed before writing it)");
    let mut v12 = Vec::new();
    Header { version: 12, ..Header::default() }.encode(&mut v12);
    assert_eq!(msg(&v12), "capture format version 12 is not supported (expected 13)");
    let mut h = Vec::new();
    Header::default().encode(&mut h);
    assert_eq!(msg(&h[..20]), "capture is truncated: incomplete header at byte offset 0");
    assert_eq!(msg(b"memr"), "capture is truncated: incomplete header at byte offset 0");
    let mut bad_format = h.clone();
    bad_format[16] = 7;
    assert_eq!(msg(&bad_format), "corrupt capture at byte offset 0: unknown file format 7 in header");

    // Cut inside the 9-byte CONTEXT_SWITCH that follows the header.
    let (bytes, _) = synth::stream_capture(false);
    let header_len = Header::decode(&bytes).unwrap().1;
    let mut r = Reader::new(&bytes[..]).unwrap();
    let mut offset = 0;
    while let Some(rec) = r.next_record().unwrap() {
        if let Record::ContextSwitch { .. } = rec {
            break;
        }
        offset = r.offset();
    }
    let cut = &bytes[..offset as usize + 4];
    let (_, err) = decode_all(cut);
    let err = err.unwrap();
    assert!(err.is_truncation());
    assert_eq!(err.to_string(), format!("capture is truncated: incomplete CONTEXT_SWITCH record at byte offset {offset}"));
    assert!(offset as usize > header_len);

    // Unknown record type, and records that need a thread before any CONTEXT_SWITCH.
    let mut b = h.clone();
    b.push(3);
    assert_eq!(decode_all(&b).1.unwrap().to_string(), format!("corrupt capture at byte offset {}: unknown record type 0x03", h.len()));
    let mut b = h.clone();
    b.extend_from_slice(&[tag::ALLOCATION | 6 | (15 << 3), 2, 16]);
    assert!(decode_all(&b).1.unwrap().to_string().ends_with("ALLOCATION before any CONTEXT_SWITCH"));
    let mut b = h.clone();
    b.extend_from_slice(&[tag::SEGMENT, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    assert!(decode_all(&b).1.unwrap().to_string().ends_with("SEGMENT record outside a SEGMENT_HEADER"));
}

#[test]
fn zero_padding_ends_the_stream() {
    let (bytes, _) = synth::stream_capture(false);
    let (full, _) = decode_all(&bytes);
    let trailerless = &bytes[..bytes.len() - 1];
    // In memory (no known end): a zero tag followed by zeros is padding.
    let mut padded = trailerless.to_vec();
    padded.resize(padded.len() + 5000, 0);
    let (records, err) = decode_all(&padded);
    assert!(err.is_none());
    assert_eq!(records, full);
    // But zeros followed by data are corruption.
    padded.push(1);
    assert!(decode_all(&padded).1.unwrap().to_string().contains("FILLER"));

    // From a file, the padding is cut off before reading, as Memray does.
    let dir = std::env::temp_dir().join(format!("memray-capture-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("padded.bin");
    let mut file = trailerless.to_vec();
    file.resize(file.len() + 70_000, 0);
    std::fs::write(&path, &file).unwrap();
    let mut r = Reader::open(&path).unwrap();
    let mut records = Vec::new();
    while let Some(rec) = r.next_record().unwrap() {
        records.push(rec);
    }
    assert!(!r.reached_trailer());
    assert_eq!(records, full);
    // A header with nothing after it, padded: its own trailing NULs must still be read.
    let mut only_header = Vec::new();
    Header::default().encode(&mut only_header);
    only_header.resize(only_header.len() + 100, 0);
    std::fs::write(&path, &only_header).unwrap();
    let mut r = Reader::open(&path).unwrap();
    assert!(r.next_record().unwrap().is_none());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn open_reports_missing_file() {
    let err = Reader::open("/nonexistent/capture.bin").err().unwrap();
    assert!(err.to_string().starts_with("cannot open capture file /nonexistent/capture.bin:"));
}

#[test]
fn header_roundtrip_and_rewrite_in_place() {
    let mut h = synth::header(FileFormat::AllAllocations, true);
    h.site_packages.push(String::new()); // empty entries would end the list: skipped
    h.command_line = "a\0b".into(); // interior NUL: cut
    let mut bytes = Vec::new();
    h.encode(&mut bytes);
    assert_eq!(bytes.len(), h.encoded_len());
    let (back, len) = Header::decode(&bytes).unwrap();
    assert_eq!(len, bytes.len());
    assert_eq!(back.command_line, "a");
    assert_eq!(back.site_packages, vec!["/usr/lib/python3.12/site-packages".to_string()]);
    let mut later = h.clone();
    later.n_allocations = u64::MAX;
    later.end_time_ms = i64::MAX;
    assert_eq!(later.encoded_len(), h.encoded_len());
}

/// `Reader::open` decompresses LZ4 files on a second thread: every cut of a compressed
/// capture (and every corrupted byte of its frame) gives the same records and the same
/// error as decompressing inline from memory.
#[test]
fn threaded_decompression_matches_inline() {
    let dir = std::env::temp_dir().join(format!("memray-capture-lz4-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("cut.bin");
    let describe = |(records, err): (Vec<Record>, Option<CaptureError>)| (records, err.map(|e| e.to_string()));
    for (name, bytes) in small_captures() {
        let mut enc = lz4_frame_encoder(Vec::new());
        enc.write_all(&bytes).unwrap();
        let lz = enc.finish().unwrap();
        let mut variants: Vec<Vec<u8>> = (0..=lz.len()).map(|cut| lz[..cut].to_vec()).collect();
        variants.extend((4..lz.len()).map(|pos| {
            let mut b = lz.clone();
            b[pos] ^= 0x5a;
            b
        }));
        for (i, data) in variants.iter().enumerate() {
            std::fs::write(&path, data).unwrap();
            let inline = describe(decode_all(data));
            let opened = match Reader::open(&path) {
                Ok(mut r) => {
                    let mut records = Vec::new();
                    let err = loop {
                        match r.next_record() {
                            Ok(Some(rec)) => records.push(rec),
                            Ok(None) => break None,
                            Err(e) => break Some(e),
                        }
                    };
                    describe((records, err))
                }
                Err(e) => describe((Vec::new(), Some(e))),
            };
            assert_eq!(opened, inline, "{name}: variant {i} of {}", variants.len());
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}
