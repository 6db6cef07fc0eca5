//! The addresses of the sampled blocks still live, so that a sampled capture records
//! the frees of those blocks and of no other.
//!
//! Every free asks "was this block sampled?", and nearly always the answer is no: that
//! question is answered without a lock. The table is open addressing with linear probing
//! and no tombstones (removal shifts later entries back), in memory mapped here and never
//! handed back while the process lives, so a reader may probe a table that has since been
//! replaced. Changes happen only under the writer lock, which callers prove by lending the
//! `Writer`; removals and clears, the changes that move entries, are bracketed by a
//! sequence count that readers check (a seqlock), so a reader that raced one tries again.
//! Inserts fill empty slots only, which hides no entry from a reader; an insert that
//! needs a larger table publishes it before returning, and the block's free comes after
//! (the program hands the pointer on), so that free's reader sees the new table.

use std::sync::atomic::{fence, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

use crate::writer::Writer;

const EMPTY: usize = 0;
const FIRST_BITS: u32 = 12;

/// One table: a power-of-two array of slots (0 = empty), in its own anonymous mapping.
struct Table {
    bits: u32,
    len: usize,
    slots: *const AtomicUsize,
}

impl Table {
    /// A zeroed table of 2^bits slots, or None if the memory cannot be mapped.
    fn new(bits: u32) -> Option<&'static mut Table> {
        let slots = 1usize << bits;
        let bytes = std::mem::size_of::<Table>() + slots * std::mem::size_of::<AtomicUsize>();
        // SAFETY: an anonymous private mapping; no existing memory is affected. It goes
        // through the payload's own (never patched) PLT, so no hook sees it.
        let p = unsafe {
            libc::mmap(std::ptr::null_mut(), bytes, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0)
        };
        if p == libc::MAP_FAILED {
            return None;
        }
        let table = p as *mut Table;
        // SAFETY: the mapping is fresh, zeroed, writable and large enough for the header
        // and the slots after it (AtomicUsize is valid when zeroed); it is never unmapped,
        // so the reference may be 'static.
        unsafe {
            let slots_ptr = (table as *mut u8).add(std::mem::size_of::<Table>()) as *const AtomicUsize;
            table.write(Table { bits, len: 0, slots: slots_ptr });
            Some(&mut *table)
        }
    }

    #[inline(always)]
    fn slot(&self, i: usize) -> &AtomicUsize {
        // SAFETY: callers mask `i` with `mask()`, so it is within the 2^bits slots.
        unsafe { &*self.slots.add(i) }
    }

    #[inline(always)]
    fn mask(&self) -> usize {
        (1usize << self.bits) - 1
    }

    #[inline(always)]
    fn home(&self, address: usize) -> usize {
        ((address as u64 >> 3).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - self.bits)) as usize
    }

    /// The slot holding `address`, probing until an empty slot (or every slot was seen).
    #[inline(always)]
    fn find(&self, address: usize) -> Option<usize> {
        let mask = self.mask();
        let mut i = self.home(address);
        for _ in 0..=mask {
            match self.slot(i).load(Ordering::Relaxed) {
                EMPTY => return None,
                a if a == address => return Some(i),
                _ => i = (i + 1) & mask,
            }
        }
        None
    }

    fn insert(&mut self, address: usize) {
        let mask = self.mask();
        let mut i = self.home(address);
        loop {
            match self.slot(i).load(Ordering::Relaxed) {
                EMPTY => break,
                // Already there: its free was never seen (made by a path no hook covers).
                a if a == address => return,
                _ => i = (i + 1) & mask,
            }
        }
        self.slot(i).store(address, Ordering::Relaxed);
        self.len += 1;
    }

    /// Empties slot `i` and moves back the entries after it that could no longer be
    /// found past the gap (backward-shift deletion).
    fn remove_at(&mut self, mut i: usize) {
        let mask = self.mask();
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            let a = self.slot(j).load(Ordering::Relaxed);
            if a == EMPTY {
                break;
            }
            let home = self.home(a);
            // Does the gap at i lie cyclically within [home, j)? Then `a` moves into it.
            let gap_on_path = if i <= j { home <= i || home > j } else { home <= i && home > j };
            if gap_on_path {
                self.slot(i).store(a, Ordering::Relaxed);
                i = j;
            }
        }
        self.slot(i).store(EMPTY, Ordering::Relaxed);
        self.len -= 1;
    }
}

pub struct SampledBlocks {
    table: AtomicPtr<Table>,
    /// Odd while a removal or clear moves entries.
    seq: AtomicU64,
    /// Blocks that could not be remembered (no memory for a larger table): their frees
    /// go unrecorded, which the tracker's stop reports.
    pub dropped: AtomicUsize,
}

