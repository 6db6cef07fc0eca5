//! Memray itself reads what we write. Runs only when MEMRAY_ORACLE names a Memray 1.20
//! executable (e.g. `MEMRAY_ORACLE=/tmp/oracle/bin/memray cargo test -p memray-capture`).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::synth;
use memray_capture::*;

fn oracle() -> Option<PathBuf> {
    std::env::var_os("MEMRAY_ORACLE").map(PathBuf::from)
}

fn run(memray: &Path, args: &[&str]) -> String {
    let out = Command::new(memray).args(args).output().expect("run memray");
    assert!(out.status.success(), "memray {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn our_dump(path: &Path) -> String {
    let mut out = Vec::new();
    dump::memray_parse_dump(&mut Reader::open(path).unwrap(), &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

#[test]
fn memray_reads_our_captures() {
    let Some(memray) = oracle() else {
        eprintln!("MEMRAY_ORACLE not set: skipped");
        return;
    };
    let dir = std::env::temp_dir().join(format!("memray-capture-oracle-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let (plain, allocated) = synth::stream_capture(false);
    let (native, _) = synth::stream_capture(true);
    let mut lz = lz4_frame_encoder(Vec::new());
    lz.write_all(&plain).unwrap();
    let compressed = lz.finish().unwrap();
    let mut agg = Vec::new();
    synth::aggregated_capture(false).encode(&mut agg);
    let mut agg_native = Vec::new();
    synth::aggregated_capture(true).encode(&mut agg_native);

    for (name, bytes) in [
        ("stream.bin", &plain),
        ("stream_native.bin", &native),
        ("stream_lz4.bin", &compressed),
        ("aggregated.bin", &agg),
        ("aggregated_native.bin", &agg_native),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        let theirs = run(&memray, &["parse", path.to_str().unwrap()]);
        assert_eq!(theirs, our_dump(&path), "{name}: memray parse disagrees");
        assert!(theirs.lines().last().unwrap().ends_with("TRAILER"), "{name}: read to the end");
    }

    // The stats reporter replays every allocation with its stack.
    for name in ["stream.bin", "stream_native.bin", "stream_lz4.bin"] {
        let path = dir.join(name);
        let json = dir.join(format!("{name}.json"));
        run(&memray, &["stats", "--json", "-f", "-o", json.to_str().unwrap(), path.to_str().unwrap()]);
        let stats = std::fs::read_to_string(&json).unwrap();
        assert!(stats.contains("\"total_num_allocations\": 50"), "{name}: {stats}");
        assert!(stats.contains(&format!("\"total_bytes_allocated\": {allocated}")), "{name}: {stats}");
        assert!(stats.contains("\"location\": \"allocate:/src/synthetic.py:5\""), "{name}: line from our linetable");
        assert!(stats.contains("\"total_allocations\": 53"), "{name}: header n_allocations");
    }
    // Reporters that rebuild the Python trace tree from an aggregated file.
    for name in ["aggregated.bin", "aggregated_native.bin"] {
        let path = dir.join(name);
        let html = dir.join(format!("{name}.html"));
        run(&memray, &["flamegraph", "-f", "-o", html.to_str().unwrap(), path.to_str().unwrap()]);
        let summary = run(&memray, &["summary", path.to_str().unwrap()]);
        assert!(summary.contains("worker_main"), "{name}: {summary}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
