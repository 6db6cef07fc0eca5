//! `memray attach PID` and `memray detach PID`.
//!
//! attach: check the process, copy the payload where the target can read it (and nobody
//! else can write it), inject it with memray-injector (its entry starts a thread that
//! takes the GIL and starts a Session), then wait until the payload reports tracking as
//! active in its exported control block, read with process_vm_readv.
//!
//! detach: write a request into that control block with process_vm_writev; the payload's
//! attach thread stops tracking with the GIL (restoring every GOT slot and the PyMem
//! allocators, finishing the capture) and acknowledges. No ptrace stop is needed.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::content_hash::content_hash;
use crate::usage_error::usage;
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use memray_injector::{self as injector, InjectOptions};

// ---- the payload's control block: the attach ABI (memray-abi) ---------------------------
use memray_abi::offsets;
use memray_abi::{CONTROL_SYMBOL, ENTRY_SYMBOL as ENTRY, STATE_ACTIVE, STATE_FAILED, STATE_STARTING, STATE_STOPPED, STATE_STOPPING};
const OFF_REQUEST: u64 = offsets::REQUEST as u64;

const PAYLOAD_MATCH: &str = "memray_payload";

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

// ---- the control block ----------------------------------------------------------------

struct Control {
    addr: u64,
    state: u32,
    pid: i32,
    /// 1 + the payload's socket awaiting descriptors, 0 when none.
    handoff: i32,
    session: u64,
    ack: u64,
    tracker_active: bool,
    message: String,
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap_or([0; 4]))
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap_or([0; 8]))
}

fn read_control(pid: i32, addr: u64) -> Result<Control> {
    let b = injector::memory::read(pid, addr, offsets::LEN)?;
    if b[offsets::MAGIC..offsets::MAGIC + 8] != memray_abi::MAGIC {
        bail!("the memray payload in process {pid} has an unknown layout");
    }
    let flag = u64_at(&b, offsets::TRACKER_ACTIVE);
    let tracker_active = flag != 0 && injector::memory::read(pid, flag, 1).map(|v| v[0] != 0).unwrap_or(false);
    let msg = &b[offsets::MESSAGE..];
    let end = msg.iter().position(|&c| c == 0).unwrap_or(msg.len());
    Ok(Control {
        addr,
        state: u32_at(&b, offsets::STATE),
        pid: u32_at(&b, offsets::PID) as i32,
        handoff: u32_at(&b, offsets::HANDOFF) as i32,
        session: u64_at(&b, offsets::SESSION),
        ack: u64_at(&b, offsets::ACK),
        tracker_active,
        message: String::from_utf8_lossy(&msg[..end]).into_owned(),
    })
}

/// Every payload instance mapped in the process, with its control block.
fn payload_controls(pid: i32) -> Result<Vec<(String, Control)>> {
    let mut out = Vec::new();
    for obj in injector::find_mapped(pid, PAYLOAD_MATCH, &[CONTROL_SYMBOL])? {
        if let Some(&addr) = obj.symbols.get(CONTROL_SYMBOL) {
            // A copy that is mapped but not loaded (what a failed dlopen can leave behind)
            // has no control block to read: it is no session, and no reason to refuse.
            if let Ok(control) = read_control(pid, addr) {
                out.push((obj.path.clone(), control));
            }
        }
    }
    Ok(out)
}

fn new_nonce() -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1);
    let mixed = (t ^ ((std::process::id() as u64) << 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    mixed.max(1)
}

// ---- the payload copy -----------------------------------------------------------------

/// The payload's copy for one attach, in the target's own file system (reached through
/// /proc/PID/root, so a container's /tmp when the target runs in one). It goes once the
/// target has loaded it: a mapped library needs no file, and nothing of ours is left in
/// the target's file system.
struct Staged {
    /// Our path to it.
    here: PathBuf,
    /// The target's path to it.
    there: String,
}

impl Drop for Staged {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.here);
    }
}

