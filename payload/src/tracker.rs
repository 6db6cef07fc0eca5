//! Tracker lifecycle: start (open the capture, patch the GOT, start the sampler), stop
//! (restore, finish and compress the capture), and fork.

use std::os::fd::IntoRawFd;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use memray_capture::{FileFormat, Header, PythonAllocator};

use crate::capture_dir::CaptureDir;
use crate::hooks::{self, ACTIVE, WRITER};
use crate::log::{self, log};
use crate::rss::{now_ms, Sampler};
use crate::thread_state::{self, GuardScope, GENERATION};
use crate::writer::Writer;
use crate::{got, pymem};

/// What a tracker is asked to do; parsed from the text the Python side passes.
#[derive(Debug, Default, Clone)]
pub struct Config {
    pub fd: i32,
    pub path: Option<String>,
    /// A directory `memray attach` handed over; `path` is then a name in it.
    pub dir_fd: Option<i32>,
    pub seekable: bool,
    pub compress: bool,
    /// `--buffered-file-io`: write the file with write(2), not through shared mappings.
    pub buffered_file_io: bool,
    pub native_traces: bool,
    pub trace_python_allocators: bool,
    pub track_object_lifetimes: bool,
    pub follow_fork: bool,
    pub memory_interval_ms: u64,
    pub file_format: u8,
    pub python_version: u32,
    pub command_line: String,
    pub pid: i32,
    pub python_allocator: u8,
    pub libdest: String,
    pub site_packages: Vec<String>,
    pub sys_path: Vec<String>,
    pub skipped_frames_on_main_tid: u64,
    /// Mean bytes between sampled allocations; 0 records every one.
    pub sampling_interval: u64,
    /// Non-zero: a fixed seed for the sampler's random streams (reproducible tests).
    pub sampling_seed: u64,
    /// Compare every stack update with a full walk (`MEMRAY_CHECK_STACKS`, tests).
    pub check_stacks: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("a tracker is already active in this process")]
    AlreadyActive,
    #[error("invalid tracker configuration: {0}")]
    BadConfig(String),
    #[error("this interpreter is not supported: {0}")]
    Unsupported(String),
    #[error("cannot start the sampler thread: {0}")]
    Thread(std::io::Error),
}

impl Config {
    /// Parses `key\x1fvalue` pairs separated by `\x1e`; list keys repeat.
    pub fn parse(text: &str) -> Result<Config, StartError> {
        let mut c = Config { memory_interval_ms: 10, seekable: true, fd: -1, ..Default::default() };
        for pair in text.split('\x1e').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('\x1f').ok_or_else(|| StartError::BadConfig(format!("entry without a value: {pair:?}")))?;
            let num = |v: &str| v.parse::<i64>().map_err(|_| StartError::BadConfig(format!("{k}: not a number: {v:?}")));
            let flag = |v: &str| v == "1";
            match k {
                "fd" => c.fd = num(v)? as i32,
                "path" => c.path = Some(v.to_string()),
                "dir_fd" => c.dir_fd = Some(num(v)? as i32),
                "seekable" => c.seekable = flag(v),
                "compress" => c.compress = flag(v),
                "buffered_file_io" => c.buffered_file_io = flag(v),
                "native_traces" => c.native_traces = flag(v),
                "trace_python_allocators" => c.trace_python_allocators = flag(v),
                "track_object_lifetimes" => c.track_object_lifetimes = flag(v),
                "follow_fork" => c.follow_fork = flag(v),
                "memory_interval_ms" => c.memory_interval_ms = num(v)?.max(1) as u64,
                "file_format" => c.file_format = num(v)? as u8,
                "python_version" => c.python_version = num(v)? as u32,
                "command_line" => c.command_line = v.to_string(),
                "pid" => c.pid = num(v)? as i32,
                "python_allocator" => c.python_allocator = num(v)? as u8,
                "libdest" => c.libdest = v.to_string(),
                "site_packages" => c.site_packages.push(v.to_string()),
                "sys_path" => c.sys_path.push(v.to_string()),
                "skipped_frames_on_main_tid" => c.skipped_frames_on_main_tid = num(v)?.max(0) as u64,
                "sampling_interval" => c.sampling_interval = num(v)?.max(0) as u64,
                "sampling_seed" => {
                    c.sampling_seed = v.parse::<u64>().map_err(|_| StartError::BadConfig(format!("{k}: not a number: {v:?}")))?
                }
                "check_stacks" => c.check_stacks = flag(v),
                _ => return Err(StartError::BadConfig(format!("unknown key {k:?}"))),
            }
        }
        if c.fd < 0 {
            return Err(StartError::BadConfig("no output file descriptor".into()));
        }
        Ok(c)
    }

    /// Where `path` and the files beside it are made.
    fn dir(&self) -> CaptureDir {
        self.dir_fd.map(CaptureDir::from_fd).unwrap_or(CaptureDir::PATHS)
    }

    fn header(&self, main_tid: u64) -> Header {
        Header {
            python_version: self.python_version,
            native_traces: self.native_traces,
            file_format: if self.file_format == 1 { FileFormat::AggregatedAllocations } else { FileFormat::AllAllocations },
            n_allocations: 0,
            sampling_interval: self.sampling_interval,
            start_time_ms: now_ms(),
            end_time_ms: 0,
            command_line: self.command_line.clone(),
            pid: self.pid,
            main_tid,
            skipped_frames_on_main_tid: self.skipped_frames_on_main_tid,
            python_allocator: PythonAllocator::from_u8(self.python_allocator).unwrap_or(PythonAllocator::Other),
            trace_python_allocators: self.trace_python_allocators,
            track_object_lifetimes: self.track_object_lifetimes,
            libdest: self.libdest.clone(),
            site_packages: self.site_packages.clone(),
            sys_path: self.sys_path.clone(),
            ..Header::default()
        }
    }
}

