//! Errors of the analyses.

use memray_capture::CaptureError;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{0}")]
    Capture(#[from] CaptureError),

    /// Memray 1.20 refuses this too: an aggregated capture has no per-allocation data.
    #[error("can't compute statistics using a pre-aggregated capture file (it was written with --aggregate)")]
    AggregatedStats,

    #[error("can't find temporary allocations using a pre-aggregated capture file (it was written with --aggregate)")]
    AggregatedTemporary,

    #[error("can't get all allocations from a pre-aggregated capture file (it was written with --aggregate)")]
    AggregatedAllRecords,

    #[error("can't get allocation history using a pre-aggregated capture file (it was written with --aggregate)")]
    AggregatedTemporal,

    #[error("corrupt aggregated capture: {0}")]
    CorruptAggregated(String),

    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}
