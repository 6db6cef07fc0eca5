//! Attach sessions: what `memray attach` and `memray detach` do to a process, behind
//! [`find`](crate::find), [`attach`], [`attach_tree`], [`detach`], [`detach_tree`] and
//! [`is_attached`].
//!
//! attach: check the process, copy the payload where the target can read it (and nobody
//! else can write it), inject it (its entry starts a thread that takes the GIL and starts
//! a Session), hand it the capture file made here (or the live view's socket), then wait
//! until the payload reports tracking as active in its exported control block
//! (memray-abi), read with process_vm_readv.
//!
//! detach: write a request into that control block with process_vm_writev; the payload's
//! attach thread stops tracking with the GIL (restoring every GOT slot and the PyMem
//! allocators, finishing the capture) and acknowledges. No ptrace stop is needed.

mod capture_file;
pub(crate) mod content_hash;
mod control;
mod staging;

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use memray_abi::{CONTROL_SYMBOL, ENTRY_SYMBOL, STATE_ACTIVE, STATE_FAILED, STATE_STOPPED};

use crate::error::{Error, Result};
use crate::{InjectOptions, Method};
use capture_file::CreatedCapture;
use control::{new_nonce, payload_controls, request_stop, PAYLOAD_MATCH};
pub use staging::write_into as write_payload_copy;

/// The payload's DT_SONAME (payload/build.rs).
const PAYLOAD_SONAME: &str = "libmemray_payload.so";
/// Where the payload listens for the live view when it cannot be handed a socket.
pub const LIVE_ADDRESS: &str = "127.0.0.1";

/// What to track and where; the payload's options (memray run's).
pub struct AttachRequest<'a> {
    /// Finds our payload library, when the target needs a copy of it.
    pub payload: &'a dyn Fn() -> std::result::Result<PathBuf, String>,
    /// The capture file, as an absolute path on this side; None for the live view.
    pub output: Option<&'a Path>,
    pub force: bool,
    pub compress: bool,
    pub native: bool,
    pub trace_python_allocators: bool,
    pub follow_fork: bool,
    pub aggregate: bool,
    /// Mean bytes between recorded allocations (0: every allocation).
    pub sampling_interval: u64,
    /// Stop by itself after this many seconds.
    pub duration: Option<f64>,
    /// For the safe point, the tracker's start and the live view's connection.
    pub timeout: Duration,
    pub method: Method,
    /// Set (e.g. by a SIGINT handler) to give up.
    pub cancel: Option<&'a AtomicBool>,
    /// Receives one line per step.
    pub log: Option<&'a dyn Fn(&str)>,
}

impl AttachRequest<'_> {
    fn step(&self, msg: &str) {
        if let Some(log) = self.log {
            log(msg);
        }
    }

    fn cancelled(&self) -> bool {
        self.cancel.is_some_and(|c| c.load(Ordering::SeqCst))
    }
}

/// An attach that succeeded.
pub enum Attached {
    /// Tracking runs in the process, writing the capture; it ends with `detach`,
    /// `--duration` or the process.
    Tracking,
    /// Live mode: tracking starts once the view reads `stream`; stop it with
    /// [`Session::stop`] when the view ends.
    Live { session: Session, stream: LiveStream },
}

/// Where the live view reads the payload's stream.
pub enum LiveStream {
    /// Our end of a socket pair whose other end the payload was handed.
    Socket(UnixStream),
    /// The payload listens on this port of [`LIVE_ADDRESS`].
    Port(u16),
}

/// One attach session in one process.
pub struct Session {
    pid: i32,
    /// The control block's address in the target.
    addr: u64,
    nonce: u64,
    /// Until then, a block that cannot be read yet is waited for: through PEP 768 the
    /// loader may still be mapping the payload's segments (the first one's mapping spans
    /// them all until each is mapped over it).
    settling: Option<Instant>,
}

