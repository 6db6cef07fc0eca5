//! `memray attach PID` and `memray detach PID`: arguments in, messages out. The work
//! (finding processes, staging the payload, injecting it, the control block, handing
//! over the capture) is memray-injector's `find` and `session`; what stays here is the
//! terminal: the PID picker, Ctrl-C, the live view, and compressing a capture the target
//! could not.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::usage_error::usage;
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use memray_injector::session::{Attached, Detached, LiveStream, Session, TreeMember};
use memray_injector::{self as injector};

#[derive(Args, Debug)]
pub struct AttachArgs {
    /// Capture file to write (relative paths are relative to where you run this)
    #[arg(short, long)]
    output: Option<PathBuf>,
    #[command(flatten)]
    tracking: super::tracking_options::TrackingOptions,
    /// Stop tracking by itself after this many seconds
    #[arg(long, value_parser = super::seconds::positive_seconds)]
    duration: Option<f64>,
    /// Give up if the process reaches no safe point (or does not confirm) within this many seconds
    #[arg(long, default_value_t = 10.0, value_parser = super::seconds::positive_seconds)]
    timeout: f64,
    /// How to get into the process: `auto` (PEP 768 on CPython 3.14+ when the target allows
    /// it, else ptrace), `sys.remote_exec` (PEP 768 only), `ptrace`; Memray's `gdb` and
    /// `lldb` mean ptrace here (no debugger is needed)
    #[arg(long, default_value = "auto", value_parser = parse_method)]
    method: MethodChoice,
    /// Print each step
    #[arg(short, long)]
    verbose: bool,
    /// Also attach to every CPython descendant of the process (a pre-fork server's
    /// workers), one capture per process named OUTPUT.<pid>; workers forked later are
    /// followed (--follow-fork)
    #[arg(long)]
    children: bool,
    /// The process to attach to
    pid: Option<i32>,
}

/// `--method`, as typed (gdb and lldb are kept to explain them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodChoice {
    Auto,
    RemoteExec,
    Ptrace,
    Debugger(&'static str),
}

fn parse_method(text: &str) -> Result<MethodChoice, String> {
    match text {
        "auto" => Ok(MethodChoice::Auto),
        "sys.remote_exec" | "remote_exec" | "remote-exec" | "pep768" => Ok(MethodChoice::RemoteExec),
        "ptrace" => Ok(MethodChoice::Ptrace),
        "gdb" => Ok(MethodChoice::Debugger("gdb")),
        "lldb" => Ok(MethodChoice::Debugger("lldb")),
        other => Err(format!("unknown method {other:?} (auto, sys.remote_exec, ptrace, gdb, lldb)")),
    }
}

impl MethodChoice {
    /// The injector's method; Memray's debugger methods become ptrace, with a note.
    fn resolve(self) -> injector::Method {
        match self {
            MethodChoice::Auto => injector::Method::Auto,
            MethodChoice::RemoteExec => injector::Method::RemoteExec,
            MethodChoice::Ptrace => injector::Method::Ptrace,
            MethodChoice::Debugger(name) => {
                eprintln!("memray: note: --method {name}: this memray attaches without a debugger; using ptrace");
                injector::Method::Ptrace
            }
        }
    }
}

#[derive(Args, Debug)]
pub struct DetachArgs {
    /// Give up if the process does not stop tracking within this many seconds
    #[arg(long, default_value_t = 10.0, value_parser = super::seconds::positive_seconds)]
    timeout: f64,
    /// Accepted for Memray compatibility: detaching never stops the process, whatever
    /// the method
    #[arg(long, default_value = "auto", value_parser = parse_method)]
    method: MethodChoice,
    /// Print each step
    #[arg(short, long)]
    verbose: bool,
    /// Also detach from every descendant of the process that memray attach tracks
    #[arg(long)]
    children: bool,
    /// The process to detach from
    pid: i32,
}

// ---- Ctrl-C ---------------------------------------------------------------------------

static CANCEL: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    CANCEL.store(true, Ordering::SeqCst);
}

/// SIGINT/SIGTERM/SIGHUP set CANCEL instead of killing us mid-injection (which would leave
/// breakpoints in the target).
fn catch_interrupts() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: installs an async-signal-safe handler (one atomic store) with an
        // initialised sigaction; no SA_RESTART so blocking calls return early.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

// ---- verbose log ----------------------------------------------------------------------

struct Log {
    verbose: bool,
    start: Instant,
}

impl Log {
    fn step(&self, msg: &str) {
        if self.verbose {
            eprintln!("memray: [{:7.1} ms] {msg}", self.start.elapsed().as_secs_f64() * 1e3);
        }
    }
}

// ---- attach ---------------------------------------------------------------------------

