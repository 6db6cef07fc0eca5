//! Prints an analysis as JSON, for comparing with Memray's readers:
//! `cargo run --release -p memray-reporter --example analysis_dump -- CAPTURE`.
//!
//! Output: peak and totals, then "hwm" and "leaks": one entry per (thread, Python stack)
//! with the count and bytes live, the stack resolved innermost first with the main
//! thread's hidden frames removed (as Memray's `stack_trace()` returns it).

use std::collections::BTreeMap;

use serde::Serialize;

use memray_reporter::compat::pyjson::dumps;
use memray_reporter::{analyze_file, AnalyzeOptions, Usage};

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: analysis_dump CAPTURE");
        std::process::exit(2);
    };
    let analysis = match analyze_file(&path, AnalyzeOptions { allow_truncated: true }) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{path}: {e}");
            std::process::exit(1);
        }
    };
    let mut hwm: BTreeMap<(u64, u32), Usage> = BTreeMap::new();
    let mut leaks: BTreeMap<(u64, u32), Usage> = BTreeMap::new();
    for u in &analysis.locations {
        for (map, usage) in [(&mut hwm, u.at_peak), (&mut leaks, u.leaked)] {
            if usage.count == 0 && usage.bytes == 0 {
                continue;
            }
            let e = map.entry((u.key.tid, u.key.stack)).or_default();
            e.count += usage.count;
            e.bytes += usage.bytes;
        }
    }
    let rows = |map: &BTreeMap<(u64, u32), Usage>| -> Vec<Row> {
        map.iter()
            .map(|(&(tid, stack), u)| {
                let stack = analysis
                    .stacks
                    .visible_frames(stack, tid)
                    .iter()
                    .map(|&f| {
                        let l = analysis.stacks.resolve(f);
                        (l.function.to_string(), l.filename.to_string(), l.lineno)
                    })
                    .collect();
                Row { tid, n_allocations: u.count, size: u.bytes, stack }
            })
            .collect()
    };
    let doc = Doc {
        peak_memory: analysis.peak_memory,
        n_allocation_records: analysis.n_allocation_records,
        total_allocations: analysis.total_allocations,
        reached_trailer: analysis.reached_trailer,
        hwm: rows(&hwm),
        leaks: rows(&leaks),
    };
    println!("{}", dumps(&doc, Some(2)));
}

#[derive(Serialize)]
struct Row {
    tid: u64,
    n_allocations: u64,
    size: u64,
    /// (function, file, line), innermost first.
    stack: Vec<(String, String, i32)>,
}

#[derive(Serialize)]
struct Doc {
    peak_memory: u64,
    n_allocation_records: u64,
    total_allocations: u64,
    reached_trailer: bool,
    hwm: Vec<Row>,
    leaks: Vec<Row>,
}
