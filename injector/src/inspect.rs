//! Checks made before touching the process: it exists, we may trace it, it is a CPython
//! we support, and where its libc and libpython are.

use std::collections::HashMap;

use crate::elf::{self, Object, Symbol};
use crate::error::{Error, Result};
use crate::memory;
use crate::proc::{self, Mapping};
use crate::sys;

/// What the injector learned about a process.
pub struct ProcessInfo {
    pub pid: i32,
    pub command_line: String,
    /// The CPython in it.
    pub python_version: cpython::Version,
    /// The object that holds CPython: libpython, or the executable of a static build.
    pub python_object: String,
    pub static_python: bool,
    /// The object that defines dlopen (libc on glibc >= 2.34, else libdl).
    pub dl_object: String,
    pub threads: usize,
    pub(crate) symbols: Symbols,
    /// `&_PyRuntime` and the `_Py_DebugOffsets` it starts with (3.13+).
    pub(crate) runtime: Option<(u64, cpython::DebugOffsets)>,
}

/// Addresses in the target, resolved from its own objects.
#[derive(Clone, Default)]
pub(crate) struct Symbols {
    pub dlopen: u64,
    pub dlerror: u64,
    pub dlsym: u64,
    /// Function entries where a stop is a safe point: (address, name).
    pub safe_points: Vec<(u64, String)>,
    /// The dynamic loader's range: a safe-point hit called from there is inside dlopen.
    pub loader_range: Option<(u64, u64)>,
}

const ALLOCATOR_ENTRIES: &[&str] = &["malloc", "calloc", "realloc", "free"];
const PYTHON_ENTRIES: &[&str] = &[
    "PyMem_Malloc",
    "PyMem_Calloc",
    "PyMem_Realloc",
    "PyMem_Free",
    "PyObject_Malloc",
    "PyObject_Calloc",
    "PyObject_Realloc",
    "PyObject_Free",
    "PyErr_CheckSignals",
    "Py_MakePendingCalls",
];
/// What identifies a CPython and its version from the outside: two functions every
/// version exports, `_PyRuntime` (debug offsets), and cpython's version and build probes.
fn version_probes() -> Vec<&'static str> {
    let mut names = vec!["Py_Initialize", "PyGILState_Ensure", "_PyRuntime", cpython::version::VERSION_SYMBOL];
    names.extend(cpython::version::VERSION_BY_SYMBOL.iter().map(|(name, _)| *name));
    names.extend(cpython::version::FREE_THREADED_SYMBOLS);
    names
}

fn is_loader(path: &str) -> bool {
    let b = elf::basename(path);
    b.starts_with("ld-linux") || b.starts_with("ld64.so") || b.starts_with("ld-2.")
}

fn is_libc(path: &str) -> bool {
    let b = elf::basename(path);
    b.starts_with("libc.so") || b.starts_with("libc-2.") || b.starts_with("ld-musl")
}

/// Checks that `pid` may be traced by us, before any ptrace call.
pub fn check_permissions(pid: i32) -> Result<proc::Status> {
    if !proc::exists(pid) {
        return Err(Error::NoSuchProcess(pid));
    }
    let status = proc::status(pid)?;
    if status.state == 'Z' || status.state == 'X' {
        return Err(Error::NoSuchProcess(pid));
    }
    if pid == std::process::id() as i32 {
        return Err(Error::PermissionDenied { pid, cause: "a process cannot attach to itself".into() });
    }
    let euid = proc::euid();
    let privileged = euid == 0 || proc::have_cap_sys_ptrace();
    if !privileged && status.uid != euid {
        return Err(Error::PermissionDenied {
            pid,
            cause: format!("it belongs to uid {} and you are uid {euid} (run as that user, or as root)", status.uid),
        });
    }
    if !privileged {
        match proc::ptrace_scope() {
            Some(1) => {
                return Err(Error::PermissionDenied {
                    pid,
                    cause: "kernel.yama.ptrace_scope is 1, which only lets a process trace its descendants \
                            (run as root, or set it to 0)"
                        .into(),
                })
            }
            Some(2) => {
                return Err(Error::PermissionDenied {
                    pid,
                    cause: "kernel.yama.ptrace_scope is 2, which lets only root (CAP_SYS_PTRACE) trace".into(),
                })
            }
            _ => {}
        }
    }
    if proc::ptrace_scope() == Some(3) {
        return Err(Error::PermissionDenied { pid, cause: "kernel.yama.ptrace_scope is 3: ptrace is disabled on this machine".into() });
    }
    let tracer = if status.tracer_pid != 0 {
        status.tracer_pid
    } else {
        // A debugger may trace only some threads.
        proc::tasks(pid)?.into_iter().find_map(|t| proc::task_status(pid, t).ok().map(|s| s.tracer_pid).filter(|&p| p != 0)).unwrap_or(0)
    };
    if tracer != 0 {
        return Err(Error::PermissionDenied { pid, cause: proc::describe_tracer(tracer) });
    }
    if status.state == 'T' || status.state == 't' {
        return Err(Error::ProcessStopped(pid));
    }
    // Whatever the route, the control block is read and written from outside.
    for call in [sys::Needed::ProcessVmReadv, sys::Needed::ProcessVmWritev] {
        if sys::refused_outright(call) {
            return Err(Error::PermissionDenied { pid, cause: refused_cause(call) });
        }
    }
    Ok(status)
}

