//! A hash map that iterates in the order of a libstdc++ `std::unordered_map`.
//!
//! Memray 1.20 builds the records its reporters see by walking two such maps (live
//! allocations by address, then records by location), so which record of a location
//! comes first (its address and allocator), the order of report rows, and where
//! `memray summary` stops adding records all follow libstdc++'s node list. This map
//! replays it exactly: a singly linked list of nodes, buckets pointing at the node
//! *before* their first node, new keys at the front of their bucket (or of the whole
//! list when the bucket is empty), erase unlinking in place, and the prime rehash
//! policy (13 buckets at the first insertion, growing when the element count would
//! exceed the bucket count, never shrinking). `stdorder` replays insert-only maps; this
//! one also erases, and is a working map (lookups, values) rather than a replay.

use crate::compat::stdorder::BUCKET_COUNTS;

const NIL: u32 = u32::MAX;
/// A bucket entry meaning "the list's before-begin sentinel".
const HEAD: u32 = u32::MAX - 1;

/// The hash libstdc++ would compute for a key (`std::hash` of an integer is itself).
pub trait StdHash: Copy + Eq {
    fn std_hash(&self) -> u64;
}

impl StdHash for u64 {
    fn std_hash(&self) -> u64 {
        *self
    }
}

/// Nodes are kept as parallel arrays (links and keys apart from values) so that walking
/// the list and the buckets touches little memory.
pub struct StdHashMap<K: StdHash, V> {
    next: Vec<u32>,
    /// Each node's bucket, kept so that walking a chain needs no division (the bucket
    /// counts are primes: a modulo per step was most of a lookup's cost).
    buckets: Vec<u32>,
    keys: Vec<K>,
    values: Vec<Option<V>>,
    free: Vec<u32>,
    /// `before[b]`: the node whose successor is bucket b's first node (`HEAD`: the
    /// sentinel; `NIL`: empty bucket).
    before: Vec<u32>,
    head: u32,
    len: usize,
    level: usize,
}

impl<K: StdHash, V> Default for StdHashMap<K, V> {
    fn default() -> Self {
        StdHashMap {
            next: Vec::new(),
            buckets: Vec::new(),
            keys: Vec::new(),
            values: Vec::new(),
            free: Vec::new(),
            before: Vec::new(),
            head: NIL,
            len: 0,
            level: 0,
        }
    }
}

impl<K: StdHash, V> StdHashMap<K, V> {
    #[cfg(test)]
    pub fn new() -> Self {
        Self::default()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    #[inline]
    fn bucket_of(&self, hash: u64) -> usize {
        (hash % self.before.len() as u64) as usize
    }

    #[inline]
    fn bucket_of_node(&self, n: u32) -> usize {
        self.buckets[n as usize] as usize
    }

    /// The successor of `p`, where `p` may be the sentinel.
    #[inline]
    fn next_of(&self, p: u32) -> u32 {
        if p == HEAD {
            self.head
        } else {
            self.next[p as usize]
        }
    }

    #[inline]
    fn set_next(&mut self, p: u32, n: u32) {
        if p == HEAD {
            self.head = n;
        } else {
            self.next[p as usize] = n;
        }
    }

    fn find_index(&self, key: &K) -> Option<u32> {
        if self.len == 0 {
            return None;
        }
        let bkt = self.bucket_of(key.std_hash());
        let before = self.before[bkt];
        if before == NIL {
            return None;
        }
        let mut p = self.next_of(before);
        while p != NIL {
            if self.keys[p as usize] == *key {
                return Some(p);
            }
            let n = self.next[p as usize];
            if n == NIL || self.bucket_of_node(n) != bkt {
                return None;
            }
            p = n;
        }
        None
    }

    #[cfg(test)]
    pub fn get(&self, key: &K) -> Option<&V> {
        self.find_index(key).and_then(|i| self.values[i as usize].as_ref())
    }

    /// `map[key] = value`: replaces the value in place, or inserts a new node.
    pub fn insert(&mut self, key: K, value: V) {
        match self.find_index(&key) {
            Some(i) => self.values[i as usize] = Some(value),
            None => self.insert_new(key, value),
        }
    }

    /// Inserts a key known to be absent (`_M_insert_unique_node`).
    pub fn insert_new(&mut self, key: K, value: V) {
        if self.before.is_empty() {
            self.rehash(BUCKET_COUNTS[0] as usize);
        } else if self.len + 1 > self.before.len() && self.level + 1 < BUCKET_COUNTS.len() {
            self.level += 1;
            self.rehash(BUCKET_COUNTS[self.level] as usize);
        }
        let bkt = self.bucket_of(key.std_hash());
        let idx = match self.free.pop() {
            Some(i) => {
                self.keys[i as usize] = key;
                self.values[i as usize] = Some(value);
                self.buckets[i as usize] = bkt as u32;
                i
            }
            None => {
                self.keys.push(key);
                self.values.push(Some(value));
                self.next.push(NIL);
                self.buckets.push(bkt as u32);
                (self.keys.len() - 1) as u32
            }
        };
        let before = self.before[bkt];
        if before != NIL {
            self.next[idx as usize] = self.next_of(before);
            self.set_next(before, idx);
        } else {
            let following = self.head;
            self.next[idx as usize] = following;
            self.head = idx;
            if following != NIL {
                let other = self.bucket_of_node(following);
                self.before[other] = idx;
            }
            self.before[bkt] = HEAD;
        }
        self.len += 1;
    }

    /// `_M_rehash_aux` for unique keys.
    fn rehash(&mut self, n_bkt: usize) {
        self.before = vec![NIL; n_bkt];
        let mut p = self.head;
        self.head = NIL;
        let mut bbegin_bkt = 0usize;
        while p != NIL {
            let following = self.next[p as usize];
            let bkt = self.bucket_of(self.keys[p as usize].std_hash());
            self.buckets[p as usize] = bkt as u32;
            if self.before[bkt] == NIL {
                self.next[p as usize] = self.head;
                self.head = p;
                self.before[bkt] = HEAD;
                if self.next[p as usize] != NIL {
                    self.before[bbegin_bkt] = p;
                }
                bbegin_bkt = bkt;
            } else {
                let b = self.before[bkt];
                self.next[p as usize] = self.next_of(b);
                self.set_next(b, p);
            }
            p = following;
        }
    }

    /// Erases `key` if present (`_M_erase`), returning its value.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        let n = self.find_index(key)?;
        let bkt = self.bucket_of_node(n);
        let mut prev = self.before[bkt];
        while self.next_of(prev) != n {
            prev = self.next_of(prev);
        }
        let next = self.next[n as usize];
        let next_bkt = if next != NIL { Some(self.bucket_of_node(next)) } else { None };
        if prev == self.before[bkt] {
            // n begins its bucket (_M_remove_bucket_begin).
            if next_bkt != Some(bkt) {
                if let Some(nb) = next_bkt {
                    self.before[nb] = self.before[bkt];
                }
                self.before[bkt] = NIL;
            }
        } else if let Some(nb) = next_bkt {
            if nb != bkt {
                self.before[nb] = prev;
            }
        }
        self.set_next(prev, next);
        self.len -= 1;
        self.free.push(n);
        self.values[n as usize].take()
    }

