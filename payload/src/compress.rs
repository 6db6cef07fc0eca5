//! compress_on_exit: the finished capture is rewritten as one LZ4 frame, which Memray's
//! reader (and ours) recognise by its magic number.

use std::io::{BufReader, BufWriter, Write};
use std::os::unix::fs::MetadataExt;

use crate::capture_dir::{give_owner, CaptureDir};

/// Compresses the capture `name` into a new file beside it, then renames that over it.
/// The new file is created exclusively under an unpredictable name and never through a
/// link, with the capture's owner and mode; where this process may not give it that owner
/// (the capture was made by `memray attach` as another user), nothing changes and the
/// error says so (kind PermissionDenied).
pub fn compress_in_place(dir: CaptureDir, name: &str) -> std::io::Result<()> {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let tmp = format!("{name}.lz4.{}.{nanos:x}.tmp", std::process::id());
    let input = dir.open_read(name)?;
    let meta = input.metadata()?;
    let file = dir.create_new(&tmp, meta.mode() & 0o777)?;
    let result = (|| {
        give_owner(&file, meta.uid(), meta.gid())?;
        let mut enc = memray_capture::lz4_frame_encoder(BufWriter::new(file));
        std::io::copy(&mut BufReader::new(input), &mut enc)?;
        let mut out = enc.finish().map_err(std::io::Error::other)?;
        // No fsync: the capture itself never is (its records reach the page cache, which
        // outlives the process, not the disk), and syncing cost every run ~10 ms at exit.
        out.flush()
    })();
    match result {
        Ok(()) => dir.rename(&tmp, name),
        Err(e) => {
            let _ = dir.remove(&tmp);
            Err(e)
        }
    }
}
