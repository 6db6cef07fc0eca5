//! Line numbers from the raw line tables Memray records in CODE_OBJECT records.
//!
//! The layout depends on the tracked interpreter (`python_version` in the header):
//!
//! * up to 3.9, `co_lnotab`: (bytecode delta, signed line delta) byte pairs, with the
//!   recorded instruction offset in bytes (`f_lasti`);
//! * 3.10, `co_linetable`: (bytecode delta, signed line delta) pairs, -128 meaning "no
//!   line", with the recorded offset in code units (3.10's `f_lasti`);
//! * 3.11 and later, the location table (PEP 657 varint entries), with the recorded
//!   offset in bytes (`PyFrame_GetLasti`).
//!
//! Results follow CPython's own decoding, with Memray's conventions where CPython has no
//! line to give: an instruction the table marks as having no line reports the line of
//! the entry before it, an offset past the table (3.11+) or a malformed table reports 0,
//! and an empty table reports `firstlineno`. A negative offset (a frame that has not
//! executed its first instruction) reports `firstlineno`, as `PyCode_Addr2Line` does.

/// 3.10.0a0: first version with `co_linetable`.
const PY_3_10: u32 = 0x030A_0000;
/// 3.11.0a0: first version with the location table.
const PY_3_11: u32 = 0x030B_0000;

/// The source line of the instruction at `instruction_offset` (as Memray records it for
/// `python_version`) in a code object starting at `firstlineno`.
pub fn line_number(python_version: u32, linetable: &[u8], firstlineno: i32, instruction_offset: i32) -> i32 {
    if linetable.is_empty() || instruction_offset < 0 {
        return firstlineno;
    }
    let offset = instruction_offset as u64;
    let line = if python_version >= PY_3_11 {
        location_table_line(linetable, firstlineno, offset / 2)
    } else if python_version >= PY_3_10 {
        pairs_line(linetable, firstlineno, offset * 2, true)
    } else {
        pairs_line(linetable, firstlineno, offset, false)
    };
    line.unwrap_or(0)
}

/// `co_lnotab` (3.8/3.9) and 3.10's `co_linetable`: byte pairs (address delta, signed
/// line delta); `addrq` in bytes.
fn pairs_line(table: &[u8], firstlineno: i32, addrq: u64, linetable_310: bool) -> Option<i32> {
    if !table.len().is_multiple_of(2) {
        return None;
    }
    let mut line = firstlineno;
    let mut addr = 0u64;
    for pair in table.chunks_exact(2) {
        let (addr_delta, line_delta) = (pair[0] as u64, pair[1] as i8);
        addr += addr_delta;
        if linetable_310 {
            // 3.10: each entry describes [previous end, addr) with the line *after*
            // applying its delta; -128 marks an instruction without a line.
            if line_delta != -128 {
                line = line.checked_add(line_delta as i32)?;
            }
            if addr > addrq {
                break;
            }
        } else {
            // co_lnotab: the delta applies from `addr` onwards.
            if addr > addrq {
                break;
            }
            line = line.checked_add(line_delta as i32)?;
        }
    }
    Some(line)
}

