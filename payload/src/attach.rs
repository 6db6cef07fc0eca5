//! `memray attach` inside the target: what the injector calls once the payload is mapped.
//!
//! `memray_attach_entry` runs on a thread the injector stopped at a safe point (the entry
//! of malloc, PyErr_CheckSignals, ...). It does no Python work there: it records the
//! request and starts a detached thread, then returns. That thread takes the GIL with
//! `PyGILState_Ensure` and runs a small Python bootstrap in a fresh namespace, which loads
//! the text of python/memray/_tracking.py (embedded here) as module `_memray_attach` and
//! starts a `Session` writing to the path the CLI resolved. Nothing of ours has to be
//! importable in the target. The thread then stays as a supervisor: it stops tracking
//! after `--duration`, or when `memray detach` asks, in both cases with the GIL.
//!
//! The CLI and this thread talk through [`AttachControl`], an exported structure the CLI
//! reads and writes with process_vm_readv/writev (so detaching needs no ptrace stop).

use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::atomic::Ordering;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::{hooks, thread_state};

/// The text of python/memray/_tracking.py, run inside the target as `_memray_attach`.
const TRACKING_SOURCE: &str = include_str!("../../python/memray/_tracking.py");

// ---- the control block -----------------------------------------------------------------
// Its layout is the attach ABI (memray-abi), shared with the attaching side.

use memray_abi::{AttachControl, COMPRESSION_LEFT, MESSAGE_LEN};
use memray_abi::{STATE_ACTIVE, STATE_FAILED, STATE_IDLE, STATE_STARTING, STATE_STOPPED, STATE_STOPPING};

#[no_mangle]
#[allow(non_upper_case_globals)]
pub static memray_attach_control: AttachControl = AttachControl::new(&hooks::ACTIVE);

/// Serialises writers of the control block (the entry, the supervisor, detach). A spin
/// lock rather than a Mutex so that a fork child adopting the session can reset it: the
/// thread that may have held it in the parent does not exist in the child. Held only for
/// a few stores, never across an allocation.
static CONTROL_LOCK: ControlLock = ControlLock(AtomicBool::new(false));

/// When the current session's `--duration` ends, in nanoseconds after [`clock_base`] (0:
/// no duration), and that duration: a fork child that adopts the session (follow_fork)
/// stops when its parent's session does, as `attach --children --duration` promises for
/// workers forked later. Both clocks are CLOCK_MONOTONIC, which a fork child shares.
static SESSION_END_NS: AtomicU64 = AtomicU64::new(0);
static SESSION_DURATION_NS: AtomicU64 = AtomicU64::new(0);

fn clock_base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// The session's end and duration, remembered for fork children (None: no duration).
fn session_end(duration: Option<Duration>) -> Option<(Instant, Duration)> {
    let end = duration.and_then(|d| Some((Instant::now().checked_add(d)?, d)));
    // 0 stands for "none": an end is stored as at least 1 ns after the base.
    let ns = end.map_or(0, |(at, _)| at.saturating_duration_since(clock_base()).as_nanos().clamp(1, u64::MAX as u128) as u64);
    SESSION_DURATION_NS.store(duration.map_or(0, |d| d.as_nanos().min(u64::MAX as u128) as u64), Ordering::Release);
    SESSION_END_NS.store(ns, Ordering::Release);
    end
}

/// In an adopting fork child: the parent's session end, if it had one.
fn inherited_end() -> Option<(Instant, Duration)> {
    let ns = SESSION_END_NS.load(Ordering::Acquire);
    (ns != 0).then(|| {
        let at = clock_base().checked_add(Duration::from_nanos(ns)).unwrap_or_else(Instant::now);
        (at, Duration::from_nanos(SESSION_DURATION_NS.load(Ordering::Acquire)))
    })
}

struct ControlLock(AtomicBool);

struct ControlGuard<'a>(&'a ControlLock);

