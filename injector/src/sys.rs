//! Thin wrappers over the raw ptrace and waitpid calls.
//!
//! Raw libc rather than nix's typed wrappers wherever a signal number travels: nix's
//! `Signal` cannot hold real-time signals (glibc's SIGCANCEL/SIGSETXID are 32 and 33), and
//! a stop status nix cannot decode would be reaped and lost, leaving the thread stopped.

use nix::errno::Errno;
use nix::sys::ptrace;
use nix::sys::uio::{process_vm_readv, process_vm_writev, RemoteIoVec};
use nix::unistd::Pid;

use crate::arch::Regs;
use crate::error::{Error, Result};

fn check(op: &'static str, tid: i32, rc: libc::c_long) -> Result<libc::c_long> {
    if rc == -1 {
        let errno = Errno::last();
        if errno != Errno::UnknownErrno {
            return Err(Error::Ptrace { op, tid, errno });
        }
    }
    Ok(rc)
}

pub(crate) fn raw(op: &'static str, req: libc::c_uint, tid: i32, addr: usize, data: usize) -> Result<libc::c_long> {
    if !matches!(req, libc::PTRACE_GETREGSET | libc::PTRACE_GETFPREGS) {
        crate::death_points::before_change(op, tid);
    }
    Errno::clear();
    // SAFETY: every request used here either takes no pointers or, for the ones that do
    // (GETREGSET/SETREGSET), receives a pointer to a live iovec over a buffer we own.
    let rc = unsafe { libc::ptrace(req, tid as libc::pid_t, addr as *mut libc::c_void, data as *mut libc::c_void) };
    check(op, tid, rc)
}

pub const OPTIONS: libc::c_int = libc::PTRACE_O_TRACECLONE
    | libc::PTRACE_O_TRACEFORK
    | libc::PTRACE_O_TRACEVFORK
    | libc::PTRACE_O_TRACEVFORKDONE
    | libc::PTRACE_O_TRACEEXEC
    // System-call stops (only under PTRACE_SYSCALL) report SIGTRAP|0x80.
    | libc::PTRACE_O_TRACESYSGOOD;

/// The stop signal of a system-call stop.
pub const SYSCALL_STOP: i32 = libc::SIGTRAP | 0x80;

pub fn seize(tid: i32) -> Result<()> {
    raw("SEIZE", libc::PTRACE_SEIZE, tid, 0, OPTIONS as usize).map(drop)
}

pub fn interrupt(tid: i32) -> Result<()> {
    raw("INTERRUPT", libc::PTRACE_INTERRUPT, tid, 0, 0).map(drop)
}

pub fn cont(tid: i32, sig: i32) -> Result<()> {
    raw("CONT", libc::PTRACE_CONT, tid, 0, sig.max(0) as usize).map(drop)
}

/// Resumes until the next system-call entry or exit.
pub fn cont_syscall(tid: i32, sig: i32) -> Result<()> {
    raw("SYSCALL", libc::PTRACE_SYSCALL, tid, 0, sig.max(0) as usize).map(drop)
}

pub fn listen(tid: i32) -> Result<()> {
    raw("LISTEN", libc::PTRACE_LISTEN, tid, 0, 0).map(drop)
}

pub fn singlestep(tid: i32) -> Result<()> {
    raw("SINGLESTEP", libc::PTRACE_SINGLESTEP, tid, 0, 0).map(drop)
}

pub fn detach(tid: i32, sig: i32) -> Result<()> {
    raw("DETACH", libc::PTRACE_DETACH, tid, 0, sig.max(0) as usize).map(drop)
}

pub fn event_msg(tid: i32) -> Result<u64> {
    ptrace::getevent(Pid::from_raw(tid)).map(|v| v as u64).map_err(|errno| Error::Ptrace { op: "GETEVENTMSG", tid, errno })
}

/// The `si_code` of the signal the thread is stopped with.
pub fn si_code(tid: i32) -> Result<i32> {
    ptrace::getsiginfo(Pid::from_raw(tid)).map(|s| s.si_code).map_err(|errno| Error::Ptrace { op: "GETSIGINFO", tid, errno })
}

pub fn getregs(tid: i32) -> Result<Regs> {
    ptrace::getregs(Pid::from_raw(tid)).map_err(|errno| Error::Ptrace { op: "GETREGS", tid, errno })
}

pub fn setregs(tid: i32, regs: Regs) -> Result<()> {
    crate::death_points::before_change("SETREGS", tid);
    ptrace::setregs(Pid::from_raw(tid), regs).map_err(|errno| Error::Ptrace { op: "SETREGS", tid, errno })
}

pub fn peek(tid: i32, addr: u64) -> Result<u64> {
    ptrace::read(Pid::from_raw(tid), addr as ptrace::AddressType).map(|w| w as u64).map_err(|errno| Error::Ptrace {
        op: "PEEKDATA",
        tid,
        errno,
    })
}

pub fn poke(tid: i32, addr: u64, word: u64) -> Result<()> {
    crate::death_points::before_change("POKEDATA", tid);
    ptrace::write(Pid::from_raw(tid), addr as ptrace::AddressType, word as libc::c_long).map_err(|errno| Error::Ptrace {
        op: "POKEDATA",
        tid,
        errno,
    })
}

