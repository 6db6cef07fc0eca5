//! Writes synthetic captures (plain, LZ4, native, aggregated) into a directory, to check
//! that Memray reads what we encode: `cargo run -p memray-capture --example synth -- DIR`
//! then `memray parse DIR/stream.bin`, `memray stats --json DIR/stream.bin`, ...

#[path = "../tests/common/synth.rs"]
mod synth;

use std::io::Write;

fn main() -> std::io::Result<()> {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| ".".into()));
    std::fs::create_dir_all(&dir)?;
    let (plain, _) = synth::stream_capture(false);
    std::fs::write(dir.join("stream.bin"), &plain)?;
    let (native, _) = synth::stream_capture(true);
    std::fs::write(dir.join("stream_native.bin"), &native)?;
    let mut enc = memray_capture::lz4_frame_encoder(std::fs::File::create(dir.join("stream_lz4.bin"))?);
    enc.write_all(&plain)?;
    enc.finish().map_err(std::io::Error::other)?;
    for (name, native) in [("aggregated.bin", false), ("aggregated_native.bin", true)] {
        let mut bytes = Vec::new();
        synth::aggregated_capture(native).encode(&mut bytes);
        std::fs::write(dir.join(name), &bytes)?;
    }
    Ok(())
}