impl ControlLock {
    fn lock(&self) -> ControlGuard<'_> {
        while self.0.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
            std::thread::yield_now();
        }
        ControlGuard(self)
    }

    /// In a fork child that has one thread: whoever held the lock is not here.
    fn reset_in_fork_child(&self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Drop for ControlGuard<'_> {
    fn drop(&mut self) {
        self.0 .0.store(false, Ordering::Release);
    }
}

fn control() -> &'static AttachControl {
    &memray_attach_control
}

fn getpid() -> i32 {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() }
}

/// Sets message and state together (message first: a reader that sees the state sees the
/// message too).
fn publish(state: u32, message: &str) {
    let lock = CONTROL_LOCK.lock();
    publish_locked(&lock, state, message);
}

fn publish_locked(_lock: &ControlGuard<'_>, state: u32, message: &str) {
    let c = control();
    let bytes = message.as_bytes();
    let n = bytes.len().min(MESSAGE_LEN - 1);
    // SAFETY: CONTROL_LOCK is held, so no other writer touches `message`; nothing in this
    // process reads it.
    unsafe {
        let buf = &mut *c.message.get();
        buf[..n].copy_from_slice(&bytes[..n]);
        buf[n] = 0;
    }
    c.pid.store(getpid(), Ordering::Release);
    c.state.store(state, Ordering::Release);
}

// ---- arguments -------------------------------------------------------------------------

/// `key\x1fvalue` pairs joined by `\x1e`, as the CLI writes them.
struct Args {
    text: String,
}

impl Args {
    fn get(&self, key: &str) -> Option<&str> {
        self.text.split('\x1e').filter_map(|p| p.split_once('\x1f')).find(|(k, _)| *k == key).map(|(_, v)| v)
    }
    fn nonce(&self) -> u64 {
        self.get("nonce").and_then(|v| v.parse().ok()).unwrap_or(0)
    }
    fn duration(&self) -> Option<Duration> {
        // Never panics on what it is handed: NaN, negative or absurdly long means none.
        self.get("duration").and_then(|v| v.parse::<f64>().ok()).filter(|d| *d > 0.0).and_then(|d| Duration::try_from_secs_f64(d).ok())
    }
}

// ---- entry points ----------------------------------------------------------------------

/// Called by the injector at a safe point. Returns 0 once the attach thread is started,
/// 1 if an attach session is already starting or active, 2 on bad arguments, 3 if no
/// thread could be started. The outcome of the attach itself appears in the control block.
pub fn attach_entry(args: Option<&CStr>) -> c_int {
    let _g = thread_state::GuardScope::enter();
    let Some(args) = args else { return 2 };
    let text = args.to_string_lossy().into_owned();
    let args = Args { text };
    let nonce = args.nonce();
    if nonce == 0 {
        return 2;
    }
    let c = control();
    // Check and claim under the lock: the two routes' entries can run at once on two threads.
    let lock = CONTROL_LOCK.lock();
    // The same request twice (a PEP 768 script that ran after the CLI had fallen back to
    // ptrace, or the other way round) is one attach: the second is a no-op, also once that
    // session has ended.
    if c.session.load(Ordering::Acquire) == nonce
        && c.pid.load(Ordering::Acquire) == getpid()
        && c.state.load(Ordering::Acquire) != STATE_IDLE
    {
        return 0;
    }
    let busy = matches!(c.state.load(Ordering::Acquire), STATE_STARTING | STATE_ACTIVE | STATE_STOPPING);
    if busy && c.pid.load(Ordering::Acquire) == getpid() {
        return 1;
    }
    // A stop request left unanswered by an earlier session (it had already stopped by
    // itself) must not stop this one.
    c.ack.store(c.request.load(Ordering::Acquire), Ordering::Release);
    // State before session: a reader that sees this session's nonce never pairs it with
    // the previous session's final state (it took a STOPPED left by the last detach for
    // this attach having started and stopped).
    publish_locked(&lock, STATE_STARTING, "");
    c.session.store(nonce, Ordering::Release);
    drop(lock);
    let boxed = Box::into_raw(Box::new(args)) as *mut c_void;
    if spawn_detached(attach_main, boxed).is_err() {
        // SAFETY: the thread was not created, so the box is still ours.
        drop(unsafe { Box::from_raw(boxed as *mut Args) });
        publish(STATE_FAILED, "cannot start the attach thread in the target");
        return 3;
    }
    0
}

