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
//! 3. In that thread, with all its registers (FP/vector state included) saved, it runs
//!    `dlopen(library, RTLD_NOW)`, `dlsym(handle, entry)` and `entry(arg)` through code
//!    placed in an unused tail of an executable page ([`cave`]), which then puts the
//!    thread's registers back by itself: nothing left in the target needs us to be
//!    undone, so our death at any instant leaves it running. The entry is expected to
//!    return at once (start a thread).
//! 4. It restores the original bytes, moves any thread that hit an int3 meanwhile back
//!    onto the restored instruction, puts the program's SIGTRAP disposition back, and
//!    detaches from every thread.
//!
//! On CPython 3.14+ the interpreter offers its own safe point (PEP 768, what
//! `sys.remote_exec` uses): [`Method::RemoteExec`] writes a request into the main thread
//! state and the interpreter runs our script at its next eval-breaker check, so the
//! process is never stopped (`remote_exec.rs`). [`Method::Auto`] takes it when the target
//! allows it and falls back to ptrace otherwise.
//!
//! On top of that primitive, [`session`] is what `memray attach` and `memray detach` do
//! to a process (stage the payload, inject it, hand over the capture, talk to the
//! payload's control block; a whole process tree too) and [`find`] lists the CPython
//! processes one may attach to. The CLI turns arguments into these calls and their results
//! into messages.

mod arch;
mod cave;
mod death_points;
mod elf;
mod error;
pub mod find;
mod handoff;
mod inspect;
mod memory;
mod proc;
mod remote_exec;
pub mod session;
mod sys;
mod tracer;

/// Tests that start child processes take turns with the tracer's tests: the tracer waits
/// for any child of the process (`waitid(P_ALL, __WALL)`, to see new threads at once) and
/// would take another test's events or reap its children.
#[cfg(test)]
pub(crate) fn children_turn() -> std::sync::MutexGuard<'static, ()> {
    static CHILDREN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    CHILDREN.lock().unwrap_or_else(|e| e.into_inner())
}

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

pub use error::{Error, Result};
pub(crate) use inspect::check_permissions;
pub use inspect::{inspect, ProcessInfo};
pub use remote_exec::Script;
pub use tracer::Injected;

/// How code gets into the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Method {
    /// PEP 768 when the target allows it (3.14+, remote debugging enabled, its main thread
    /// reaching Python code within the grace period), else ptrace.
    #[default]
    Auto,
    /// Breakpoints at safe points and calls made by a stopped thread (any version).
    Ptrace,
    /// PEP 768 only: the interpreter runs our script at its own safe point (3.14+).
    RemoteExec,
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
    /// Where the PEP 768 script may be written: a directory the target can read and only
    /// we can write (the payload's staging directory), as our path and the target's.
    /// Without it, only ptrace is used.
    pub script_dir: Option<(&'a std::path::Path, &'a str)>,
    /// How long `Auto` waits for the main thread to take a PEP 768 request before it
    /// withdraws it and uses ptrace.
    pub remote_grace: Duration,
    /// The library is loaded in the target already (`library` is then the name it
    /// answers to, e.g. its SONAME): loading it shows no new mapping.
    pub library_loaded: bool,
}

impl Default for InjectOptions<'_> {
    fn default() -> Self {
        InjectOptions {
            timeout: Duration::from_secs(10),
            cancel: None,
            log: None,
            wake_main_thread: true,
            method: Method::Auto,
            script_dir: None,
            remote_grace: Duration::from_secs(1),
            library_loaded: false,
        }
    }
}

