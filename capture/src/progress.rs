//! Read progress of capture files, for a progress bar. The program that draws one
//! installs a [`ProgressSink`] once; every [`crate::Reader`] opened from a file then
//! reports how far into the file it is (compressed bytes for LZ4 files), at most a few
//! times a second, and when it is done.

use std::fs::File;
use std::io::Seek;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Receives read progress. Called on the reading thread; keep it cheap.
pub trait ProgressSink: Send + Sync {
    /// `done` of `total` bytes of `path` have been read.
    fn update(&self, path: &Path, done: u64, total: u64);
    /// The reader reached the end of `path`'s data, or stopped at an error.
    fn finish(&self, path: &Path);
}

static SINK: OnceLock<Box<dyn ProgressSink>> = OnceLock::new();

/// Installs the process's progress sink; `false` if one was installed already.
pub fn set_progress_sink(sink: Box<dyn ProgressSink>) -> bool {
    SINK.set(sink).is_ok()
}

/// How often a reader asks for its position.
const INTERVAL: Duration = Duration::from_millis(100);

/// A reader's link to the sink: a duplicate of the file descriptor, which shares the
/// file's offset, so the position is known however the data is buffered or compressed.
pub(crate) struct ProgressProbe {
    sink: &'static dyn ProgressSink,
    file: File,
    path: PathBuf,
    total: u64,
    last: Option<Instant>,
    finished: bool,
}

impl ProgressProbe {
    /// A probe for `file` at `path`, if a sink is installed (and the descriptor can be
    /// duplicated: progress is never worth failing a read for).
    pub(crate) fn new(file: &File, path: &Path) -> Option<ProgressProbe> {
        let sink = SINK.get()?.as_ref();
        let total = file.metadata().ok()?.len();
        Some(ProgressProbe { sink, file: file.try_clone().ok()?, path: path.to_path_buf(), total, last: None, finished: false })
    }

    /// Reports the position if the last report is old enough.
    pub(crate) fn tick(&mut self) {
        let now = Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) < INTERVAL) {
            return;
        }
        self.last = Some(now);
        if let Ok(done) = self.file.stream_position() {
            self.sink.update(&self.path, done.min(self.total), self.total);
        }
    }

    pub(crate) fn finish(&mut self) {
        if !self.finished {
            self.finished = true;
            self.sink.update(&self.path, self.total, self.total);
            self.sink.finish(&self.path);
        }
    }
}

impl Drop for ProgressProbe {
    /// A reader dropped before its end (a report that needed only part of the file)
    /// still takes its bar down.
    fn drop(&mut self) {
        if !self.finished {
            self.finished = true;
            self.sink.finish(&self.path);
        }
    }
}
