//! Where the encoded records go: a capture file, written through shared mappings of
//! itself, or a socket or pipe, written from a buffer.
//!
//! **Files.** Records are copied into a `MAP_SHARED` window of the file: they are in the
//! page cache the moment they are encoded, and the kernel keeps those pages when the
//! process dies (SIGKILL, SIGSEGV, `os._exit`, `abort`), so a capture holds every record
//! written before the instant of death, with no flush and no system call per record.
//! The file is grown 64 KiB ahead of the data by writing zeros with `pwrite(2)`: that
//! reserves the space (a full disk is an error there, as for any write, never a SIGBUS
//! on a page fault) and puts the pages in the page cache in one call, so the stores into
//! them cost no more than the buffered `write(2)` they replace (`posix_fallocate`
//! instead made each first store into a page cost several microseconds on ext4). Past the data the file reads as zeros, which readers (ours and Memray's, which
//! writes its files the same way) take as the end; a clean finish truncates them away.
//! A file opened write-only, one the kernel will not map, or one whose tracker asked for
//! plain writes (`--buffered-file-io`, for file systems whose shared mappings misbehave)
//! goes through the buffer instead.
//!
//! **Sockets and pipes** (live mode): a 1 MiB buffer, written out with `send`/`write` on
//! flush (every RSS sample) or when full.

use memray_capture::ByteSink;

const BUFFER_SIZE: usize = 1 << 20;
/// The size of one mapped window of a capture file.
const WINDOW: usize = 1 << 20;
/// The file is reserved (and grown) this much at a time inside a window, so a capture
/// whose process died ends in at most this many zeros: Memray's reader finds the end of
/// the data by reading backwards a byte at a time, which over a whole window of zeros
/// takes seconds.
const GRAIN: u64 = 64 << 10;
const PAGE: u64 = 4096;

/// A mapped stretch of the capture file: `len` bytes at `file_offset`, written up to
/// `pos`; the file is reserved up to `reserved_end` (never touched past it: a page past
/// the end of the file would be a SIGBUS).
struct Window {
    base: *mut u8,
    file_offset: u64,
    len: usize,
    pos: usize,
    reserved_end: u64,
}

/// Output to a file, a socket or a pipe. Never allocates once created.
pub struct FdSink {
    fd: i32,
    /// A connected socket (live mode): written with send(MSG_NOSIGNAL), so a viewer that
    /// went away gives EPIPE instead of a SIGPIPE that would kill the tracked process.
    socket: bool,
    /// A regular file open for reading and writing: written through `window`.
    mappable: bool,
    window: Option<Window>,
    buf: Vec<u8>,
    /// The first write error (errno); nothing more is written after it.
    pub error: Option<i32>,
    pub failed: bool,
    pub bytes_written: u64,
}

// SAFETY: the window's pointer is only used by whoever holds the sink (the writer lock).
unsafe impl Send for FdSink {}

impl FdSink {
    /// `buffered`: plain writes from a buffer even where the file could be mapped.
    pub fn new(fd: i32, buffered: bool) -> Self {
        let (socket, mappable) = kind(fd);
        let mappable = mappable && !buffered;
        let buf = if mappable { Vec::new() } else { Vec::with_capacity(BUFFER_SIZE) };
        FdSink { fd, socket, mappable, window: None, buf, error: None, failed: false, bytes_written: 0 }
    }

    /// Whether the output is a socket (a live viewer) rather than a file.
    pub fn is_socket(&self) -> bool {
        self.socket
    }

    pub fn fd(&self) -> i32 {
        self.fd
    }

