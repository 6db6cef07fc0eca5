//! Option combinations clap cannot check: reported like clap's own usage errors (exit 2,
//! as Memray's argparse does), not as failures of the work.

use std::fmt;

#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Exit status of a usage error.
pub const EXIT: u8 = 2;

/// A usage error to return from a command: `return Err(usage("..."))`.
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    UsageError(message.into()).into()
}
