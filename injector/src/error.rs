//! Everything that can go wrong while putting a library into a live process.
//!
//! Each message is one line meant for the user, so the CLI prints them as they are.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no such process: {0}")]
    NoSuchProcess(i32),
    #[error("permission denied to trace process {pid}: {cause}")]
    PermissionDenied { pid: i32, cause: String },
    #[error("process {pid} is not a CPython process ({detail})")]
    NotPython { pid: i32, detail: String },
    #[error("process {pid} runs {version}, which is not supported ({} are)", cpython::SUPPORTED)]
    UnsupportedVersion { pid: i32, version: String },
    #[error("process {pid}: {cause}")]
    Interpreter { pid: i32, cause: cpython::Error },
    #[error("cannot attach to process {pid} with --method sys.remote_exec: {why}")]
    RemoteExecUnavailable { pid: i32, why: String },
    #[error("cannot write the attach script {path}: {detail}")]
    Script { path: PathBuf, detail: String },
    #[error("process {0} is stopped (SIGSTOP or Ctrl-Z): resume it with `kill -CONT {0}` first")]
    ProcessStopped(i32),
    #[error(
        "process {0} runs in another mount namespace (a container?) and this system does not let memray hand it \
         the capture file (pidfd_getfd: Linux 5.6+, allowed by seccomp): run memray inside it instead"
    )]
    OtherNamespace(i32),
    #[error("process {pid} exited during the attach{detail}")]
    ProcessExited { pid: i32, detail: String },
    #[error("timed out after {secs:.1} s {what}")]
    Timeout { secs: f64, what: String },
    #[error("interrupted; process {0} was left as it was")]
    Interrupted(i32),
    #[error("the target's dlopen could not load {path}: {reason}")]
    DlopenFailed { path: PathBuf, reason: String },
    #[error("the remote call of {function} in process {pid} {detail}")]
    RemoteCall { pid: i32, function: String, detail: String },
    #[error("cannot find {symbol} in process {pid} ({detail})")]
    SymbolNotFound { pid: i32, symbol: String, detail: String },
    #[error("cannot read {path}: {detail}")]
    Elf { path: PathBuf, detail: String },
    #[error("ptrace {op} on thread {tid} failed: {errno}")]
    Ptrace { op: &'static str, tid: i32, errno: nix::errno::Errno },
    #[error("cannot access the memory of process {pid} at {addr:#x}: {errno}")]
    Memory { pid: i32, addr: u64, errno: nix::errno::Errno },
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error(
        "process {pid} runs on musl libc (its loader is {loader}: an Alpine image?): memray's payload is built for \
         glibc and cannot be loaded there; attach to a glibc-based build of the program (e.g. a python:3.X-slim image)"
    )]
    UnsupportedLibc { pid: i32, loader: String },
    #[error("this architecture is not supported by the injector (x86_64 only)")]
    UnsupportedArch,

    // Attach sessions (the payload's control block, its copy, the capture file).
    #[error("{0}")]
    PayloadNotFound(String),
    #[error("no directory the target could load the payload from: {0}")]
    NoStagingDirectory(String),
    #[error("{dir} is not a directory owned by uid {uid} and closed to others")]
    OpenDirectory { dir: PathBuf, uid: u32 },
    #[error("the memray payload in process {0} has an unknown layout")]
    UnknownPayloadLayout(i32),
    #[error("the payload refused the attach (code {0})")]
    PayloadRefused(u64),
    #[error("the payload is not mapped in process {0} after the injection")]
    PayloadNotMapped(i32),
    #[error(
        "process {pid} is already being tracked by memray attach{}; run `memray detach {pid}` first",
        writing.as_ref().map(|w| format!(" (writing {w})")).unwrap_or_default()
    )]
    AlreadyAttached { pid: i32, writing: Option<String> },
    #[error("process {pid} is already being tracked (by memray run or memray.Tracker, payload {payload})")]
    AlreadyTracked { pid: i32, payload: String },
    #[error("output file {} already exists (use -f/--force to overwrite it)", .0.display())]
    OutputExists(PathBuf),
    #[error("output file {} keeps reappearing; not overwriting it", .0.display())]
    OutputKeepsReappearing(PathBuf),
    #[error("cannot write {output}: directory {} does not exist", dir.display())]
    NoOutputDirectory { output: String, dir: PathBuf },
    #[error("tracking could not start in process {pid}: {message}")]
    TrackingFailed { pid: i32, message: String },
    #[error("interrupted; asked process {0} to stop tracking if it had started")]
    InterruptedStarting(i32),
    #[error("interrupted before the view started (the process stops waiting for it by itself)")]
    InterruptedBeforeView,
    #[error("timed out waiting for process {0} to start tracking (is a thread holding the GIL?)")]
    LiveStartTimedOut(i32),
    #[error("process {pid} could not stop tracking cleanly: {message}")]
    StopFailed { pid: i32, message: String },
    #[error("timed out waiting for process {0} to stop tracking; run `memray detach {0}`")]
    StopTimedOut(i32),
    #[error("process {0} exited before it stopped tracking")]
    ExitedBeforeStop(i32),
    #[error("process {0} is being tracked by memray run or memray.Tracker, not by memray attach: nothing to detach")]
    TrackedNotAttached(i32),
    #[error("no previous `memray attach` call detected: process {0} is not being tracked by memray")]
    NotTracked(i32),
}

impl Error {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io { what: what.into(), source }
    }
}