/// Copies the payload to `<base>/memray-<uid>/libmemray_payload-<hash>-<nonce>.so` in the
/// target's file system: a directory of ours (0755, not writable by others) holding a
/// 0644 file, so any target user can map it and nobody else can change what it maps. The
/// base is the first of /tmp, /dev/shm and /var/tmp (as the target sees them) whose file
/// system lets the target map code from it: hardened hosts mount /tmp `noexec` (a library
/// there fails to load) or read-only. Copies that earlier attaches left (killed before
/// they could remove theirs) go once they are a minute old.
fn stage_payload(src: &Path, pid: i32, nonce: u64) -> Result<Staged> {
    let bytes = std::fs::read(src).with_context(|| format!("cannot read the payload {}", src.display()))?;
    let uid = rustix::process::geteuid().as_raw();
    let hash = format!("{:016x}-{nonce:x}", content_hash(&bytes));
    let mut refused = Vec::new();
    for base in PAYLOAD_BASES {
        let root = format!("/proc/{pid}/root");
        let here_base = format!("{root}{base}");
        match rustix::fs::statvfs(here_base.as_str()) {
            Ok(st) if st.f_flag.contains(rustix::fs::StatVfsMountFlags::NOEXEC) => {
                refused.push(format!("{base} is mounted noexec"));
                continue;
            }
            Ok(st) if st.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY) => {
                refused.push(format!("{base} is read-only"));
                continue;
            }
            Ok(_) => {}
            Err(e) => {
                refused.push(format!("{base}: {e}"));
                continue;
            }
        }
        let dir = Path::new(&here_base).join(format!("memray-{uid}"));
        match crate::payload_file::write_into(&dir, uid, &bytes, &hash) {
            Ok(here) => {
                remove_older_copies(&dir, &here);
                let name = here.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                return Ok(Staged { there: format!("{base}/memray-{uid}/{name}"), here });
            }
            Err(e) => refused.push(format!("{e:#}")),
        }
    }
    bail!("no directory the target could load the payload from: {}", refused.join("; "))
}

const PAYLOAD_BASES: &[&str] = &["/tmp", "/dev/shm", "/var/tmp"];

/// Removes copies of other builds of the payload, and PEP 768 scripts, left in `dir`,
/// unless written in the last minute (a concurrent attach of another build may be about
/// to map its copy; a withdrawn script may be about to be opened).
fn remove_older_copies(dir: &Path, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let ours = (name.starts_with("libmemray_payload-") && name.ends_with(".so"))
            || (name.starts_with("memray-attach-") && name.ends_with(".py"));
        let old = entry
            .metadata()
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(60));
        if ours && old && path != keep {
            let _ = std::fs::remove_file(&path);
        }
    }
}

// ---- the capture file -------------------------------------------------------------------

/// A capture file made here for the target, with its directory (the payload makes its
/// compressed copy and follow_fork's `<output>.<pid>` files beside it). Removed again
/// unless the attach succeeds.
struct CreatedCapture {
    path: PathBuf,
    file: std::fs::File,
    dir: std::fs::File,
    kept: bool,
}

impl CreatedCapture {
    /// Created exclusively, never through a link (O_EXCL|O_NOFOLLOW). With `force`, a file
    /// or a link of that name is removed first (a planted link goes, what it points to is
    /// never touched); a device or a pipe (/dev/null, a FIFO) is opened as it is.
    fn create(path: &Path, force: bool) -> Result<CreatedCapture> {
        use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
        let parent = path.parent().unwrap_or(Path::new("/"));
        let dir = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(parent)
            .with_context(|| format!("cannot open the directory {}", parent.display()))?;
        let mut open = std::fs::OpenOptions::new();
        // Read and write: the payload writes the file through shared mappings of it.
        open.read(true).write(true).create_new(true).mode(0o644).custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
        for _ in 0..3 {
            if force {
                if let Ok(meta) = std::fs::symlink_metadata(path) {
                    let kind = meta.file_type();
                    if kind.is_char_device() || kind.is_block_device() || kind.is_fifo() || kind.is_socket() {
                        let file = std::fs::OpenOptions::new()
                            .write(true)
                            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                            .open(path)
                            .with_context(|| format!("cannot open {}", path.display()))?;
                        return Ok(CreatedCapture { path: path.to_path_buf(), file, dir, kept: true });
                    }
                    if !kind.is_dir() {
                        let _ = std::fs::remove_file(path);
                    }
                }
            }
            match open.open(path) {
                Ok(file) => return Ok(CreatedCapture { path: path.to_path_buf(), file, dir, kept: false }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && force => continue,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    bail!("output file {} already exists (use -f/--force to overwrite it)", path.display())
                }
                Err(e) => return Err(e).with_context(|| format!("cannot create {}", path.display())),
            }
        }
        bail!("output file {} keeps reappearing; not overwriting it", path.display())
    }

