//! `memray live`: a terminal view of a process being tracked, fed by its capture stream
//! (the same bytes as a capture file, sent over a socket).
//!
//! * [`state`]: records folded into the memory live now, per stack and thread.
//! * [`history`]: heap over time in bounded memory.
//! * [`snapshot`]: what the reader thread hands the view.
//! * [`view`]: the user's choices and the screen, drawn with ratatui.
//! * [`app`]: the reader thread and the terminal loop.

pub mod app;
pub mod history;
pub mod snapshot;
pub mod state;
pub mod view;

pub use app::{run, Outcome};
pub use snapshot::{Site, Snapshot, StreamStatus, ThreadSites};
pub use state::LiveState;
