//! Timestamps as Memray prints them in report metadata: `str()` of an aware local
//! datetime, e.g. `2024-05-01 12:00:00.250000+02:00`.
//!
//! The local UTC offset comes from the TZif file named by `TZ` (or `/etc/localtime`).
//! Instants after the file's last transition use that transition's offset; zones whose
//! future offsets only follow from the footer's DST rule may be off by that rule.

use std::path::PathBuf;

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

/// The local UTC offset (seconds) at `t` (seconds since the epoch); 0 if unknown.
pub fn local_offset(t: i64) -> i64 {
    let path = match std::env::var("TZ") {
        Ok(tz) => {
            let tz = tz.strip_prefix(':').unwrap_or(&tz).to_string();
            if tz.is_empty() || tz == "UTC" || tz == "UTC0" || tz == "GMT" {
                return 0;
            }
            if tz.starts_with('/') {
                PathBuf::from(tz)
            } else {
                PathBuf::from("/usr/share/zoneinfo").join(tz)
            }
        }
        Err(_) => PathBuf::from("/etc/localtime"),
    };
    std::fs::read(path).ok().and_then(|data| tzif_offset(&data, t)).unwrap_or(0)
}

/// Offset at `t` from TZif data (RFC 8536), using the 64-bit section when present.
pub fn tzif_offset(data: &[u8], t: i64) -> Option<i64> {
    let header = |at: usize| -> Option<[usize; 6]> {
        if data.get(at..at + 4)? != b"TZif" {
            return None;
        }
        let mut counts = [0usize; 6];
        for (i, c) in counts.iter_mut().enumerate() {
            let b = data.get(at + 20 + 4 * i..at + 24 + 4 * i)?;
            *c = u32::from_be_bytes(b.try_into().ok()?) as usize;
        }
        Some(counts)
    };
    let [isut, isstd, leap, timecnt, typecnt, charcnt] = header(0)?;
    let version = *data.get(4)?;
    let v1_len = timecnt * 5 + typecnt * 6 + charcnt + leap * 8 + isstd + isut;
    let (start, counts, time_size) = if version >= b'2' {
        let at = 44 + v1_len;
        (at + 44, header(at)?, 8)
    } else {
        (44, [isut, isstd, leap, timecnt, typecnt, charcnt], 4)
    };
    let [_, _, _, timecnt, typecnt, _] = counts;
    let times = data.get(start..start + timecnt * time_size)?;
    let indices = data.get(start + timecnt * time_size..start + timecnt * (time_size + 1))?;
    let types = data.get(start + timecnt * (time_size + 1)..start + timecnt * (time_size + 1) + typecnt * 6)?;
    let utoff = |i: usize| -> Option<i64> {
        let b = types.get(i * 6..i * 6 + 4)?;
        Some(i32::from_be_bytes(b.try_into().ok()?) as i64)
    };
    let transition = |i: usize| -> i64 {
        let b = &times[i * time_size..(i + 1) * time_size];
        if time_size == 8 {
            i64::from_be_bytes(b.try_into().unwrap_or([0; 8]))
        } else {
            i32::from_be_bytes(b.try_into().unwrap_or([0; 4])) as i64
        }
    };
    // The last transition at or before t; before the first, the first standard type.
    let mut chosen = None;
    for i in 0..timecnt {
        if transition(i) <= t {
            chosen = Some(*indices.get(i)? as usize);
        } else {
            break;
        }
    }
    let index = match chosen {
        Some(i) => i,
        None => (0..typecnt).find(|&i| types.get(i * 6 + 4) == Some(&0)).unwrap_or(0),
    };
    utoff(index)
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

    #[test]
    fn reads_system_zones() {
        // Only when the zone database is installed.
        if let Ok(data) = std::fs::read("/usr/share/zoneinfo/Europe/Paris") {
            assert_eq!(tzif_offset(&data, 1_700_000_000), Some(3600)); // November 2023
            assert_eq!(tzif_offset(&data, 1_690_000_000), Some(7200)); // July 2023
        }
        if let Ok(data) = std::fs::read("/usr/share/zoneinfo/Etc/UTC") {
            assert_eq!(tzif_offset(&data, 1_700_000_000), Some(0));
        }
    }
}
