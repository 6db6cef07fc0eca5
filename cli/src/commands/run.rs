//! `memray run`: start a Python program with tracking active from its first line.
//!
//! The program runs in a child interpreter started as `python -c BOOTSTRAP`; the bootstrap
//! (python/memray/_tracking.py, embedded here so no Python package is needed) loads the
//! payload with ctypes, opens the capture and starts the tracker before the program's
//! first line.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};
use clap::Args;

const TRACKING_SOURCE: &str = include_str!("../../../python/memray/_tracking.py");
const BOOTSTRAP: &str = "import os,sys,types\n\
m=types.ModuleType('_memray_run');sys.modules['_memray_run']=m\n\
exec(compile(os.environ.pop('MEMRAY_BOOTSTRAP_SRC'),'<memray>','exec'),m.__dict__)\n\
m.run_from_cli()\n";

/// A day: an interval longer than any run is pointless, and the payload's sampler
/// sleeps in a `Duration` that must not overflow.
const MAX_INTERVAL_MS: u64 = 86_400_000;

#[derive(Args, Debug)]
#[command(
    override_usage = "memray run [OPTIONS] (SCRIPT | -m MODULE | -c CODE) [ARGS]...",
    after_help = "Everything after the script, module or code is passed to the program."
)]
pub struct RunArgs {
    /// Output file name (default: memray-<script>.<pid>.bin next to the script)
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Don't print memray's own messages
    #[arg(short, long)]
    quiet: bool,
    #[command(flatten)]
    tracking: super::tracking_options::TrackingOptions,
    /// How often to sample the resident set size, in milliseconds
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=MAX_INTERVAL_MS))]
    memory_interval_ms: u64,
    /// Interpreter to run the program with (default: $MEMRAY_PYTHON, else python3 on PATH)
    #[arg(long)]
    python: Option<PathBuf>,
    /// Write the capture with plain buffered writes instead of shared mappings of the file
    /// (for file systems that do not support them well); a crash loses up to 1 MiB of records
    #[arg(long, conflicts_with_all = ["live", "live_remote"])]
    buffered_file_io: bool,
    /// Show a live view of the program in this terminal instead of writing a capture
    /// (the program's output goes to a log file)
    #[arg(long, conflicts_with_all = ["output", "live_remote"])]
    live: bool,
    /// Stream to a `memray live PORT` viewer started in another shell instead of writing
    /// a capture; the program waits for the viewer before it starts
    #[arg(long, conflicts_with = "output")]
    live_remote: bool,
    /// Port to listen on with --live-remote (default: a free one, printed)
    #[arg(short = 'p', long, requires = "live_remote", value_parser = clap::value_parser!(u16).range(1..))]
    live_port: Option<u16>,
    /// Address to listen on with --live-remote (default 127.0.0.1; any other exposes the
    /// stream beyond this machine's loopback)
    #[arg(long, requires = "live_remote")]
    live_address: Option<String>,
    /// Run a library module as a script
    #[arg(long = "module", hide = true)]
    module: Option<String>,
    /// Run the given code
    #[arg(long = "code", hide = true)]
    code: Option<String>,
    /// The script and the program's arguments
    #[arg(trailing_var_arg = true, hide = true)]
    rest: Vec<String>,
}

/// `-m MOD args...` and `-c CODE args...` end memray's own options like Python's do, which
/// clap cannot express: rewrite them to `--module MOD -- args...` before parsing.
pub fn normalize_argv(argv: Vec<String>) -> Vec<String> {
    if argv.get(1).map(String::as_str) != Some("run") {
        return argv;
    }
    let run_at = 1;
    let takes_value = ["-o", "--output", "--memory-interval-ms", "--python", "-p", "--live-port", "--live-address", "--sampling-interval"];
    let mut out: Vec<String> = argv[..=run_at].to_vec();
    let mut i = run_at + 1;
    while i < argv.len() {
        let a = &argv[i];
        match a.as_str() {
            "-m" | "-c" if i + 1 < argv.len() => {
                out.push(if a == "-m" { "--module".into() } else { "--code".into() });
                out.push(argv[i + 1].clone());
                out.push("--".into());
                out.extend(argv[i + 2..].iter().cloned());
                return out;
            }
            "--" => {
                out.extend(argv[i..].iter().cloned());
                return out;
            }
            _ if takes_value.contains(&a.as_str()) => {
                out.push(a.clone());
                if let Some(v) = argv.get(i + 1) {
                    out.push(v.clone());
                }
                i += 2;
                continue;
            }
            _ if a.starts_with('-') && a.len() > 1 => out.push(a.clone()),
            _ => {
                out.push("--".into());
                out.extend(argv[i..].iter().cloned());
                return out;
            }
        }
        i += 1;
    }
    out
}

enum Target {
    Script(PathBuf),
    Module(String),
    Code(String),
}

