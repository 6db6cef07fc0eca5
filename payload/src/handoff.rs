//! Receiving descriptors from `memray attach` (its side is memray-injector's `handoff`):
//! the capture file made on the attaching side and its directory, or the live view's
//! socket. Runs on the attach thread, never in a hook.

use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

/// What the attaching side sends as the one data byte.
const MARK: u8 = b'M';
/// More than any request sends; extra descriptors are closed.
const MAX_FDS: usize = 4;

fn close(fd: i32) {
    // SAFETY: closes a descriptor this module created or received and owns.
    unsafe { libc::close(fd) };
}

/// Makes a socket pair, publishes `1 + the far end's number` in `slot`, and waits up to
/// `timeout` for the descriptors, or until `cancelled` (checked every 20 ms: a detach
/// that comes while a killed attacher left us waiting). The slot is cleared before the
/// far end is closed (the attaching side relies on that order to know the number still
/// names our socket).
pub fn receive(slot: &AtomicI32, timeout: Duration, cancelled: impl Fn() -> bool) -> Result<Vec<i32>, Received> {
    let mut pair = [-1i32; 2];
    // SAFETY: socketpair writes two descriptors into the array we own.
    if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0, pair.as_mut_ptr()) } != 0 {
        return Err(Received::Failed(format!("cannot make a socket pair in the target: {}", std::io::Error::last_os_error())));
    }
    let [ours, theirs] = pair;
    let tv = libc::timeval { tv_sec: 0, tv_usec: 20_000 };
    // SAFETY: setsockopt reads a timeval we own, of the size given.
    unsafe {
        libc::setsockopt(
            ours,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const libc::timeval as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
    }
    slot.store(theirs + 1, Ordering::Release);
    let deadline = Instant::now() + timeout;
    let result = loop {
        match receive_rights(ours) {
            Err(Received::TimedOut) if cancelled() => break Err(Received::Cancelled),
            Err(Received::TimedOut) if Instant::now() < deadline => continue,
            other => break other,
        }
    };
    slot.store(0, Ordering::Release);
    close(theirs);
    close(ours);
    result
}

/// Why no descriptors came.
pub enum Received {
    TimedOut,
    Cancelled,
    Failed(String),
}

fn receive_rights(sock: i32) -> Result<Vec<i32>, Received> {
    const FD_BYTES: u32 = (MAX_FDS * std::mem::size_of::<i32>()) as u32;
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(FD_BYTES) } as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut data = [0u8; 1];
    loop {
        let mut iov = libc::iovec { iov_base: data.as_mut_ptr() as *mut libc::c_void, iov_len: 1 };
        // SAFETY: an all-zero msghdr is valid; its pointers are set to buffers we own that
        // outlive the call, with their true lengths.
        let (n, msg) = unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
            msg.msg_controllen = space;
            (libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC), msg)
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => return Err(Received::TimedOut),
                _ => return Err(Received::Failed(format!("cannot receive the capture file from memray attach: {e}"))),
            }
        }
        let mut fds = Vec::new();
        // SAFETY: the CMSG_* walk stays within msg_controllen bytes of `control`, which
        // recvmsg filled; each SCM_RIGHTS header is followed by whole descriptors.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    let bytes = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                    let p = libc::CMSG_DATA(cmsg) as *const i32;
                    for i in 0..bytes / std::mem::size_of::<i32>() {
                        fds.push(std::ptr::read_unaligned(p.add(i)));
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        if n != 1 || data[0] != MARK || msg.msg_flags & libc::MSG_CTRUNC != 0 || fds.is_empty() {
            fds.into_iter().for_each(close);
            return Err(Received::Failed("memray attach sent something other than the capture file".into()));
        }
        return Ok(fds);
    }
}
