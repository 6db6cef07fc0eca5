//! `memray parse`: every record of a capture as one line of text, in the format of
//! Memray 1.20's `memray parse` (for debugging and diffing captures).

use std::io::{BufWriter, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Args;
use memray_capture::{dump::memray_parse_dump, CaptureError, Reader};
use memray_reporter::ReportError;

use super::stats::{capture_failure, check_capture_exists};

#[derive(Args, Debug)]
pub struct ParseArgs {
    /// Capture file written by `memray run`
    results: PathBuf,
}

fn broken_pipe(e: &CaptureError) -> bool {
    matches!(e, CaptureError::Io(io) if io.kind() == std::io::ErrorKind::BrokenPipe)
}

pub fn run(args: ParseArgs) -> Result<ExitCode> {
    if std::io::stdout().is_terminal() {
        bail!("you must redirect stdout to a file or shell pipeline");
    }
    check_capture_exists(&args.results)?;
    let mut reader = Reader::open(&args.results).map_err(|e| capture_failure(&args.results, ReportError::from(e)))?;
    let stdout = std::io::stdout();
    let mut out = BufWriter::with_capacity(1 << 16, stdout.lock());
    let result = memray_parse_dump(&mut reader, &mut out);
    let flushed = out.flush();
    match result {
        Err(e) if broken_pipe(&e) => return Ok(ExitCode::SUCCESS),
        // Everything before the bad record has been printed.
        Err(e) => return Err(capture_failure(&args.results, ReportError::from(e))),
        Ok(()) => {}
    }
    match flushed {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(anyhow::Error::new(e).context("writing to stdout")),
        Ok(()) => Ok(ExitCode::SUCCESS),
    }
}