struct Running {
    config: Config,
    sampler: Sampler,
}

static RUNNING: Mutex<Option<Running>> = Mutex::new(None);

/// Starts tracking. Called from Python with the GIL held.
pub fn start(config: Config) -> Result<(), StartError> {
    let _g = GuardScope::enter();
    let mut running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
    if running.is_some() || ACTIVE.load(Ordering::Acquire) {
        return Err(StartError::AlreadyActive);
    }
    let interp = hooks::resolve_interpreter().map_err(StartError::Unsupported)?;
    thread_state::init();
    hooks::resolve_real_functions();
    install_fork_handlers();

    GENERATION.fetch_add(1, Ordering::AcqRel);
    thread_state::reset_tids();
    let main_tid = thread_state::current_tid();
    *WRITER.lock() = Some(Writer::new(config.fd, config.buffered_file_io, config.header(main_tid), interp));
    start_sampling(&config);
    crate::stack::set_check(config.check_stacks);
    hooks::NATIVE_TRACES.store(config.native_traces, Ordering::Release);
    if config.native_traces {
        // The first memory map follows the header, and the unwind table must exist
        // before the first hook runs.
        crate::native::refresh();
    }

    if config.track_object_lifetimes {
        if let Err(e) = crate::lifetimes::install() {
            *WRITER.lock() = None;
            return Err(StartError::Unsupported(e));
        }
    }
    if config.trace_python_allocators {
        pymem::install();
    }
    ACTIVE.store(true, Ordering::Release);
    got::patch_all(&hooks::redirects());
    let sampler = match Sampler::start(config.memory_interval_ms) {
        Ok(s) => s,
        Err(e) => {
            ACTIVE.store(false, Ordering::Release);
            got::restore_all(&hooks::redirects());
            pymem::uninstall();
            crate::lifetimes::uninstall(std::iter::empty());
            crate::lifetimes::release();
            *WRITER.lock() = None;
            return Err(StartError::Thread(e));
        }
    };
    *running = Some(Running { config, sampler });
    Ok(())
}

/// Sets the sampler up for a capture whose writer exists: no sampled block is known yet.
fn start_sampling(config: &Config) {
    crate::sampling::configure(config.sampling_interval, config.sampling_seed);
    if let Some(w) = WRITER.lock().as_mut() {
        crate::sampled_blocks::SAMPLED.clear(w);
    }
}

/// Stops tracking and finishes the capture. Returns false if no tracker was active.
/// Called from Python with the GIL held (needed to put the PyMem allocators back).
pub fn stop() -> bool {
    let _g = GuardScope::enter();
    let Some(mut running) = RUNNING.lock().unwrap_or_else(|e| e.into_inner()).take() else {
        return false;
    };
    if running.config.track_object_lifetimes {
        // First, while every destruction still reaches the writer: from the tracer's removal
        // to the references taken on the survivors, no Python code runs (we hold the GIL).
        let alive: Vec<usize> = WRITER.lock().as_ref().map(|w| w.live_objects().collect()).unwrap_or_default();
        crate::lifetimes::uninstall(alive.into_iter());
    }
    ACTIVE.store(false, Ordering::Release);
    running.sampler.stop();
    got::restore_all(&hooks::redirects());
    crate::native::stop();
    if running.config.trace_python_allocators {
        pymem::uninstall();
    }
    let writer = WRITER.lock().take();
    crate::stack::report_check();
    if let Some(mut w) = writer {
        w.finish(now_ms(), running.config.seekable);
        let lost = crate::sampled_blocks::SAMPLED.dropped.load(Ordering::Relaxed);
        if lost > 0 {
            log!(log::WARNING, "memray: {lost} sampled blocks could not be remembered (no memory for a larger table): their frees are missing from the capture");
        }
        if let Some(errno) = w.sink.error {
            // Not reported by the sampler yet (the failure came after its last round).
            let err = std::io::Error::from_raw_os_error(errno);
            if w.sink.is_socket() {
                log!(log::WARNING, "memray: the live viewer disconnected ({err}); tracking stopped");
            } else {
                log!(log::ERROR, "memray: cannot write the capture ({err}); tracking stopped");
            }
        }
        let failed = w.sink.failed;
        // SAFETY: the fd was handed to us at start and is closed exactly once, here.
        unsafe { libc::close(w.sink.fd()) };
        if running.config.compress && running.config.seekable && !failed {
            if let Some(path) = &running.config.path {
                match crate::compress::compress_in_place(running.config.dir(), path) {
                    Ok(()) => {}
                    // A capture `memray attach` made as another user, in a directory this
                    // process may not write: the attaching side compresses it on detach.
                    Err(e) if running.config.dir_fd.is_some() && e.kind() == std::io::ErrorKind::PermissionDenied => {
                        COMPRESSION_LEFT.store(true, Ordering::Release);
                    }
                    Err(e) => log!(log::ERROR, "memray: could not compress {path}: {e}"),
                }
            }
        }
    }
    if let Some(fd) = running.config.dir_fd {
        // SAFETY: the directory handed to this session, closed once, here.
        unsafe { libc::close(fd) };
    }
    true
}

