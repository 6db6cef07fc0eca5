//! Timestamps as Memray prints them in report metadata: `str()` of an aware local
//! datetime, e.g. `2024-05-01 12:00:00.250000+02:00`.
//!
//! The local UTC offset is the C library's (see [`local_offset`]); the text is Python's.

/// Formats milliseconds since the epoch in local time, as Memray's `millis_to_dt`.
pub fn format_millis(ms: i64) -> String {
    let offset = local_offset(ms.div_euclid(1000));
    format_millis_with_offset(ms, offset)
}

/// Formats with an explicit UTC offset in seconds.
pub fn format_millis_with_offset(ms: i64, offset: i64) -> String {
    let secs = ms.div_euclid(1000) + offset;
    let millis = ms.rem_euclid(1000);
    let (days, sod) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    let (y, m, d) = civil_from_days(days);
    let mut s = format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", sod / 3600, sod % 3600 / 60, sod % 60);
    if millis != 0 {
        s.push_str(&format!(".{:06}", millis * 1000));
    }
    let sign = if offset < 0 { '-' } else { '+' };
    let a = offset.abs();
    s.push_str(&format!("{sign}{:02}:{:02}", a / 3600, a % 3600 / 60));
    if a % 60 != 0 {
        s.push_str(&format!(":{:02}", a % 60));
    }
    s
}

/// Howard Hinnant's days-to-civil conversion.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The local UTC offset (seconds) at `t` (seconds since the epoch), as `localtime_r`
/// gives it (what CPython's `datetime.astimezone()` uses): chrono's `Local` reads `TZ`
/// (a zone name, a path or a POSIX rule string) or /etc/localtime, footer rules included.
/// 0 if unknown.
pub fn local_offset(t: i64) -> i64 {
    use chrono::{Offset, TimeZone};
    match chrono::Local.timestamp_opt(t, 0) {
        chrono::LocalResult::Single(dt) | chrono::LocalResult::Ambiguous(dt, _) => i64::from(dt.offset().fix().local_minus_utc()),
        chrono::LocalResult::None => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_python() {
        assert_eq!(format_millis_with_offset(1_795_239_127_556, 0), "2026-11-21 05:32:07.556000+00:00");
        assert_eq!(format_millis_with_offset(1_700_000_000_000, 3600), "2023-11-14 23:13:20+01:00");
        assert_eq!(format_millis_with_offset(0, -(5 * 3600 + 30 * 60)), "1969-12-31 18:30:00-05:30");
        assert_eq!(format_millis_with_offset(-1, 0), "1969-12-31 23:59:59.999000+00:00");
    }

    /// (TZ, offset in November 2023, in July 2023, in July 2050: past any transition a
    /// zone file lists, where only its footer rule says).
    const ZONES: [(&str, i64, i64, i64); 3] =
        [("UTC", 0, 0, 0), ("Europe/Paris", 3600, 7200, 7200), ("EST5EDT,M3.2.0,M11.1.0", -18000, -14400, -14400)];
    const INSTANTS: [i64; 3] = [1_700_000_000, 1_690_000_000, 2_540_000_000];

    /// Each zone in a child process of this test binary (TZ is process-wide: setting it
    /// here would race with the other tests' local times).
    #[test]
    fn local_offsets_follow_tz() {
        let exe = std::env::current_exe().expect("the test binary");
        for (i, (tz, ..)) in ZONES.iter().enumerate() {
            let out = std::process::Command::new(&exe)
                .args(["--exact", "compat::localtime::tests::offsets_of_the_zone_in_tz", "--nocapture", "--test-threads=1"])
                .env("TZ", tz)
                .env("MEMRAY_TEST_ZONE", i.to_string())
                .output()
                .expect("run the test binary");
            let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success() && text.contains("1 passed"), "TZ={tz}:\n{text}");
        }
    }

    #[test]
    fn offsets_of_the_zone_in_tz() {
        let Some(i) = std::env::var("MEMRAY_TEST_ZONE").ok().and_then(|v| v.parse::<usize>().ok()) else { return };
        let (tz, a, b, c) = ZONES[i];
        let got: Vec<i64> = INSTANTS.iter().map(|&t| local_offset(t)).collect();
        assert_eq!(got, vec![a, b, c], "TZ={tz}");
    }
}
