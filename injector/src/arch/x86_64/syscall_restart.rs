//! How a thread stopped inside a system call carries on once our code has run in it.

use super::Regs;

const ERESTARTSYS: i64 = 512;
const ERESTARTNOINTR: i64 = 513;
const ERESTARTNOHAND: i64 = 514;
const ERESTART_RESTARTBLOCK: i64 = 516;

/// Blocking calls Python retries after EINTR (PEP 475), having first run
/// `PyErr_CheckSignals`: a main thread asleep in one of them can be woken to reach a safe
/// point without any visible effect.
const WAKEABLE_SYSCALLS: &[i64] = &[
    libc::SYS_read,
    libc::SYS_readv,
    libc::SYS_poll,
    libc::SYS_select,
    libc::SYS_nanosleep,
    libc::SYS_clock_nanosleep,
    libc::SYS_accept,
    libc::SYS_accept4,
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
    libc::SYS_wait4,
    libc::SYS_waitid,
    libc::SYS_pselect6,
    libc::SYS_ppoll,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
];

/// The registers with which a thread stopped at `regs` carries on as the kernel would have
/// let it: a system call it was interrupted in is restarted (the kernel does that only on
/// the way out of the stop, which code we run first would skip), or, with `wake` and one
/// of the calls Python retries after EINTR (PEP 475), it returns EINTR so the thread
/// passes `PyErr_CheckSignals`, a safe point. Returns the system call woken, if any.
pub fn resume_point(regs: Regs, wake: bool) -> (Regs, Option<i64>) {
    let mut out = regs;
    let nr = regs.orig_rax as i64;
    let ret = regs.rax as i64;
    let mut woken = None;
    if nr >= 0 {
        match -ret {
            ERESTARTSYS | ERESTARTNOHAND | ERESTART_RESTARTBLOCK if wake && WAKEABLE_SYSCALLS.contains(&nr) => {
                out.rax = (-libc::EINTR as i64) as u64;
                woken = Some(nr);
            }
            ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND => {
                out.rax = regs.orig_rax;
                // Back onto the `syscall` instruction (two bytes).
                out.rip = regs.rip - 2;
            }
            ERESTART_RESTARTBLOCK => {
                out.rax = libc::SYS_restart_syscall as u64;
                out.rip = regs.rip - 2;
            }
            _ => {}
        }
    }
    out.orig_rax = u64::MAX;
    (out, woken)
}
