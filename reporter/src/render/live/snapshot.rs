//! What the reader thread hands the view: plain owned data, cheap to share.

/// Live memory of one allocation site: a (function, file), as Memray's live view groups.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Site {
    pub function: String,
    pub file: String,
    /// Bytes live now under this site (it is anywhere in the stack).
    pub total: u64,
    /// Bytes live now allocated by this site itself (innermost frame).
    pub own: u64,
    /// Live allocations under this site.
    pub count: u64,
}

/// One thread's sites, biggest total first.
#[derive(Clone, Debug, Default)]
pub struct ThreadSites {
    /// Memray's thread number in the capture (1 is the thread that started tracking).
    pub tid: u64,
    pub name: String,
    pub sites: Vec<Site>,
}

/// Where the stream stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamStatus {
    Live,
    /// The tracked process stopped tracking (it exited, or tracking was stopped) and
    /// said so with the end-of-stream marker.
    Finished,
    /// The connection ended without the end marker: the process was killed, or the
    /// stream broke. The text says how.
    Lost(String),
}

#[derive(Clone, Debug)]
pub struct Snapshot {
    pub pid: i32,
    pub command_line: String,
    /// The stream's sampling interval (0: every allocation is recorded).
    pub sampling_interval: u64,
    pub heap: u64,
    pub peak: u64,
    pub rss: u64,
    /// Time covered by the stream, by the tracked process's clock.
    pub duration_ms: u64,
    /// Memory samples received.
    pub samples: u64,
    /// Allocation and deallocation records received.
    pub records: u64,
    /// Heap over time, one point per `history_step_ms`.
    pub history: Vec<u64>,
    pub history_step_ms: u64,
    /// All threads merged.
    pub merged: Vec<Site>,
    /// Per thread, in thread-number order.
    pub threads: Vec<ThreadSites>,
    pub status: StreamStatus,
}
