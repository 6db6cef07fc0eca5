//! Native stacks (`--native`): each allocation records the return addresses of the native
//! frames that led to it, deduplicated in the capture's frame tree, plus memory maps of
//! the loaded objects (at start and after each dlopen/dlclose) so a reader can symbolize
//! them offline, as Memray does.
//!
//! - `objects`: the loaded objects (dl_iterate_phdr), for the maps and the unwinder.
//! - `table`:   the published unwind table hooks read without locks.
//! - `walk`:    the unwind itself, inside the hook.
//! - `trie`:    (parent, ip) -> node id, owned by the writer.

pub mod objects;
pub mod table;
pub mod trie;
pub mod walk;

use std::ffi::c_void;

use self::trie::Prefix;
use self::walk::{FrameCache, StackBounds};

/// Deepest native stack recorded (Memray's buffer grows without bound; deeper stacks
/// keep their innermost frames).
pub const MAX_NATIVE_FRAMES: usize = 4096;

/// A thread's native-unwinding state, created on its first tracked allocation.
pub struct ThreadNative {
    cache: Box<FrameCache>,
    bounds: StackBounds,
    /// The last walked stack, innermost first (`len` entries).
    pub ips: Box<[u64]>,
    pub len: usize,
    /// The thread's previous path in the writer's trie (reset with each capture).
    pub prefix: Prefix,
}

impl ThreadNative {
    pub fn new() -> Box<ThreadNative> {
        Box::new(ThreadNative {
            cache: Box::new(FrameCache::new_in()),
            bounds: StackBounds::default(),
            ips: vec![0u64; MAX_NATIVE_FRAMES].into_boxed_slice(),
            len: 0,
            prefix: Prefix::with_capacity(256),
        })
    }

    /// Walks the calling thread's native stack into `ips`. Lock-free, no allocation.
    #[inline]
    pub fn capture(&mut self) -> &[u64] {
        let ThreadNative { cache, bounds, ips, .. } = self;
        self.len = table::with_table(|t| walk::walk(t, cache, bounds, ips)).unwrap_or(0);
        &self.ips[..self.len]
    }
}

/// Re-reads the loaded objects, publishes their unwind table and writes a memory map to
/// the capture. At start and after dlopen/dlclose; not from allocation hooks. Call with
/// the reentrancy guard set.
pub fn refresh() {
    let objects = objects::snapshot();
    table::publish(&objects, None);
    if let Some(writer) = crate::hooks::WRITER.lock().as_mut() {
        writer.write_memory_map(&objects);
    }
}

/// Before dlclose(handle): stop unwinding through that object, which may be unmapped.
pub fn before_unload(handle: *mut c_void) {
    let mut map: *mut libc::c_void = std::ptr::null_mut();
    // SAFETY: RTLD_DI_LINKMAP stores the handle's `struct link_map *` into `map`; dlinfo
    // fails (non-zero) on an invalid handle and then leaves it null.
    let ok = unsafe { libc::dlinfo(handle, libc::RTLD_DI_LINKMAP, &mut map as *mut _ as *mut c_void) } == 0;
    if !ok || map.is_null() {
        return;
    }
    // SAFETY: a link_map starts with `ElfW(Addr) l_addr`, the object's load bias.
    let bias = unsafe { *(map as *const u64) };
    table::exclude_before_unload(&objects::snapshot(), bias);
}

/// Tracking stopped: no more unwinding.
pub fn stop() {
    table::unpublish();
}
