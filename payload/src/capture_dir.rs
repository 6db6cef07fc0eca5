//! The directory a capture's files are made in: the process's own view of paths, or a
//! directory descriptor that `memray attach` handed over (the target may not be able to
//! reach the attaching side's directory by path: a container). Every file is made
//! exclusively and never through a link.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::FromRawFd;

/// Relative names resolve in `fd`; with `AT_FDCWD`, names are ordinary paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaptureDir {
    fd: i32,
}

fn c_name(name: &str) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

impl CaptureDir {
    /// Paths as this process sees them.
    pub const PATHS: CaptureDir = CaptureDir { fd: libc::AT_FDCWD };

    /// A directory descriptor (not owned: the tracker closes it when it stops).
    pub fn from_fd(fd: i32) -> CaptureDir {
        CaptureDir { fd }
    }

    /// lstat of `name`: None if it does not exist.
    pub fn lstat(self, name: &str) -> io::Result<Option<libc::stat>> {
        let c = c_name(name)?;
        // SAFETY: an all-zero stat is a valid out-buffer; fstatat fills it; `c` is NUL-terminated.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        match check(unsafe { libc::fstatat(self.fd, c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) }) {
            Ok(_) => Ok(Some(st)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A new file `name`, read-write, with `mode`: `O_CREAT|O_EXCL|O_NOFOLLOW`.
    pub fn create_new(self, name: &str, mode: u32) -> io::Result<File> {
        let c = c_name(name)?;
        let flags = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: openat with a NUL-terminated name; the descriptor returned is new and
        // owned by the File from here on.
        let fd = check(unsafe { libc::openat(self.fd, c.as_ptr(), flags, mode as libc::c_uint) })?;
        // SAFETY: as above.
        Ok(unsafe { File::from_raw_fd(fd) })
    }

    /// Opens `name` for reading, not through a link.
    pub fn open_read(self, name: &str) -> io::Result<File> {
        let c = c_name(name)?;
        // SAFETY: as in create_new.
        let fd = check(unsafe { libc::openat(self.fd, c.as_ptr(), libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC) })?;
        // SAFETY: as in create_new.
        Ok(unsafe { File::from_raw_fd(fd) })
    }

    pub fn remove(self, name: &str) -> io::Result<()> {
        let c = c_name(name)?;
        // SAFETY: unlinkat with a NUL-terminated name.
        check(unsafe { libc::unlinkat(self.fd, c.as_ptr(), 0) }).map(|_| ())
    }

    /// Renames `from` over `to`, both in this directory (atomic).
    pub fn rename(self, from: &str, to: &str) -> io::Result<()> {
        let (f, t) = (c_name(from)?, c_name(to)?);
        // SAFETY: renameat with NUL-terminated names.
        check(unsafe { libc::renameat(self.fd, f.as_ptr(), self.fd, t.as_ptr()) }).map(|_| ())
    }

    /// A capture file that nothing else names: a stale file or a link of that name goes
    /// first (a planted link is removed, never followed; anything else stays and makes
    /// this fail).
    pub fn create_capture(self, name: &str) -> io::Result<File> {
        let mut last = io::Error::from(io::ErrorKind::AlreadyExists);
        for _ in 0..3 {
            if let Ok(Some(st)) = self.lstat(name) {
                let kind = st.st_mode & libc::S_IFMT;
                if kind == libc::S_IFREG || kind == libc::S_IFLNK {
                    let _ = self.remove(name);
                }
            }
            match self.create_new(name, 0o644) {
                Ok(f) => return Ok(f),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }
}

/// Gives `file` the owner `uid`/`gid` when it has another (a capture file made on the
/// attaching side belongs to its user; what this process makes beside it should too).
/// Fails when this process may not (it is not root where the file lives).
pub fn give_owner(file: &File, uid: u32, gid: u32) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    let m = file.metadata()?;
    if m.uid() == uid && m.gid() == gid {
        return Ok(());
    }
    // SAFETY: fchown on a descriptor the File owns.
    check(unsafe { libc::fchown(file.as_raw_fd(), uid, gid) }).map(|_| ())
}
