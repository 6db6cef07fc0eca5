//! `memray flamegraph`: a self-contained HTML flame graph of a capture.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use memray_reporter::render::html::{self, HtmlError, HtmlOptions, HtmlReport, ReportKind};

use super::stats::{capture_failure, check_capture_exists};

/// Which allocations to show (mutually exclusive, as in Memray).
#[derive(Args, Debug, Clone, Copy)]
#[group(multiple = false)]
pub struct KindArgs {
    /// Show memory leaks (allocations not freed when tracking ended) instead of the peak
    #[arg(long)]
    leaks: bool,
    /// Show temporary allocations: those freed with at most N other allocations in between
    #[arg(long, value_name = "N")]
    temporary_allocation_threshold: Option<u64>,
    /// Same as --temporary-allocation-threshold=1
    #[arg(long)]
    temporary_allocations: bool,
}

impl KindArgs {
    pub fn kind(&self) -> ReportKind {
        match (self.leaks, self.temporary_allocation_threshold, self.temporary_allocations) {
            (true, _, _) => ReportKind::Leaks,
            (_, Some(n), _) => ReportKind::Temporary(n),
            (_, _, true) => ReportKind::Temporary(1),
            _ => ReportKind::Peak,
        }
    }
}

/// Options every HTML report takes.
#[derive(Args, Debug, Clone)]
pub struct OutputArgs {
    /// Capture file written by `memray run`; several (the processes of a tree, e.g.
    /// `memray attach --children`'s OUTPUT.<pid> files) make one report summed over them
    #[arg(required = true, num_args = 1..)]
    pub results: Vec<PathBuf>,
    /// Output file (default: memray-<report>-<capture name>.html next to the capture)
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Overwrite the output file if it exists
    #[arg(short, long)]
    pub force: bool,
    /// Accepted for compatibility with Memray: reports never use the network
    #[arg(long, hide = true)]
    pub no_web: bool,
}

#[derive(Args, Debug)]
pub struct FlamegraphArgs {
    #[command(flatten)]
    out: OutputArgs,
    #[command(flatten)]
    kind: KindArgs,
    /// Add a memory-over-time chart with a draggable range; the flame graph shows the
    /// peak (or the leaks) inside the range
    #[arg(long)]
    temporal: bool,
    /// Do not merge allocations across threads (adds a thread filter)
    #[arg(long)]
    split_threads: bool,
    /// Invert the flame graph: allocating functions at the top, their callers below
    #[arg(long)]
    inverted: bool,
    /// Most memory samples shown in the chart (and time units with --temporal)
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = positive)]
    max_memory_records: usize,
    /// Accepted for compatibility with Memray (no source lines are embedded)
    #[arg(long, hide = true, value_parser = ["all", "none", "default"])]
    confidential_files: Option<String>,
}

fn positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{s} is not a positive integer")),
    }
}

/// Memray's name: `memray-<report>-<capture name with .html for its suffix, minus a
/// leading "memray-">` next to the capture.
pub fn default_output(results: &Path, report: &str) -> PathBuf {
    let name = results.with_extension("html").file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let name = name.strip_prefix("memray-").unwrap_or(&name);
    results.with_file_name(format!("memray-{report}-{name}"))
}

/// Checks the paths, renders with `render` (given every capture) and writes the page,
/// named after the first capture by default.
pub fn write_report(out: &OutputArgs, report: &str, render: impl FnOnce(&[PathBuf]) -> Result<HtmlReport, HtmlError>) -> Result<ExitCode> {
    for path in &out.results {
        check_capture_exists(path)?;
    }
    let first = &out.results[0];
    let output = out.output.clone().unwrap_or_else(|| default_output(first, report));
    if !out.force && output.exists() {
        bail!("{}: file already exists, will not overwrite without --force", output.display());
    }
    let page = render(&out.results).map_err(|e| html_failure(first, e))?;
    if !page.reached_trailer && !memray_capture::cut::cut_seen() {
        let which = if out.results.len() == 1 { first.display().to_string() } else { "one of the captures".into() };
        eprintln!(
            "memray: warning: {which}: the capture has no trailer (the tracked process was killed or is \
             still running); the report covers the records written so far"
        );
    }
    if let Some(w) = &page.warning {
        eprintln!("memray: {w}");
    }
    std::fs::write(&output, page.html).with_context(|| format!("{}: cannot write", output.display()))?;
    println!("Wrote {}", output.display());
    Ok(ExitCode::SUCCESS)
}

/// One line naming the capture that failed and why.
fn html_failure(path: &Path, e: HtmlError) -> anyhow::Error {
    match e {
        HtmlError::Report(e) => capture_failure(path, e),
        HtmlError::Unsupported(msg) => anyhow!("{}: {msg}", path.display()),
        HtmlError::InCapture { path, source } => html_failure(&path, *source),
    }
}

pub fn run(args: FlamegraphArgs) -> Result<ExitCode> {
    let kind = args.kind.kind();
    if args.temporal && matches!(kind, ReportKind::Temporary(_)) {
        bail!("can't create a temporal flame graph of temporary allocations");
    }
    if args.temporal && args.out.results.len() > 1 {
        bail!("a temporal flame graph shows one process's timeline: give one capture, or drop --temporal");
    }
    let options = HtmlOptions {
        kind,
        temporal: args.temporal,
        split_threads: args.split_threads,
        inverted: args.inverted,
        max_memory_records: args.max_memory_records,
        allow_truncated: true,
    };
    write_report(&args.out, "flamegraph", |paths| match paths {
        [one] => html::flamegraph(one, &options),
        several => html::flamegraph_merged(several, &options),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_names() {
        assert_eq!(default_output(Path::new("/d/memray-x.py.123.bin"), "flamegraph"), PathBuf::from("/d/memray-flamegraph-x.py.123.html"));
        assert_eq!(default_output(Path::new("out"), "table"), PathBuf::from("memray-table-out.html"));
    }
}