/// Reads the byte at `addr` through a stopped thread (an aligned word, so the read never
/// crosses into the next page).
pub fn peek_byte(tid: i32, addr: u64) -> Result<u8> {
    let aligned = addr & !7;
    let word = peek(tid, aligned)?;
    Ok((word >> ((addr - aligned) * 8)) as u8)
}

/// Replaces the byte at `addr`, keeping its neighbours as they are now.
pub fn poke_byte(tid: i32, addr: u64, byte: u8) -> Result<()> {
    let aligned = addr & !7;
    let shift = (addr - aligned) * 8;
    let word = peek(tid, aligned)?;
    let new = (word & !(0xffu64 << shift)) | ((byte as u64) << shift);
    if new != word {
        poke(tid, aligned, new)?;
    }
    Ok(())
}

/// A decoded wait status.
#[derive(Debug, Clone, Copy)]
pub enum Wait {
    Exited(i32),
    /// Stopped with a signal; `event` is the PTRACE_EVENT_* number, 0 for a plain
    /// signal-delivery-stop.
    Stopped {
        tid: i32,
        sig: i32,
        event: i32,
    },
}

/// The next pending status of any traced thread, without blocking and *without consuming
/// it* (`waitid` with `WNOWAIT`): the caller first acts on the stopped thread, then
/// consumes the status with [`reap`] or by resuming the thread. Consuming a signal stop
/// makes the kernel forget its signal, so a tracer that dies right after would leave the
/// thread running as if the signal never came (see `Tracer::next_status`).
pub fn peek_any() -> Result<Option<Wait>> {
    // SAFETY: siginfo_t is plain data; all-zero is a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid writes one siginfo_t through a valid pointer.
    let rc =
        unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WSTOPPED | libc::WNOHANG | libc::WNOWAIT | libc::__WALL) };
    if rc < 0 {
        let errno = Errno::last();
        if errno == Errno::EINTR {
            return Ok(None);
        }
        return Err(Error::Ptrace { op: "WAITID", tid: -1, errno });
    }
    // SAFETY: waitid filled in a SIGCHLD siginfo (or left it zeroed: si_pid 0).
    let (tid, status) = unsafe { (info.si_pid(), info.si_status()) };
    if tid == 0 {
        return Ok(None);
    }
    Ok(Some(match info.si_code {
        // For a ptrace stop si_status is the whole stop code: signal | event << 8.
        libc::CLD_TRAPPED | libc::CLD_STOPPED => Wait::Stopped { tid, sig: status & 0xff, event: (status >> 8) & 0xff },
        _ => Wait::Exited(tid),
    }))
}

/// Consumes the status [`peek_any`] reported for `tid`.
pub fn reap(tid: i32) {
    let mut status: libc::c_int = 0;
    // SAFETY: waitpid writes one int through a valid pointer.
    unsafe { libc::waitpid(tid, &mut status, libc::__WALL | libc::WNOHANG) };
}

pub fn tgkill(pid: i32, tid: i32, sig: i32) {
    crate::death_points::before_change("tgkill", tid);
    // SAFETY: tgkill takes plain integers; a vanished thread gives ESRCH, which is fine.
    unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, sig) };
}

/// A system call attaching needs, which a seccomp profile may refuse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Needed {
    Ptrace,
    ProcessVmReadv,
    ProcessVmWritev,
}

impl Needed {
    pub fn name(self) -> &'static str {
        match self {
            Needed::Ptrace => "ptrace",
            Needed::ProcessVmReadv => "process_vm_readv",
            Needed::ProcessVmWritev => "process_vm_writev",
        }
    }
}

/// Whether something in front of the kernel (a seccomp filter; Docker's default profile
/// answers EPERM) refuses `call` outright. The call is made on PID 0, which never exists:
/// the kernel itself would answer ESRCH.
pub fn refused_outright(call: Needed) -> bool {
    let mut byte = [0u8; 1];
    let remote = [RemoteIoVec { base: 0x1000, len: 1 }];
    let errno = match call {
        Needed::Ptrace => {
            Errno::clear();
            // SAFETY: PEEKDATA on a PID that cannot exist reads nothing and writes nothing;
            // the pointers are never dereferenced.
            let rc = unsafe {
                libc::ptrace(libc::PTRACE_PEEKDATA, 0, std::ptr::null_mut::<libc::c_void>(), std::ptr::null_mut::<libc::c_void>())
            };
            (rc == -1).then(Errno::last)
        }
        Needed::ProcessVmReadv => process_vm_readv(Pid::from_raw(0), &mut [std::io::IoSliceMut::new(&mut byte)], &remote).err(),
        Needed::ProcessVmWritev => process_vm_writev(Pid::from_raw(0), &[std::io::IoSlice::new(&byte)], &remote).err(),
    };
    matches!(errno, Some(Errno::EPERM | Errno::EACCES | Errno::ENOSYS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_refused_without_a_filter() {
        if crate::proc::own_seccomp_mode().unwrap_or(0) != 0 {
            eprintln!("skipped: these tests run under a seccomp filter");
            return;
        }
        for call in [Needed::Ptrace, Needed::ProcessVmReadv, Needed::ProcessVmWritev] {
            assert!(!refused_outright(call), "{call:?}");
        }
    }
}