pub fn run(args: RunArgs) -> Result<ExitCode> {
    let mut rest = args.rest.clone();
    let target = match (&args.module, &args.code) {
        (Some(m), None) => Target::Module(m.clone()),
        (None, Some(c)) => Target::Code(c.clone()),
        (None, None) if !rest.is_empty() => Target::Script(PathBuf::from(rest.remove(0))),
        _ => bail!("nothing to run: give a script, -m MODULE or -c CODE"),
    };
    if let Target::Script(p) = &target {
        if !p.is_file() {
            bail!("no such script: {}", p.display());
        }
    }

    let payload = crate::payload_file::locate()?;
    let python = interpreter(args.python.as_deref())?;

    let live = args.live || args.live_remote;
    if live && (args.tracking.follow_fork || args.tracking.aggregate) {
        bail!("--follow-fork and --aggregate need an output file: they can't be used with --live or --live-remote");
    }

    // The output name may hold {pid}: only the child knows its pid before tracking starts.
    let output_template = match &args.output {
        _ if live => String::new(),
        Some(o) => {
            if o.exists() && !args.tracking.force {
                bail!("output file {} already exists (use -f/--force to overwrite it)", o.display());
            }
            check_writable_dir(o)?;
            o.to_string_lossy().into_owned()
        }
        None => default_output(&target)?,
    };

    let mut cmd = Command::new(&python);
    cmd.args(isolation_flags()).arg("-c").arg(BOOTSTRAP).args(&rest).env_remove("MEMRAY_PYTHON_FLAGS");
    let (mode, target_text) = match &target {
        Target::Script(p) => ("script", p.to_string_lossy().into_owned()),
        Target::Module(m) => ("module", m.clone()),
        Target::Code(c) => ("code", c.clone()),
    };
    let flag = |b: bool| if b { "1" } else { "0" };
    cmd.env("MEMRAY_BOOTSTRAP_SRC", TRACKING_SOURCE)
        .env("MEMRAY_PAYLOAD", &payload)
        .env("MEMRAY_RUN_MODE", mode)
        .env("MEMRAY_RUN_TARGET", target_text)
        .env("MEMRAY_RUN_OUTPUT", &output_template)
        .env("MEMRAY_RUN_FORCE", flag(args.tracking.force))
        .env("MEMRAY_RUN_COMPRESS", flag(!args.tracking.no_compress))
        .env("MEMRAY_RUN_NATIVE", flag(args.tracking.native))
        .env("MEMRAY_RUN_PYALLOC", flag(args.tracking.trace_python_allocators))
        .env("MEMRAY_RUN_FOLLOW_FORK", flag(args.tracking.follow_fork))
        .env("MEMRAY_RUN_AGGREGATE", flag(args.tracking.aggregate))
        .env("MEMRAY_RUN_BUFFERED", flag(args.buffered_file_io))
        .env("MEMRAY_RUN_INTERVAL_MS", args.memory_interval_ms.to_string())
        .env("MEMRAY_RUN_SAMPLING_INTERVAL", args.tracking.sampling_interval.unwrap_or(0).to_string())
        .env("MEMRAY_RUN_QUIET", flag(args.quiet));

    if live {
        return run_live(&args, cmd, &python);
    }
    let mut child = cmd.spawn().with_context(|| format!("cannot start {}", python.display()))?;
    super::forward_signals::to_child(child.id());
    // The program says "Writing profile results into ..." once its capture is open.
    let output = output_template.replace("{pid}", &child.id().to_string());
    let status = child.wait().context("waiting for the program")?;
    let code = exit_code(status);
    if let (Some(sig), false) = (std::os::unix::process::ExitStatusExt::signal(&status), args.quiet) {
        eprintln!("[memray] The program was killed by signal {sig}: the capture {output} holds what was recorded until then.");
    } else if capture_finished(Path::new(&output)) == Some(false) && !args.quiet {
        eprintln!(
            "[memray] The program ended without finishing the capture (os._exit, or a crash): {output} holds what was recorded until then."
        );
    } else if Path::new(&output).is_file() && !args.quiet {
        // Status, not errors: on stdout, as Memray prints them.
        println!("[memray] Successfully generated profile results.\n");
        println!("You can now generate reports from the stored allocation records.");
        println!("Some example commands to generate reports:\n");
        println!("memray flamegraph {output}");
    }
    Ok(ExitCode::from(code))
}

