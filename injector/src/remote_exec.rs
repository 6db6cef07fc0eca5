//! The PEP 768 route (CPython 3.14+), what `sys.remote_exec` does, without a Python on our
//! side: the process is never stopped.
//!
//! 1. From `_Py_DebugOffsets`: the main interpreter, its main thread state, and whether
//!    remote debugging is enabled there (`PYTHON_DISABLE_REMOTE_DEBUG`,
//!    `-X disable-remote-debug` and builds without it turn it off).
//! 2. A script is written where the target can read it and nobody else can change it (the
//!    caller's directory): it loads the library with ctypes and calls the entry, catching
//!    everything so that a failure never reaches the program's stderr. We hold an
//!    exclusive `flock` on the file until the script has run; the script first tries a
//!    shared one and does nothing if it gets it: the attaching side is gone (killed, or it
//!    withdrew and took another route), and a request nobody waits for must not start a
//!    session later. The kernel drops the lock with its holder, whatever kills it.
//! 3. With `process_vm_writev`: the script's path into the main thread state's
//!    `remote_debugger_support.debugger_script_path`, `debugger_pending_call = 1`, then
//!    `_PY_EVAL_PLEASE_STOP_BIT` into its `eval_breaker`. At its next eval-breaker check
//!    the main thread runs the script, holding the GIL, with no lock of the allocator or
//!    the loader held: the interpreter's own safe point.
//!
//! Only the main thread is asked, as CPython does: its thread state lives as long as the
//! interpreter, where another thread's may be freed between our reading its address and
//! writing into it. The `eval_breaker` update is a read-modify-write from outside, as in
//! CPython's own implementation: a bit the interpreter sets in between can be lost (a GIL
//! drop request is then repeated by its waiter after its interval).
//!
//! A main thread that runs no Python (blocked in C) never looks: the request is then
//! withdrawn after the caller's grace period and the caller may take the ptrace route.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cpython::debug_offsets::RemoteDebugOffsets;
use nix::fcntl::{Flock, FlockArg};

use crate::error::{Error, Result};
use crate::inspect::ProcessInfo;
use crate::memory;

/// Why the PEP 768 route cannot be taken for a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unavailable {
    /// Before 3.14, or the interpreter gives no debug offsets.
    NotOffered(String),
    /// The interpreter has it but the program or its build turned it off.
    Disabled(String),
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unavailable::NotOffered(s) | Unavailable::Disabled(s) => f.write_str(s),
        }
    }
}

/// The main thread state of a process that accepts PEP 768 requests.
pub(crate) struct Target {
    pid: i32,
    tstate: u64,
    offsets: RemoteDebugOffsets,
}

fn read_u64(pid: i32, addr: u64) -> Result<u64> {
    let b = memory::read(pid, addr, 8)?;
    Ok(u64::from_ne_bytes(b.try_into().unwrap_or([0; 8])))
}

fn read_i32(pid: i32, addr: u64) -> Result<i32> {
    let b = memory::read(pid, addr, 4)?;
    Ok(i32::from_ne_bytes(b.try_into().unwrap_or([0; 4])))
}

/// Finds the main thread state and checks that remote debugging is enabled.
pub(crate) fn locate(info: &ProcessInfo) -> Result<std::result::Result<Target, Unavailable>> {
    let pid = info.pid;
    let version = info.python_version;
    if !version.has_remote_debugging() {
        return Ok(Err(Unavailable::NotOffered(format!(
            "CPython {version} has no remote debugging interface (PEP 768 came with CPython {})",
            cpython::version::REMOTE_DEBUGGING_SINCE
        ))));
    }
    let Some((runtime, debug)) = &info.runtime else {
        return Ok(Err(Unavailable::NotOffered("the interpreter's debug offsets are not readable".into())));
    };
    let Some(offsets) = debug.remote_debug() else {
        return Ok(Err(Unavailable::NotOffered("the interpreter's debug offsets do not describe remote debugging".into())));
    };
    if read_u64(pid, runtime + offsets.runtime_finalizing)? != 0 {
        return Err(Error::ProcessExited { pid, detail: " (the interpreter is shutting down)".into() });
    }
    let interp = read_u64(pid, runtime + offsets.interpreters_head)?;
    if interp == 0 {
        return Ok(Err(Unavailable::NotOffered("the interpreter is not initialised".into())));
    }
    if read_i32(pid, interp + offsets.remote_debugging_enabled)? != 1 {
        return Ok(Err(Unavailable::Disabled(
            "remote debugging is disabled in the target (PYTHON_DISABLE_REMOTE_DEBUG, -X disable-remote-debug, \
             or a build without it)"
                .into(),
        )));
    }
    let tstate = read_u64(pid, interp + offsets.threads_main)?;
    if tstate == 0 {
        return Ok(Err(Unavailable::NotOffered("the interpreter has no main thread state".into())));
    }
    Ok(Ok(Target { pid, tstate, offsets }))
}

