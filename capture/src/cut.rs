//! What reading does at a capture cut inside a record: the tracked process died in the
//! middle of writing it, or the file was copied while it was being written.
//!
//! By default the reader returns [`CaptureError::Truncated`] there, after every complete
//! record, and the caller decides. A program that calls [`read_cut_captures_to_the_end`]
//! (the `memray` reporters do, as Memray's reporters read such files) gets the end of the
//! data instead, from every reader it opens, and its handler hears of each cut once per
//! file, however many passes read it.

use std::path::Path;
use std::sync::{Mutex, OnceLock};

use crate::CaptureError;

static HANDLER: OnceLock<fn(&str)> = OnceLock::new();
static REPORTED: Mutex<Vec<(String, u64)>> = Mutex::new(Vec::new());

/// From now on a cut inside a record ends the data, and `warn` is told where, in one
/// line: "FILE: the capture is cut inside a RECORD at byte N; ...".
pub fn read_cut_captures_to_the_end(warn: fn(&str)) {
    let _ = HANDLER.set(warn);
}

/// Whether a cut was met (and reported) in this process.
pub fn cut_seen() -> bool {
    REPORTED.lock().map(|r| !r.is_empty()).unwrap_or(false)
}

/// True when `e` is a cut to be taken as the end of the data (it has been reported).
pub(crate) fn take_as_end(source: Option<&Path>, e: &CaptureError) -> bool {
    let (Some(warn), CaptureError::Truncated { offset, record }) = (HANDLER.get(), e) else {
        return false;
    };
    let name = source.map(|p| p.display().to_string()).unwrap_or_else(|| "<stream>".into());
    let mut reported = REPORTED.lock().unwrap_or_else(|p| p.into_inner());
    if !reported.iter().any(|(n, o)| *n == name && o == offset) {
        reported.push((name.clone(), *offset));
        warn(&format!(
            "{name}: the capture is cut inside a {record} at byte {offset} (the tracked process died while writing, \
             or the file was copied mid-write); reading it up to the last complete record"
        ));
    }
    true
}
