//! The capture file `memray attach -o` makes on the attaching side and hands to the
//! target: it belongs to whoever ran the attach, wherever the target runs.

use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A capture file made here for the target, with its directory (the payload makes its
/// compressed copy and follow_fork's `<output>.<pid>` files beside it). Removed again
/// unless the attach succeeds.
pub(crate) struct CreatedCapture {
    path: PathBuf,
    file: std::fs::File,
    dir: std::fs::File,
    kept: bool,
}

impl CreatedCapture {
    /// Created exclusively, never through a link (O_EXCL|O_NOFOLLOW). With `force`, a file
    /// or a link of that name is removed first (a planted link goes, what it points to is
    /// never touched); a device or a pipe (/dev/null, a FIFO) is opened as it is.
    pub fn create(path: &Path, force: bool) -> Result<CreatedCapture> {
        let parent = path.parent().unwrap_or(Path::new("/"));
        let dir = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(parent)
            .map_err(|e| Error::io(format!("cannot open the directory {}", parent.display()), e))?;
        let mut open = std::fs::OpenOptions::new();
        // Read and write: the payload writes the file through shared mappings of it.
        open.read(true).write(true).create_new(true).mode(0o644).custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
        for _ in 0..3 {
            if force {
                if let Ok(meta) = std::fs::symlink_metadata(path) {
                    let kind = meta.file_type();
                    if kind.is_char_device() || kind.is_block_device() || kind.is_fifo() || kind.is_socket() {
                        let file = std::fs::OpenOptions::new()
                            .write(true)
                            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                            .open(path)
                            .map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
                        return Ok(CreatedCapture { path: path.to_path_buf(), file, dir, kept: true });
                    }
                    if !kind.is_dir() {
                        let _ = std::fs::remove_file(path);
                    }
                }
            }
            match open.open(path) {
                Ok(file) => return Ok(CreatedCapture { path: path.to_path_buf(), file, dir, kept: false }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && force => continue,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Err(Error::OutputExists(path.to_path_buf())),
                Err(e) => return Err(Error::io(format!("cannot create {}", path.display()), e)),
            }
        }
        Err(Error::OutputKeepsReappearing(path.to_path_buf()))
    }

    pub fn descriptors(&self) -> [std::os::fd::RawFd; 2] {
        use std::os::fd::AsRawFd;
        [self.file.as_raw_fd(), self.dir.as_raw_fd()]
    }

    /// The target writes it now: it stays.
    pub fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for CreatedCapture {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        // Only the file we made: not one that replaced it meanwhile.
        let ours = self.file.metadata().ok().map(|m| (m.dev(), m.ino()));
        let there = std::fs::symlink_metadata(&self.path).ok().map(|m| (m.dev(), m.ino()));
        if ours.is_some() && ours == there {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
