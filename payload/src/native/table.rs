//! The unwind table the hooks read: one framehop module per loaded object, pointing at the
//! object's own mapped `.eh_frame_hdr` and `.eh_frame`.
//!
//! It is rebuilt outside the allocation path (tracker start, after dlopen/dlclose) and
//! published through an atomic pointer, so a hook reads it with no lock. Old tables are
//! freed only once no hook can still be reading them: hooks count themselves in
//! `IN_FLIGHT` around their use, and a retired table is freed when a publisher sees that
//! count at zero after the swap (with SeqCst, any hook that starts later loads the new
//! pointer).

use std::ops::{Deref, Range};
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::sync::Mutex;

use framehop::{ExplicitModuleSectionInfo, Module, MustNotAllocateDuringUnwind, Unwinder as _};

use super::objects::LoadedObject;
use crate::arch;

pub type FrameUnwinder = arch::Unwinder<MappedBytes, MustNotAllocateDuringUnwind>;

/// A read-only byte range inside a loaded object's mapped segments (empty by default).
#[derive(Clone, Copy, Default)]
pub struct MappedBytes {
    start: usize,
    len: usize,
}

impl Deref for MappedBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: MappedBytes are made only by `section` below, from a PT_GNU_EH_FRAME or
        // PT_LOAD range of an object reported by dl_iterate_phdr, so the range is mapped
        // and readable. It stays mapped while any published table refers to it: dlclose
        // first publishes a table without the object and waits for hooks still reading the
        // old one (`exclude_before_unload`).
        unsafe { std::slice::from_raw_parts(self.start as *const u8, self.len) }
    }
}

pub struct Table {
    pub unwinder: FrameUnwinder,
    /// The payload's own code: frames there are the hook's, not the program's.
    pub own_code: Range<u64>,
}

static CURRENT: AtomicPtr<Table> = AtomicPtr::new(std::ptr::null_mut());
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
/// Serializes publishers and holds tables not yet freed. Never taken by allocation hooks.
/// Boxed: readers hold raw pointers to the tables, which must not move when the Vec grows.
#[allow(clippy::vec_box)]
static RETIRED: Mutex<Vec<Box<Table>>> = Mutex::new(Vec::new());

/// Runs `f` with the current table (None if none is published). Lock-free.
#[inline]
pub fn with_table<R>(f: impl FnOnce(&Table) -> R) -> Option<R> {
    IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
    let p = CURRENT.load(Ordering::SeqCst);
    let result = if p.is_null() {
        None
    } else {
        // SAFETY: a published table is freed only after it was replaced and IN_FLIGHT was
        // seen at zero; we counted ourselves in before loading the pointer.
        Some(f(unsafe { &*p }))
    };
    IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    result
}

/// Builds a table from `objects` (skipping the one loaded at `skip_bias`) and publishes it.
pub fn publish(objects: &[LoadedObject], skip_bias: Option<u64>) {
    let fresh = Box::into_raw(Box::new(build(objects, skip_bias)));
    let mut retired = RETIRED.lock().unwrap_or_else(|e| e.into_inner());
    let old = CURRENT.swap(fresh, Ordering::SeqCst);
    if !old.is_null() {
        // SAFETY: `old` came from Box::into_raw here and is owned by nobody else now.
        retired.push(unsafe { Box::from_raw(old) });
    }
    if IN_FLIGHT.load(Ordering::SeqCst) == 0 {
        retired.clear();
    }
}

/// The table of `objects`, without the one loaded at `skip_bias`.
pub fn build(objects: &[LoadedObject], skip_bias: Option<u64>) -> Table {
    let mut unwinder = FrameUnwinder::new();
    let mut own_code = 0..0;
    for o in objects {
        if Some(o.bias) == skip_bias {
            continue;
        }
        let (start, end) = o.runtime_range();
        if o.is_payload {
            own_code = start..end;
        }
        if let Some(module) = module_for(o, start..end) {
            unwinder.add_module(module);
        }
    }
    Table { unwinder, own_code }
}

