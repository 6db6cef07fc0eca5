//! The capture decoder on arbitrary bytes, plain and (when the input starts with the
//! LZ4 magic) compressed: every record or a clean error, never a panic, a hang or an
//! unbounded allocation. Also the `memray live` stream, which is the same decoder over a
//! socket.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(mut reader) = memray_capture::Reader::new(std::io::Cursor::new(data)) else { return };
    // One record needs at least one byte, so more records than bytes means a loop.
    for _ in 0..=data.len() * 2 + 16 {
        match reader.next_record() {
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return,
        }
    }
    panic!("more records than the input can hold");
});
