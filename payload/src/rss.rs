//! The sampler thread: every memory_interval_ms it writes the process's resident set size
//! as a MEMORY_RECORD and flushes the output, which bounds what a SIGKILL can lose.
//!
//! Started with raw pthread_create rather than std::thread, so that the reentrancy guard is
//! the very first thing the thread sets: std's thread start-up calls into glibc, whose own
//! allocations would otherwise be recorded as the program's.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::hooks::WRITER;
use crate::lock::{futex_wait, futex_wake};
use crate::log::{self, log};

/// Non-zero once stop() was called; the sampler sleeps on it, so stop() wakes it at once.
static STOP: AtomicU32 = AtomicU32::new(0);
static INTERVAL_MS: AtomicU64 = AtomicU64::new(10);

pub struct Sampler {
    thread: Option<libc::pthread_t>,
}

extern "C" fn sampler_main(_: *mut libc::c_void) -> *mut libc::c_void {
    crate::thread_state::set_guard_permanently();
    while STOP.load(Ordering::Acquire) == 0 {
        sample();
        sleep_interruptibly(INTERVAL_MS.load(Ordering::Relaxed));
    }
    std::ptr::null_mut()
}

/// Sleeps `ms`, or until stop(): every tracker stop (each `memray run`'s end, each
/// detach) waits for this thread, which used to sleep on in slices of 5 ms.
fn sleep_interruptibly(ms: u64) {
    let deadline = Instant::now() + Duration::from_millis(ms);
    while STOP.load(Ordering::Acquire) == 0 {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        futex_wait(&STOP, 0, Some(deadline - now));
    }
}

impl Sampler {
    pub fn start(interval_ms: u64) -> std::io::Result<Sampler> {
        STOP.store(0, Ordering::Release);
        INTERVAL_MS.store(interval_ms.max(1), Ordering::Relaxed);
        let mut thread: libc::pthread_t = 0;
        // SAFETY: sampler_main has the signature pthread expects and takes no argument.
        let rc = unsafe { libc::pthread_create(&mut thread, std::ptr::null(), sampler_main, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        Ok(Sampler { thread: Some(thread) })
    }

    pub fn stop(&mut self) {
        STOP.store(1, Ordering::Release);
        futex_wake(&STOP, i32::MAX);
        if let Some(t) = self.thread.take() {
            // SAFETY: joins the thread we created, exactly once.
            unsafe { libc::pthread_join(t, std::ptr::null_mut()) };
        }
    }

    /// After fork the thread does not exist in the child: forget it without joining.
    pub fn forget(&mut self) {
        self.thread = None;
    }
}

fn sample() {
    let rss = resident_bytes();
    let now = now_ms();
    let failure = match WRITER.lock().as_mut() {
        Some(w) => {
            w.write_memory_record(rss, now);
            w.sink.error.take().map(|errno| (errno, w.sink.is_socket()))
        }
        None => None,
    };
    if let Some((errno, socket)) = failure {
        // A full disk or a live viewer that went away: stop recording, keep the program
        // running, and take the GOT hooks out now (no GIL needed for that; the rest of
        // the stop, PyMem wrappers included, happens when the session is stopped). The
        // capture stays readable up to the last successful flush. The line goes out first:
        // whoever sees tracking inactive (memray.Tracker, a test) finds it on stderr.
        let err = std::io::Error::from_raw_os_error(errno);
        if socket {
            log!(log::WARNING, "memray: the live viewer disconnected ({err}); tracking stopped and this process no longer streams (the program continues untracked)");
        } else {
            log!(log::ERROR, "memray: cannot write the capture ({err}); tracking stopped");
        }
        crate::hooks::ACTIVE.store(false, Ordering::Release);
        STOP.store(1, Ordering::Release);
        crate::got::restore_all(&crate::hooks::redirects());
    }
}

/// Resident set size from /proc/self/statm (second field, in pages).
pub fn resident_bytes() -> u64 {
    let mut buf = [0u8; 128];
    // SAFETY: open/read/close on a NUL-terminated literal path into a stack buffer.
    let n = unsafe {
        let fd = libc::open(c"/proc/self/statm".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return 0;
        }
        let n = libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len());
        libc::close(fd);
        n
    };
    if n <= 0 {
        return 0;
    }
    let pages = buf[..n as usize]
        .split(|b| *b == b' ')
        .nth(1)
        .and_then(|f| std::str::from_utf8(f).ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    pages * page
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