/// Loads `library` (a path as the target sees it) into the process and calls
/// `entry(arg)` there, where `arg` is passed as a NUL-terminated string that lives until
/// the call returns.
pub fn inject(info: &ProcessInfo, library: &str, entry: &str, arg: &[u8], opts: &InjectOptions) -> Result<Injected> {
    let by_ptrace = || tracer::Tracer::new(info.pid, info.symbols.clone(), opts).inject(library, entry, arg);
    let log = |m: &str| {
        if let Some(l) = opts.log {
            l(m)
        }
    };
    let result = match opts.method {
        Method::Ptrace => by_ptrace(),
        Method::RemoteExec => match remote_exec::locate(info) {
            Ok(Ok(target)) => match by_remote_exec(info, &target, library, entry, arg, opts, opts.timeout)? {
                RemoteOutcome::Done(done) => Ok(done),
                RemoteOutcome::NotTaken => Err(Error::Timeout {
                    secs: opts.timeout.as_secs_f64(),
                    what: "waiting for the main thread to run Python code (is it blocked in C code? try --method ptrace)".into(),
                }),
                RemoteOutcome::NotLoaded => Err(Error::RemoteExecUnavailable {
                    pid: info.pid,
                    why: "the target ran the attach script but did not load the payload (is ctypes missing from it?)".into(),
                }),
            },
            Ok(Err(why)) => Err(Error::RemoteExecUnavailable { pid: info.pid, why: why.to_string() }),
            Err(e) => Err(e),
        },
        Method::Auto if info.python_version.has_remote_debugging() && cave::handler_left_behind(info.pid) => {
            log("an earlier attach was interrupted and left its SIGTRAP handler: using ptrace, which removes it");
            by_ptrace()
        }
        Method::Auto => match remote_exec::locate(info) {
            Ok(Ok(target)) if opts.script_dir.is_some() => {
                let grace = opts.remote_grace.min(opts.timeout);
                match by_remote_exec(info, &target, library, entry, arg, opts, grace) {
                    Ok(RemoteOutcome::Done(done)) => Ok(done),
                    Ok(RemoteOutcome::NotTaken) => {
                        log(&format!("PEP 768: the main thread ran no Python code within {:.1} s; using ptrace", grace.as_secs_f64()));
                        by_ptrace()
                    }
                    Ok(RemoteOutcome::NotLoaded) => {
                        log("PEP 768: the script ran but did not load the payload (no ctypes in the target?); using ptrace");
                        by_ptrace()
                    }
                    Err(e) => Err(e),
                }
            }
            Ok(Ok(_)) => by_ptrace(),
            Ok(Err(why)) => {
                if info.python_version.has_remote_debugging() {
                    log(&format!("PEP 768 not available ({why}); using ptrace"));
                }
                by_ptrace()
            }
            Err(e) => Err(e),
        },
    };
    result.map_err(|e| explain_exit(info.pid, e))
}

/// How the PEP 768 route ended.
enum RemoteOutcome {
    Done(Injected),
    /// The main thread did not take the request within the grace period: withdrawn.
    NotTaken,
    /// It ran the script, but `library` was not mapped in time.
    NotLoaded,
}