    fn descriptors(&self) -> [std::os::fd::RawFd; 2] {
        use std::os::fd::AsRawFd;
        [self.file.as_raw_fd(), self.dir.as_raw_fd()]
    }

    /// The target writes it now: it stays.
    fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for CreatedCapture {
    fn drop(&mut self) {
        use std::os::unix::fs::MetadataExt;
        if self.kept {
            return;
        }
        // Only the file we made: not one that replaced it meanwhile.
        let ours = self.file.metadata().ok().map(|m| (m.dev(), m.ino()));
        let there = std::fs::symlink_metadata(&self.path).ok().map(|m| (m.dev(), m.ino()));
        if ours.is_some() && ours == there {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

// ---- attach ---------------------------------------------------------------------------

/// A running CPython process, for the picker and the no-PID error.
struct Candidate {
    pid: i32,
    user: String,
    version: String,
    rss_mb: f64,
    command: String,
}

fn user_name(uid: u32) -> String {
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() > 2 && f[2] == uid.to_string()).then(|| f[0].to_string())
            })
        })
        .unwrap_or_else(|| uid.to_string())
}

/// "3.12" from names like libpython3.12.so.1.0 or python3.12.
fn version_in(name: &str) -> Option<String> {
    let i = name.find("python")? + 6;
    let v: String = name[i..].chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    let v = v.trim_end_matches('.');
    (v.contains('.')).then(|| v.to_string())
}

fn python_processes() -> Vec<Candidate> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return out };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        if pid == std::process::id() as i32 {
            continue;
        }
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
        let base = exe.rsplit('/').next().unwrap_or("").to_string();
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
        let lib = maps.lines().filter_map(|l| l.rsplit('/').next()).find(|n| n.starts_with("libpython")).map(str::to_string);
        if !base.starts_with("python") && lib.is_none() {
            continue;
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |k: &str| status.lines().find_map(|l| l.strip_prefix(k)).map(|v| v.trim().to_string()).unwrap_or_default();
        let uid = field("Uid:").split_whitespace().nth(1).and_then(|u| u.parse().ok()).unwrap_or(0);
        let rss_kb: f64 = field("VmRSS:").split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
        out.push(Candidate {
            pid,
            user: user_name(uid),
            version: lib.as_deref().and_then(version_in).or_else(|| version_in(&base)).unwrap_or_else(|| "?".into()),
            rss_mb: rss_kb / 1024.0,
            command: injector::command_line(pid),
        });
    }
    out.sort_by_key(|c| c.pid);
    out
}

fn is_terminal(fd: i32) -> bool {
    // SAFETY: isatty takes a plain descriptor number.
    unsafe { libc::isatty(fd) == 1 }
}

