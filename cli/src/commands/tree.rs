//! `memray tree`: the biggest allocation paths at the peak (or the temporary
//! allocations) as a tree; plain text, with colours on a terminal.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Args;
use memray_reporter::engine::records::{snapshot_records, RecordSet, SnapshotKind};
use memray_reporter::engine::temporary::temporary_allocations;
use memray_reporter::render::tree::{ModuleNamer, Tree};

use super::stats::{capture_failure, check_capture_exists};

/// `--temporary-allocation-threshold N` / `--temporary-allocations` (Memray's options).
#[derive(Args, Debug, Default)]
#[group(multiple = false)]
pub struct TemporaryArgs {
    /// Report temporary allocations: an allocation is temporary if at most N other
    /// allocations occur (on its thread) before it is deallocated; with 0, only if it is
    /// freed before any other allocation
    #[arg(long = "temporary-allocation-threshold", value_name = "N", allow_negative_numbers = true)]
    pub temporary_allocation_threshold: Option<i64>,
    /// Equivalent to --temporary-allocation-threshold=1
    #[arg(long = "temporary-allocations")]
    pub temporary_allocations: bool,
}

impl TemporaryArgs {
    /// The threshold when temporary allocations were asked for (a negative one means
    /// "off", as in Memray).
    pub fn threshold(&self) -> Option<u64> {
        if self.temporary_allocations {
            return Some(1);
        }
        self.temporary_allocation_threshold.and_then(|t| u64::try_from(t).ok())
    }
}

#[derive(Args, Debug)]
pub struct TreeArgs {
    /// Capture file written by `memray run`
    results: PathBuf,
    /// Show the N biggest allocations
    #[arg(short = 'b', long = "biggest-allocs", default_value_t = 200, allow_negative_numbers = true)]
    biggest_allocs: i64,
    #[command(flatten)]
    temporary: TemporaryArgs,
}

/// The records a terminal report shows: temporary allocations, or what was live at the
/// peak (threads merged or not).
pub fn load_records(path: &Path, temporary: Option<u64>, merge_threads: bool) -> Result<RecordSet> {
    check_capture_exists(path)?;
    let set = match temporary {
        Some(threshold) => temporary_allocations(path, threshold, merge_threads, false),
        None => snapshot_records(path, SnapshotKind::HighWaterMark, merge_threads, None, false),
    }
    .map_err(|e| capture_failure(path, e))?;
    Ok(set)
}

/// Writes to stdout; a closed pipe (`| head`) is not an error.
pub fn print_stdout(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => bail!("writing to stdout: {e}"),
        _ => Ok(()),
    }
}

pub fn run(args: TreeArgs) -> Result<ExitCode> {
    let set = load_records(&args.results, args.temporary.threshold(), false)?;
    let tree = Tree::build(&set, args.biggest_allocs);
    let modules = ModuleNamer::from_sys_path(&set.header.sys_path);
    if let Some(w) = set.native.missing_warning() {
        eprintln!("memray: {w}");
    }
    print_stdout(&tree.render(&modules, std::io::stdout().is_terminal()))?;
    Ok(ExitCode::SUCCESS)
}
