//! The loaded objects of the process (executable, shared libraries), read with
//! `dl_iterate_phdr`: what the memory-map records describe and where the unwinder finds
//! each object's `.eh_frame_hdr`.
//!
//! Called at tracker start and after dlopen/dlclose, never from an allocation hook: the
//! walk takes the loader lock and allocates (with the reentrancy guard set).

use std::ffi::{c_int, c_void, CStr};

use libc::{dl_phdr_info, size_t, PT_LOAD};

const PT_GNU_EH_FRAME: u32 = 0x6474_e550;

/// One loaded object as the capture describes it.
#[derive(Clone, Debug, Default)]
pub struct LoadedObject {
    /// The path Memray writes: the executable resolved through /proc/self/exe.
    pub name: String,
    /// The load bias (`dlpi_addr`): runtime address = bias + link-time address.
    pub bias: u64,
    /// Every PT_LOAD as (link-time vaddr, memsz).
    pub segments: Vec<(u64, u64)>,
    /// PT_GNU_EH_FRAME: link-time address and size of `.eh_frame_hdr`.
    pub eh_frame_hdr: Option<(u64, u64)>,
    /// The vdso: unwindable, but never written to the memory map (nothing can resolve it).
    pub is_vdso: bool,
    /// This payload itself (its frames are the hook's and are not recorded).
    pub is_payload: bool,
}

impl LoadedObject {
    /// Runtime address range covered by the object's PT_LOAD segments.
    pub fn runtime_range(&self) -> (u64, u64) {
        let start = self.segments.iter().map(|s| s.0).min().unwrap_or(0);
        let end = self.segments.iter().map(|s| s.0.saturating_add(s.1)).max().unwrap_or(0);
        (self.bias.wrapping_add(start), self.bias.wrapping_add(end))
    }

    /// The PT_LOAD segment (vaddr, memsz) holding link-time address `vaddr`.
    pub fn segment_containing(&self, vaddr: u64) -> Option<(u64, u64)> {
        self.segments.iter().copied().find(|&(v, m)| v <= vaddr && vaddr < v.saturating_add(m))
    }
}

fn executable_path() -> String {
    std::fs::read_link("/proc/self/exe").map(|p| p.to_string_lossy().into_owned()).unwrap_or_default()
}

struct Walk {
    objects: Vec<LoadedObject>,
    executable: Option<String>,
    own_address: u64,
}

/// Every object loaded now, in load order.
pub fn snapshot() -> Vec<LoadedObject> {
    let mut walk =
        Walk { objects: Vec::with_capacity(64), executable: None, own_address: snapshot as fn() -> Vec<LoadedObject> as usize as u64 };
    // SAFETY: dl_iterate_phdr calls `visit` with a valid dl_phdr_info for each object while
    // holding the loader lock; `data` is our `walk`, alive for the whole call. The callback
    // neither loads nor unloads objects.
    unsafe { libc::dl_iterate_phdr(Some(visit), &mut walk as *mut Walk as *mut c_void) };
    walk.objects
}

unsafe extern "C" fn visit(info: *mut dl_phdr_info, _size: size_t, data: *mut c_void) -> c_int {
    // SAFETY: see `snapshot`: both pointers are valid for this callback.
    let (walk, info) = unsafe { (&mut *(data as *mut Walk), &*info) };
    let raw_name: &[u8] = if info.dlpi_name.is_null() {
        b""
    } else {
        // SAFETY: dlpi_name is a NUL-terminated string owned by the loader.
        unsafe { CStr::from_ptr(info.dlpi_name) }.to_bytes()
    };
    let phdrs = if info.dlpi_phdr.is_null() {
        &[][..]
    } else {
        // SAFETY: dlpi_phdr points at dlpi_phnum program headers of a loaded object.
        unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) }
    };
    let mut object = LoadedObject { bias: info.dlpi_addr, ..Default::default() };
    for ph in phdrs {
        match ph.p_type {
            PT_LOAD => object.segments.push((ph.p_vaddr, ph.p_memsz)),
            PT_GNU_EH_FRAME => object.eh_frame_hdr = Some((ph.p_vaddr, ph.p_memsz)),
            _ => {}
        }
    }
    object.name = if raw_name.is_empty() {
        walk.executable.get_or_insert_with(executable_path).clone()
    } else {
        String::from_utf8_lossy(raw_name).into_owned()
    };
    object.is_vdso = raw_name.starts_with(b"linux-vdso.so") || raw_name.starts_with(b"linux-gate.so");
    let (start, end) = object.runtime_range();
    object.is_payload = start <= walk.own_address && walk.own_address < end;
    walk.objects.push(object);
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_libc_and_this_binary_with_unwind_tables() {
        let objects = snapshot();
        let libc_obj = objects.iter().find(|o| o.name.contains("libc.so")).expect("libc is loaded");
        assert!(!libc_obj.segments.is_empty());
        assert!(libc_obj.eh_frame_hdr.is_some(), "libc has .eh_frame_hdr");
        let me = objects.iter().filter(|o| o.is_payload).count();
        assert_eq!(me, 1, "exactly one object holds this code");
        assert!(objects[0].name.starts_with('/'), "the executable is named by its path: {:?}", objects[0].name);
    }
}