    /// Makes everything put so far reach the destination. A mapped file needs nothing:
    /// its pages are the file's.
    pub fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let buf = std::mem::take(&mut self.buf);
        self.write_all(&buf);
        self.buf = buf;
        self.buf.clear();
    }

    /// The capture is complete: unmaps the last window and cuts the file at the end of
    /// the data (the reserved zeros after it go).
    pub fn finish(&mut self) {
        self.flush();
        if let Some(w) = self.window.take() {
            let end = w.file_offset + w.pos as u64;
            unmap(&w);
            // SAFETY: ftruncate on our own fd with a length inside the file.
            if unsafe { libc::ftruncate(self.fd, end as libc::off_t) } != 0 {
                self.fail(last_errno());
            }
        }
    }

    fn fail(&mut self, errno: i32) {
        if !self.failed {
            self.failed = true;
            self.error = Some(errno);
        }
    }

    fn write_all(&mut self, mut data: &[u8]) {
        if self.failed {
            return;
        }
        while !data.is_empty() {
            // SAFETY: writes from a valid slice to an fd we own.
            let n = unsafe {
                if self.socket {
                    libc::send(self.fd, data.as_ptr() as *const libc::c_void, data.len(), libc::MSG_NOSIGNAL)
                } else {
                    libc::write(self.fd, data.as_ptr() as *const libc::c_void, data.len())
                }
            };
            if n < 0 {
                let errno = last_errno();
                if errno == libc::EINTR {
                    continue;
                }
                self.fail(errno);
                return;
            }
            self.bytes_written += n as u64;
            data = &data[n as usize..];
        }
    }

    /// Copies into the mapped windows, opening the next one as each fills. False if
    /// the file cannot be mapped at all (the caller buffers instead).
    #[inline]
    fn put_mapped(&mut self, mut data: &[u8]) -> bool {
        loop {
            let Some(w) = self.window.as_mut() else {
                if self.failed {
                    return true;
                }
                match self.open_first_window() {
                    Ok(()) => continue,
                    Err(_) if self.bytes_written == 0 && self.window.is_none() => {
                        // Not mappable after all (a file system without shared mappings):
                        // buffered writes from here on.
                        self.mappable = false;
                        self.buf.reserve(BUFFER_SIZE);
                        return false;
                    }
                    Err(errno) => {
                        self.fail(errno);
                        return true;
                    }
                }
            };
            let n = (w.len - w.pos).min(data.len());
            let end = w.file_offset + (w.pos + n) as u64;
            if end > w.reserved_end {
                let window_end = w.file_offset + w.len as u64;
                let grow_to = end.div_ceil(GRAIN).saturating_mul(GRAIN).min(window_end);
                if let Err(errno) = reserve(self.fd, w.reserved_end, grow_to) {
                    self.fail(errno);
                    return true;
                }
                w.reserved_end = grow_to;
            }
            // SAFETY: `base..base + len` is our live writable mapping and
            // `pos + n <= len`; `data` is a separate slice of ours.
            unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), w.base.add(w.pos), n) };
            w.pos += n;
            self.bytes_written += n as u64;
            data = &data[n..];
            if data.is_empty() {
                return true;
            }
            let next = w.file_offset + w.len as u64;
            if let Some(old) = self.window.take() {
                unmap(&old);
            }
            match open_window(self.fd, next) {
                Ok(w) => self.window = Some(w),
                Err(errno) => {
                    self.fail(errno);
                    return true;
                }
            }
        }
    }

    fn open_first_window(&mut self) -> Result<(), i32> {
        // SAFETY: lseek on our own fd.
        let at = unsafe { libc::lseek(self.fd, 0, libc::SEEK_CUR) };
        if at < 0 {
            return Err(last_errno());
        }
        self.window = Some(open_window(self.fd, at as u64)?);
        Ok(())
    }
}

impl ByteSink for FdSink {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        if self.mappable && self.put_mapped(bytes) {
            return;
        }
        if self.buf.len() + bytes.len() > BUFFER_SIZE {
            self.flush();
            if bytes.len() > BUFFER_SIZE {
                self.write_all(bytes);
                return;
            }
        }
        self.buf.extend_from_slice(bytes);
    }

    #[inline(always)]
    fn put_u8(&mut self, b: u8) {
        self.put_zero_padded(&[b], 1);
    }

    /// While the reserved part of the window has room for all `N` bytes, one copy of a
    /// known size: the zeros past `len` land where the file holds zeros already (nothing
    /// is ever written past the data but such zeros), and the next record overwrites them.
    #[inline(always)]
    fn put_zero_padded<const N: usize>(&mut self, buf: &[u8; N], len: usize) {
        debug_assert!(len <= N && buf[len..].iter().all(|&b| b == 0));
        if let Some(w) = self.window.as_mut().filter(|_| !self.failed) {
            if w.file_offset + (w.pos + N) as u64 <= w.reserved_end {
                // SAFETY: `base + pos .. base + pos + N` is inside our live writable mapping
                // (reserved_end never passes the window's end) and below the reserved end
                // of the file, so no page past the end of the file is touched.
                unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr(), w.base.add(w.pos), N) };
                w.pos += len;
                self.bytes_written += len as u64;
                return;
            }
        }
        self.put(&buf[..len]);
    }
}

impl Drop for FdSink {
    /// Unmaps only: the file is cut by `finish` alone, never by a fork child dropping its
    /// copy of the parent's writer.
    fn drop(&mut self) {
        if let Some(w) = self.window.take() {
            unmap(&w);
        }
    }
}

/// (socket, mappable): a regular file open for reading and writing can be mapped.
fn kind(fd: i32) -> (bool, bool) {
    // SAFETY: fstat into a zeroed stat buffer we own; fcntl(F_GETFL) takes no pointer.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd, &mut st) != 0 {
            return (false, false);
        }
        let format = st.st_mode & libc::S_IFMT;
        let flags = libc::fcntl(fd, libc::F_GETFL);
        let read_write = flags >= 0 && flags & libc::O_ACCMODE == libc::O_RDWR && flags & libc::O_APPEND == 0;
        (format == libc::S_IFSOCK, format == libc::S_IFREG && read_write)
    }
}

/// Maps the window holding file offset `at` (its page start onwards). Nothing past `at`
/// is reserved yet: `put_mapped` reserves before it writes.
fn open_window(fd: i32, at: u64) -> Result<Window, i32> {
    let start = at & !(PAGE - 1);
    // SAFETY: mmap on our own fd; the mapping is checked and owned by the returned
    // Window. Mapping past the end of the file is allowed; only touching it is not.
    unsafe {
        let base = libc::mmap(std::ptr::null_mut(), WINDOW, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, start as libc::off_t);
        if base == libc::MAP_FAILED {
            return Err(last_errno());
        }
        Ok(Window { base: base as *mut u8, file_offset: start, len: WINDOW, pos: (at - start) as usize, reserved_end: at })
    }
}