/// Stops an attach session from inside the process: hands the request to the supervisor
/// thread. Returns 0 if a session was active, 1 if not.
pub fn detach_entry(nonce: u64) -> c_int {
    let c = control();
    if c.state.load(Ordering::Acquire) != STATE_ACTIVE || c.pid.load(Ordering::Acquire) != getpid() {
        return 1;
    }
    c.request.store(nonce.max(1), Ordering::Release);
    0
}

/// `--follow-fork` after `memray attach`: called (through os.register_at_fork, once
/// Python is usable again) in a child that continues tracking into `output` (the
/// attaching side's name for its capture). The child's copy of the control block still
/// describes the parent's session and no thread of ours runs here: claim the block for
/// this process and start a supervisor, so `memray detach CHILD` (and `detach
/// --children`) stop it. Returns 0 if adopted, 1 if there was nothing to adopt.
pub fn adopt_fork_child(output: &str) -> c_int {
    let c = control();
    if !hooks::ACTIVE.load(Ordering::Acquire)
        || c.state.load(Ordering::Acquire) != STATE_ACTIVE
        || c.pid.load(Ordering::Acquire) == getpid()
    {
        return 1;
    }
    CONTROL_LOCK.reset_in_fork_child();
    // A request the parent was being sent is the parent's.
    c.ack.store(c.request.load(Ordering::Acquire), Ordering::Release);
    publish(STATE_ACTIVE, output);
    let nonce = c.session.load(Ordering::Acquire);
    if spawn_detached(adopted_main, nonce as usize as *mut c_void).is_err() {
        publish(STATE_FAILED, "cannot start the attach thread in the forked child");
        return 1;
    }
    0
}

extern "C" fn adopted_main(arg: *mut c_void) -> *mut c_void {
    thread_state::set_guard_permanently();
    supervise(arg as usize as u64, inherited_end());
    std::ptr::null_mut()
}

fn spawn_detached(f: extern "C" fn(*mut c_void) -> *mut c_void, arg: *mut c_void) -> Result<(), i32> {
    // SAFETY: standard pthread attribute set-up on a local attr object, destroyed after use;
    // `f` has the signature pthread expects and owns `arg` from here on.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        libc::pthread_attr_init(&mut attr);
        libc::pthread_attr_setdetachstate(&mut attr, libc::PTHREAD_CREATE_DETACHED);
        let mut thread: libc::pthread_t = 0;
        let rc = libc::pthread_create(&mut thread, &attr, f, arg);
        libc::pthread_attr_destroy(&mut attr);
        if rc != 0 {
            return Err(rc);
        }
    }
    Ok(())
}

