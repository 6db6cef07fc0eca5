//! compress_on_exit: the finished capture is rewritten as one LZ4 frame, which Memray's
//! reader (and ours) recognise by its magic number.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};

pub fn compress_in_place(path: &str) -> std::io::Result<()> {
    let tmp = format!("{path}.lz4.tmp");
    let result = (|| {
        let mut input = BufReader::new(File::open(path)?);
        let out = BufWriter::new(File::create(&tmp)?);
        let mut enc = memray_capture::lz4_frame_encoder(out);
        std::io::copy(&mut input, &mut enc)?;
        let mut out = enc.finish().map_err(std::io::Error::other)?;
        out.flush()?;
        out.into_inner().map_err(|e| e.into_error())?.sync_all()
    })();
    match result {
        Ok(()) => std::fs::rename(&tmp, path),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}