// SAFETY: the tables are shared memory accessed only through atomics; changes are
// serialised by the writer lock (see the module documentation).
unsafe impl Sync for SampledBlocks {}

pub static SAMPLED: SampledBlocks =
    SampledBlocks { table: AtomicPtr::new(std::ptr::null_mut()), seq: AtomicU64::new(0), dropped: AtomicUsize::new(0) };

impl SampledBlocks {
    fn current(&self) -> Option<&'static Table> {
        let p = self.table.load(Ordering::Acquire);
        // SAFETY: tables are never unmapped (see Table::new).
        (!p.is_null()).then(|| unsafe { &*p })
    }

    /// Changes are made only under the writer lock, which `_held` proves.
    fn current_mut(&self, _held: &mut Writer) -> Option<&'static mut Table> {
        let p = self.table.load(Ordering::Acquire);
        // SAFETY: tables are never unmapped, and only the writer lock's holder (the caller)
        // mutates one; readers use atomics only.
        (!p.is_null()).then(|| unsafe { &mut *p })
    }

    /// Whether `address` may be a sampled block (false is certain; true is confirmed by
    /// [`SampledBlocks::remove`]). No lock, no allocation.
    #[inline]
    pub fn may_contain(&self, address: usize) -> bool {
        for _ in 0..8 {
            let before = self.seq.load(Ordering::Acquire);
            if before & 1 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let found = self.current().is_some_and(|t| t.find(address).is_some());
            fence(Ordering::Acquire);
            if self.seq.load(Ordering::Relaxed) == before {
                return found;
            }
        }
        // Raced with removals each time: let the locked path decide.
        true
    }

    /// Remembers a sampled block (under the writer lock).
    pub fn insert(&self, held: &mut Writer, address: usize) {
        let table = match self.current_mut(held) {
            Some(t) if (t.len + 1) * 2 <= 1usize << t.bits => t,
            old => match self.grow(old) {
                Some(t) => t,
                None => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            },
        };
        table.insert(address);
    }

    /// A table twice the size of `old` (or the first one) holding its entries, published.
    #[cold]
    fn grow(&self, old: Option<&'static mut Table>) -> Option<&'static mut Table> {
        let bits = old.as_ref().map_or(FIRST_BITS, |t| t.bits + 1);
        let new = Table::new(bits)?;
        if let Some(old) = old {
            for i in 0..=old.mask() {
                let a = old.slot(i).load(Ordering::Relaxed);
                if a != EMPTY {
                    new.insert(a);
                }
            }
        }
        self.table.store(new as *mut Table, Ordering::Release);
        Some(new)
    }

    /// Forgets `address`; true if it was a sampled block (under the writer lock).
    pub fn remove(&self, held: &mut Writer, address: usize) -> bool {
        let Some(table) = self.current_mut(held) else { return false };
        let Some(i) = table.find(address) else { return false };
        self.seq.fetch_add(1, Ordering::Relaxed);
        fence(Ordering::Release);
        table.remove_at(i);
        self.seq.fetch_add(1, Ordering::Release);
        true
    }

    /// Forgets every block (a new capture starts; under the writer lock).
    pub fn clear(&self, held: &mut Writer) {
        self.dropped.store(0, Ordering::Relaxed);
        let Some(table) = self.current_mut(held) else { return };
        if table.len == 0 {
            return;
        }
        self.seq.fetch_add(1, Ordering::Relaxed);
        fence(Ordering::Release);
        for i in 0..=table.mask() {
            table.slot(i).store(EMPTY, Ordering::Relaxed);
        }
        table.len = 0;
        self.seq.fetch_add(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// The table against a HashSet, through inserts, removals and growth.
    #[test]
    fn table_matches_a_set() {
        let mut table = Table::new(4).unwrap();
        let mut model = HashSet::new();
        let mut x = 0x1234_5678u64;
        for step in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Few distinct addresses, so removals hit often and probe chains collide.
            let address = ((x % 64) as usize + 1) * 16;
            if table.len * 2 + 2 > 1 << table.bits {
                let bigger = Table::new(table.bits + 1).unwrap();
                for i in 0..=table.mask() {
                    let a = table.slot(i).load(Ordering::Relaxed);
                    if a != EMPTY {
                        bigger.insert(a);
                    }
                }
                table = bigger;
            }
            if x & 1 == 0 {
                table.insert(address);
                model.insert(address);
            } else if let Some(i) = table.find(address) {
                table.remove_at(i);
                assert!(model.remove(&address), "step {step}: removed {address:#x}, which was never inserted");
            } else {
                assert!(!model.contains(&address), "step {step}: {address:#x} not found");
            }
            assert_eq!(table.len, model.len());
        }
        for a in &model {
            assert!(table.find(*a).is_some());
        }
    }
}