    /// Entries in iteration order.
    pub fn iter(&self) -> Iter<'_, K, V> {
        Iter { map: self, p: self.head }
    }
}

pub struct Iter<'a, K: StdHash, V> {
    map: &'a StdHashMap<K, V>,
    p: u32,
}

impl<'a, K: StdHash, V> Iterator for Iter<'a, K, V> {
    type Item = (&'a K, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        while self.p != NIL {
            let i = self.p as usize;
            self.p = self.map.next[i];
            if let Some(v) = self.map.values[i].as_ref() {
                return Some((&self.map.keys[i], v));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compat::stdorder::StdUnorderedOrder;

    fn keys(m: &StdHashMap<u64, ()>) -> Vec<u64> {
        m.iter().map(|(k, _)| *k).collect()
    }

    #[test]
    fn insert_only_matches_replay() {
        let ks: Vec<u64> = (0..300).map(|i| (i * 7919 + 13) % 1009).collect();
        let mut m = StdHashMap::new();
        let mut o = StdUnorderedOrder::new();
        for &k in &ks {
            m.insert(k, ());
            o.insert(k);
        }
        let expected: Vec<u64> = o.iteration_order().into_iter().map(|i| ks[i]).collect();
        assert_eq!(keys(&m), expected);
    }

    /// Orders printed by a C++ program doing the same operations on
    /// `std::unordered_map<size_t, int>` (libstdc++, GCC 12) and iterating.
    #[test]
    fn erase_matches_libstdcxx() {
        let mut m = StdHashMap::new();
        for k in [6u64, 8, 7, 14, 19, 32] {
            m.insert(k, ());
        }
        // 6, 19 and 32 share bucket 6; 7 and 8 have their own.
        assert_eq!(keys(&m), vec![14, 7, 8, 32, 19, 6]);
        m.remove(&32);
        assert_eq!(keys(&m), vec![14, 7, 8, 19, 6]);
        m.remove(&8);
        m.insert(21, ());
        assert_eq!(keys(&m), vec![21, 14, 7, 19, 6]);
        m.remove(&6);
        m.remove(&19);
        m.insert(45, ());
        assert_eq!(keys(&m), vec![45, 21, 14, 7]);
        assert_eq!(m.len(), 4);
        assert!(m.get(&7).is_some() && m.get(&6).is_none());
    }

    /// 20000 pseudo-random inserts and erases; the expected length, checksum and first
    /// keys were printed by the same sequence run on libstdc++ (GCC 12).
    #[test]
    fn random_inserts_and_erases_match_libstdcxx() {
        let mut m = StdHashMap::new();
        let mut x: u64 = 12345;
        for _ in 0..20000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let k = ((x >> 33) % 3000) * 16;
            if (x >> 20) & 3 == 0 {
                m.remove(&k);
            } else {
                m.insert(k, ());
            }
        }
        let ks = keys(&m);
        let sum = ks.iter().fold(0u64, |h, &k| h.wrapping_mul(1000003).wrapping_add(k));
        assert_eq!(ks.len(), 2225);
        assert_eq!(&ks[..8], &[43936, 26912, 32400, 43856, 17200, 40208, 36736, 47152]);
        assert_eq!(sum, 15899542515558938800);
    }

    #[test]
    fn behaves_as_a_map() {
        let mut m = StdHashMap::new();
        for i in 0..5000u64 {
            m.insert(i * 16, i);
        }
        for i in (0..5000u64).step_by(3) {
            assert_eq!(m.remove(&(i * 16)), Some(i));
        }
        for i in 0..5000u64 {
            assert_eq!(m.get(&(i * 16)).copied(), if i % 3 == 0 { None } else { Some(i) });
        }
        assert_eq!(m.iter().count(), m.len());
    }
}