extern "C" fn attach_main(arg: *mut c_void) -> *mut c_void {
    // This thread's own work (and the bootstrap's Python allocations) is not the program's.
    thread_state::set_guard_permanently();
    // SAFETY: attach_entry passed ownership of a Box<Args>.
    let mut args = unsafe { Box::from_raw(arg as *mut Args) };
    let nonce = args.nonce();
    if args.get("handoff") == Some("1") {
        // The attaching side opens the capture (or the live view's socket) and hands it
        // over: the file then belongs to its user, wherever it is, even when this process
        // cannot see that file system at all (a container).
        let timeout = args.get("handoff_timeout").and_then(|v| v.parse::<f64>().ok()).filter(|t| *t > 0.0);
        let timeout = timeout.and_then(|t| Duration::try_from_secs_f64(t).ok()).unwrap_or(Duration::from_secs(10));
        let c = control();
        let detach_requested = || {
            let r = c.request.load(Ordering::Acquire);
            r != 0 && r != c.ack.load(Ordering::Acquire)
        };
        match crate::handoff::receive(&c.handoff, timeout, detach_requested) {
            Ok(fds) => {
                let list: Vec<String> = fds.iter().map(|fd| fd.to_string()).collect();
                args.text.push_str(&format!("\x1efds\x1f{}", list.join(",")));
            }
            Err(crate::handoff::Received::Cancelled) => {
                // The attacher died before handing the file over, and a detach came.
                publish(STATE_STOPPED, "");
                c.ack.store(c.request.load(Ordering::Acquire), Ordering::Release);
                return std::ptr::null_mut();
            }
            Err(crate::handoff::Received::TimedOut) => {
                publish(STATE_FAILED, "memray attach did not hand over the capture file in time (was it killed?)");
                return std::ptr::null_mut();
            }
            Err(crate::handoff::Received::Failed(e)) => {
                publish(STATE_FAILED, &e);
                return std::ptr::null_mut();
            }
        }
    }
    // Recorded before tracking starts: a fork child adopting the session from the first
    // moment must not find the end of an earlier session there.
    let end = session_end(args.duration());
    match run_python("start", &args.text) {
        Ok(path) => publish(STATE_ACTIVE, &path),
        Err(e) => {
            publish(STATE_FAILED, &e);
            return std::ptr::null_mut();
        }
    }
    supervise(nonce, end);
    std::ptr::null_mut()
}

/// Waits for the end of the session: `end` reached (`--duration` elapsed), a detach
/// request, or tracking stopped by someone else (the program exiting, a fork without
/// follow_fork...).
fn supervise(nonce: u64, end: Option<(Instant, Duration)>) {
    let c = control();
    let deadline = end.map(|(at, _)| at);
    let duration = end.map(|(_, d)| d);
    let active_path = message_text();
    let stopped = |path: &str| {
        if crate::tracker::COMPRESSION_LEFT.swap(false, Ordering::AcqRel) {
            publish(STATE_STOPPED, &format!("{path}{COMPRESSION_LEFT}"))
        } else {
            publish(STATE_STOPPED, path)
        }
    };
    let path = active_path.as_str();
    loop {
        std::thread::sleep(Duration::from_millis(5));
        if c.session.load(Ordering::Acquire) != nonce {
            return;
        }
        let request = c.request.load(Ordering::Acquire);
        if request != 0 && request != c.ack.load(Ordering::Acquire) {
            c.state.store(STATE_STOPPING, Ordering::Release);
            match run_python("stop", "") {
                Ok(_) => stopped(path),
                Err(e) => publish(STATE_FAILED, &e),
            }
            c.ack.store(request, Ordering::Release);
            return;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            c.state.store(STATE_STOPPING, Ordering::Release);
            if let Some(d) = duration {
                // Memray's line, on the target's stderr: whoever watches the service's log
                // sees the session end there.
                crate::log::write_line(format_args!("memray: Deactivating tracking: {} seconds have elapsed", seconds_text(d)));
            }
            match run_python("stop", "") {
                Ok(_) => stopped(path),
                Err(e) => publish(STATE_FAILED, &e),
            }
            return;
        }
        if !hooks::ACTIVE.load(Ordering::Acquire) {
            // Stopped from elsewhere (at exit, in a fork child, after a write error).
            // Let the bootstrap forget its session; if the interpreter is going away that
            // fails, which is fine.
            let _ = run_python("stop", "");
            stopped(path);
            return;
        }
    }
}

/// `2` for whole seconds (what `--duration 2` reads back as), `0.5` otherwise.
fn seconds_text(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        d.as_secs().to_string()
    } else {
        d.as_secs_f64().to_string()
    }
}