/// Writes zeros from `from` to `to` (growing the file to `to`): a full disk is an error
/// here, never a SIGBUS when the page is written through the mapping.
fn reserve(fd: i32, from: u64, to: u64) -> Result<(), i32> {
    static ZEROS: [u8; GRAIN as usize] = [0; GRAIN as usize];
    let mut at = from;
    while at < to {
        let n = ((to - at) as usize).min(ZEROS.len());
        // SAFETY: pwrite from a static buffer to our own fd.
        let rc = unsafe { libc::pwrite(fd, ZEROS.as_ptr() as *const libc::c_void, n, at as libc::off_t) };
        if rc < 0 {
            let errno = last_errno();
            if errno == libc::EINTR {
                continue;
            }
            return Err(errno);
        }
        at += rc as u64;
    }
    Ok(())
}

fn unmap(w: &Window) {
    // SAFETY: unmaps exactly the mapping open_window made; nothing refers to it after.
    unsafe { libc::munmap(w.base as *mut libc::c_void, w.len) };
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsRawFd;

    fn temp(name: &str) -> (std::path::PathBuf, std::fs::File) {
        let path = std::env::temp_dir().join(format!("memray-sink-{name}-{}", std::process::id()));
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        (path, file)
    }

    #[test]
    fn mapped_file_holds_every_byte_before_finish_and_exactly_them_after() {
        let (path, file) = temp("mapped");
        let mut sink = FdSink::new(file.as_raw_fd(), false);
        assert!(sink.mappable);
        // Across several windows, in odd-sized pieces.
        let mut expected = Vec::new();
        let mut i = 0u32;
        while expected.len() < 3 * WINDOW + 12345 {
            let piece: Vec<u8> = (0..(i % 300 + 1)).map(|k| (k as u8).wrapping_add(i as u8) | 1).collect();
            sink.put(&piece);
            expected.extend_from_slice(&piece);
            i += 1;
        }
        // Before finish (as after a crash): the data, then zeros.
        let mut on_disk = Vec::new();
        std::fs::File::open(&path).unwrap().read_to_end(&mut on_disk).unwrap();
        assert!(on_disk.len() > expected.len() && on_disk.len() as u64 <= expected.len() as u64 + GRAIN);
        assert_eq!(&on_disk[..expected.len()], &expected[..]);
        assert!(on_disk[expected.len()..].iter().all(|&b| b == 0));
        sink.finish();
        assert!(!sink.failed);
        assert_eq!(std::fs::read(&path).unwrap(), expected);
        std::fs::remove_file(&path).ok();
    }

    #[test]
    fn write_only_file_is_buffered() {
        let path = std::env::temp_dir().join(format!("memray-sink-wo-{}", std::process::id()));
        let file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(&path).unwrap();
        let mut sink = FdSink::new(file.as_raw_fd(), false);
        assert!(!sink.mappable);
        sink.put(b"abc");
        sink.finish();
        assert_eq!(std::fs::read(&path).unwrap(), b"abc");
        std::fs::remove_file(&path).ok();
    }

    #[test]
    fn buffered_file_io_writes_a_mappable_file_through_the_buffer() {
        let (path, file) = temp("buffered");
        let mut sink = FdSink::new(file.as_raw_fd(), true);
        assert!(!sink.mappable);
        let expected: Vec<u8> = (0..BUFFER_SIZE + 777).map(|i| (i % 251) as u8).collect();
        sink.put(&expected[..10]);
        // Nothing reaches the file before a flush or a full buffer...
        assert_eq!(std::fs::read(&path).unwrap().len(), 0);
        sink.put(&expected[10..]);
        sink.finish();
        assert!(!sink.failed && sink.window.is_none());
        // ...and no zeros are reserved past the data.
        assert_eq!(std::fs::read(&path).unwrap(), expected);
        std::fs::remove_file(&path).ok();
    }
}

#[cfg(test)]
mod speed {
    use super::*;
    use std::os::fd::AsRawFd;

    /// `cargo test --release -p memray-payload sink_speed -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn sink_speed() {
        for round in 0..3 {
            for mapped in [false, true] {
                let path = std::env::temp_dir().join(format!("memray-sink-speed-{}", std::process::id()));
                let file = if mapped {
                    std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap()
                } else {
                    std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(&path).unwrap()
                };
                let mut sink = FdSink::new(file.as_raw_fd(), false);
                let start = std::time::Instant::now();
                let rec = [0x81u8, 2, 3, 4, 5, 6, 7, 8];
                for _ in 0..(64 << 20) / 8 {
                    sink.put(&rec);
                }
                sink.finish();
                eprintln!("round {round} mapped={mapped}: {:?} for 64 MiB", start.elapsed());
                std::fs::remove_file(&path).ok();
            }
        }
    }
}