/// Before an object is unloaded: publish a table without it and wait (briefly) until no
/// hook can still be reading its unwind data.
pub fn exclude_before_unload(objects: &[LoadedObject], bias: u64) {
    publish(objects, Some(bias));
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(50);
    while IN_FLIGHT.load(Ordering::SeqCst) != 0 && std::time::Instant::now() < deadline {
        std::thread::yield_now();
    }
    if IN_FLIGHT.load(Ordering::SeqCst) == 0 {
        RETIRED.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// Drops the table (tracker stopped). Freed later, like any retired table.
pub fn unpublish() {
    let mut retired = RETIRED.lock().unwrap_or_else(|e| e.into_inner());
    let old = CURRENT.swap(std::ptr::null_mut(), Ordering::SeqCst);
    if !old.is_null() {
        // SAFETY: as in `publish`.
        retired.push(unsafe { Box::from_raw(old) });
    }
    if IN_FLIGHT.load(Ordering::SeqCst) == 0 {
        retired.clear();
    }
}

/// The framehop module of one object: its `.eh_frame_hdr` (binary search table) and
/// `.eh_frame`, both read in place. Objects without PT_GNU_EH_FRAME get no module: the
/// unwinder falls back to frame pointers in them.
fn module_for(o: &LoadedObject, range: Range<u64>) -> Option<Module<MappedBytes>> {
    let (hdr_vaddr, hdr_len) = o.eh_frame_hdr?;
    if hdr_len < 8 || o.segment_containing(hdr_vaddr).is_none() {
        return None;
    }
    let hdr = section(o, hdr_vaddr, hdr_len)?;
    let eh_frame_vaddr = eh_frame_address(&hdr, hdr_vaddr)?;
    // .eh_frame's size is not in the program headers: take the rest of its segment (the
    // lookups go through the header's table, and entries carry their own lengths).
    let (seg_vaddr, seg_len) = o.segment_containing(eh_frame_vaddr)?;
    let eh_frame_len = seg_vaddr + seg_len - eh_frame_vaddr;
    let eh_frame = section(o, eh_frame_vaddr, eh_frame_len)?;
    let info = ExplicitModuleSectionInfo {
        base_svma: 0,
        eh_frame_hdr_svma: Some(hdr_vaddr..hdr_vaddr + hdr_len),
        eh_frame_hdr: Some(hdr),
        eh_frame_svma: Some(eh_frame_vaddr..eh_frame_vaddr + eh_frame_len),
        eh_frame: Some(eh_frame),
        ..Default::default()
    };
    Some(Module::new(String::new(), range, o.bias, info))
}

/// The mapped bytes of [vaddr, vaddr + len) of `o`, if a PT_LOAD segment covers them all.
fn section(o: &LoadedObject, vaddr: u64, len: u64) -> Option<MappedBytes> {
    let (seg_vaddr, seg_len) = o.segment_containing(vaddr)?;
    if vaddr.checked_add(len)? > seg_vaddr + seg_len {
        return None;
    }
    let start = o.bias.checked_add(vaddr)? as usize;
    Some(MappedBytes { start, len: len as usize })
}

/// Decodes `.eh_frame_hdr`'s eh_frame_ptr (version 1) into a link-time address.
fn eh_frame_address(hdr: &[u8], hdr_vaddr: u64) -> Option<u64> {
    if hdr.len() < 4 || hdr[0] != 1 {
        return None;
    }
    let enc = hdr[1];
    let field = &hdr[4..];
    let value: i128 = match enc & 0x0f {
        0x00 | 0x04 => u64::from_ne_bytes(field.get(..8)?.try_into().ok()?) as i128,
        0x03 => u32::from_ne_bytes(field.get(..4)?.try_into().ok()?) as i128,
        0x0b => i32::from_ne_bytes(field.get(..4)?.try_into().ok()?) as i128,
        0x0c => i64::from_ne_bytes(field.get(..8)?.try_into().ok()?) as i128,
        _ => return None,
    };
    let base: i128 = match enc & 0x70 {
        0x00 => 0,
        0x10 => hdr_vaddr as i128 + 4, // pc-relative: relative to the field itself
        0x30 => hdr_vaddr as i128,     // data-relative: relative to .eh_frame_hdr
        _ => return None,
    };
    u64::try_from(base + value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_pcrel_sdata4_eh_frame_pointer() {
        let mut hdr = vec![1u8, 0x1b, 0x03, 0x3b];
        hdr.extend_from_slice(&(-0x100i32).to_ne_bytes());
        assert_eq!(eh_frame_address(&hdr, 0x2000), Some(0x2000 + 4 - 0x100));
        hdr[0] = 2;
        assert_eq!(eh_frame_address(&hdr, 0x2000), None);
    }
}
