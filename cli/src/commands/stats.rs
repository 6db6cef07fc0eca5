//! `memray stats`: totals, peak, size histogram, allocators and top locations/modules of
//! a capture, as Memray 1.20 prints them (or writes them with `--json`).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use memray_capture::CaptureError;
use memray_reporter::{analyze_file, AnalyzeOptions, ReportError, Stats};

#[derive(Args, Debug)]
pub struct StatsArgs {
    /// Capture file written by `memray run`; several (a process tree's, e.g. cap.bin.*)
    /// are merged into one report
    #[arg(required = true, num_args = 1..)]
    results: Vec<PathBuf>,
    /// How many top locations and modules to list
    #[arg(short = 'n', long = "num-largest", default_value_t = 5, value_parser = positive_int)]
    num_largest: usize,
    /// Write the statistics to a JSON file instead of printing them
    #[arg(long)]
    json: bool,
    /// JSON output file (default: memray-stats-<capture name>.json next to the capture)
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Overwrite the JSON output file if it exists
    #[arg(short, long)]
    force: bool,
}

fn positive_int(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{s} is an invalid positive int value")),
    }
}

/// `memray-stats-<name without a leading "memray-">.json` next to the capture.
fn default_json_path(results: &Path) -> PathBuf {
    let name = results.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let name = format!("{name}.json");
    let name = name.strip_prefix("memray-").unwrap_or(&name);
    results.with_file_name(format!("memray-stats-{name}"))
}

/// One line: `<file>: <what is wrong>` (only the error's own message: the capture
/// errors already say what their causes are).
pub fn capture_failure(path: &Path, e: ReportError) -> anyhow::Error {
    match e {
        ReportError::Capture(CaptureError::Open { source, .. }) => anyhow!("{}: {source}", path.display()),
        other => anyhow!("{}: {other}", path.display()),
    }
}

/// Refuses what is not a regular file, with the usual one-line message.
pub fn check_capture_exists(path: &Path) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => bail!("{}: not a regular file", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!("{}: no such file", path.display()),
        Err(e) => Err(anyhow::Error::new(e).context(path.display().to_string())),
    }
}

pub fn run(args: StatsArgs) -> Result<ExitCode> {
    for path in &args.results {
        check_capture_exists(path)?;
    }
    let first = &args.results[0];
    let merged = args.results.len() > 1;
    let json_path = args.json.then(|| {
        args.output.clone().unwrap_or_else(|| {
            let p = default_json_path(first);
            if merged {
                p.with_extension("merged.json")
            } else {
                p
            }
        })
    });
    if let Some(p) = &json_path {
        // Checked before the (possibly long) analysis; Memray only checks after it.
        if !args.force && p.exists() {
            bail!("{}: file already exists, will not overwrite without --force", p.display());
        }
    }
    let mut parts = Vec::new();
    for path in &args.results {
        let analysis = analyze_file(path, AnalyzeOptions::default()).map_err(|e| capture_failure(path, e))?;
        if !analysis.reached_trailer && !memray_capture::cut::cut_seen() {
            eprintln!(
                "memray: warning: {}: the capture has no trailer (the tracked process was killed or is \
                 still running); the statistics cover the records written so far",
                path.display()
            );
        }
        // Merged reports need each part's full lists: they are cut to -n after merging.
        let n = if merged { usize::MAX } else { args.num_largest };
        parts.push(Stats::compute(&analysis, n).map_err(|e| capture_failure(path, e))?);
    }
    let stats = if merged { Stats::merge(&parts, args.num_largest) } else { parts.remove(0) };
    match json_path {
        Some(p) => {
            std::fs::write(&p, stats.to_json()).with_context(|| format!("{}: cannot write", p.display()))?;
            println!("Wrote {}", p.display());
        }
        None => {
            let stdout = std::io::stdout();
            let styled = stdout.is_terminal();
            let mut out = stdout.lock();
            if let Err(e) = out.write_all(stats.render_text(styled).as_bytes()).and_then(|_| out.flush()) {
                if e.kind() != std::io::ErrorKind::BrokenPipe {
                    return Err(anyhow::Error::new(e).context("writing to stdout"));
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_names() {
        assert_eq!(default_json_path(Path::new("/d/memray-x.123.bin")), PathBuf::from("/d/memray-stats-x.123.bin.json"));
        assert_eq!(default_json_path(Path::new("out.bin")), PathBuf::from("memray-stats-out.bin.json"));
    }
}