/// Python source of the script at `path`: `exec` in a namespace of its own, because the
/// interpreter runs the file in `__main__`'s, which is the program's. It goes on only
/// while its file is locked by the attaching side (see the module doc); without `fcntl`
/// it cannot tell, and goes on.
pub(crate) fn script_text(path: &Path, library: &str, entry: &str, arg: &[u8]) -> String {
    let body = format!(
        "try:\n    import ctypes, os\n    waited = True\n    try:\n        import fcntl\n    except ImportError:\n        fcntl = None\n    \
         if fcntl is not None:\n        try:\n            fd = os.open(os.fsdecode({path}), os.O_RDONLY)\n        except OSError:\n            \
         fd = -1\n            waited = False\n        if fd >= 0:\n            try:\n                \
         fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)\n                waited = False\n            except OSError:\n                \
         pass\n            finally:\n                os.close(fd)\n    if waited:\n        \
         lib = ctypes.PyDLL(os.fsdecode({library}))\n        f = getattr(lib, {entry})\n        \
         f.argtypes = [ctypes.c_char_p]\n        f.restype = ctypes.c_int\n        f({arg})\nexcept BaseException:\n    pass\n",
        path = py_bytes(path.as_os_str().as_encoded_bytes()),
        library = py_bytes(library.as_bytes()),
        entry = py_str(entry),
        arg = py_bytes(arg),
    );
    format!(
        "# memray attach (PEP 768): loads memray's payload and starts it.\n\
         exec(compile({}, '<memray attach>', 'exec'), {{'__builtins__': __builtins__}})\n",
        py_str(&body)
    )
}

/// A Python bytes literal of any bytes.
fn py_bytes(bytes: &[u8]) -> String {
    let mut out = String::from("b'");
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"/._- ,:=".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out.push('\'');
    out
}

/// A Python str literal (only ASCII-safe characters left as they are).
fn py_str(text: &str) -> String {
    let mut out = String::from("'");
    for c in text.chars() {
        if c.is_ascii_alphanumeric() || "/._- ,:=()[]".contains(c) {
            out.push(c);
        } else {
            out.push_str(&format!("\\U{:08x}", c as u32));
        }
    }
    out.push('\'');
    out
}

/// The script file, locked by us for as long as this lives (see the module doc).
#[derive(Debug)]
pub struct Script {
    /// Our path to it.
    path: PathBuf,
    /// The target's path to it (another one when it runs in a container).
    there: String,
    _lock: Flock<File>,
}

impl Script {
    pub fn path_in_target(&self) -> &str {
        &self.there
    }

    /// Removes the file once the script has run (it has passed its check), then unlocks.
    pub fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Writes the script for `library`'s `entry` into `dir` (which the target calls
/// `dir_there`) as a new 0644 file (readable by the target whatever its user, writable by
/// us only), locked.
pub(crate) fn write_script(dir: &Path, dir_there: &str, library: &str, entry: &str, arg: &[u8]) -> Result<Script> {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let name = format!("memray-attach-{}-{nanos:x}.py", std::process::id());
    let path = dir.join(&name);
    let there = format!("{}/{name}", dir_there.trim_end_matches('/'));
    let failed = |e: std::io::Error| Error::Script { path: path.clone(), detail: e.to_string() };
    let f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o644).open(&path).map_err(failed)?;
    // Locked before the text is there: no state of the file lets a script run unwaited.
    let mut lock = Flock::lock(f, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| failed(e.into()))?;
    lock.write_all(script_text(Path::new(&there), library, entry, arg).as_bytes()).map_err(failed)?;
    // The mode is not left to the umask.
    lock.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644)).map_err(failed)?;
    Ok(Script { path, there, _lock: lock })
}

