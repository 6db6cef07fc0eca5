//! `memray transform {gprof2dot,csv,speedscope}`: the peak, leaked or temporary
//! allocations written as files those tools open (Memray 1.20's formats, byte for byte).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use memray_reporter::engine::records::{snapshot_records, SnapshotKind};
use memray_reporter::engine::temporary::temporary_allocations;
use memray_reporter::render::transform::{render, Format};

use super::stats::{capture_failure, check_capture_exists};
use super::tree::TemporaryArgs;

#[derive(Args, Debug)]
pub struct TransformArgs {
    /// Output format: gprof2dot, csv or speedscope
    format: String,
    /// Capture file written by `memray run`
    results: PathBuf,
    /// Output file (default: memray-<format>-<capture name>.<suffix> next to the capture)
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Overwrite the output file if it exists
    #[arg(short, long)]
    force: bool,
    /// Show memory leaks instead of peak memory usage
    #[arg(long, conflicts_with_all = ["temporary_allocation_threshold", "temporary_allocations"])]
    leaks: bool,
    #[command(flatten)]
    temporary: TemporaryArgs,
}

/// `pathlib`'s `with_suffix` on a file name.
fn with_suffix(name: &str, suffix: &str) -> String {
    let stem = match name.rfind('.') {
        Some(i) if i > 0 && i < name.len() - 1 => &name[..i],
        _ => name,
    };
    format!("{stem}{suffix}")
}

/// Memray's default: `memray-<format>-<name with the suffix, minus "memray-">` beside
/// the capture.
pub fn default_output(results: &Path, reporter: &str, suffix: &str) -> PathBuf {
    let name = results.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let name = with_suffix(&name, suffix);
    let name = name.strip_prefix("memray-").unwrap_or(&name);
    results.with_file_name(format!("memray-{reporter}-{name}"))
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").map(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file())).unwrap_or(false)
}

pub fn run(args: TransformArgs) -> Result<ExitCode> {
    let Some(format) = Format::parse(&args.format) else {
        bail!("format not supported: {} (choose gprof2dot, csv or speedscope)", args.format);
    };
    check_capture_exists(&args.results)?;
    let output = args.output.clone().unwrap_or_else(|| default_output(&args.results, format.name(), format.suffix()));
    if !args.force && output.exists() {
        bail!("{}: file already exists, will not overwrite without --force", output.display());
    }
    let path = &args.results;
    // Memray's TransformReporter only supports merged threads.
    let set = match (args.leaks, args.temporary.threshold()) {
        (true, _) => snapshot_records(path, SnapshotKind::Leaks, true, None, false),
        (false, Some(threshold)) => temporary_allocations(path, threshold, true, false),
        (false, None) => snapshot_records(path, SnapshotKind::HighWaterMark, true, None, false),
    }
    .map_err(|e| capture_failure(path, e))?;
    set.prepare_native();
    let text = render(&set, format, &set.header.command_line, env!("CARGO_PKG_VERSION"));
    if let Some(w) = set.native.missing_warning() {
        eprintln!("memray: {w}");
    }
    std::fs::write(&output, text).with_context(|| format!("{}: cannot write", output.display()))?;
    println!("Wrote {}", output.display());
    if format == Format::Gprof2dot {
        let command = if on_path("gprof2dot") { "gprof2dot" } else { "" };
        if command.is_empty() {
            println!("❗ gprof2dot doesn't seem to be installed. Please install it to be able to process the transform.");
            println!("👉 Check out https://github.com/jrfonseca/gprof2dot for installation instructions");
        }
        if !on_path("dot") {
            println!("❗ Graphviz doesn't seem to be installed. Please install it to be able to process the transform.");
            println!("👉 Check out https://graphviz.org/download/ for installation instructions");
        }
        println!();
        println!("To generate a graph from the transform file, run for example:");
        println!("{command} -f json {} | dot -Tpng -o output.png", output.display());
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_names_like_memray() {
        let p = |r: &str, f: &str, s: &str| default_output(Path::new(r), f, s);
        assert_eq!(p("memray-prog.123.bin", "csv", ".csv"), PathBuf::from("memray-csv-prog.123.csv"));
        assert_eq!(p("/d/out.bin", "gprof2dot", ".json"), PathBuf::from("/d/memray-gprof2dot-out.json"));
        assert_eq!(p("cap", "speedscope", ".speedscope.json"), PathBuf::from("memray-speedscope-cap.speedscope.json"));
    }
}