fn message_text() -> String {
    let c = control();
    // Copied out under the lock, decoded after it: nothing allocates while the lock is held
    // (an attach entry run at a malloc safe point of this thread would wait for it forever).
    let copy: [u8; MESSAGE_LEN] = {
        let _l = CONTROL_LOCK.lock();
        // SAFETY: only writers holding CONTROL_LOCK change the buffer, and we hold it.
        unsafe { *c.message.get() }
    };
    let end = copy.iter().position(|&b| b == 0).unwrap_or(copy.len());
    String::from_utf8_lossy(&copy[..end]).into_owned()
}

// ---- Python --------------------------------------------------------------------------

type PyObject = c_void;

/// The C API functions the bootstrap needs, found with dlsym (no link-time libpython).
struct Api {
    is_initialized: unsafe extern "C" fn() -> c_int,
    is_finalizing: Option<unsafe extern "C" fn() -> c_int>,
    gil_ensure: unsafe extern "C" fn() -> c_int,
    gil_release: unsafe extern "C" fn(c_int),
    dict_new: unsafe extern "C" fn() -> *mut PyObject,
    dict_set: unsafe extern "C" fn(*mut PyObject, *const c_char, *mut PyObject) -> c_int,
    dict_get: unsafe extern "C" fn(*mut PyObject, *const c_char) -> *mut PyObject,
    builtins: unsafe extern "C" fn() -> *mut PyObject,
    unicode_from: unsafe extern "C" fn(*const c_char, isize) -> *mut PyObject,
    unicode_utf8: unsafe extern "C" fn(*mut PyObject) -> *const c_char,
    run_string: unsafe extern "C" fn(*const c_char, c_int, *mut PyObject, *mut PyObject, *mut c_void) -> *mut PyObject,
    decref: unsafe extern "C" fn(*mut PyObject),
    err_clear: unsafe extern "C" fn(),
}

fn sym(name: &CStr) -> *mut c_void {
    // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name.
    unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) }
}

macro_rules! api_fn {
    ($name:expr, $ty:ty) => {{
        let p = sym($name);
        if p.is_null() {
            return Err(format!("CPython function {} not found", $name.to_string_lossy()));
        }
        // SAFETY: the symbol is the CPython C-API function of that name, whose C signature
        // is `$ty` (the type of the field this value is stored in).
        unsafe { std::mem::transmute::<*mut c_void, $ty>(p) }
    }};
}

impl Api {
    fn resolve() -> Result<Api, String> {
        let fin = [c"Py_IsFinalizing", c"_Py_IsFinalizing"].iter().map(|n| sym(n)).find(|p| !p.is_null());
        Ok(Api {
            is_initialized: api_fn!(c"Py_IsInitialized", unsafe extern "C" fn() -> c_int),
            // SAFETY: `int Py_IsFinalizing(void)` (3.13) / `int _Py_IsFinalizing(void)`.
            is_finalizing: fin.map(|p| unsafe { std::mem::transmute::<*mut c_void, unsafe extern "C" fn() -> c_int>(p) }),
            gil_ensure: api_fn!(c"PyGILState_Ensure", unsafe extern "C" fn() -> c_int),
            gil_release: api_fn!(c"PyGILState_Release", unsafe extern "C" fn(c_int)),
            dict_new: api_fn!(c"PyDict_New", unsafe extern "C" fn() -> *mut PyObject),
            dict_set: api_fn!(c"PyDict_SetItemString", unsafe extern "C" fn(*mut PyObject, *const c_char, *mut PyObject) -> c_int),
            dict_get: api_fn!(c"PyDict_GetItemString", unsafe extern "C" fn(*mut PyObject, *const c_char) -> *mut PyObject),
            builtins: api_fn!(c"PyEval_GetBuiltins", unsafe extern "C" fn() -> *mut PyObject),
            unicode_from: api_fn!(c"PyUnicode_FromStringAndSize", unsafe extern "C" fn(*const c_char, isize) -> *mut PyObject),
            unicode_utf8: api_fn!(c"PyUnicode_AsUTF8", unsafe extern "C" fn(*mut PyObject) -> *const c_char),
            run_string: api_fn!(
                c"PyRun_StringFlags",
                unsafe extern "C" fn(*const c_char, c_int, *mut PyObject, *mut PyObject, *mut c_void) -> *mut PyObject
            ),
            decref: api_fn!(c"Py_DecRef", unsafe extern "C" fn(*mut PyObject)),
            err_clear: api_fn!(c"PyErr_Clear", unsafe extern "C" fn()),
        })
    }
}

