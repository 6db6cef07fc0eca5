//! compress_on_exit: the finished capture is rewritten as one LZ4 frame, which Memray's
//! reader (and ours) recognise by its magic number.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

/// Compresses the capture at `path` into a new file beside it, then renames that over
/// it. The new file is created exclusively under an unpredictable name and never through
/// a link (`O_EXCL|O_NOFOLLOW`), so nobody can make us write elsewhere by planting one.
pub fn compress_in_place(path: &str) -> std::io::Result<()> {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let tmp = format!("{path}.lz4.{}.{nanos:x}.tmp", std::process::id());
    let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
    let result = (|| {
        let mut input = BufReader::new(File::open(path)?);
        let file =
            OpenOptions::new().write(true).create_new(true).mode(mode).custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC).open(&tmp)?;
        let out = BufWriter::new(file);
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
