//! The one parser for options given in seconds (`--duration`, `--timeout`).

/// The largest number of seconds an option takes: about 31 years, far below what a
/// `Duration` or an `Instant` deadline can hold, so nothing downstream can overflow.
pub const MAX_SECONDS: f64 = 1e9;

/// A finite number of seconds, above 0 and at most [`MAX_SECONDS`].
pub fn positive_seconds(s: &str) -> std::result::Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v > 0.0 && v <= MAX_SECONDS => Ok(v),
        Ok(v) if v > MAX_SECONDS => Err(format!("{s:?} is too long: at most {MAX_SECONDS:e} seconds")),
        _ => Err(format!("{s:?} is not a positive number of seconds")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_sane_positive_seconds() {
        assert_eq!(positive_seconds("2.5"), Ok(2.5));
        assert_eq!(positive_seconds("1e9"), Ok(1e9));
        for bad in ["0", "-1", "NaN", "nan", "inf", "-inf", "1e30", "1e19", "18446744073709551616", "", "ten"] {
            assert!(positive_seconds(bad).is_err(), "{bad} accepted");
        }
    }
}