impl Target {
    /// Asks the main thread to run the script at `path` (as the target sees it).
    pub(crate) fn request(&self, path: &str) -> Result<()> {
        let o = &self.offsets;
        let mut bytes = path.as_bytes().to_vec();
        bytes.push(0);
        if bytes.len() as u64 > o.script_path_size {
            return Err(Error::Script {
                path: PathBuf::from(path),
                detail: format!("its path is longer than the interpreter accepts ({} bytes)", o.script_path_size - 1),
            });
        }
        memory::write(self.pid, self.tstate + o.script_path, &bytes)?;
        memory::write(self.pid, self.tstate + o.pending_call, &1i32.to_ne_bytes())?;
        let breaker = read_u64(self.pid, self.tstate + o.eval_breaker)?;
        memory::write(self.pid, self.tstate + o.eval_breaker, &(breaker | o.please_stop_bit).to_ne_bytes())?;
        Ok(())
    }

    /// Whether the request still waits for the thread.
    pub(crate) fn pending(&self) -> Result<bool> {
        Ok(read_i32(self.pid, self.tstate + self.offsets.pending_call)? != 0)
    }

    /// Withdraws a request the thread has not taken. Returns false if it took it first
    /// (it clears the flag before it runs the script).
    pub(crate) fn withdraw(&self) -> Result<bool> {
        let was = self.pending()?;
        memory::write(self.pid, self.tstate + self.offsets.pending_call, &0i32.to_ne_bytes())?;
        Ok(was)
    }

    /// Waits until the thread takes the request, `grace` at most.
    pub(crate) fn wait_taken(&self, grace: Duration, cancelled: &dyn Fn() -> bool) -> Result<Option<Duration>> {
        let start = Instant::now();
        loop {
            if !self.pending()? {
                return Ok(Some(start.elapsed()));
            }
            if start.elapsed() >= grace || cancelled() {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_survive_any_bytes() {
        assert_eq!(py_bytes(b"/tmp/a b.so"), "b'/tmp/a b.so'");
        assert_eq!(py_bytes(b"x'\\\x1e\xff"), "b'x\\x27\\x5c\\x1e\\xff'");
        assert_eq!(py_str("memray_attach_entry"), "'memray_attach_entry'");
        assert_eq!(py_str("a'b\n"), "'a\\U00000027b\\U0000000a'");
        let path = Path::new("/tmp/memray-0/memray-attach-1.py");
        let text = script_text(path, "/tmp/memray-0/libmemray_payload-1.so", "memray_attach_entry", b"nonce\x1f1\x1eoutput\x1f/x'y");
        assert!(text.starts_with("# memray attach"));
        assert!(!text.contains("/x'y"), "{text}");
    }

    /// The script runs its entry while we hold its file, and does nothing once we are gone:
    /// run by a real interpreter, with libc's `puts` standing in for the payload's entry.
    #[test]
    fn script_runs_only_while_the_attaching_side_waits() {
        let _turn = crate::children_turn();
        let python = Path::new("/usr/bin/python3");
        assert!(python.exists(), "this test runs the script with {}", python.display());
        let dir = std::env::temp_dir().join(format!("memray-script-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let run = |script: &Path| {
            let out = std::process::Command::new(python).arg(script).output().unwrap();
            assert!(out.status.success(), "{out:?}");
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let waited = write_script(&dir, &dir.to_string_lossy(), "libc.so.6", "puts", b"entry called").unwrap();
        assert_eq!(run(&waited.path), "entry called\n");
        let abandoned = write_script(&dir, &dir.to_string_lossy(), "libc.so.6", "puts", b"entry called").unwrap();
        let path = abandoned.path.clone();
        drop(abandoned); // the attaching side dies: its lock goes with it, the file stays
        assert_eq!(run(&path), "");
        waited.remove();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