/// `--live-remote`: the program listens and waits for `memray live` (it prints the port);
/// `--live`: the program streams to a view in this terminal, its output to a log file.
fn run_live(args: &RunArgs, mut cmd: Command, python: &Path) -> Result<ExitCode> {
    use super::live;
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    if args.live_remote {
        let address = args.live_address.as_deref().unwrap_or("127.0.0.1");
        cmd.env("MEMRAY_RUN_LIVE_PORT", args.live_port.unwrap_or(0).to_string())
            .env("MEMRAY_RUN_LIVE_ADDRESS", address)
            .env("MEMRAY_RUN_LIVE_ANNOUNCE", "1");
        let status =
            cmd.spawn().with_context(|| format!("cannot start {}", python.display()))?.wait().context("waiting for the program")?;
        return Ok(ExitCode::from(exit_code(status)));
    }

    let address = "127.0.0.1";
    let port = live::free_port(address)?;
    let log_path = std::env::temp_dir().join(format!("memray-live-{}.log", std::process::id()));
    // A new file of ours, never one planted in the shared temporary directory (or a link).
    let _ = std::fs::remove_file(&log_path);
    let log = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    cmd.env("MEMRAY_RUN_LIVE_PORT", port.to_string())
        .env("MEMRAY_RUN_LIVE_ADDRESS", address)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let mut child = cmd.spawn().with_context(|| format!("cannot start {}", python.display()))?;
    let addr = live::resolve(address, port)?;
    let log_text = log_path.display().to_string();
    let connected = live::connect(addr, Instant::now() + Duration::from_secs(30), || match child.try_wait() {
        Ok(Some(status)) => {
            bail!("the program ended ({}) before tracking started; its output is in {log_text}:\n{}", describe(status), tail(&log_path))
        }
        _ => Ok(()),
    });
    let outcome = connected.and_then(|stream| live::view(stream, addr, live::terminal_gone));
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            if child.try_wait().ok().flatten().is_none() {
                // We started it for a view that cannot be shown: don't leave it behind.
                let _ = child.kill();
                let _ = child.wait();
            }
            return Err(e);
        }
    };
    live::report_end(&outcome, Some("viewer closed; the program stops tracking and continues running"));
    eprintln!("memray: the program's output is in {log_text}");
    if child.try_wait().ok().flatten().is_none() {
        eprintln!("memray: waiting for the program (pid {}) to exit; Ctrl-C interrupts it", child.id());
    }
    let status = child.wait().context("waiting for the program")?;
    Ok(ExitCode::from(exit_code(status)))
}

fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "unknown status".into(),
    }
}

/// The last lines of the program's log, for an error message.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

/// Whether the tracker finished the capture (compressed it, or rewrote its header with
/// an end time); None if there is no readable capture there.
fn capture_finished(path: &Path) -> Option<bool> {
    use std::io::Read;
    let mut head = Vec::new();
    std::fs::File::open(path).ok()?.take(64 * 1024).read_to_end(&mut head).ok()?;
    if head.starts_with(&[0x04, 0x22, 0x4d, 0x18]) {
        return Some(true);
    }
    let (header, _) = memray_capture::Header::decode(&head).ok()?;
    Some(header.end_time_ms != 0)
}

fn exit_code(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => c as u8,
        (None, Some(sig)) => 128u8.wrapping_add(sig as u8),
        _ => 1,
    }
}

/// The interpreter options `python -m memray` was started with that isolate the program
/// (-I, -E, -s, -P): the program gets them too.
fn isolation_flags() -> Vec<String> {
    let given = std::env::var("MEMRAY_PYTHON_FLAGS").unwrap_or_default();
    given.split_whitespace().filter(|f| matches!(*f, "-I" | "-E" | "-s" | "-P")).map(str::to_owned).collect()
}

fn interpreter(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("MEMRAY_PYTHON") {
        return Ok(PathBuf::from(p));
    }
    Ok(PathBuf::from("python3"))
}

fn default_output(target: &Target) -> Result<String> {
    let (dir, stem) = match target {
        Target::Script(p) => {
            let dir = p.parent().filter(|d| !d.as_os_str().is_empty()).map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "script".into());
            (dir, name)
        }
        Target::Module(m) => (PathBuf::from("."), m.clone()),
        Target::Code(_) => (PathBuf::from("."), "string".into()),
    };
    let path = dir.join(format!("memray-{stem}.{{pid}}.bin"));
    check_writable_dir(&path)?;
    Ok(path.to_string_lossy().into_owned())
}

fn check_writable_dir(file: &Path) -> Result<()> {
    let dir = file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !dir.is_dir() {
        bail!("cannot write {}: directory {} does not exist", file.display(), dir.display());
    }
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).context("directory name has a NUL byte")?;
    // SAFETY: access() with a valid NUL-terminated path.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK) } != 0 {
        bail!("cannot write {}: directory {} is not writable", file.display(), dir.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::normalize_argv;

    fn v(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    #[test]
    fn module_ends_memray_options() {
        assert_eq!(normalize_argv(v("memray run -q -m pytest -x -k t")), v("memray run -q --module pytest -- -x -k t"));
    }

    #[test]
    fn script_ends_memray_options() {
        assert_eq!(normalize_argv(v("memray run -o out.bin s.py -o x")), v("memray run -o out.bin -- s.py -o x"));
    }

    #[test]
    fn code_keeps_its_arguments() {
        assert_eq!(normalize_argv(v("memray run -c pass a b")), v("memray run --code pass -- a b"));
    }
}
