//! Errors from reading a capture.

use std::path::PathBuf;

/// Why a capture could not be read (further). After an error, `Reader::next_record`
/// returns `Ok(None)`.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("cannot open capture file {path}: {source}")]
    Open { path: PathBuf, source: std::io::Error },

    #[error("I/O error while reading capture: {0}")]
    Io(#[from] std::io::Error),

    #[error("capture file is empty (the tracked process may have been killed before writing it)")]
    Empty,

    #[error("not a memray capture file")]
    NotACapture,

    #[error("capture format version {0} is not supported (expected 13)")]
    UnsupportedVersion(i32),

    /// The data ends inside a record (or the header): typically the tracked process was
    /// killed. Every record before `offset` was returned; callers may treat this as end.
    #[error("capture is truncated: incomplete {record} at byte offset {offset}")]
    Truncated { offset: u64, record: &'static str },

    /// Bytes that no Memray 1.20 writer produces.
    #[error("corrupt capture at byte offset {offset}: {what}")]
    Corrupt { offset: u64, what: String },

    #[error("LZ4 decompression failed at decompressed byte offset {offset}: {message}")]
    Decompression { offset: u64, message: String },
}

impl CaptureError {
    /// True for [`CaptureError::Truncated`]: the records read so far are valid.
    pub fn is_truncation(&self) -> bool {
        matches!(self, CaptureError::Truncated { .. })
    }
}