/// Runs the bootstrap's `action` ("start" or "stop") with the GIL. Ok(text) or Err(message).
fn run_python(action: &str, args: &str) -> Result<String, String> {
    let api = Api::resolve()?;
    // SAFETY: these C-API calls are valid without the GIL.
    unsafe {
        if (api.is_initialized)() == 0 {
            return Err("the Python interpreter is not initialized".into());
        }
        if api.is_finalizing.is_some_and(|f| f() != 0) {
            return Err("the Python interpreter is shutting down".into());
        }
    }
    // SAFETY: PyGILState_Ensure/Release bracket the calls that need the GIL; the thread
    // has no thread state of its own before, so Ensure creates one and Release frees it.
    unsafe {
        let gil = (api.gil_ensure)();
        let result = run_with_gil(&api, action, args);
        (api.gil_release)(gil);
        result
    }
}

const BOOTSTRAP_WRAPPER: &CStr = c"try:
    exec(compile(_MEMRAY_CODE, '<memray attach>', 'exec'), globals())
    _MEMRAY_RESULT = 'ok:' + str(_memray_main(_MEMRAY_ACTION, _MEMRAY_ARGS, _MEMRAY_SRC, _MEMRAY_MODULE))
except OSError as e:
    _MEMRAY_RESULT = 'error:cannot write %s: %s' % (e.filename, e.strerror) if e.filename else 'error:%s' % (e,)
except RuntimeError as e:
    _MEMRAY_RESULT = 'error:%s' % (e,)
except BaseException as e:
    _MEMRAY_RESULT = 'error:%s: %s' % (type(e).__name__, e)
";

/// Runs in the bootstrap's fresh namespace: loads (once) the tracking module and starts
/// or stops the attach session.
const BOOTSTRAP_MAIN: &str = r#"
import sys

class _NoThreading(object):
    """Stands in for `threading` in a program that never imported it: importing it here,
    off the main thread, would make threading take this thread for the main one (CPython
    gh-81597) and complain at exit. Such a program has no threading.Thread to name."""
    _profile_hook = None
    def enumerate(self):
        return []
    def setprofile(self, func):
        pass
    def get_ident(self):
        import _thread
        return _thread.get_ident()

def _memray_load(src, module_src):
    import types
    m = types.ModuleType('_memray_attach')
    g = m.__dict__
    if 'threading' not in sys.modules:
        import builtins
        real_import = builtins.__import__
        stub = _NoThreading()
        def guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
            if name == 'threading' and 'threading' not in sys.modules:
                return stub
            return real_import(name, globals, locals, fromlist, level)
        b = dict(builtins.__dict__)
        b['__import__'] = guarded_import
        g['__builtins__'] = b
    exec(compile(src, '<memray>', 'exec'), g)
    exec(compile(module_src, '<memray attach>', 'exec'), g)
    g['_attach_src'] = src
    sys.modules['_memray_attach'] = m
    return m

def _memray_main(action, args_text, src, module_src):
    opts = dict(p.split('\x1f', 1) for p in args_text.split('\x1e') if '\x1f' in p)
    m = sys.modules.get('_memray_attach')
    if action == 'start':
        if m is None or getattr(m, '_attach_src', None) != src:
            if m is not None and getattr(m, '_attach_session', None) is not None:
                raise RuntimeError('an earlier memray attach session is still active')
            m = _memray_load(src, module_src)
        return m._attach_start(opts)
    if m is None:
        return 'not tracking'
    return m._attach_stop()
"#;

