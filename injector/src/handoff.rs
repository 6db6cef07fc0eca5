//! Handing open descriptors to the target: how a capture file made on the attaching side
//! (or a live view's socket) reaches a process that cannot see our file system, our
//! network or our user ids (a container).
//!
//! The payload makes a Unix socket pair and publishes one end's number; we copy that end
//! out of the target with `pidfd_getfd` (which needs the same rights as ptrace) and send
//! the descriptors over it with `SCM_RIGHTS`. The payload receives them on the other end.
//! Descriptors carry the rights they were opened with, so the target writes a file that
//! belongs to the user who ran `memray attach`, wherever that file is.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::error::{Error, Result};

/// What the payload expects as the message's one data byte.
pub const MARK: u8 = b'M';

fn last_error(what: &str) -> Error {
    Error::io(what.to_string(), std::io::Error::last_os_error())
}

fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn pidfd_getfd(pidfd: &OwnedFd, target_fd: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_getfd takes a pidfd, a descriptor number in that process and flags
    // (0); it returns a new descriptor of ours or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target_fd, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as in pidfd_open.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Whether this kernel (5.6+) and our seccomp profile let us copy descriptors out of a
/// process: tried on ourselves.
pub fn available() -> bool {
    let Ok(me) = pidfd_open(std::process::id() as i32) else { return false };
    pidfd_getfd(&me, me.as_raw_fd()).is_ok()
}

/// Sends `fds` to the payload in process `pid` over its socket `remote_fd`.
///
/// `still_waiting` must say whether the payload still publishes `remote_fd`: it is asked
/// after the copy, and the payload withdraws the number before it closes the socket, so a
/// yes means the copy is that socket and not whatever reused its number.
pub fn send(pid: i32, remote_fd: i32, fds: &[RawFd], still_waiting: impl Fn() -> bool) -> Result<()> {
    // A target that exits meanwhile fails these calls with ESRCH: its exit is the story.
    send_inner(pid, remote_fd, fds, still_waiting).map_err(|e| crate::explain_exit(pid, e))
}

fn send_inner(pid: i32, remote_fd: i32, fds: &[RawFd], still_waiting: impl Fn() -> bool) -> Result<()> {
    let pidfd = pidfd_open(pid).map_err(|e| Error::io(format!("cannot open a pidfd for process {pid}"), e))?;
    let sock = pidfd_getfd(&pidfd, remote_fd).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOSYS) => Error::io("cannot take a descriptor from the target (pidfd_getfd needs Linux 5.6)", e),
        Some(libc::EPERM) => Error::io("cannot take a descriptor from the target (pidfd_getfd is refused: a seccomp profile?)", e),
        _ => Error::io(format!("cannot take descriptor {remote_fd} from process {pid}"), e),
    })?;
    if !still_waiting() {
        return Err(Error::io("the payload stopped waiting for the capture file", std::io::Error::from(std::io::ErrorKind::TimedOut)));
    }
    let sock_type = socket_type(&sock)?;
    if sock_type != libc::SOCK_SEQPACKET {
        return Err(Error::io(
            format!("descriptor {remote_fd} of process {pid} is not the payload's socket"),
            std::io::Error::from(std::io::ErrorKind::InvalidData),
        ));
    }
    send_rights(&sock, fds)
}

fn socket_type(sock: &OwnedFd) -> Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `value`, which we own.
    let rc = unsafe {
        libc::getsockopt(sock.as_raw_fd(), libc::SOL_SOCKET, libc::SO_TYPE, &mut value as *mut libc::c_int as *mut libc::c_void, &mut len)
    };
    if rc != 0 {
        return Err(last_error("the target's descriptor is not a socket"));
    }
    Ok(value)
}

fn send_rights(sock: &OwnedFd, fds: &[RawFd]) -> Result<()> {
    let payload_len = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE/CMSG_LEN only compute sizes.
    let (space, len) = unsafe { (libc::CMSG_SPACE(payload_len as u32) as usize, libc::CMSG_LEN(payload_len as u32) as usize) };
    // u64 words keep the control buffer aligned for cmsghdr.
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut data = [MARK];
    let mut iov = libc::iovec { iov_base: data.as_mut_ptr() as *mut libc::c_void, iov_len: 1 };
    // SAFETY: an all-zero msghdr is valid; every pointer set below points into buffers
    // that outlive the sendmsg call, with their true lengths; CMSG_FIRSTHDR of a buffer of
    // CMSG_SPACE(n) bytes is non-null and has room for CMSG_LEN(n).
    let rc = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = space;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = len;
        std::ptr::copy_nonoverlapping(fds.as_ptr() as *const u8, libc::CMSG_DATA(cmsg), payload_len);
        libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL)
    };
    if rc != 1 {
        return Err(last_error("cannot send the capture file to the target"));
    }
    Ok(())
}