/// All the checks, and the symbols the injection needs.
pub fn inspect(pid: i32) -> Result<ProcessInfo> {
    if !cfg!(target_arch = "x86_64") {
        return Err(Error::UnsupportedArch);
    }
    check_permissions(pid)?;
    let maps = proc::maps(pid)?;
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
    let paths = elf::object_paths(&maps);
    let exe_object = paths.iter().find(|p| **p == exe).and_then(|p| Object::open(pid, p, &maps).ok());
    // The payload is built for glibc: a process on musl (an Alpine image) cannot load it.
    if let Some(loader) = exe_object.as_ref().and_then(|o| o.interpreter.as_deref()) {
        if elf::basename(loader).starts_with("ld-musl") {
            return Err(Error::UnsupportedLibc { pid, loader: loader.to_string() });
        }
    }

    // CPython: the executable (static build) or a libpython.
    let libpythons = paths.iter().filter(|p| elf::basename(p).starts_with("libpython")).filter_map(|p| Object::open(pid, p, &maps).ok());
    let mut found: Option<(Object, HashMap<String, Symbol>)> = None;
    for obj in exe_object.into_iter().chain(libpythons) {
        let Ok(syms) = obj.lookup(&version_probes()) else { continue };
        if syms.contains_key("Py_Initialize") && syms.contains_key("PyGILState_Ensure") {
            found = Some((obj, syms));
            break;
        }
    }
    let Some((py, probes)) = found else {
        let what = elf::basename(&exe).to_string();
        return Err(Error::NotPython { pid, detail: format!("{what}: no libpython and no CPython symbols") });
    };
    let version = python_version(pid, &py, &probes)?;
    if cpython::version::FREE_THREADED_SYMBOLS.iter().any(|s| probes.contains_key(*s)) {
        return Err(Error::Interpreter { pid, cause: cpython::Error::FreeThreaded { version } });
    }
    // The same check the payload makes at start, made here so that an interpreter it
    // would refuse is never stopped.
    let debug_block = match probes.get("_PyRuntime") {
        Some(runtime) if version.has_debug_offsets() => {
            Some((runtime.addr, memory::read(pid, runtime.addr, cpython::debug_offsets::READ_SIZE)?))
        }
        _ => None,
    };
    cpython::resolve(version, debug_block.as_ref().map(|(_, b)| b.as_slice())).map_err(|cause| Error::Interpreter { pid, cause })?;
    let runtime = debug_block.and_then(|(addr, bytes)| Some((addr, cpython::DebugOffsets::parse(&bytes).ok()?)));

    let (mut symbols, dl_object) = native_symbols(pid, &maps, &paths)?;
    if let Ok(s) = py.lookup(PYTHON_ENTRIES) {
        for (name, sym) in s {
            if sym.is_function() {
                symbols.safe_points.push((sym.addr, name));
            }
        }
    }
    symbols.safe_points.sort();
    symbols.safe_points.dedup_by_key(|(a, _)| *a);
    if symbols.safe_points.is_empty() {
        return Err(Error::SymbolNotFound { pid, symbol: "malloc".into(), detail: "no allocator entry point found".into() });
    }

    Ok(ProcessInfo {
        pid,
        command_line: proc::cmdline(pid),
        python_version: version,
        static_python: py.path == exe,
        python_object: py.path.clone(),
        dl_object,
        threads: proc::tasks(pid).map(|t| t.len()).unwrap_or(0),
        symbols,
        runtime,
    })
}