/// Added to the `_memray_attach` module, next to _tracking.py's Session.
const BOOTSTRAP_MODULE: &str = r#"
_attach_session = None
_attach_pid = None
_attach_registered = False
_attach_fork_registered = False
_attach_output = None
_attach_lib = None

def _attach_start(opts):
    global _attach_session, _attach_lib, _lib, payload_path, threading, _payload_mapped
    if _attach_session is not None and _attach_pid != os.getpid():
        # A fork child's copy of its parent's session: the payload stopped tracking in
        # the child at the fork (or follows it into a capture of the child's own, which
        # the CLI refuses to attach over), so this process is free to attach.
        _attach_session = None
    if 'threading' in sys.modules and not hasattr(threading, 'Thread'):
        threading = sys.modules['threading']
    lib_path = opts['payload']
    if _attach_lib != lib_path:
        _lib = None
        _attach_lib = lib_path
    payload_path = lambda: lib_path
    _payload_mapped = True
    if _attach_session is not None:
        raise RuntimeError('this process is already being tracked (run memray detach first)')
    output = opts['output']
    live_port = opts.get('live_port')
    fds = [int(f) for f in (opts.get('fds') or '').split(',') if f]
    if fds:
        # Handed over by memray attach: the capture file it created and its directory, or
        # the live view's socket.
        return _attach_start_handed(opts, output, fds)
    if live_port:
        # Live mode: stream to the `memray attach` viewer, which connects to this port.
        address = opts.get('live_address') or '127.0.0.1'
        fd = open_socket_destination(int(live_port), address, timeout=float(opts.get('live_timeout') or 30))
        output = 'live:%s:%s' % (address, live_port)
        session = Session(fd, None, False, False,
                          native_traces=opts.get('native') == '1',
                          trace_python_allocators=opts.get('trace_python_allocators') == '1',
                          sampling_interval=int(opts.get('sampling_interval') or 0),
                          memory_interval_ms=int(opts.get('memory_interval_ms') or 10))
    else:
        fd = open_file_destination(output, opts.get('force') == '1')
        session = Session(
            fd, output, True, opts.get('compress') == '1',
            native_traces=opts.get('native') == '1',
            trace_python_allocators=opts.get('trace_python_allocators') == '1',
            follow_fork=opts.get('follow_fork') == '1',
            aggregated=opts.get('aggregate') == '1',
            sampling_interval=int(opts.get('sampling_interval') or 0),
            memory_interval_ms=int(opts.get('memory_interval_ms') or 10),
        )
    try:
        session.start()
    except BaseException:
        os.close(fd)
        if not live_port:
            try:
                os.unlink(output)
            except OSError:
                pass
        raise
    return _attach_began(session, output)

def _attach_start_handed(opts, output, fds):
    options = dict(
        native_traces=opts.get('native') == '1',
        trace_python_allocators=opts.get('trace_python_allocators') == '1',
        sampling_interval=int(opts.get('sampling_interval') or 0),
        memory_interval_ms=int(opts.get('memory_interval_ms') or 10),
    )
    try:
        if opts.get('live') == '1':
            session = Session(fds[0], None, False, False, **options)
            output = 'live'
        else:
            if len(fds) != 2:
                raise RuntimeError('memray attach handed over %d descriptors, not 2' % len(fds))
            # The file's name in the directory handed over: the path is the attaching
            # side's, which this process may not see.
            session = Session(
                fds[0], os.path.basename(output), True, opts.get('compress') == '1',
                follow_fork=opts.get('follow_fork') == '1',
                aggregated=opts.get('aggregate') == '1',
                dir_fd=fds[1], **options
            )
        session.start()
    except BaseException:
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass
        raise
    return _attach_began(session, output)

def _attach_began(session, output):
    global _attach_session, _attach_pid, _attach_registered, _attach_output
    # Every thread of an attached process was running before: name them all now.
    try:
        session.name_existing_threads()
    except Exception:
        pass
    _attach_session = session
    _attach_pid = os.getpid()
    _attach_output = output
    _attach_registered_at_fork()
    if not _attach_registered:
        import atexit
        atexit.register(_attach_stop)
        _attach_registered = True
    return output

