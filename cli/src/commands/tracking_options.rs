//! The tracking flags `run` and `attach` share.

use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct TrackingOptions {
    /// Overwrite the output file if it exists
    #[arg(short, long)]
    pub force: bool,
    /// Record native (C/C++) stacks as well
    #[arg(long)]
    pub native: bool,
    /// Record pymalloc's allocations too (PYMALLOC_* records)
    #[arg(long)]
    pub trace_python_allocators: bool,
    /// Keep tracking in forked children (each writes <output>.<childpid>)
    #[arg(long)]
    pub follow_fork: bool,
    /// Write an aggregated capture: per-location totals only (no temporal or temporary reports)
    #[arg(long)]
    pub aggregate: bool,
    /// Don't LZ4-compress the capture when tracking stops
    #[arg(long, conflicts_with = "compress_on_exit")]
    pub no_compress: bool,
    /// Compress the capture when tracking stops (the default)
    #[arg(long)]
    pub compress_on_exit: bool,
}
