//! Puts a shared library into a live CPython process and calls a function in it: the
//! machinery behind `memray attach`.
//!
//! Built directly on ptrace (no gdb or lldb, no Python on the attaching side):
//!
//! 1. [`inspect`] checks the process (exists, may be traced, is a CPython we support) and
//!    resolves what the injection needs from the target's *own* objects, read through
//!    /proc/PID/maps and /proc/PID/root: `dlopen`/`dlerror`/`dlsym` in its libc (or
//!    libdl), and the safe points: the entries of `malloc`, `calloc`, `realloc`, `free`,
//!    the `PyMem_*`/`PyObject_*` allocators, `PyErr_CheckSignals` and
//!    `Py_MakePendingCalls`.
//! 2. [`inject`] seizes every thread (`PTRACE_SEIZE`, which does not stop them; new
//!    threads and forked children are followed), writes an int3 at each safe point
//!    through one briefly interrupted thread, and waits until some thread reaches one. A
//!    thread at the entry of these functions holds no allocator or loader lock. If the
//!    main thread sleeps in a system call that Python retries after EINTR (PEP 475), it
//!    is woken so that it passes `PyErr_CheckSignals`.
//! 3. In that thread, with all its registers (FP/vector state included) saved, it calls
//!    `dlopen(library, RTLD_NOW)`, `dlsym(handle, entry)` and `entry(arg)`, each with a
//!    return address of 0 so the return faults and stops the thread, arguments copied
//!    below the red zone. The entry is expected to return at once (start a thread).
//! 4. It restores the registers and the original bytes, moves any thread that hit an
//!    int3 meanwhile back onto the restored instruction, and detaches from every thread.
//!
//! PEP 768 (CPython 3.14's `sys.remote_exec`) is the route to add next to this one: see
//! [`Method`].

mod cave;
mod elf;
mod error;
mod inspect;
pub mod memory;
mod proc;
mod sys;
mod tracer;

use std::sync::atomic::AtomicBool;
use std::time::Duration;

pub use error::{Error, Result};
pub use inspect::{check_permissions, inspect, ProcessInfo};
pub use tracer::Injected;

/// How code gets into the target. Only ptrace exists today; CPython 3.14's safe external
/// debugger interface (PEP 768: write a script path into the interpreter's debugger
/// support structure, the interpreter runs it at its next eval-breaker check) fits here as
/// a second method that needs no breakpoints at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Method {
    #[default]
    Ptrace,
}

/// Knobs of one injection.
pub struct InjectOptions<'a> {
    /// How long to wait for a safe point. A call already running in the target is always
    /// waited for: abandoning it would leave the process with a return address of 0.
    pub timeout: Duration,
    /// Set (e.g. by a SIGINT handler) to give up; the process is left as it was.
    pub cancel: Option<&'a AtomicBool>,
    /// Receives one line per step.
    pub log: Option<&'a dyn Fn(&str)>,
    /// Wake the main thread from a long sleep or blocking read (see the crate docs).
    pub wake_main_thread: bool,
    pub method: Method,
}

impl Default for InjectOptions<'_> {
    fn default() -> Self {
        InjectOptions { timeout: Duration::from_secs(10), cancel: None, log: None, wake_main_thread: true, method: Method::Ptrace }
    }
}

/// Loads `library` (a path as the target sees it) into the process and calls
/// `entry(arg)` there, where `arg` is passed as a NUL-terminated string that lives until
/// the call returns.
pub fn inject(info: &ProcessInfo, library: &str, entry: &str, arg: &[u8], opts: &InjectOptions) -> Result<Injected> {
    let result = match opts.method {
        Method::Ptrace => tracer::Tracer::new(info, opts).inject(library, entry, arg),
    };
    result.map_err(|e| explain_exit(info.pid, e))
}

/// A process that exits while we work on it makes whatever we were doing fail (ESRCH from
/// ptrace, EFAULT or ESRCH from its memory, a vanished /proc file): the exit is the
/// real story. A thread that got ESRCH may be ahead of the process's own exit, so that
/// case waits a moment for it.
fn explain_exit(pid: i32, e: Error) -> Error {
    if matches!(e, Error::ProcessExited { .. }) {
        return e;
    }
    let vanished = matches!(
        e,
        Error::Ptrace { errno: nix::errno::Errno::ESRCH, .. }
            | Error::Memory { errno: nix::errno::Errno::ESRCH | nix::errno::Errno::EFAULT | nix::errno::Errno::EIO, .. }
            | Error::NoSuchProcess(_)
    );
    let patience = if vanished { 50 } else { 1 };
    for _ in 0..patience {
        if !process_alive(pid) {
            return Error::ProcessExited { pid, detail: String::new() };
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    e
}

/// An object mapped in the process whose file name contains `needle`: its path and the
/// address of each requested dynamic symbol it defines.
pub struct MappedObject {
    pub path: String,
    pub symbols: std::collections::HashMap<String, u64>,
}

/// Finds the mapped objects whose file name contains `needle` and resolves `symbols` in
/// each (from the file the target mapped).
pub fn find_mapped(pid: i32, needle: &str, symbols: &[&str]) -> Result<Vec<MappedObject>> {
    let maps = proc::maps(pid)?;
    let mut out = Vec::new();
    for path in elf::object_paths(&maps) {
        if !elf::basename(&path).contains(needle) {
            continue;
        }
        let obj = elf::Object::open(pid, &path, &maps)?;
        let found = obj.lookup(symbols)?;
        out.push(MappedObject { path, symbols: found.into_iter().map(|(k, v)| (k, v.addr)).collect() });
    }
    Ok(out)
}

/// Whether the process exists (and is not a zombie).
pub fn process_alive(pid: i32) -> bool {
    proc::exists(pid) && proc::status(pid).map(|s| s.state != 'Z' && s.state != 'X').unwrap_or(false)
}

/// The process's command line, space-joined.
pub fn command_line(pid: i32) -> String {
    proc::cmdline(pid)
}

/// Duration helper for callers that print latencies.
pub fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
