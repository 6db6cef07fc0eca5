//! Line numbers from arbitrary line tables, for every CPython layout the reader knows
//! (the first byte picks the version, the next eight the first line and the offset).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 9 {
        return;
    }
    let version = 0x0300_0000 | ((8 + (data[0] % 8) as u32) << 16);
    let firstlineno = i32::from_le_bytes([data[1], data[2], data[3], data[4]]);
    let offset = i32::from_le_bytes([data[5], data[6], data[7], data[8]]);
    let _ = cpython::linetable::line_number(version, &data[9..], firstlineno, offset);
});