/// No PID given: pick one interactively in a terminal, else explain.
fn pick_pid() -> Result<i32> {
    let found = python_processes();
    if !(is_terminal(0) && is_terminal(2)) {
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
        Some(o) => std::env::current_dir().context("cannot read the current directory")?.join(o),
        None => PathBuf::new(),
    };
    if !live && !args.children {
        if output.exists() && !args.tracking.force {
            bail!("output file {} already exists (use -f/--force to overwrite it)", output.display());
        }
        let parent = output.parent().unwrap_or(Path::new("/"));
        if !parent.is_dir() {
            bail!("cannot write {}: directory {} does not exist", output.display(), parent.display());
        }
    }

    if args.children {
        return attach_tree(&args, pid, &output, &log);
    }
    if let Some(code) = attach_process(&args, pid, &output, live, args.tracking.follow_fork, &log)? {
        return Ok(code);
    }
    let secs = log.start.elapsed().as_secs_f64();
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

/// `--children`: the process, then each descendant listed after the attaches so far (a
/// worker forked meanwhile is followed already and says so), one line each.
fn attach_tree(args: &AttachArgs, root: i32, output: &Path, log: &Log) -> Result<ExitCode> {
    let parent = output.parent().unwrap_or(Path::new("/"));
    if !parent.is_dir() {
        bail!("cannot write {}.<pid>: directory {} does not exist", output.display(), parent.display());
    }
    let mut seen = std::collections::HashSet::new();
    let mut attached = 0;
    while let Some(pid) = std::iter::once(root).chain(injector::descendants(root)).find(|p| !seen.contains(p)) {
        seen.insert(pid);
        let out = PathBuf::from(format!("{}.{}", output.display(), injector::pid_in_its_namespace(pid)));
        let what: String = injector::command_line(pid).chars().take(60).collect();
        match attach_process(args, pid, &out, false, true, log) {
            Ok(_) => {
                eprintln!("memray: attached to {pid} ({what}): writing {}", out.display());
                attached += 1;
            }
            Err(e) if pid == root => return Err(e),
            Err(e) => eprintln!("memray: skipped {pid} ({what}): {e:#}"),
        }
    }
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

/// Attaches to one process: inspect, stage the payload, inject, hand the capture over and
/// wait until tracking runs. Some(exit code) when it ran the live view to its end.
fn attach_process(args: &AttachArgs, pid: i32, output: &Path, live: bool, follow_fork: bool, log: &Log) -> Result<Option<ExitCode>> {
    let info = injector::inspect(pid)?;
    // The capture (or the live view's socket) is opened here and handed to the target
    // (see injector::handoff): then it is ours, wherever the target runs. Without
    // pidfd_getfd (Linux < 5.6, a seccomp profile) the target opens the path itself,
    // which only works where it sees our file system.
    let hand_over = injector::handoff::available() && std::env::var_os("MEMRAY_ATTACH_NO_HANDOFF").is_none();
    let shares_files = injector::shares_our_files(pid);
    if !hand_over && !shares_files {
        return Err(injector::Error::OtherNamespace(pid).into());
    }
    // Live mode: the payload streams into one end of a socket pair handed over with the
    // capture, or else to a port we pick and connect to (only where it shares our network).
    let live_link = match (live, hand_over) {
        (false, _) => None,
        (true, true) => Some(LiveLink::Handed(std::os::unix::net::UnixStream::pair().context("cannot make a socket pair")?)),
        (true, false) => Some(LiveLink::Port(super::live::free_port(LIVE_ADDRESS)?)),
    };
    let live_port = match live_link {
        Some(LiveLink::Port(p)) => Some(p),
        _ => None,
    };
    // What the target calls itself: another number inside a container's PID namespace.
    let own_pid = injector::pid_in_its_namespace(pid);
    log.step(&format!(
        "process {pid}: CPython {} ({}{}), {} threads: {}",
        info.python_version,
        info.python_object,
        if info.static_python { ", static" } else { "" },
        info.threads,
        info.command_line
    ));
    log.step(&format!("symbols resolved in the target: dlopen/dlsym/dlerror from {}", info.dl_object));
    let mut loaded = None;
    for (path, c) in payload_controls(pid)? {
        let attached = c.pid == own_pid && matches!(c.state, STATE_STARTING | STATE_ACTIVE | STATE_STOPPING);
        if attached {
            bail!("process {pid} is already being tracked by memray attach (writing {}); run `memray detach {pid}` first", c.message);
        }
        if c.tracker_active {
            bail!("process {pid} is already being tracked (by memray run or memray.Tracker, payload {path})");
        }
        // dlopen matches already-loaded objects by the name they were loaded with, which is
        // the maps path without the " (deleted)" of a replaced file.
        loaded.get_or_insert(path.trim_end_matches(" (deleted)").to_string());
    }

    // A payload already in the process (an earlier attach, or memray.Tracker's) is reused:
    // two copies would both hook the same GOT slots.
    let method = args.method.resolve();
    let nonce = new_nonce();
    // `payload_text`: the name the target loads it by; `mapped_as`: how its maps show it.
    let (payload_text, mapped_as, staged) = match loaded {
        Some(path) => {
            log.step(&format!("payload already loaded in the target: {path}"));
            // A staging directory still takes the PEP 768 script, when there is one.
            let staged = match method {
                injector::Method::Ptrace => None,
                _ => crate::payload_file::locate().and_then(|p| stage_payload(&p, pid, nonce)).ok(),
            };
            // Its file may be gone (attach removes its copy once loaded) and its maps path
            // may be ours rather than the target's: its SONAME names it.
            (PAYLOAD_SONAME.to_string(), MappedAs::Path(path), staged)
        }
        None => {
            let staged = stage_payload(&crate::payload_file::locate()?, pid, nonce)?;
            log.step(&format!("payload copy for the target: {} (it calls it {})", staged.here.display(), staged.there));
            // Maps show a path as the reader sees it (ours where we can reach the file):
            // the copy's name, unique to this attach, identifies it.
            let name = elf_basename(&staged.there).to_string();
            (staged.there.clone(), MappedAs::Name(name), Some(staged))
        }
    };
    let script_dir = staged.as_ref().and_then(|s| Some((s.here.parent()?, s.there.rsplit_once('/')?.0)));
    // Made once the payload asks for it (an attach killed before then leaves no file).
    let mut capture: Option<CreatedCapture> = None;

    let flag = |b: bool| if b { "1" } else { "0" };
    let pairs = [
        ("nonce", nonce.to_string()),
        ("payload", payload_text.clone()),
        ("output", output.to_string_lossy().into_owned()),
        ("force", flag(args.tracking.force).into()),
        ("compress", flag(!args.tracking.no_compress).into()),
        ("native", flag(args.tracking.native).into()),
        ("trace_python_allocators", flag(args.tracking.trace_python_allocators).into()),
        ("follow_fork", flag(follow_fork).into()),
        ("aggregate", flag(args.tracking.aggregate).into()),
        ("duration", args.duration.map(|d| d.to_string()).unwrap_or_default()),
        ("live_port", live_port.map(|p| p.to_string()).unwrap_or_default()),
        ("live_address", LIVE_ADDRESS.into()),
        ("live_timeout", args.timeout.max(5.0).to_string()),
        ("handoff", flag(hand_over).into()),
        ("live", flag(live && hand_over).into()),
        ("handoff_timeout", args.timeout.max(5.0).to_string()),
    ];
    let request: String =
        pairs.iter().map(|(k, v)| format!("{k}\x1f{}", v.replace(['\x1e', '\x1f'], " "))).collect::<Vec<_>>().join("\x1e");

    catch_interrupts();
    let timeout = Duration::from_secs_f64(args.timeout);
    let step = |m: &str| log.step(m);
    let opts = InjectOptions {
        timeout,
        cancel: Some(&CANCEL),
        log: if args.verbose { Some(&step) } else { None },
        method,
        script_dir,
        library_loaded: matches!(mapped_as, MappedAs::Path(_)),
        ..Default::default()
    };
    let mut injected = injector::inject(&info, &payload_text, ENTRY, request.as_bytes(), &opts)?;
    // The library is mapped (or was before): its file is needed no more.
    drop(staged);
    match injected.entry_return {
        0 => {}
        1 => bail!("process {pid} is already being tracked by memray attach; run `memray detach {pid}` first"),
        other => bail!("the payload refused the attach (code {other})"),
    }
    match injected.method {
        injector::Method::RemoteExec => log.step(&format!(
            "payload loaded through PEP 768: the process was not stopped; its main thread took the request after {:.1} ms",
            injector::millis(injected.to_safe_point)
        )),
        _ => log.step(&format!(
            "detached from the process: it was held {:.1} ms in total, safe point after {:.1} ms",
            injector::millis(injected.total),
            injector::millis(injected.to_safe_point)
        )),
    }

    // Wait for the payload's thread to take the GIL and start the tracker.
    // Whatever fails from here on, a process that is gone is the real story.
    let exited = || anyhow!("process {pid} exited during the attach");
    let controls = injector::find_mapped(pid, PAYLOAD_MATCH, &[CONTROL_SYMBOL]).map_err(|e| {
        if injector::process_alive(pid) {
            anyhow!(e)
        } else {
            exited()
        }
    })?;
    let addr = match controls.iter().find(|o| mapped_as.is(&o.path)).and_then(|o| o.symbols.get(CONTROL_SYMBOL).copied()) {
        Some(a) => a,
        None => {
            // A process on its way out has lost its mappings before it shows as a zombie.
            for _ in 0..50 {
                if !injector::process_alive(pid) {
                    return Err(exited());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            bail!("the payload is not mapped in process {pid} after the injection")
        }
    };
    if let Some(link) = live_link {
        return watch_live(pid, addr, nonce, link, timeout, log, injected.script.take()).map(Some);
    }
    let deadline = Instant::now() + timeout.max(Duration::from_secs(2));
    loop {
        if !injector::process_alive(pid) {
            return Err(exited());
        }
        let c = match read_control(pid, addr) {
            Ok(c) => c,
            Err(_) if !injector::process_alive(pid) => return Err(exited()),
            // PEP 768: the loader may still be mapping the payload's segments (the first
            // one's mapping spans them all until each is mapped over it).
            Err(_) if injected.method == injector::Method::RemoteExec && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            Err(e) => return Err(e),
        };
        if hand_over && c.session == nonce && c.handoff > 0 && capture.is_none() {
            let cancel = || {
                let _ = injector::memory::write(pid, addr + OFF_REQUEST, &nonce.to_le_bytes());
            };
            let made = CreatedCapture::create(output, args.tracking.force).inspect_err(|_| cancel())?;
            let still_waiting = || read_control(pid, addr).is_ok_and(|now| now.session == nonce && now.handoff == c.handoff);
            injector::handoff::send(pid, c.handoff - 1, &made.descriptors(), still_waiting).inspect_err(|_| cancel())?;
            capture = Some(made);
            log.step("capture file handed over to the target");
        }
        if c.session == nonce {
            // The entry has run: the PEP 768 script, if one is left, has been read.
            if let Some(script) = injected.script.take() {
                script.remove();
            }
            // Read again: one read copies the block field by field while the target writes
            // it, so its state may be older than its nonce. The entry wrote the state
            // before the nonce, so a read made after seeing the nonce has this session's.
            let c = read_control(pid, addr)?;
            match c.state {
                STATE_ACTIVE | STATE_STOPPED => break,
                STATE_FAILED => bail!("tracking could not start in process {pid}: {}", c.message),
                _ => {}
            }
        }
        if CANCEL.load(Ordering::SeqCst) {
            let _ = injector::memory::write(pid, addr + OFF_REQUEST, &nonce.to_le_bytes());
            bail!("interrupted; asked process {pid} to stop tracking if it had started");
        }
        if Instant::now() >= deadline {
            let _ = injector::memory::write(pid, addr + OFF_REQUEST, &nonce.to_le_bytes());
            bail!("timed out after {:.1} s waiting for process {pid} to start tracking (is a thread holding the GIL?)", args.timeout);
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    log.step("tracker started");
    if let Some(capture) = capture {
        capture.keep();
    }
    Ok(None)
}

// ---- live mode (no -o) ----------------------------------------------------------------

const LIVE_ADDRESS: &str = "127.0.0.1";

/// The payload's thread listens on `port` and starts tracking once we connect: connect,
/// show the view, and when the user quits stop the session as `memray detach` does
/// (hooks restored), leaving the process running untracked.
/// How the live view reaches the payload.
enum LiveLink {
    /// Our end and the end the payload receives.
    Handed((std::os::unix::net::UnixStream, std::os::unix::net::UnixStream)),
    /// The payload listens on this port of LIVE_ADDRESS.
    Port(u16),
}

fn watch_live(
    pid: i32,
    addr: u64,
    nonce: u64,
    link: LiveLink,
    timeout: Duration,
    log: &Log,
    script: Option<injector::Script>,
) -> Result<ExitCode> {
    use super::live;

    let exited = || anyhow!("process {pid} exited during the attach");
    let check = || -> Result<()> {
        if !injector::process_alive(pid) {
            return Err(exited());
        }
        let c = read_control(pid, addr)?;
        if c.session == nonce && c.state == STATE_FAILED {
            bail!("tracking could not start in process {pid}: {}", c.message);
        }
        if CANCEL.load(Ordering::SeqCst) {
            bail!("interrupted before the view started (the process stops waiting for it by itself)");
        }
        Ok(())
    };
    let deadline = Instant::now() + timeout.max(Duration::from_secs(2));
    let view_stop = || CANCEL.load(Ordering::SeqCst) || super::live::terminal_gone();
    let outcome = match link {
        LiveLink::Handed((ours, theirs)) => {
            loop {
                check()?;
                let c = read_control(pid, addr)?;
                if c.session == nonce && c.handoff > 0 {
                    let still_waiting = || read_control(pid, addr).is_ok_and(|now| now.session == nonce && now.handoff == c.handoff);
                    use std::os::fd::AsRawFd;
                    injector::handoff::send(pid, c.handoff - 1, &[theirs.as_raw_fd()], still_waiting)?;
                    break;
                }
                if Instant::now() >= deadline {
                    bail!("timed out waiting for process {pid} to start tracking (is a thread holding the GIL?)");
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            drop(theirs);
            log.step("live stream handed over to the target");
            if let Some(script) = script {
                script.remove();
            }
            // attach's own SIGINT/SIGTERM/SIGHUP handler sets CANCEL: it ends the view too.
            live::view(ours, format!("process {pid}"), view_stop)
        }
        LiveLink::Port(port) => {
            let sock = live::resolve(LIVE_ADDRESS, port)?;
            let stream = live::connect(sock, deadline, check)?;
            log.step(&format!("connected to the payload's live stream on {sock}"));
            // The entry has run: a PEP 768 script left to us has been read.
            if let Some(script) = script {
                script.remove();
            }
            live::view(stream, sock, view_stop)
        }
    };
    // Whatever happened to the view, the process goes back to what it was.
    let stopped = stop_live_session(pid, addr, nonce, timeout.max(Duration::from_secs(5)));
    let outcome = outcome?;
    match stopped {
        Ok(true) => {
            live::report_end(&outcome, Some(&format!("stopped tracking process {pid}: its hooks are removed and it continues running")))
        }
        Ok(false) => eprintln!("memray: process {pid} has exited"),
        Err(e) => return Err(e),
    }
    Ok(ExitCode::SUCCESS)
}

/// Asks the attach session `nonce` to stop and waits until it has. Ok(false) if the
/// process is gone.
fn stop_live_session(pid: i32, addr: u64, nonce: u64, timeout: Duration) -> Result<bool> {
    let request = new_nonce();
    if !injector::process_alive(pid) {
        return Ok(false);
    }
    let _ = injector::memory::write(pid, addr + OFF_REQUEST, &request.to_le_bytes());
    let deadline = Instant::now() + timeout;
    loop {
        if !injector::process_alive(pid) {
            return Ok(false);
        }
        let c = match read_control(pid, addr) {
            Ok(c) => c,
            Err(_) if !injector::process_alive(pid) => return Ok(false),
            Err(e) => return Err(e),
        };
        if c.session != nonce || c.ack == request || c.state == STATE_STOPPED {
            return Ok(true);
        }
        if c.state == STATE_FAILED {
            bail!("process {pid} could not stop tracking cleanly: {}", c.message);
        }
        if Instant::now() >= deadline {
            bail!("timed out waiting for process {pid} to stop tracking; run `memray detach {pid}`");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
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

/// The payload's DT_SONAME (payload/build.rs).
const PAYLOAD_SONAME: &str = "libmemray_payload.so";

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

// ---- detach ---------------------------------------------------------------------------

pub fn detach(args: DetachArgs) -> Result<ExitCode> {
    let log = Log { verbose: args.verbose, start: Instant::now() };
    let pid = args.pid;
    if let MethodChoice::Debugger(name) = args.method {
        eprintln!("memray: note: --method {name}: this memray detaches without a debugger");
    }
    if !args.children {
        let output = detach_process(&args, pid, &log)?;
        eprintln!(
            "memray: stopped tracking process {pid} (in {:.0} ms); the capture is in {output}",
            log.start.elapsed().as_secs_f64() * 1e3
        );
        return Ok(ExitCode::SUCCESS);
    }
    // The tree: every process with a session of memray attach (workers that followed a
    // fork have one of their own); the others are left as they are.
    let mut stopped = 0;
    for p in std::iter::once(pid).chain(injector::descendants(pid)) {
        let own = injector::pid_in_its_namespace(p);
        let has_session = payload_controls(p)
            .map(|cs| cs.iter().any(|(_, c)| c.pid == own && matches!(c.state, STATE_STARTING | STATE_ACTIVE | STATE_STOPPING)))
            .unwrap_or(false);
        if !has_session {
            continue;
        }
        match detach_process(&args, p, &log) {
            Ok(output) => {
                eprintln!("memray: stopped tracking process {p}; the capture is in {output}");
                stopped += 1;
            }
            Err(e) => eprintln!("memray: could not detach from {p}: {e:#}"),
        }
    }
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

/// Stops the attach session of one process; returns where its capture is.
fn detach_process(args: &DetachArgs, pid: i32, log: &Log) -> Result<String> {
    injector::check_permissions(pid)?;
    let own_pid = injector::pid_in_its_namespace(pid);
    let controls = payload_controls(pid)?;
    let session = controls.iter().find(|(_, c)| c.pid == own_pid && matches!(c.state, STATE_STARTING | STATE_ACTIVE | STATE_STOPPING));
    let Some((path, control)) = session else {
        if controls.iter().any(|(_, c)| c.tracker_active) {
            bail!("process {pid} is being tracked by memray run or memray.Tracker, not by memray attach: nothing to detach");
        }
        bail!("no previous `memray attach` call detected: process {pid} is not being tracked by memray");
    };
    log.step(&format!("attach session found in {path}: writing {}", control.message));
    let mut output = control.message.clone();
    let addr = control.addr;
    let nonce = new_nonce();
    injector::memory::write(pid, addr + OFF_REQUEST, &nonce.to_le_bytes())?;
    log.step("stop requested");
    let deadline = Instant::now() + Duration::from_secs_f64(args.timeout);
    loop {
        if !injector::process_alive(pid) {
            bail!("process {pid} exited before it stopped tracking");
        }
        let c = read_control(pid, addr)?;
        if c.ack == nonce {
            // Read again, as in attach: the state was written before the acknowledgement.
            let c = read_control(pid, addr)?;
            match c.state {
                STATE_FAILED => bail!("process {pid} could not stop tracking cleanly: {}", c.message),
                _ => {
                    if let Some(path) = c.message.strip_suffix(memray_abi::COMPRESSION_LEFT) {
                        // The target may not make files beside a capture of ours: compress
                        // it here, as the user who owns it.
                        output = path.to_string();
                        log.step("compressing the capture here (the target may not write beside it)");
                        compress_capture(Path::new(path))?;
                    }
                    break;
                }
            }
        }
        if c.state == STATE_STOPPED && c.ack != nonce && !c.tracker_active {
            // Stopped by itself (--duration) just before our request.
            break;
        }
        if Instant::now() >= deadline {
            bail!("timed out after {:.1} s waiting for process {pid} to stop tracking (is a thread holding the GIL?)", args.timeout);
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    log.step("tracking stopped, hooks removed, capture closed");
    Ok(output)
}
