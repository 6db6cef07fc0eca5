//! `memray run` runs the program as its child, but supervisors (systemd, `docker stop`,
//! Kubernetes, `kill PID`) signal the PID they started: ours. Every signal a supervisor
//! sends to end or poke a service is passed on to the program, so it stops (or reloads)
//! as it would untracked, and `memray run` exits with its status.
//!
//! A signal the terminal sent (Ctrl-C, Ctrl-\, a hang-up) already reached the program
//! too, since it is in our process group: that one is not sent a second time.

use std::sync::atomic::{AtomicI32, Ordering};

/// The signals a supervisor uses on a service.
const FORWARDED: [libc::c_int; 6] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT, libc::SIGUSR1, libc::SIGUSR2];

static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for an SA_SIGINFO handler.
    let code = if info.is_null() { 0 } else { unsafe { (*info).si_code } };
    // SI_USER, SI_QUEUE, SI_TKILL... (<= 0) come from a process; SI_KERNEL from the tty.
    if code > 0 {
        return;
    }
    let child = CHILD.load(Ordering::SeqCst);
    if child > 0 {
        // SAFETY: kill is async-signal-safe and takes plain integers.
        unsafe { libc::kill(child, sig) };
    }
}

/// From now on, the signals above are passed on to `child` instead of ending us.
pub fn to_child(child: u32) {
    CHILD.store(child as i32, Ordering::SeqCst);
    for sig in FORWARDED {
        // SAFETY: installs an async-signal-safe handler (an atomic load and kill) with an
        // initialised sigaction; SA_RESTART so our wait for the child carries on.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = forward as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) as usize;
            sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}
