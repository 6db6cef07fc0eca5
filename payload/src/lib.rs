//! The payload: the library that lives inside the tracked CPython process.
//!
//! It has no link-time dependency on libpython: everything CPython is found at run time
//! (`python::Interpreter::resolve`), so one build serves every CPython 3.8 to 3.15 and
//! every way in (`memray run`, `memray.Tracker`, attach).
//!
//! The C ABI below is the whole interface; the Python side calls it through ctypes.PyDLL
//! (so the GIL is held during the calls).

mod aggregate;
mod arch;
mod attach;
mod capture_dir;
mod compress;
mod dlopen;
mod got;
mod handoff;
mod hooks;
mod lifetimes;
mod lock;
mod log;
mod native;
mod pymem;
pub mod python;
mod rss;
mod sampled_blocks;
mod sampled_mappings;
mod sampling;
mod sink;
mod stack;
mod thread_state;
mod tracker;
mod writer;

use std::ffi::{c_char, CStr};

/// Copies `msg` into the caller's buffer, NUL-terminated and truncated to fit.
fn write_error(msg: &str, buf: *mut c_char, len: usize) {
    if buf.is_null() || len == 0 {
        return;
    }
    let n = msg.len().min(len - 1);
    // SAFETY: the caller passes a writable buffer of `len` bytes; we write n+1 <= len.
    unsafe {
        std::ptr::copy_nonoverlapping(msg.as_ptr(), buf as *mut u8, n);
        *buf.add(n) = 0;
    }
}

/// Starts a tracker. `config` is a NUL-terminated `key\x1fvalue\x1e...` text (see
/// tracker::Config). Returns 0 on success; otherwise 1 (already active) or 2 (any other
/// error) with a message in `err`.
///
/// # Safety
/// `config` is null or a NUL-terminated string; `err` is null or writable for `err_len`
/// bytes. Call with the GIL held.
#[no_mangle]
pub unsafe extern "C" fn memray_tracker_start(config: *const c_char, err: *mut c_char, err_len: usize) -> i32 {
    // Our own frees after the tracker is active (the configuration, dropped on return) are
    // not the program's. They usually bypass the hooks (our GOT is not patched), but in a
    // non-PIE interpreter that takes free's address, every object's `free` resolves to the
    // executable's canonical PLT entry, whose GOT slot we do patch.
    let _g = thread_state::GuardScope::enter();
    if config.is_null() {
        write_error("no configuration given", err, err_len);
        return 2;
    }
    // SAFETY: the caller passes a NUL-terminated string that outlives this call.
    let text = unsafe { CStr::from_ptr(config) }.to_string_lossy().into_owned();
    let result = tracker::Config::parse(&text).and_then(tracker::start);
    match result {
        Ok(()) => 0,
        Err(e @ tracker::StartError::AlreadyActive) => {
            write_error(&e.to_string(), err, err_len);
            1
        }
        Err(e) => {
            write_error(&e.to_string(), err, err_len);
            2
        }
    }
}

/// Stops the active tracker and finishes its capture. Returns 0, or 1 if none was active.
#[no_mangle]
pub extern "C" fn memray_tracker_stop() -> i32 {
    if tracker::stop() {
        0
    } else {
        1
    }
}

/// `Tracker.get_surviving_objects`: copies up to `cap` addresses of the objects that were
/// created during the last tracking session and were alive at its end into `out`; returns how
/// many there are. Each is held alive by a reference of ours until
/// `memray_release_surviving_objects`.
///
/// # Safety
/// `out` is null (with `cap` 0) or points to `cap` writable words. The GIL is held.
#[no_mangle]
pub unsafe extern "C" fn memray_surviving_objects(out: *mut usize, cap: usize) -> usize {
    if out.is_null() || cap == 0 {
        return lifetimes::survivors(&mut []);
    }
    // SAFETY: the caller's contract above.
    let out = unsafe { std::slice::from_raw_parts_mut(out, cap) };
    lifetimes::survivors(out)
}

/// Drops the references `memray_surviving_objects` describes. The GIL is held.
#[no_mangle]
pub extern "C" fn memray_release_surviving_objects() {
    let _g = thread_state::GuardScope::enter();
    lifetimes::release();
}