def _attach_after_fork():
    # --follow-fork: this child tracks into <output>.<pid> (the payload names it so);
    # make it a session of its own that memray detach can stop.
    global _attach_pid, _attach_output
    session = _attach_session
    if session is None or not getattr(session, 'follow_fork', False) or _attach_output is None:
        return
    base = _attach_output
    suffix = '.%d' % _attach_pid
    if base.endswith(suffix):
        base = base[:-len(suffix)]
    _attach_output = '%s.%d' % (base, os.getpid())
    _attach_pid = os.getpid()
    try:
        lib = _load()
        lib.memray_attach_adopt_fork_child.argtypes = [ctypes.c_char_p]
        lib.memray_attach_adopt_fork_child(_attach_output.encode('utf-8', 'surrogateescape'))
    except Exception:
        pass

def _attach_registered_at_fork():
    global _attach_fork_registered
    if not _attach_fork_registered and hasattr(os, 'register_at_fork'):
        os.register_at_fork(after_in_child=_attach_after_fork)
        _attach_fork_registered = True

def _attach_stop():
    global _attach_session
    session, _attach_session = _attach_session, None
    if session is None:
        return 'not tracking'
    session.stop()
    return 'stopped'
"#;

/// # Safety
/// The GIL is held by the calling thread.
unsafe fn run_with_gil(api: &Api, action: &str, args: &str) -> Result<String, String> {
    // SAFETY: C-API calls with the GIL held (the caller's contract), on objects we own or
    // borrow from a dict we own; every new reference is released once.
    unsafe {
        let globals = (api.dict_new)();
        if globals.is_null() {
            (api.err_clear)();
            return Err("out of memory in the target".into());
        }
        let mut ok = (api.dict_set)(globals, c"__builtins__".as_ptr(), (api.builtins)()) == 0;
        for (key, value) in [
            (c"__name__", "_memray_attach_bootstrap"),
            (c"_MEMRAY_CODE", BOOTSTRAP_MAIN),
            (c"_MEMRAY_ACTION", action),
            (c"_MEMRAY_ARGS", args),
            (c"_MEMRAY_SRC", TRACKING_SOURCE),
            (c"_MEMRAY_MODULE", BOOTSTRAP_MODULE),
        ] {
            let v = (api.unicode_from)(value.as_ptr() as *const c_char, value.len() as isize);
            if v.is_null() {
                ok = false;
                break;
            }
            ok &= (api.dict_set)(globals, key.as_ptr(), v) == 0;
            (api.decref)(v);
        }
        if !ok {
            (api.err_clear)();
            (api.decref)(globals);
            return Err("cannot prepare the bootstrap in the target".into());
        }
        const PY_FILE_INPUT: c_int = 257;
        let res = (api.run_string)(BOOTSTRAP_WRAPPER.as_ptr(), PY_FILE_INPUT, globals, globals, std::ptr::null_mut());
        if res.is_null() {
            (api.err_clear)();
            (api.decref)(globals);
            return Err("the bootstrap failed in the target".into());
        }
        (api.decref)(res);
        let text = (api.dict_get)(globals, c"_MEMRAY_RESULT".as_ptr());
        let out = if text.is_null() {
            None
        } else {
            let p = (api.unicode_utf8)(text);
            if p.is_null() {
                (api.err_clear)();
                None
            } else {
                Some(CStr::from_ptr(p).to_string_lossy().into_owned())
            }
        };
        (api.decref)(globals);
        match out {
            Some(s) => match s.split_once(':') {
                Some(("ok", rest)) => Ok(rest.to_string()),
                Some((_, rest)) => Err(rest.to_string()),
                None => Err(s),
            },
            None => Err("the bootstrap gave no result".into()),
        }
    }
}
