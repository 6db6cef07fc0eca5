//! A map from addresses to small copyable values, for the live-block tables a reading
//! pass updates on every ALLOCATION record.
//!
//! Open addressing with linear probing and backward-shift deletion: a key and its value
//! share one slot, so a hit usually touches one cache line (a general-purpose table
//! reads a control group and then the bucket: two). Keys are hashed by Fibonacci
//! multiplication, whose high bits mix in every bit of an aligned address.

/// The key marking an empty slot; a real entry with this key lives in `sentinel`.
const EMPTY: u64 = 0;
const MULTIPLIER: u64 = 0x9e37_79b9_7f4a_7c15;
const MIN_BITS: u32 = 6;

#[derive(Clone, Copy)]
struct Slot<V> {
    key: u64,
    value: V,
}

#[derive(Clone)]
pub struct AddressMap<V> {
    slots: Vec<Slot<V>>,
    /// `64 - log2(slots.len())`: the home slot is the hash's top bits.
    shift: u32,
    /// Entries in `slots` (not counting `sentinel`).
    len: usize,
    sentinel: Option<V>,
}

impl<V: Copy + Default> Default for AddressMap<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V: Copy + Default> AddressMap<V> {
    pub fn new() -> Self {
        AddressMap { slots: vec![Slot { key: EMPTY, value: V::default() }; 1 << MIN_BITS], shift: 64 - MIN_BITS, len: 0, sentinel: None }
    }

    #[inline(always)]
    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    #[inline(always)]
    fn home(&self, key: u64) -> usize {
        (key.wrapping_mul(MULTIPLIER) >> self.shift) as usize
    }

    /// The slot holding `key` (`Ok`), or the empty slot ending its probe (`Err`).
    /// `key` is not `EMPTY`.
    #[inline(always)]
    fn probe(&self, key: u64) -> Result<usize, usize> {
        let mask = self.mask();
        let mut i = self.home(key);
        loop {
            match self.slots[i].key {
                k if k == key => return Ok(i),
                EMPTY => return Err(i),
                _ => i = (i + 1) & mask,
            }
        }
    }

    /// Sets `key`'s value, returning the one it replaces.
    #[inline]
    pub fn insert(&mut self, key: u64, value: V) -> Option<V> {
        if key == EMPTY {
            return self.sentinel.replace(value);
        }
        match self.probe(key) {
            Ok(i) => Some(std::mem::replace(&mut self.slots[i].value, value)),
            Err(i) => {
                self.slots[i] = Slot { key, value };
                self.len += 1;
                // Grow past 5/8 full: linear probing stays short below that.
                if self.len * 8 > self.slots.len() * 5 {
                    self.grow();
                }
                None
            }
        }
    }

    /// Starts loading `key`'s home slot into the cache, for a lookup a little later
    /// (callers that know their keys ahead hide the cache miss this way).
    #[inline(always)]
    pub fn prefetch(&self, key: u64) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            let slot: *const Slot<V> = &self.slots[self.home(key)];
            // SAFETY: a prefetch is only a hint: it never faults and has no architectural
            // effect; the pointer is to a live element of `slots` anyway.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(slot.cast()) };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = key;
    }

    /// Removes `key`, returning its value.
    #[inline]
    pub fn remove(&mut self, key: u64) -> Option<V> {
        if key == EMPTY {
            return self.sentinel.take();
        }
        let i = self.probe(key).ok()?;
        let value = self.slots[i].value;
        self.len -= 1;
        self.close_gap(i);
        Some(value)
    }

    /// Empties slot `gap`, moving back later entries of its cluster whose probe
    /// sequence passes it, so no lookup ever needs to step over a hole.
    #[inline]
    fn close_gap(&mut self, mut gap: usize) {
        let mask = self.mask();
        let mut j = gap;
        loop {
            j = (j + 1) & mask;
            let slot = self.slots[j];
            if slot.key == EMPTY {
                break;
            }
            // The entry may fill the gap unless its home lies cyclically in (gap, j].
            let home = self.home(slot.key);
            if (j.wrapping_sub(home) & mask) >= (j.wrapping_sub(gap) & mask) {
                self.slots[gap] = slot;
                gap = j;
            }
        }
        self.slots[gap].key = EMPTY;
    }

    #[cold]
    fn grow(&mut self) {
        let bits = 64 - self.shift + 1;
        let old = std::mem::replace(&mut self.slots, vec![Slot { key: EMPTY, value: V::default() }; 1 << bits]);
        self.shift = 64 - bits;
        for slot in old.into_iter().filter(|s| s.key != EMPTY) {
            let (Ok(i) | Err(i)) = self.probe(slot.key);
            self.slots[i] = slot;
        }
    }
}

// Lookups and iteration: what the tests check the table with.
#[cfg(test)]
impl<V: Copy + Default> AddressMap<V> {
    fn len(&self) -> usize {
        self.len + self.sentinel.is_some() as usize
    }

    fn get(&self, key: u64) -> Option<&V> {
        if key == EMPTY {
            return self.sentinel.as_ref();
        }
        self.probe(key).ok().map(|i| &self.slots[i].value)
    }

    fn iter(&self) -> impl Iterator<Item = (u64, &V)> {
        let sentinel = self.sentinel.as_ref().map(|v| (EMPTY, v));
        self.slots.iter().filter(|s| s.key != EMPTY).map(|s| (s.key, &s.value)).chain(sentinel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A small deterministic generator (xorshift), so failures reproduce.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    fn check_same(map: &AddressMap<u32>, model: &HashMap<u64, u32>) {
        assert_eq!(map.len(), model.len());
        for (k, v) in model {
            assert_eq!(map.get(*k), Some(v), "key {k:#x}");
        }
        let mut seen: Vec<(u64, u32)> = map.iter().map(|(k, v)| (k, *v)).collect();
        seen.sort_unstable();
        let mut want: Vec<(u64, u32)> = model.iter().map(|(k, v)| (*k, *v)).collect();
        want.sort_unstable();
        assert_eq!(seen, want);
    }

    #[test]
    fn matches_a_hash_map_under_random_inserts_and_removes() {
        // Aligned addresses from a few narrow ranges (as malloc hands them out), plus 0
        // and u64::MAX, with many collisions and clusters wrapping around the table end.
        for seed in 1..20u64 {
            let mut rng = Rng(seed.wrapping_mul(0x2545_f491_4f6c_dd1d));
            let mut map = AddressMap::<u32>::new();
            let mut model = HashMap::new();
            let pool: u64 = 1 + rng.next() % 3000;
            for step in 0..20_000u32 {
                let r = rng.next();
                let key = match r % 17 {
                    0 => 0,
                    1 => u64::MAX,
                    k => (k << 40) + (r >> 20) % pool * 16,
                };
                if r & (1 << 8) != 0 {
                    assert_eq!(map.insert(key, step), model.insert(key, step), "insert {key:#x}");
                } else {
                    assert_eq!(map.remove(key), model.remove(&key), "remove {key:#x}");
                }
                if step % 997 == 0 {
                    check_same(&map, &model);
                }
            }
            check_same(&map, &model);
            for (k, _) in model.clone() {
                assert_eq!(map.remove(k), model.remove(&k));
            }
            assert_eq!(map.len(), 0);
            assert_eq!(map.iter().count(), 0);
        }
    }
}
