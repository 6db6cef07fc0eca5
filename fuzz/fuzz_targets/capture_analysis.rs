//! The reporter's whole first pass (stacks, locations, heap, peak, leaks) on arbitrary
//! bytes: a result or a clean error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(reader) = memray_capture::Reader::new(std::io::Cursor::new(data)) else { return };
    let options = memray_reporter::AnalyzeOptions { allow_truncated: true };
    let _ = memray_reporter::analyze(reader, options);
});
