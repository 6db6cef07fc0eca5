//! `dlopen` on behalf of the code that called it.
//!
//! glibc searches a bare library name (no `/`) along the *calling* object's DT_RPATH or
//! DT_RUNPATH. Once a GOT slot points at our hook, the caller glibc sees is the payload,
//! and a library found only through the real caller's run path would fail to load: the
//! tracked program would behave differently. So the slot points at [`entry`], a
//! trampoline that passes the caller's return address on; when the plain `dlopen` fails
//! for a bare name, [`open_for`] retries along the caller's search path, as glibc would
//! have searched it (`dlinfo(RTLD_DI_SERINFO)`: LD_LIBRARY_PATH, run paths, system
//! directories).

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};

use crate::thread_state::GuardScope;

pub type DlopenFn = unsafe extern "C" fn(*const c_char, c_int) -> *mut c_void;

/// What the GOT's `dlopen` slots point at: a trampoline (one per architecture, in
/// [`crate::arch`]) that calls `hooks::dlopen_hook(filename, flags, return address)`.
pub use crate::arch::dlopen_entry as entry;

/// glibc's `Dl_serpath` / `Dl_serinfo` (<dlfcn.h>); not in the libc crate.
#[repr(C)]
struct SerPath {
    name: *mut c_char,
    flags: c_uint,
}

#[repr(C)]
struct SerInfo {
    size: usize,
    count: c_uint,
    paths: [SerPath; 1],
}

const RTLD_DL_LINKMAP: c_int = 2;

/// `dlopen(filename, flags)` as if called from `caller` (a return address).
///
/// # Safety
/// `filename` is null or a NUL-terminated string; `dlopen` is the real `dlopen`.
pub unsafe fn open_for(dlopen: DlopenFn, filename: *const c_char, flags: c_int, caller: *const c_void) -> *mut c_void {
    // SAFETY: forwarded as given (the caller's contract).
    let handle = unsafe { dlopen(filename, flags) };
    if !handle.is_null() || filename.is_null() || caller.is_null() {
        return handle;
    }
    // SAFETY: non-null and NUL-terminated (the caller's contract).
    let name = unsafe { CStr::from_ptr(filename) }.to_bytes();
    if name.is_empty() || name.contains(&b'/') {
        return handle;
    }
    for dir in search_path(caller) {
        let mut path = dir;
        path.push(b'/');
        path.extend_from_slice(name);
        path.push(0);
        // SAFETY: `path` is NUL-terminated and outlives the call.
        let handle = unsafe { dlopen(path.as_ptr().cast(), flags) };
        if !handle.is_null() {
            return handle;
        }
    }
    // Not found anywhere: fail again the plain way, so dlerror() describes the name the
    // program asked for rather than our last attempt.
    // SAFETY: as for the first call.
    unsafe { dlopen(filename, flags) }
}

/// The directories glibc searches for the object containing `caller`, in order.
fn search_path(caller: *const c_void) -> Vec<Vec<u8>> {
    // Our own bookkeeping: not the tracked program's allocations.
    let _guard = GuardScope::enter();
    // SAFETY: Dl_info is plain pointers, for which all-zero is a valid value.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    let mut map: *mut c_void = std::ptr::null_mut();
    // SAFETY: dladdr1 only reads the loader's tables; `info` and `map` are ours to fill.
    if unsafe { libc::dladdr1(caller, &mut info, &mut map, RTLD_DL_LINKMAP) } == 0 || map.is_null() {
        return Vec::new();
    }
    // A link_map pointer is a valid handle for dlinfo in glibc.
    let mut size = SerInfo { size: 0, count: 0, paths: [SerPath { name: std::ptr::null_mut(), flags: 0 }] };
    // SAFETY: SERINFOSIZE fills `size` and `count` of a Dl_serinfo we own.
    if unsafe { libc::dlinfo(map, libc::RTLD_DI_SERINFOSIZE, (&mut size as *mut SerInfo).cast()) } != 0 {
        return Vec::new();
    }
    if size.size < std::mem::size_of::<SerInfo>() {
        return Vec::new();
    }
    // u64 words: aligned for the struct; glibc writes the strings after the array.
    let mut buf = vec![0u64; size.size.div_ceil(8)];
    let info = buf.as_mut_ptr().cast::<SerInfo>();
    // SAFETY: `buf` holds `size.size` bytes, aligned for SerInfo; dlinfo requires the
    // size and count from SERINFOSIZE in place before SERINFO fills the rest.
    let filled = unsafe {
        (*info).size = size.size;
        (*info).count = size.count;
        libc::dlinfo(map, libc::RTLD_DI_SERINFO, info.cast()) == 0
    };
    if !filled {
        return Vec::new();
    }
    // SAFETY: dlinfo wrote `count` entries (as SERINFOSIZE announced, within `buf`), each
    // naming a NUL-terminated string inside `buf`, which outlives these reads.
    unsafe {
        let count = (*info).count as usize;
        let paths = std::ptr::addr_of!((*info).paths).cast::<SerPath>();
        (0..count)
            .map(|i| (*paths.add(i)).name)
            .filter(|p| !p.is_null())
            .map(|p| CStr::from_ptr(p).to_bytes().to_vec())
            .filter(|d| !d.is_empty())
            .collect()
    }
}
