//! The payload's own messages on stderr, filtered by severity as `memray.set_log_level`
//! asks (Python `logging` levels: only WARNING and above by default).

use std::sync::atomic::{AtomicI32, Ordering};

pub const WARNING: i32 = 30;
pub const ERROR: i32 = 40;

static THRESHOLD: AtomicI32 = AtomicI32::new(WARNING);

pub fn set_threshold(level: i32) {
    THRESHOLD.store(level, Ordering::Relaxed);
}

pub fn enabled(level: i32) -> bool {
    level >= THRESHOLD.load(Ordering::Relaxed)
}

/// `log!(log::ERROR, "...", args)`: eprintln! when that severity is shown.
macro_rules! log {
    ($level:expr, $($arg:tt)*) => {
        if $crate::log::enabled($level) {
            eprintln!($($arg)*);
        }
    };
}
pub(crate) use log;
