//! `track_object_lifetimes`: every Python object created while tracking, and its end, through
//! CPython's reference tracer (`PyRefTracer_SetTracer`, CPython 3.13.3 and later: earlier 3.13s
//! miss destructions on some paths).
//!
//! Creations are recorded with the creating thread's stack (OBJECT_RECORD, or SURVIVING_OBJECT
//! in an aggregated capture); the writer keeps the objects still alive. When tracking stops, the
//! survivors are held with a strong reference until Python has taken them
//! (`memray.Tracker.get_surviving_objects`): between the tracer's removal and that reference
//! no Python code runs (both happen in one call with the GIL held), so no survivor can die
//! unseen in between.

use std::ffi::{c_int, c_void};
use std::sync::Mutex;

use crate::hooks;

const CREATE: c_int = 0;
const DESTROY: c_int = 1;

type Tracer = unsafe extern "C" fn(*mut c_void, c_int, *mut c_void) -> c_int;
type SetTracer = unsafe extern "C" fn(Option<Tracer>, *mut c_void) -> c_int;
type GetTracer = unsafe extern "C" fn(*mut *mut c_void) -> Option<Tracer>;
type RefCount = unsafe extern "C" fn(*mut c_void);

struct Api {
    set_tracer: SetTracer,
    get_tracer: GetTracer,
    incref: RefCount,
    decref: RefCount,
}

fn api() -> Option<Api> {
    // SAFETY: dlsym with NUL-terminated names; non-null results are the interpreter's exported
    // functions with these C signatures (Include/cpython/object.h, Include/object.h).
    unsafe {
        let sym = |name: &std::ffi::CStr| libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr());
        let (set, get) = (sym(c"PyRefTracer_SetTracer"), sym(c"PyRefTracer_GetTracer"));
        let (incref, decref) = (sym(c"Py_IncRef"), sym(c"Py_DecRef"));
        if set.is_null() || get.is_null() || incref.is_null() || decref.is_null() {
            return None;
        }
        Some(Api {
            set_tracer: std::mem::transmute::<*mut c_void, SetTracer>(set),
            get_tracer: std::mem::transmute::<*mut c_void, GetTracer>(get),
            incref: std::mem::transmute::<*mut c_void, RefCount>(incref),
            decref: std::mem::transmute::<*mut c_void, RefCount>(decref),
        })
    }
}

/// The tracer (and its data) that was installed before ours, put back at stop.
struct Previous {
    tracer: Option<Tracer>,
    data: usize,
}

static PREVIOUS: Mutex<Option<Previous>> = Mutex::new(None);
/// Survivors of the last session, each holding one strong reference of ours.
static SURVIVORS: Mutex<Vec<usize>> = Mutex::new(Vec::new());

unsafe extern "C" fn tracer(obj: *mut c_void, event: c_int, _data: *mut c_void) -> c_int {
    match event {
        CREATE => hooks::record_object(obj, true),
        DESTROY => hooks::record_object(obj, false),
        _ => {}
    }
    0
}

/// Starts receiving object events. Called with the GIL held (the tracer is per runtime and
/// CPython reads it under the GIL).
pub fn install() -> Result<(), String> {
    let api = api().ok_or("this interpreter has no reference tracer (PyRefTracer_SetTracer, CPython 3.13.3+)")?;
    release_survivors(&api);
    let mut data: *mut c_void = std::ptr::null_mut();
    // SAFETY: GIL held (our caller's contract); `data` is a valid out-pointer.
    let tracer_before = unsafe { (api.get_tracer)(&mut data) };
    // SAFETY: GIL held; `tracer` is a valid function for the whole life of the process (this
    // library is never unloaded).
    if unsafe { (api.set_tracer)(Some(tracer), std::ptr::null_mut()) } != 0 {
        return Err("PyRefTracer_SetTracer failed".into());
    }
    *PREVIOUS.lock().unwrap_or_else(|e| e.into_inner()) = Some(Previous { tracer: tracer_before, data: data as usize });
    Ok(())
}

/// Stops the events and takes a strong reference to each object in `alive` (the writer's
/// survivors). Called with the GIL held, right after recording stopped.
pub fn uninstall(alive: impl Iterator<Item = usize>) {
    let Some(previous) = PREVIOUS.lock().unwrap_or_else(|e| e.into_inner()).take() else { return };
    let Some(api) = api() else { return };
    // SAFETY: GIL held; the previous tracer and data are what CPython handed us.
    unsafe { (api.set_tracer)(previous.tracer, previous.data as *mut c_void) };
    let mut survivors = SURVIVORS.lock().unwrap_or_else(|e| e.into_inner());
    for obj in alive {
        // SAFETY: `obj` was created while tracking and its destruction was never reported,
        // so it is alive; the GIL is held.
        unsafe { (api.incref)(obj as *mut c_void) };
        survivors.push(obj);
    }
}

/// Copies up to `out.len()` survivors' addresses into `out`; returns how many there are.
pub fn survivors(out: &mut [usize]) -> usize {
    let survivors = SURVIVORS.lock().unwrap_or_else(|e| e.into_inner());
    for (slot, obj) in out.iter_mut().zip(survivors.iter()) {
        *slot = *obj;
    }
    survivors.len()
}

/// Drops our references to the survivors. Called with the GIL held, once Python holds
/// its own (or does not want them).
pub fn release() {
    if let Some(api) = api() {
        release_survivors(&api);
    }
}

fn release_survivors(api: &Api) {
    let held = std::mem::take(&mut *SURVIVORS.lock().unwrap_or_else(|e| e.into_inner()));
    for obj in held {
        // SAFETY: one reference of ours per entry, taken in `uninstall`; GIL held.
        unsafe { (api.decref)(obj as *mut c_void) };
    }
}