/// greenlet's trace callback: the calling thread switches from greenlet `origin` to
/// greenlet `target` (their `id()`s); `origin_dead` when `origin` has finished.
#[no_mangle]
pub extern "C" fn memray_greenlet_switch(origin: u64, target: u64, origin_dead: i32) {
    if !tracker::is_active() {
        return;
    }
    let _g = thread_state::GuardScope::enter();
    thread_state::switch_greenlet(origin, target, origin_dead != 0);
}

/// A new reference to the builtin that sys.monitoring should call on PY_RETURN, PY_YIELD
/// and PY_UNWIND, or null before CPython 3.12. The GIL is held.
#[no_mangle]
pub extern "C" fn memray_frame_exit_callback() -> *mut std::ffi::c_void {
    let _g = thread_state::GuardScope::enter();
    python::monitoring::exit_callback()
}

/// 1: sys.monitoring now reports every frame exit to the callback above (stack walks may
/// stop at an anchor); 0: it is about to stop doing so.
#[no_mangle]
pub extern "C" fn memray_watch_frame_exits(on: i32) {
    stack::set_exits_watched(on != 0);
}

/// Before 3.12 (1): threads whose stacks are deep get a profile function that reports
/// their frame exits; (0): every thread that has it loses it. Returns 1 when this
/// interpreter supports it (3.9-3.11). The GIL is held.
#[no_mangle]
pub extern "C" fn memray_profile_deep_threads(on: i32) -> i32 {
    let _g = thread_state::GuardScope::enter();
    if on != 0 && hooks::resolve_interpreter().is_err() {
        return 0;
    }
    python::profile_hook::set_enabled(on != 0) as i32
}

/// `memray.set_log_level`: the lowest severity (Python `logging` level) the payload's
/// messages on stderr may have to be printed.
#[no_mangle]
pub extern "C" fn memray_set_log_level(level: i32) {
    log::set_threshold(level);
}

/// 1 while a tracker is recording in this process.
#[no_mangle]
pub extern "C" fn memray_tracker_is_active() -> i32 {
    tracker::is_active() as i32
}

/// Names a thread in the capture. `ident` is its pthread_t (Python's threading.get_ident()).
///
/// # Safety
/// `name` is null or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn memray_set_thread_name(ident: u64, name: *const c_char) {
    if name.is_null() || !tracker::is_active() {
        return;
    }
    let _g = thread_state::GuardScope::enter();
    // SAFETY: the caller passes a NUL-terminated string valid for this call.
    let name = unsafe { CStr::from_ptr(name) }.to_bytes();
    // SAFETY: pthread_self has no preconditions.
    let me = unsafe { libc::pthread_self() } as u64;
    let caller_tid = (me == ident).then(thread_state::current_tid);
    if let Some(w) = hooks::WRITER.lock().as_mut() {
        w.set_thread_name(ident as usize, name, caller_tid);
    }
}

/// `memray attach`: called by the injector at a safe point with the CLI's request
/// (`key\x1fvalue` pairs joined by `\x1e`). Starts the attach thread and returns at once:
/// 0 started, 1 a session is already active, 2 bad arguments, 3 no thread. The outcome is
/// published in `memray_attach_control`.
///
/// # Safety
/// `args` is null or a NUL-terminated string that stays alive until this returns (the
/// injector's request in the target's memory, or the PEP 768 script's bytes).
#[no_mangle]
pub unsafe extern "C" fn memray_attach_entry(args: *const c_char) -> i32 {
    // SAFETY: the caller's contract above.
    let args = (!args.is_null()).then(|| unsafe { CStr::from_ptr(args) });
    attach::attach_entry(args)
}

/// `--follow-fork` after `memray attach`, in the forked child (from an
/// os.register_at_fork hook): makes the child's tracking a session `memray detach` can
/// stop. `output` is the child's capture as the attaching side names it.
///
/// # Safety
/// `output` is null or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn memray_attach_adopt_fork_child(output: *const c_char) -> i32 {
    if output.is_null() {
        return 1;
    }
    // SAFETY: the caller's contract above.
    let output = unsafe { CStr::from_ptr(output) }.to_string_lossy();
    attach::adopt_fork_child(&output)
}

/// Asks the attach session's thread to stop tracking (with the GIL) and restore the GOT.
/// Returns 0 if a session was active, 1 if not. `memray detach` does the same by writing
/// `nonce` into `memray_attach_control.request` from outside.
#[no_mangle]
pub extern "C" fn memray_detach_entry(nonce: u64) -> i32 {
    attach::detach_entry(nonce)
}