/// The 3.11+ location table; `unit` in code units.
fn location_table_line(table: &[u8], firstlineno: i32, unit: u64) -> Option<i32> {
    let mut cursor = Cursor { bytes: table, pos: 0 };
    let mut line = firstlineno;
    let mut addr = 0u64;
    while let Some(first) = cursor.next() {
        if first & 0x80 == 0 {
            return None; // every entry starts with the high bit set
        }
        let code = (first >> 3) & 15;
        let end = addr + (first & 7) as u64 + 1;
        match code {
            15 => {} // no location
            14 => {
                // long form: line delta, end line delta, column + 1, end column + 1
                line = line.checked_add(cursor.signed_varint()?)?;
                for _ in 0..3 {
                    cursor.varint()?;
                }
            }
            13 => line = line.checked_add(cursor.signed_varint()?)?, // no columns
            10..=12 => {
                // one line form: line delta 0-2, then start and end column bytes
                line = line.checked_add(code as i32 - 10)?;
                cursor.next()?;
                cursor.next()?;
            }
            _ => {
                // short form: same line, one column byte
                if cursor.next()? & 0x80 != 0 {
                    return None;
                }
            }
        }
        if addr <= unit && unit < end {
            return Some(line);
        }
        addr = end;
    }
    None
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn next(&mut self) -> Option<u8> {
        let b = *self.bytes.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    /// 6-bit groups, bit 6 = more follow (CPython's `scan_varint`).
    fn varint(&mut self) -> Option<u32> {
        let mut read = self.next()?;
        let mut value = (read & 63) as u32;
        let mut shift = 0;
        while read & 64 != 0 {
            read = self.next()?;
            shift += 6;
            let chunk = (read & 63) as u32;
            if shift >= 32 || chunk > (u32::MAX >> shift) {
                return None;
            }
            value |= chunk << shift;
        }
        Some(value)
    }

    fn signed_varint(&mut self) -> Option<i32> {
        let v = self.varint()?;
        let magnitude = i32::try_from(v >> 1).ok()?;
        Some(if v & 1 != 0 { -magnitude } else { magnitude })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        if s == "-" {
            return Vec::new();
        }
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    /// The recorded offset of code unit `unit` for each interpreter generation.
    fn offset_of(version: u32, unit: i64) -> i32 {
        if (PY_3_10..PY_3_11).contains(&version) {
            unit as i32
        } else {
            (unit * 2) as i32
        }
    }

    /// Every instruction of real tables from CPython 3.8 to 3.15 (see the generator in
    /// tests/fixtures/gen_linetables.py).
    #[test]
    fn real_tables_from_every_interpreter() {
        let data = include_str!("../tests/fixtures/linetables.txt");
        let mut versions = std::collections::BTreeSet::new();
        let mut checked = 0;
        for row in data.lines() {
            let f: Vec<&str> = row.split(' ').collect();
            let version = u32::from_str_radix(f[0], 16).unwrap();
            let firstlineno: i32 = f[1].parse().unwrap();
            let table = hex(f[2]);
            let n_units: i64 = f[3].parse().unwrap();
            let runs: Vec<(i64, i32)> = f[4]
                .split(',')
                .map(|r| {
                    let (u, l) = r.split_once(':').unwrap();
                    (u.parse().unwrap(), l.parse().unwrap())
                })
                .collect();
            versions.insert(version >> 16);
            for unit in 0..n_units {
                let expected = runs.iter().rev().find(|(start, _)| *start <= unit).unwrap().1;
                let got = line_number(version, &table, firstlineno, offset_of(version, unit));
                assert_eq!(got, expected, "python {version:08x} firstlineno {firstlineno} unit {unit} table {}", f[2]);
                checked += 1;
            }
            // A frame that has not started yet: the first line.
            assert_eq!(line_number(version, &table, firstlineno, -1), firstlineno);
            // Past the end: 3.11+ has no entry (0, as Memray shows); older tables keep
            // the last line.
            let past = line_number(version, &table, firstlineno, offset_of(version, n_units + 50));
            if version >= PY_3_11 {
                assert_eq!(past, 0);
            } else {
                assert_eq!(past, runs.last().unwrap().1);
            }
        }
        assert_eq!(versions.into_iter().collect::<Vec<_>>(), vec![0x308, 0x309, 0x30a, 0x30b, 0x30c, 0x30d, 0x30e, 0x30f]);
        assert!(checked > 1000);
    }

    #[test]
    fn empty_and_malformed_tables() {
        assert_eq!(line_number(0x030c01f0, &[], 7, 40), 7);
        assert_eq!(line_number(0x030901f0, &[], 7, 40), 7);
        // Odd-length pair tables are malformed.
        assert_eq!(line_number(0x030901f0, &[2, 1, 3], 7, 0), 0);
        assert_eq!(line_number(0x030a01f0, &[2, 1, 3], 7, 0), 0);
        // 3.11+: an entry byte without the high bit, and a table cut inside an entry.
        assert_eq!(line_number(0x030b01f0, &[0x10], 7, 0), 0);
        assert_eq!(line_number(0x030b01f0, &[0x80 | (13 << 3)], 7, 0), 0);
        // A varint too long for 32 bits.
        assert_eq!(line_number(0x030b01f0, &[0x80 | (13 << 3), 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f], 7, 0), 0);
    }

    #[test]
    fn no_line_entries_keep_the_previous_line() {
        // 3.11+: NO_COLUMNS +3 for 2 units, NONE for 1 unit, ONE_LINE2 for 1 unit.
        let t = [0x80 | (13 << 3) | 1, 6, 0x80 | (15 << 3), 0x80 | (12 << 3), 1, 2];
        let lines: Vec<i32> = (0..4).map(|u| line_number(0x030c00f0, &t, 10, u * 2)).collect();
        assert_eq!(lines, vec![13, 13, 13, 15]);
        // 3.10: (4 bytes, +1), (2 bytes, no line), (2 bytes, +2)
        let t = [4, 1, 2, 0x80, 2, 2];
        let lines: Vec<i32> = (0..4).map(|u| line_number(0x030a00f0, &t, 10, u)).collect();
        assert_eq!(lines, vec![11, 11, 11, 13]);
    }
}
