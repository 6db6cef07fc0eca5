//! Walks the calling thread's native stack from inside a hook: framehop's DWARF CFI
//! unwinder over the published table, with a per-thread rule cache; where an object has no
//! unwind info framehop follows frame pointers.
//!
//! Stack memory is read only inside the thread's own stack mapping, between the hook's
//! stack pointer and the mapping's end, found once per thread in /proc/self/maps with
//! plain syscalls (no allocation, no libc lock).

use framehop::{MustNotAllocateDuringUnwind, Unwinder as _};

use super::table::Table;
use crate::arch;

pub type FrameCache = arch::Cache<MustNotAllocateDuringUnwind>;

/// Readable stack range [low, high) of the calling thread, as last found.
#[derive(Clone, Copy, Default)]
pub struct StackBounds {
    low: u64,
    high: u64,
}

/// Fills `out` with the return addresses (minus one) of the calling thread's native frames,
/// innermost first, starting at the frame that called into the payload; the payload's
/// own frames are left out. Returns how many were written.
#[inline(never)]
pub fn walk(table: &Table, cache: &mut FrameCache, bounds: &mut StackBounds, out: &mut [u64]) -> usize {
    let (pc, sp, regs) = arch::current_regs();
    if !(bounds.low <= sp && sp < bounds.high) {
        // Kept as the whole mapping, so that deeper calls later on this thread do not
        // search /proc/self/maps again (the main thread's mapping may still grow: then
        // it is searched again).
        *bounds = find_stack(sp).unwrap_or(StackBounds { low: sp, high: sp });
    }
    // The stack below the current pointer is not ours to read.
    let (low, high) = (sp.max(bounds.low), bounds.high);
    let mut read_stack = |addr: u64| -> Result<u64, ()> {
        if addr < low || addr.checked_add(8).is_none_or(|end| end > high) {
            return Err(());
        }
        // SAFETY: [addr, addr + 8) lies inside this thread's stack mapping at or above the
        // current stack pointer, which is mapped and readable.
        Ok(unsafe { (addr as *const u64).read_unaligned() })
    };
    let mut frames = table.unwinder.iter_frames(pc, regs, cache, &mut read_stack);
    let mut n = 0;
    while n < out.len() {
        // Memray stores a return address minus one (inside the call instruction), so
        // that the line and inlined frames are those of the call, not of what follows.
        let address = match frames.next() {
            Ok(Some(frame)) => frame.address_for_lookup(),
            _ => break,
        };
        // The payload's frames: the hook's own on top, and intercepts the program called
        // through further down (dlopen's, when the loader allocates).
        if table.own_code.contains(&address) {
            continue;
        }
        out[n] = address;
        n += 1;
    }
    n
}

/// The mapping of /proc/self/maps that contains `sp`.
fn find_stack(sp: u64) -> Option<StackBounds> {
    // SAFETY: open/read/close on a path literal and a stack buffer; plain syscalls.
    let fd = unsafe { libc::open(c"/proc/self/maps".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    let mut parser = MapsParser::default();
    let mut buf = [0u8; 4096];
    let mut found = None;
    loop {
        // SAFETY: reads at most buf.len() bytes into our buffer.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
        if n <= 0 {
            break;
        }
        if let Some(range) = parser.feed(&buf[..n as usize], sp) {
            found = Some(range);
            break;
        }
    }
    // SAFETY: closes the descriptor opened above.
    unsafe { libc::close(fd) };
    found.map(|(low, high)| StackBounds { low, high })
}

/// Streaming parser of /proc/self/maps lines ("start-end perms ..."): finds the range
/// holding an address without buffering lines.
#[derive(Default)]
struct MapsParser {
    field: u8, // 0: start, 1: end, 2: rest of the line
    start: u64,
    end: u64,
}

impl MapsParser {
    fn feed(&mut self, bytes: &[u8], addr: u64) -> Option<(u64, u64)> {
        for &b in bytes {
            match (self.field, b) {
                (_, b'\n') => {
                    if self.field >= 1 && self.start <= addr && addr < self.end {
                        return Some((self.start, self.end));
                    }
                    *self = MapsParser::default();
                }
                (0, b'-') => self.field = 1,
                (1, b' ') => self.field = 2,
                (0, _) => self.start = (self.start << 4) | hex(b),
                (1, _) => self.end = (self.end << 4) | hex(b),
                _ => {}
            }
        }
        None
    }
}

fn hex(b: u8) -> u64 {
    match b {
        b'0'..=b'9' => (b - b'0') as u64,
        b'a'..=b'f' => (b - b'a' + 10) as u64,
        b'A'..=b'F' => (b - b'A' + 10) as u64,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_parser_finds_the_range_across_chunks() {
        let text = b"00400000-00452000 r-xp 00000000 08:02 173521 /usr/bin/dbus\n7ffd1000-7ffd3000 rw-p 00000000 00:00 0 [stack]\n";
        let mut p = MapsParser::default();
        let (a, b) = text.split_at(70);
        assert_eq!(p.feed(a, 0x7ffd1800), None);
        assert_eq!(p.feed(b, 0x7ffd1800), Some((0x7ffd1000, 0x7ffd3000)));
        let mut p = MapsParser::default();
        assert_eq!(p.feed(text, 0x10), None);
    }

    #[inline(never)]
    fn level2(table: &Table, out: &mut [u64]) -> usize {
        let mut cache = FrameCache::new_in();
        let mut bounds = StackBounds::default();
        std::hint::black_box(walk(table, &mut cache, &mut bounds, out))
    }

    #[inline(never)]
    fn level1(table: &Table, out: &mut [u64]) -> usize {
        std::hint::black_box(level2(table, out))
    }

    #[test]
    fn unwinds_through_known_callers_with_eh_frame() {
        let mut table = crate::native::table::build(&crate::native::objects::snapshot(), None);
        table.own_code = 0..0; // in a test binary "the payload" is all of it: keep everything
        let mut out = [0u64; 256];
        let n = level1(&table, &mut out);
        assert!(n >= 5, "only {n} frames");
        // out[0] is walk's own pc; then the return addresses into level2 and level1.
        let within = |addr: u64, f: usize| (f as u64) < addr && addr < f as u64 + 4096;
        assert!(within(out[1], level2 as fn(&Table, &mut [u64]) -> usize as usize), "{:#x?}", &out[..4]);
        assert!(within(out[2], level1 as fn(&Table, &mut [u64]) -> usize as usize), "{:#x?}", &out[..4]);
        // The walk stops inside the stack: every address is a plausible code address.
        assert!(out[..n].iter().all(|&a| a > 0x1000));
    }

    #[test]
    fn finds_this_threads_stack() {
        let local = 0u64;
        let addr = &local as *const u64 as u64;
        let b = find_stack(addr).expect("the stack is mapped");
        assert!(b.low <= addr && addr < b.high);
    }
}