/// No PID given: pick one interactively in a terminal, else explain.
fn pick_pid() -> Result<i32> {
    use std::io::IsTerminal;
    let found = injector::find::python_processes();
    if !(std::io::stdin().is_terminal() && std::io::stderr().is_terminal()) {
        if found.is_empty() {
            bail!("give the PID of a running CPython process (none found)");
        }
        let list: Vec<String> =
            found.iter().take(6).map(|c| format!("{} ({})", c.pid, c.command.chars().take(40).collect::<String>())).collect();
        bail!("give the PID of a running CPython process, e.g. {}", list.join(", "));
    }
    if found.is_empty() {
        bail!("no running CPython process found: give a PID");
    }
    eprintln!("Running CPython processes:");
    eprintln!("  #  {:>7}  {:<10} {:<7} {:>8}  command", "PID", "USER", "PYTHON", "RSS");
    for (i, c) in found.iter().enumerate() {
        let cmd: String = c.command.chars().take(60).collect();
        eprintln!("{:>3}  {:>7}  {:<10} {:<7} {:>6.1}MB  {cmd}", i + 1, c.pid, c.user, c.version, c.rss_mb);
    }
    eprint!("Attach to which one? [1-{}] ", found.len());
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).context("cannot read the choice")?;
    let n: usize = line.trim().parse().map_err(|_| anyhow!("not a number from the list: {:?}", line.trim()))?;
    found.get(n.wrapping_sub(1)).map(|c| c.pid).ok_or_else(|| anyhow!("{n} is not in the list"))
}

