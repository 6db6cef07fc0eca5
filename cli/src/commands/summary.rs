//! `memray summary`: a table of the functions that allocate the most memory, laid out
//! as Memray 1.20 prints it.

use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Args;
use memray_reporter::render::summary::{Summary, N_COLUMNS};

use super::tree::{load_records, print_stdout, TemporaryArgs};

#[derive(Args, Debug)]
pub struct SummaryArgs {
    /// Capture file written by `memray run`; several (a process tree's, e.g. cap.bin.*)
    /// are merged into one table
    #[arg(required = true, num_args = 1..)]
    results: Vec<PathBuf>,
    /// Column to sort on: 1-2 total memory, 3-4 own memory, 5 allocation count
    #[arg(short = 's', long = "sort-column", default_value_t = 1, allow_negative_numbers = true)]
    sort_column: i64,
    /// Maximum number of rows (default: the terminal's height minus 5, at least 10)
    #[arg(short = 'r', long = "max-rows", allow_negative_numbers = true)]
    max_rows: Option<i64>,
    #[command(flatten)]
    temporary: TemporaryArgs,
}

/// A positive number from the environment (how `rich` reads `COLUMNS`/`LINES`).
fn env_number(name: &str) -> Option<usize> {
    std::env::var(name).ok().filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit())).and_then(|v| v.parse().ok())
}

/// (columns, lines) of the first of stdin, stdout, stderr that is a terminal.
fn terminal_size() -> Option<(usize, usize)> {
    use rustix::termios::tcgetwinsize;
    tcgetwinsize(std::io::stdin().as_fd())
        .or_else(|_| tcgetwinsize(std::io::stdout().as_fd()))
        .or_else(|_| tcgetwinsize(std::io::stderr().as_fd()))
        .ok()
        .map(|w| (w.ws_col as usize, w.ws_row as usize))
}

pub fn run(args: SummaryArgs) -> Result<ExitCode> {
    if args.sort_column < 1 || args.sort_column > N_COLUMNS as i64 {
        bail!("the --sort-column argument must be between 1 and {N_COLUMNS}");
    }
    let threshold = args.temporary.threshold();
    // Memray merges threads for the peak but not for temporary allocations.
    let mut parts = Vec::new();
    let mut pids = Vec::new();
    for path in &args.results {
        let set = load_records(path, threshold, threshold.is_none())?;
        parts.push(Summary::build(&set));
        pids.push(set.header.pid.to_string());
        if let Some(w) = set.native.missing_warning() {
            eprintln!("memray: {w}");
        }
    }
    let merged = parts.len() > 1;
    let summary = if merged { Summary::merge(parts) } else { parts.remove(0) };
    let stdout_is_terminal = std::io::stdout().is_terminal();
    // rich: COLUMNS, else the terminal on stdin/stdout/stderr, else 80.
    let size = terminal_size().filter(|(w, _)| *w > 0);
    let width = env_number("COLUMNS").or(size.map(|s| s.0)).unwrap_or(80);
    // Memray: `max_rows or max(lines - 5, 10)`, lines from stdout only (24 if not a tty).
    let lines = rustix::termios::tcgetwinsize(std::io::stdout().as_fd()).map(|w| w.ws_row as i64).unwrap_or(24);
    let max_rows = args.max_rows.filter(|&r| r != 0).unwrap_or_else(|| (lines - 5).max(10));
    let mut text = String::new();
    if merged {
        let what = if threshold.is_some() { "their temporary allocations" } else { "each at its own peak" };
        text = format!("{} captures merged (processes {}): figures are summed over the processes, {what}\n", pids.len(), pids.join(", "));
    }
    text.push_str(&summary.render(args.sort_column as usize, max_rows, width, stdout_is_terminal));
    print_stdout(&text)?;
    Ok(ExitCode::SUCCESS)
}