/// Set when the last stop left compression to the attaching side (see `stop`).
pub static COMPRESSION_LEFT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn is_active() -> bool {
    ACTIVE.load(Ordering::Acquire)
}

// ---- fork ----------------------------------------------------------------------------
// prepare takes the writer lock so the child never inherits it mid-record; the child
// either stops tracking (its copy of the hooks goes quiet and the GOT is restored) or,
// with follow_fork, continues into a capture file of its own.

fn install_fork_handlers() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: registers plain extern "C" functions; pthread_atfork has no other preconditions.
        unsafe { libc::pthread_atfork(Some(before_fork), Some(after_fork_parent), Some(after_fork_child)) };
    });
}

extern "C" fn before_fork() {
    WRITER.raw_lock();
}

extern "C" fn after_fork_parent() {
    WRITER.raw_unlock();
}

extern "C" fn after_fork_child() {
    WRITER.reset_after_fork();
    if !ACTIVE.load(Ordering::Acquire) {
        return;
    }
    let _g = GuardScope::enter();
    let mut running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
    let follow = running.as_ref().is_some_and(|r| r.config.follow_fork && r.config.path.is_some());
    if follow {
        if let Some(r) = running.as_mut() {
            r.sampler.forget();
            match continue_in_child(r) {
                Ok(()) => return,
                Err(e) => log!(log::ERROR, "memray: cannot follow the fork into the child: {e}"),
            }
        }
    }
    // Without follow_fork the child stops tracking quietly: no record reaches the
    // parent's file, and its GOT goes back to what it was.
    ACTIVE.store(false, Ordering::Release);
    if let Some(mut r) = running.take() {
        r.sampler.forget();
        if r.config.track_object_lifetimes {
            // The forking thread holds the GIL (os.fork): the child's interpreter gets its
            // previous reference tracer back and none of the parent's objects are held.
            crate::lifetimes::uninstall(std::iter::empty());
        }
        if let Some(fd) = r.config.dir_fd {
            // SAFETY: the child's copy of the session's directory descriptor.
            unsafe { libc::close(fd) };
        }
    }
    got::restore_all(&hooks::redirects());
    if let Some(w) = WRITER.lock().take() {
        // SAFETY: the child's copy of the fd; closing it does not affect the parent's.
        unsafe { libc::close(w.sink.fd()) };
        std::mem::forget(w);
    }
}

/// `follow_fork`: the child writes `<output>.<childpid>` (a trailing `.<parentpid>` in the
/// parent's name is replaced), with a fresh header and thread ids.
fn continue_in_child(r: &mut Running) -> std::io::Result<()> {
    let parent_path = r.config.path.clone().unwrap_or_default();
    // SAFETY: getpid/getppid have no preconditions.
    let (pid, ppid) = unsafe { (libc::getpid(), libc::getppid()) };
    let base = parent_path.strip_suffix(&format!(".{ppid}")).unwrap_or(&parent_path);
    let path = format!("{base}.{pid}");
    let file = r.config.dir().create_capture(&path)?;
    if let Some(owner) = r.config.dir().lstat(&parent_path).ok().flatten() {
        // The parent's capture may be the attaching user's: the child's should be too
        // (possible only where this process is root).
        let _ = crate::capture_dir::give_owner(&file, owner.st_uid, owner.st_gid);
    }
    let fd = file.into_raw_fd();
    if let Some(old) = WRITER.lock().take() {
        // SAFETY: the child's copy of the parent's fd.
        unsafe { libc::close(old.sink.fd()) };
    }
    r.config.fd = fd;
    r.config.path = Some(path);
    r.config.pid = pid;
    GENERATION.fetch_add(1, Ordering::AcqRel);
    thread_state::reset_tids();
    let main_tid = thread_state::current_tid();
    let interp = hooks::interpreter().ok_or_else(|| std::io::Error::other("no interpreter"))?;
    *WRITER.lock() = Some(Writer::new(fd, r.config.buffered_file_io, r.config.header(main_tid), interp));
    start_sampling(&r.config);
    if r.config.native_traces {
        crate::native::refresh();
    }
    r.sampler = Sampler::start(r.config.memory_interval_ms)?;
    Ok(())
}