pub fn attach(args: AttachArgs) -> Result<ExitCode> {
    let log = Log { verbose: args.verbose, start: Instant::now() };
    let pid = match args.pid {
        Some(p) => p,
        None => pick_pid()?,
    };
    // Without -o: live mode, a terminal view of the process.
    let live = args.output.is_none();
    if live && args.children {
        return Err(usage("--children needs an output file: give -o FILE (each process writes FILE.<pid>)"));
    }
    if live {
        if args.tracking.aggregate {
            return Err(usage("can't use aggregated mode without an output file: give -o FILE"));
        }
        if args.tracking.follow_fork {
            return Err(usage("--follow-fork needs an output file: give -o FILE"));
        }
    }
    let output = match &args.output {
        Some(o) => Some(std::env::current_dir().context("cannot read the current directory")?.join(o)),
        None => None,
    };
    if let (Some(output), false) = (&output, args.children) {
        if output.exists() && !args.tracking.force {
            bail!("output file {} already exists (use -f/--force to overwrite it)", output.display());
        }
        let parent = output.parent().unwrap_or(Path::new("/"));
        if !parent.is_dir() {
            bail!("cannot write {}: directory {} does not exist", output.display(), parent.display());
        }
    }

    catch_interrupts();
    let step = |m: &str| log.step(m);
    let locate = || crate::payload_file::locate().map_err(|e| format!("{e:#}"));
    let request = injector::session::AttachRequest {
        payload: &locate,
        output: output.as_deref(),
        force: args.tracking.force,
        compress: !args.tracking.no_compress,
        native: args.tracking.native,
        trace_python_allocators: args.tracking.trace_python_allocators,
        follow_fork: args.tracking.follow_fork,
        aggregate: args.tracking.aggregate,
        sampling_interval: args.tracking.sampling_interval.unwrap_or(0),
        duration: args.duration,
        timeout: Duration::from_secs_f64(args.timeout),
        method: args.method.resolve(),
        cancel: Some(&CANCEL),
        log: if args.verbose { Some(&step) } else { None },
    };
    if args.children {
        return attach_tree(&args, pid, output.as_deref().unwrap_or(Path::new("")), &request);
    }
    let session = match injector::session::attach(pid, &request)? {
        Attached::Tracking => None,
        Attached::Live { session, stream } => Some((session, stream)),
    };
    if let Some((session, stream)) = session {
        return watch_live(pid, session, stream, request.timeout, &log);
    }
    let secs = log.start.elapsed().as_secs_f64();
    let output = output.unwrap_or_default();
    match args.duration {
        Some(d) => eprintln!(
            "memray: tracking process {pid} for {d} s in the background, writing {} (attached in {:.0} ms). \
             Run `memray detach {pid}` to stop early.",
            output.display(),
            secs * 1e3
        ),
        None => eprintln!(
            "memray: tracking process {pid} in the background, writing {} (attached in {:.0} ms). \
             Run `memray detach {pid}` to stop.",
            output.display(),
            secs * 1e3
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// `--children`: one line per process attached or skipped.
fn attach_tree(args: &AttachArgs, root: i32, output: &Path, request: &injector::session::AttachRequest) -> Result<ExitCode> {
    let what = |pid| injector::command_line(pid).chars().take(60).collect::<String>();
    let attached = injector::session::attach_tree(root, output, request, &mut |member| match member {
        TreeMember::Attached { pid, output } => eprintln!("memray: attached to {pid} ({}): writing {}", what(pid), output.display()),
        TreeMember::Skipped { pid, why } => eprintln!("memray: skipped {pid} ({}): {why}", what(pid)),
    })?;
    let until = match args.duration {
        Some(d) => format!("for {d} s"),
        None => "in the background".into(),
    };
    eprintln!(
        "memray: tracking {attached} process{} of the tree of {root} {until} (workers forked from now on write {}.<pid> too). \
         Run `memray detach --children {root}` to stop.",
        if attached == 1 { "" } else { "es" },
        output.display()
    );
    Ok(ExitCode::SUCCESS)
}

// ---- live mode (no -o) ----------------------------------------------------------------

/// Shows the view, and when the user quits stops the session as `memray detach` does
/// (hooks restored), leaving the process running untracked.
fn watch_live(pid: i32, session: Session, stream: LiveStream, timeout: Duration, log: &Log) -> Result<ExitCode> {
    use super::live;

    let view_stop = || CANCEL.load(Ordering::SeqCst) || super::live::terminal_gone();
    let outcome = match stream {
        // attach's own SIGINT/SIGTERM/SIGHUP handler sets CANCEL: it ends the view too.
        LiveStream::Socket(ours) => live::view(ours, format!("process {pid}"), view_stop),
        LiveStream::Port(port) => {
            let deadline = Instant::now() + timeout.max(Duration::from_secs(2));
            let sock = live::resolve(injector::session::LIVE_ADDRESS, port)?;
            let check = || -> Result<()> {
                session.check_starting()?;
                if CANCEL.load(Ordering::SeqCst) {
                    bail!("interrupted before the view started (the process stops waiting for it by itself)");
                }
                Ok(())
            };
            let stream = live::connect(sock, deadline, check)?;
            log.step(&format!("connected to the payload's live stream on {sock}"));
            live::view(stream, sock, view_stop)
        }
    };
    // Whatever happened to the view, the process goes back to what it was.
    let stopped = session.stop(timeout.max(Duration::from_secs(5)));
    let outcome = outcome?;
    match stopped {
        Ok(true) => {
            live::report_end(&outcome, Some(&format!("stopped tracking process {pid}: its hooks are removed and it continues running")))
        }
        Ok(false) => eprintln!("memray: process {pid} has exited"),
        Err(e) => return Err(e.into()),
    }
    Ok(ExitCode::SUCCESS)
}

/// Rewrites the capture at `path` as one LZ4 frame, through a new file renamed over it.
fn compress_capture(path: &Path) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let tmp = PathBuf::from(format!("{}.lz4.{}.{nanos:x}.tmp", path.display(), std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let input = std::fs::File::open(path)?;
        let out = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o644).custom_flags(libc::O_NOFOLLOW).open(&tmp)?;
        let mut enc = memray_capture::lz4_frame_encoder(std::io::BufWriter::new(out));
        std::io::copy(&mut std::io::BufReader::new(input), &mut enc)?;
        let mut out = enc.finish().map_err(std::io::Error::other)?;
        out.flush()?;
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot compress {}", path.display()));
    }
    Ok(())
}

// ---- detach ---------------------------------------------------------------------------

pub fn detach(args: DetachArgs) -> Result<ExitCode> {
    let log = Log { verbose: args.verbose, start: Instant::now() };
    let pid = args.pid;
    if let MethodChoice::Debugger(name) = args.method {
        eprintln!("memray: note: --method {name}: this memray detaches without a debugger");
    }
    let step = |m: &str| log.step(m);
    let log_fn: Option<&dyn Fn(&str)> = if args.verbose { Some(&step) } else { None };
    let timeout = Duration::from_secs_f64(args.timeout);
    if !args.children {
        let output = finish_detach(injector::session::detach(pid, timeout, log_fn)?, &log)?;
        eprintln!(
            "memray: stopped tracking process {pid} (in {:.0} ms); the capture is in {output}",
            log.start.elapsed().as_secs_f64() * 1e3
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mut stopped = 0;
    injector::session::detach_tree(pid, timeout, log_fn, &mut |p, outcome| match outcome
        .map_err(anyhow::Error::from)
        .and_then(|d| finish_detach(d, &log))
    {
        Ok(output) => {
            eprintln!("memray: stopped tracking process {p}; the capture is in {output}");
            stopped += 1;
        }
        Err(e) => eprintln!("memray: could not detach from {p}: {e:#}"),
    });
    if stopped == 0 {
        bail!("no process of the tree of {pid} is being tracked by memray attach");
    }
    eprintln!(
        "memray: stopped tracking {stopped} process{} (in {:.0} ms)",
        if stopped == 1 { "" } else { "es" },
        log.start.elapsed().as_secs_f64() * 1e3
    );
    Ok(ExitCode::SUCCESS)
}

/// Compresses a capture the target could not (it may not make files beside a capture of
/// ours), here, as the user who owns it. Returns where the capture is.
fn finish_detach(detached: Detached, log: &Log) -> Result<String> {
    if detached.compression_left {
        log.step("compressing the capture here (the target may not write beside it)");
        compress_capture(Path::new(&detached.output))?;
    }
    Ok(detached.output)
}