impl Session {
    /// The control block, or None while it may still be settling.
    fn read(&self) -> Result<Option<control::Control>> {
        match control::read(self.pid, self.addr) {
            Ok(c) => Ok(Some(c)),
            Err(_) if !crate::process_alive(self.pid) => Err(exited(self.pid)),
            Err(_) if self.settling.is_some_and(|until| Instant::now() < until) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The control block while the session may still start (None while it settles); an
    /// error once the process is gone or the session failed to start.
    fn starting(&self) -> Result<Option<control::Control>> {
        if !crate::process_alive(self.pid) {
            return Err(exited(self.pid));
        }
        match self.read()? {
            Some(c) if c.session == self.nonce && c.state == STATE_FAILED => {
                Err(Error::TrackingFailed { pid: self.pid, message: c.message })
            }
            other => Ok(other),
        }
    }

    /// Ok while the session may still start (the live view waits on it to connect).
    pub fn check_starting(&self) -> Result<()> {
        self.starting().map(drop)
    }

    /// Asks the session to stop and waits until it has. Ok(false) if the process is gone.
    pub fn stop(&self, timeout: Duration) -> Result<bool> {
        let (pid, addr) = (self.pid, self.addr);
        let request = new_nonce();
        if !crate::process_alive(pid) {
            return Ok(false);
        }
        let _ = request_stop(pid, addr, request);
        let deadline = Instant::now() + timeout;
        loop {
            if !crate::process_alive(pid) {
                return Ok(false);
            }
            let c = match control::read(pid, addr) {
                Ok(c) => c,
                Err(_) if !crate::process_alive(pid) => return Ok(false),
                Err(e) => return Err(e),
            };
            if c.session != self.nonce || c.ack == request || c.state == STATE_STOPPED {
                return Ok(true);
            }
            if c.state == STATE_FAILED {
                return Err(Error::StopFailed { pid, message: c.message });
            }
            if Instant::now() >= deadline {
                return Err(Error::StopTimedOut(pid));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

fn exited(pid: i32) -> Error {
    Error::ProcessExited { pid, detail: String::new() }
}

/// How the target's maps show the payload this attach loads.
enum MappedAs {
    /// Exactly this path (an already-loaded payload, as listed before).
    Path(String),
    /// A path ending in this file name (this attach's own copy).
    Name(String),
}

impl MappedAs {
    fn is(&self, maps_path: &str) -> bool {
        let path = maps_path.trim_end_matches(" (deleted)");
        match self {
            MappedAs::Path(p) => p.trim_end_matches(" (deleted)") == path,
            MappedAs::Name(n) => elf_basename(path) == n,
        }
    }
}

fn elf_basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Attaches to one process: inspect, stage the payload, inject, hand the capture over and
/// wait until tracking runs (or, live, until the view can connect).
pub fn attach(pid: i32, req: &AttachRequest) -> Result<Attached> {
    let info = crate::inspect(pid)?;
    let live = req.output.is_none();
    let output = req.output.unwrap_or(Path::new(""));
    // The capture (or the live view's socket) is opened here and handed to the target
    // (see handoff): then it is ours, wherever the target runs. Without pidfd_getfd
    // (Linux < 5.6, a seccomp profile) the target opens the path itself, which only works
    // where it sees our file system.
    let hand_over = crate::handoff::available() && std::env::var_os("MEMRAY_ATTACH_NO_HANDOFF").is_none();
    if !hand_over && !crate::shares_our_files(pid) {
        return Err(Error::OtherNamespace(pid));
    }
    // Live mode: the payload streams into one end of a socket pair handed over with the
    // capture, or else to a port we pick and connect to (only where it shares our network).
    let mut socket_pair = None;
    let mut live_port = None;
    match (live, hand_over) {
        (false, _) => {}
        (true, true) => socket_pair = Some(UnixStream::pair().map_err(|e| Error::io("cannot make a socket pair", e))?),
        (true, false) => live_port = Some(free_port()?),
    }
    // What the target calls itself: another number inside a container's PID namespace.
    let own_pid = crate::pid_in_its_namespace(pid);
    req.step(&format!(
        "process {pid}: CPython {} ({}{}), {} threads: {}",
        info.python_version,
        info.python_object,
        if info.static_python { ", static" } else { "" },
        info.threads,
        info.command_line
    ));
    req.step(&format!("symbols resolved in the target: dlopen/dlsym/dlerror from {}", info.dl_object));
    let mut loaded = None;
    for (path, c) in payload_controls(pid)? {
        if c.attached_in(own_pid) {
            return Err(Error::AlreadyAttached { pid, writing: Some(c.message) });
        }
        if c.tracker_active {
            return Err(Error::AlreadyTracked { pid, payload: path });
        }
        // dlopen matches already-loaded objects by the name they were loaded with, which is
        // the maps path without the " (deleted)" of a replaced file.
        loaded.get_or_insert(path.trim_end_matches(" (deleted)").to_string());
    }

    // A payload already in the process (an earlier attach, or memray.Tracker's) is reused:
    // two copies would both hook the same GOT slots.
    let nonce = new_nonce();
    let stage = |pid, nonce| (req.payload)().map_err(Error::PayloadNotFound).and_then(|p| staging::stage_payload(&p, pid, nonce));
    // `payload_text`: the name the target loads it by; `mapped_as`: how its maps show it.
    let (payload_text, mapped_as, staged) = match loaded {
        Some(path) => {
            req.step(&format!("payload already loaded in the target: {path}"));
            // A staging directory still takes the PEP 768 script, when there is one.
            let staged = match req.method {
                Method::Ptrace => None,
                _ => stage(pid, nonce).ok(),
            };
            // Its file may be gone (attach removes its copy once loaded) and its maps path
            // may be ours rather than the target's: its SONAME names it.
            (PAYLOAD_SONAME.to_string(), MappedAs::Path(path), staged)
        }
        None => {
            let staged = stage(pid, nonce)?;
            req.step(&format!("payload copy for the target: {} (it calls it {})", staged.here.display(), staged.there));
            // Maps show a path as the reader sees it (ours where we can reach the file):
            // the copy's name, unique to this attach, identifies it.
            let name = elf_basename(&staged.there).to_string();
            (staged.there.clone(), MappedAs::Name(name), Some(staged))
        }
    };
    let script_dir = staged.as_ref().and_then(|s| Some((s.here.parent()?, s.there.rsplit_once('/')?.0)));

    let flag = |b: bool| if b { "1" } else { "0" };
    let pairs = [
        ("nonce", nonce.to_string()),
        ("payload", payload_text.clone()),
        ("output", output.to_string_lossy().into_owned()),
        ("force", flag(req.force).into()),
        ("compress", flag(req.compress).into()),
        ("native", flag(req.native).into()),
        ("trace_python_allocators", flag(req.trace_python_allocators).into()),
        ("follow_fork", flag(req.follow_fork).into()),
        ("aggregate", flag(req.aggregate).into()),
        ("sampling_interval", req.sampling_interval.to_string()),
        ("duration", req.duration.map(|d| d.to_string()).unwrap_or_default()),
        ("live_port", live_port.map(|p| p.to_string()).unwrap_or_default()),
        ("live_address", LIVE_ADDRESS.into()),
        ("live_timeout", req.timeout.as_secs_f64().max(5.0).to_string()),
        ("handoff", flag(hand_over).into()),
        ("live", flag(live && hand_over).into()),
        ("handoff_timeout", req.timeout.as_secs_f64().max(5.0).to_string()),
    ];
    let request: String =
        pairs.iter().map(|(k, v)| format!("{k}\x1f{}", v.replace(['\x1e', '\x1f'], " "))).collect::<Vec<_>>().join("\x1e");

    let opts = InjectOptions {
        timeout: req.timeout,
        cancel: req.cancel,
        log: req.log,
        method: req.method,
        script_dir,
        library_loaded: matches!(mapped_as, MappedAs::Path(_)),
        ..Default::default()
    };
    let mut injected = crate::inject(&info, &payload_text, ENTRY_SYMBOL, request.as_bytes(), &opts)?;
    // The library is mapped (or was before): its file is needed no more.
    drop(staged);
    match injected.entry_return {
        0 => {}
        1 => return Err(Error::AlreadyAttached { pid, writing: None }),
        other => return Err(Error::PayloadRefused(other)),
    }
    match injected.method {
        Method::RemoteExec => req.step(&format!(
            "payload loaded through PEP 768: the process was not stopped; its main thread took the request after {:.1} ms",
            crate::millis(injected.to_safe_point)
        )),
        _ => req.step(&format!(
            "detached from the process: it was held {:.1} ms in total, safe point ({} in thread {}) after {:.1} ms",
            crate::millis(injected.total),
            injected.safe_point,
            injected.thread,
            crate::millis(injected.to_safe_point)
        )),
    }

    // Wait for the payload's thread to take the GIL and start the tracker.
    // Whatever fails from here on, a process that is gone is the real story.
    let controls =
        crate::find_mapped(pid, PAYLOAD_MATCH, &[CONTROL_SYMBOL]).map_err(|e| if crate::process_alive(pid) { e } else { exited(pid) })?;
    let addr = match controls.iter().find(|o| mapped_as.is(&o.path)).and_then(|o| o.symbols.get(CONTROL_SYMBOL).copied()) {
        Some(a) => a,
        None => {
            // A process on its way out has lost its mappings before it shows as a zombie.
            for _ in 0..50 {
                if !crate::process_alive(pid) {
                    return Err(exited(pid));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            return Err(Error::PayloadNotMapped(pid));
        }
    };
    let deadline = Instant::now() + req.timeout.max(Duration::from_secs(2));
    let settling = (injected.method == Method::RemoteExec).then_some(deadline);
    let session = Session { pid, addr, nonce, settling };
    if live {
        let stream = match (socket_pair, live_port) {
            (Some((ours, theirs)), _) => {
                await_live_handoff(&session, &theirs, req, deadline)?;
                req.step("live stream handed over to the target");
                LiveStream::Socket(ours)
            }
            (None, Some(port)) => {
                // The entry has run once its nonce shows: then the payload listens (or
                // reports why it does not, which the view's connect notices).
                while session.starting()?.is_none_or(|c| c.session != nonce) {
                    if req.cancelled() {
                        return Err(Error::InterruptedBeforeView);
                    }
                    if Instant::now() >= deadline {
                        return Err(Error::LiveStartTimedOut(pid));
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                LiveStream::Port(port)
            }
            _ => unreachable!("live mode has a socket pair or a port"),
        };
        // The entry has run: a PEP 768 script left to us has been read.
        if let Some(script) = injected.script.take() {
            script.remove();
        }
        return Ok(Attached::Live { session, stream });
    }

    // Made once the payload asks for it (an attach killed before then leaves no file).
    let mut capture: Option<CreatedCapture> = None;
    loop {
        if !crate::process_alive(pid) {
            return Err(exited(pid));
        }
        let c = match control::read(pid, addr) {
            Ok(c) => c,
            Err(_) if !crate::process_alive(pid) => return Err(exited(pid)),
            // PEP 768: the loader may still be mapping the payload's segments (the first
            // one's mapping spans them all until each is mapped over it).
            Err(_) if injected.method == Method::RemoteExec && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            Err(e) => return Err(e),
        };
        if hand_over && c.session == nonce && c.handoff > 0 && capture.is_none() {
            let cancel = || {
                let _ = request_stop(pid, addr, nonce);
            };
            let made = CreatedCapture::create(output, req.force).inspect_err(|_| cancel())?;
            let still_waiting = || control::read(pid, addr).is_ok_and(|now| now.session == nonce && now.handoff == c.handoff);
            crate::handoff::send(pid, c.handoff - 1, &made.descriptors(), still_waiting).inspect_err(|_| cancel())?;
            capture = Some(made);
            req.step("capture file handed over to the target");
        }
        if c.session == nonce {
            // The entry has run: the PEP 768 script, if one is left, has been read.
            if let Some(script) = injected.script.take() {
                script.remove();
            }
            // Read again: one read copies the block field by field while the target writes
            // it, so its state may be older than its nonce. The entry wrote the state
            // before the nonce, so a read made after seeing the nonce has this session's.
            let c = control::read(pid, addr)?;
            match c.state {
                STATE_ACTIVE | STATE_STOPPED => break,
                STATE_FAILED => return Err(Error::TrackingFailed { pid, message: c.message }),
                _ => {}
            }
        }
        if req.cancelled() {
            let _ = request_stop(pid, addr, nonce);
            return Err(Error::InterruptedStarting(pid));
        }
        if Instant::now() >= deadline {
            let _ = request_stop(pid, addr, nonce);
            return Err(Error::Timeout {
                secs: req.timeout.as_secs_f64(),
                what: format!("waiting for process {pid} to start tracking (is a thread holding the GIL?)"),
            });
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    req.step("tracker started");
    if let Some(capture) = capture {
        capture.keep();
    }
    Ok(Attached::Tracking)
}

/// Live mode with a socket pair: once the payload waits for descriptors, hand it `theirs`.
fn await_live_handoff(session: &Session, theirs: &UnixStream, req: &AttachRequest, deadline: Instant) -> Result<()> {
    use std::os::fd::AsRawFd;
    let (pid, addr, nonce) = (session.pid, session.addr, session.nonce);
    loop {
        if req.cancelled() {
            return Err(Error::InterruptedBeforeView);
        }
        let Some(c) = session.starting()? else {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        };
        if c.session == nonce && c.handoff > 0 {
            let still_waiting = || control::read(pid, addr).is_ok_and(|now| now.session == nonce && now.handoff == c.handoff);
            return crate::handoff::send(pid, c.handoff - 1, &[theirs.as_raw_fd()], still_waiting);
        }
        if Instant::now() >= deadline {
            return Err(Error::LiveStartTimedOut(pid));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A port nobody listens on now, for the payload to listen on.
fn free_port() -> Result<u16> {
    let listener =
        std::net::TcpListener::bind((LIVE_ADDRESS, 0)).map_err(|e| Error::io(format!("cannot find a free port on {LIVE_ADDRESS}"), e))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| Error::io("cannot find a free port", e))
}

/// One process of a tree, as [`attach_tree`] met it.
pub enum TreeMember<'a> {
    Attached { pid: i32, output: &'a Path },
    Skipped { pid: i32, why: Error },
}

/// `--children`: the process, then each descendant listed after the attaches so far (a
/// worker forked meanwhile is followed already), each writing `<output>.<pid>` (its pid as
/// it calls itself, as follow_fork names them) and following forks. An error for the root
/// ends it; the others are reported and skipped. Returns how many were attached.
pub fn attach_tree(root: i32, output: &Path, req: &AttachRequest, report: &mut dyn FnMut(TreeMember)) -> Result<usize> {
    let parent = output.parent().unwrap_or(Path::new("/"));
    if !parent.is_dir() {
        return Err(Error::NoOutputDirectory { output: format!("{}.<pid>", output.display()), dir: parent.to_path_buf() });
    }
    let mut seen = std::collections::HashSet::new();
    let mut attached = 0;
    while let Some(pid) = std::iter::once(root).chain(crate::descendants(root)).find(|p| !seen.contains(p)) {
        seen.insert(pid);
        let out = PathBuf::from(format!("{}.{}", output.display(), crate::pid_in_its_namespace(pid)));
        let one = AttachRequest { output: Some(&out), follow_fork: true, ..*req };
        match attach(pid, &one) {
            Ok(_) => {
                report(TreeMember::Attached { pid, output: &out });
                attached += 1;
            }
            Err(e) if pid == root => return Err(e),
            Err(why) => report(TreeMember::Skipped { pid, why }),
        }
    }
    Ok(attached)
}

/// A stopped session.
pub struct Detached {
    /// The capture's path, as the process was told it.
    pub output: String,
    /// The payload could not make the compressed copy (it may not make files beside a
    /// capture the attaching side made as another user): compress it on this side.
    pub compression_left: bool,
}

/// Whether the process has a session of `memray attach` (not a copy inherited by fork).
pub fn is_attached(pid: i32) -> bool {
    let own = crate::pid_in_its_namespace(pid);
    payload_controls(pid).map(|cs| cs.iter().any(|(_, c)| c.attached_in(own))).unwrap_or(false)
}

/// Stops the attach session of one process and waits until the capture is complete.
pub fn detach(pid: i32, timeout: Duration, log: Option<&dyn Fn(&str)>) -> Result<Detached> {
    let step = |m: &str| {
        if let Some(log) = log {
            log(m)
        }
    };
    crate::check_permissions(pid)?;
    let own_pid = crate::pid_in_its_namespace(pid);
    let controls = payload_controls(pid)?;
    let Some((path, control)) = controls.iter().find(|(_, c)| c.attached_in(own_pid)) else {
        if controls.iter().any(|(_, c)| c.tracker_active) {
            return Err(Error::TrackedNotAttached(pid));
        }
        return Err(Error::NotTracked(pid));
    };
    step(&format!("attach session found in {path}: writing {}", control.message));
    let mut detached = Detached { output: control.message.clone(), compression_left: false };
    let addr = control.addr;
    let nonce = new_nonce();
    request_stop(pid, addr, nonce)?;
    step("stop requested");
    let deadline = Instant::now() + timeout;
    loop {
        if !crate::process_alive(pid) {
            return Err(Error::ExitedBeforeStop(pid));
        }
        let c = control::read(pid, addr)?;
        if c.ack == nonce {
            // Read again, as in attach: the state was written before the acknowledgement.
            let c = control::read(pid, addr)?;
            if c.state == STATE_FAILED {
                return Err(Error::StopFailed { pid, message: c.message });
            }
            if let Some(path) = c.message.strip_suffix(memray_abi::COMPRESSION_LEFT) {
                detached = Detached { output: path.to_string(), compression_left: true };
            }
            break;
        }
        if c.state == STATE_STOPPED && c.ack != nonce && !c.tracker_active {
            // Stopped by itself (--duration) just before our request.
            break;
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout {
                secs: timeout.as_secs_f64(),
                what: format!("waiting for process {pid} to stop tracking (is a thread holding the GIL?)"),
            });
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    step("tracking stopped, hooks removed, capture closed");
    Ok(detached)
}

/// `detach --children`: every process of the tree with a session of `memray attach`
/// (workers that followed a fork have one of their own), each reported as it is done; the
/// others are left as they are.
pub fn detach_tree(root: i32, timeout: Duration, log: Option<&dyn Fn(&str)>, report: &mut dyn FnMut(i32, Result<Detached>)) {
    for pid in std::iter::once(root).chain(crate::descendants(root)) {
        if is_attached(pid) {
            report(pid, detach(pid, timeout, log));
        }
    }
}
