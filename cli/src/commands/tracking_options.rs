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
    /// Record a sample of the allocations: on average one per SIZE bytes allocated (e.g.
    /// 512KiB, 64k, 1MB); reports then show estimates. 0 records every allocation
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub sampling_interval: Option<u64>,
}

/// A byte count: a number with an optional unit (B, k/K/KB, KiB, M/MB, MiB, G/GB, GiB),
/// binary multiples for both spellings, as in most allocator tunables.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().map_err(|_| format!("{text:?} is not a size (e.g. 4096, 64KiB, 1MiB)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        other => return Err(format!("unknown size unit {other:?} in {text:?} (use B, KiB, MiB or GiB)")),
    };
    n.checked_mul(1 << shift).ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_with_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512KiB"), Ok(512 * 1024));
        assert_eq!(parse_size("64k"), Ok(64 * 1024));
        assert_eq!(parse_size("1MB"), Ok(1 << 20));
        assert_eq!(parse_size("2 GiB"), Ok(2 << 30));
        assert!(parse_size("12 parsecs").unwrap_err().contains("unknown size unit"));
        assert!(parse_size("KiB").is_err());
        assert!(parse_size("99999999999999GiB").is_err());
    }
}
