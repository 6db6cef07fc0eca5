//! Prints an analysis as JSON, for comparing with Memray's readers:
//! `cargo run --release -p memray-reporter --example analysis_dump -- CAPTURE`.
//!
//! Output: peak and totals, then "hwm" and "leaks": one entry per (thread, Python stack)
//! with the count and bytes live, the stack resolved innermost first with the main
//! thread's hidden frames removed (as Memray's `stack_trace()` returns it).

use std::collections::BTreeMap;

use memray_reporter::compat::pyjson::Json;
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
    let rows = |map: &BTreeMap<(u64, u32), Usage>| {
        Json::List(
            map.iter()
                .map(|(&(tid, stack), u)| {
                    let frames = analysis.stacks.visible_frames(stack, tid);
                    let stack = frames
                        .iter()
                        .map(|&f| {
                            let l = analysis.stacks.resolve(f);
                            Json::List(vec![Json::str(&*l.function), Json::str(&*l.filename), Json::int(l.lineno)])
                        })
                        .collect();
                    Json::dict([
                        ("tid", Json::int(tid)),
                        ("n_allocations", Json::int(u.count)),
                        ("size", Json::int(u.bytes)),
                        ("stack", Json::List(stack)),
                    ])
                })
                .collect(),
        )
    };
    let doc = Json::dict([
        ("peak_memory", Json::int(analysis.peak_memory)),
        ("n_allocation_records", Json::int(analysis.n_allocation_records)),
        ("total_allocations", Json::int(analysis.total_allocations)),
        ("reached_trailer", Json::Bool(analysis.reached_trailer)),
        ("hwm", rows(&hwm)),
        ("leaks", rows(&leaks)),
    ]);
    println!("{}", doc.to_python_string());
}
