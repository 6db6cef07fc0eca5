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

/// One line on the process's stderr. Errors are dropped: `eprintln!` panics when stderr is
/// a pipe whose reader is gone, and a panic here aborts the tracked process.
pub fn write_line(args: std::fmt::Arguments) {
    use std::io::Write;
    let mut err = std::io::stderr().lock();
    let _ = err.write_fmt(args).and_then(|()| err.write_all(b"\n"));
}

/// `log!(log::ERROR, "...", args)`: a line on stderr when that severity is shown.
macro_rules! log {
    ($level:expr, $($arg:tt)*) => {
        if $crate::log::enabled($level) {
            $crate::log::write_line(format_args!($($arg)*));
        }
    };
}
pub(crate) use log;