/// The PEP 768 route.
fn by_remote_exec(
    info: &ProcessInfo,
    target: &remote_exec::Target,
    library: &str,
    entry: &str,
    arg: &[u8],
    opts: &InjectOptions,
    grace: Duration,
) -> Result<RemoteOutcome> {
    let log = |m: &str| {
        if let Some(l) = opts.log {
            l(m)
        }
    };
    let dir = opts.script_dir.ok_or_else(|| Error::RemoteExecUnavailable { pid: info.pid, why: "no directory for the script".into() })?;
    let name = library.rsplit('/').next().unwrap_or(library);
    let mapped = || -> Result<bool> {
        Ok(proc::maps(info.pid)?.iter().any(|m| m.path.trim_end_matches(" (deleted)") == library || m.path.ends_with(name)))
    };
    let loaded_before = opts.library_loaded || mapped()?;
    let script = remote_exec::write_script(dir.0, dir.1, library, entry, arg)?;
    let script_text = script.path_in_target().to_string();
    let started = std::time::Instant::now();
    target.request(&script_text)?;
    log(&format!("PEP 768: asked the main thread to run {script_text} at its next eval-breaker check"));
    let cancelled = || opts.cancel.is_some_and(|c| c.load(std::sync::atomic::Ordering::SeqCst));
    let taken = match target.wait_taken(grace, &cancelled)? {
        Some(t) => t,
        // Not taken: withdraw. If the thread took it meanwhile, it runs now and finds its
        // file unlocked (`script` is dropped on return): it does nothing. The file stays
        // until it is old (the thread may be about to open it).
        None if target.withdraw()? => {
            if cancelled() {
                return Err(Error::Interrupted(info.pid));
            }
            return Ok(RemoteOutcome::NotTaken);
        }
        None => started.elapsed(),
    };
    log(&format!("PEP 768: the main thread took the request after {:.1} ms (the process was not stopped)", millis(taken)));
    // The script loads the library: once it is mapped, the file has been read. A library
    // mapped before tells nothing: the caller removes the script once the entry's effect
    // shows (taking the request and opening the file are two steps of the thread).
    let deadline = started + grace.max(Duration::from_secs(2));
    while !loaded_before && !mapped()? {
        if cancelled() {
            return Err(Error::Interrupted(info.pid));
        }
        if std::time::Instant::now() >= deadline {
            return Ok(RemoteOutcome::NotLoaded);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let script = if loaded_before {
        Some(script)
    } else {
        script.remove();
        None
    };
    Ok(RemoteOutcome::Done(Injected {
        entry_return: 0,
        safe_point: "the main thread's eval-breaker check (PEP 768)".into(),
        thread: info.pid,
        to_safe_point: taken,
        total: Duration::ZERO,
        method: Method::RemoteExec,
        script,
    }))
}

/// A process that exits while we work on it makes whatever we were doing fail (ESRCH from
/// ptrace, EFAULT or ESRCH from its memory, a vanished /proc file): the exit is the
/// real story. A thread that got ESRCH may be ahead of the process's own exit, so that
/// case waits a moment for it.
pub(crate) fn explain_exit(pid: i32, e: Error) -> Error {
    if matches!(e, Error::ProcessExited { .. }) {
        return e;
    }
    let vanished = matches!(
        e,
        Error::Ptrace { errno: nix::errno::Errno::ESRCH, .. }
            | Error::Memory { errno: nix::errno::Errno::ESRCH | nix::errno::Errno::EFAULT | nix::errno::Errno::EIO, .. }
            | Error::NoSuchProcess(_)
    ) || matches!(&e, Error::Io { source, .. } if source.raw_os_error() == Some(libc::ESRCH));
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
pub(crate) struct MappedObject {
    pub path: String,
    pub symbols: std::collections::HashMap<String, u64>,
}

/// Finds the mapped objects whose file name contains `needle` and resolves `symbols` in
/// each (from the file the target mapped).
pub(crate) fn find_mapped(pid: i32, needle: &str, symbols: &[&str]) -> Result<Vec<MappedObject>> {
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
pub(crate) fn process_alive(pid: i32) -> bool {
    proc::exists(pid) && proc::status(pid).map(|s| s.state != 'Z' && s.state != 'X').unwrap_or(false)
}

/// The process's id in its own PID namespace (a container's), which is what it calls
/// itself (`getpid`); `pid` itself when it shares ours.
pub(crate) fn pid_in_its_namespace(pid: i32) -> i32 {
    proc::status(pid).ok().and_then(|s| s.ns_pid).unwrap_or(pid)
}

/// Whether the process sees our file system (same mount namespace and root).
pub(crate) fn shares_our_files(pid: i32) -> bool {
    proc::same_mount_namespace(pid)
        && match (std::fs::read_link("/proc/self/root"), std::fs::read_link(format!("/proc/{pid}/root"))) {
            (Ok(a), Ok(b)) => a == b,
            _ => true,
        }
}

/// The process's descendants (children, their children, ...), parents before children,
/// as /proc lists them now.
pub(crate) fn descendants(pid: i32) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
            if let Some(ppid) = proc::parent(p) {
                children.entry(ppid).or_default().push(p);
            }
        }
    }
    let mut out = Vec::new();
    let mut queue = std::collections::VecDeque::from([pid]);
    while let Some(p) = queue.pop_front() {
        let mut kids = children.remove(&p).unwrap_or_default();
        kids.sort_unstable();
        for k in kids {
            out.push(k);
            queue.push_back(k);
        }
    }
    out
}

/// The process's command line, space-joined.
pub fn command_line(pid: i32) -> String {
    proc::cmdline(pid)
}

/// Duration helper for callers that print latencies.
pub(crate) fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
