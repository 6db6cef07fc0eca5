//! The interpreter's self-description, as the payload and the injector read it from a
//! process: arbitrary bytes as a `_Py_DebugOffsets` block (the first byte picks the
//! version the process claims). Must never panic, and a layout it accepts must only hold
//! offsets that came from the block or the table.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&minor, block)) = data.split_first() else { return };
    let version = cpython::Version::new(3, 8 + minor % 16, 0);
    if let Ok(layout) = cpython::resolve(version, Some(block)) {
        assert!(layout.fields().iter().all(|&(_, v)| v <= 1 << 20));
    }
    if let Ok(parsed) = cpython::DebugOffsets::parse(block) {
        let _ = parsed.remote_debug();
    }
});