/// What any process offers the tracer, Python or not: dlopen/dlerror/dlsym (libc on
/// glibc 2.34+ and musl, else libdl; the second value names that object), the entries of
/// the allocator wherever it is defined (an LD_PRELOADed one included) as safe points,
/// and the loader's range. CPython's safe points are added by [`inspect`].
pub(crate) fn native_symbols(pid: i32, maps: &[Mapping], paths: &[String]) -> Result<(Symbols, String)> {
    let mut symbols = Symbols::default();
    let mut dl_object = String::new();
    let dl_candidates: Vec<&String> =
        paths.iter().filter(|p| is_libc(p)).chain(paths.iter().filter(|p| elf::basename(p).starts_with("libdl.so"))).collect();
    for path in dl_candidates {
        let Ok(obj) = Object::open(pid, path, maps) else { continue };
        let Ok(s) = obj.lookup(&["dlopen", "dlerror", "dlsym"]) else { continue };
        if let (Some(o), Some(e), Some(y)) = (s.get("dlopen"), s.get("dlerror"), s.get("dlsym")) {
            symbols.dlopen = o.addr;
            symbols.dlerror = e.addr;
            symbols.dlsym = y.addr;
            dl_object = path.clone();
            break;
        }
    }
    if symbols.dlopen == 0 {
        return Err(Error::SymbolNotFound { pid, symbol: "dlopen".into(), detail: "neither libc nor libdl defines it".into() });
    }
    for path in paths {
        let preloaded_allocator = elf::basename(path).contains("malloc");
        if !(is_libc(path) || preloaded_allocator) || is_loader(path) || elf::basename(path).contains("memray_payload") {
            continue;
        }
        let Ok(obj) = Object::open(pid, path, maps) else { continue };
        if let Ok(s) = obj.lookup(ALLOCATOR_ENTRIES) {
            for (name, sym) in s {
                if sym.is_function() {
                    symbols.safe_points.push((sym.addr, name));
                }
            }
        }
    }
    symbols.loader_range = loader_range(maps);
    Ok((symbols, dl_object))
}

fn loader_range(maps: &[Mapping]) -> Option<(u64, u64)> {
    let mine: Vec<&Mapping> = maps.iter().filter(|m| m.is_file() && is_loader(&m.path)).collect();
    Some((mine.iter().map(|m| m.start).min()?, mine.iter().map(|m| m.end).max()?))
}

fn python_version(pid: i32, py: &Object, probes: &HashMap<String, Symbol>) -> Result<cpython::Version> {
    use cpython::Version;
    if let Some(v) = probes.get(cpython::version::VERSION_SYMBOL) {
        // `const unsigned long Py_Version` = PY_VERSION_HEX.
        let bytes = memory::read(pid, v.addr, 8)?;
        return Ok(Version::from_hex(u64::from_le_bytes(bytes.try_into().unwrap_or([0; 8]))));
    }
    if let Some(version) = cpython::version::version_from_symbols(|name| probes.contains_key(name)) {
        return Ok(version);
    }
    // Older than the supported range: name the version from the file when it says it.
    let name = elf::basename(&py.path);
    let version = name
        .find("python")
        .map(|i| &name[i + 6..])
        .map(|rest| rest.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect::<String>())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "an old version".into());
    Err(Error::UnsupportedVersion { pid, version: format!("CPython {}", version.trim_end_matches('.')) })
}

/// Why a call refused outright (see [`sys::refused_outright`]) stops the attach, and what
/// to change.
pub(crate) fn refused_cause(call: sys::Needed) -> String {
    let who = match proc::own_seccomp_mode() {
        Some(2) => "memray's seccomp filter (Seccomp: 2 in /proc/self/status)",
        _ => "something in front of the kernel (a seccomp filter or a security module)",
    };
    format!(
        "{who} refuses {}, which attaching needs: allow it where memray runs (Docker: --cap-add=SYS_PTRACE; \
         Kubernetes: add the SYS_PTRACE capability; or a seccomp profile that allows ptrace, process_vm_readv \
         and process_vm_writev)",
        call.name()
    )
}
