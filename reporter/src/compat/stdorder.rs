//! The iteration order of a libstdc++ `std::unordered_map<integer, T>`.
//!
//! Memray turns two such maps into Python dicts (allocation counts by allocator, and
//! per-stack totals that become per-module totals), then sorts them with Python's stable
//! sort. Entries with equal counts therefore come out in the C++ map's iteration order.
//! To print ties in the same order, this replays libstdc++'s node list: identity hash,
//! new keys at the front of their bucket (or of the whole list when the bucket is
//! empty), 13 buckets after the first insertion, and a rehash to the next bucket count
//! of the prime policy whenever the element count would exceed the bucket count.

/// libstdc++'s `_Prime_rehash_policy` bucket counts, starting from an empty map and
/// inserting one element at a time (measured with GCC 12's libstdc++).
pub(crate) const BUCKET_COUNTS: [u64; 35] = [
    13,
    29,
    59,
    127,
    257,
    541,
    1109,
    2357,
    5087,
    10273,
    20753,
    42043,
    85229,
    172933,
    351061,
    712697,
    1447153,
    2938679,
    5967347,
    12117689,
    24607243,
    49969847,
    101473717,
    206062531,
    418451333,
    849749479,
    1725587117,
    3504151727,
    8589934583,
    25769803693,
    68719476731,
    206158430123,
    412316860387,
    1099511627689,
    2199023255531,
];

const NIL: usize = usize::MAX;
/// Stands for the list's before-begin sentinel in bucket entries.
const HEAD: usize = usize::MAX - 1;

/// Replays insertions of distinct keys; [`StdUnorderedOrder::iteration_order`] gives the
/// order a range-for over the map would visit them in.
#[derive(Default)]
pub struct StdUnorderedOrder {
    keys: Vec<u64>,
}

impl StdUnorderedOrder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the first insertion of `key` (callers pass each key once).
    pub fn insert(&mut self, key: u64) {
        self.keys.push(key);
    }

    /// Indices (into insertion order) in iteration order.
    pub fn iteration_order(&self) -> Vec<usize> {
        let n = self.keys.len();
        let mut next = vec![NIL; n];
        // `before[b]`: the node whose successor is bucket b's first node (`NIL`: empty).
        let mut head = NIL;
        let mut level = 0;
        let mut n_bkt = BUCKET_COUNTS[0];
        let mut before: Vec<usize> = Vec::new();
        for (node, &key) in self.keys.iter().enumerate() {
            if node == 0 {
                before = vec![NIL; n_bkt as usize];
            } else if node as u64 + 1 > n_bkt && level + 1 < BUCKET_COUNTS.len() {
                level += 1;
                n_bkt = BUCKET_COUNTS[level];
                // _M_rehash_aux: walk the old list, moving each node to its new bucket.
                before = vec![NIL; n_bkt as usize];
                let mut p = head;
                head = NIL;
                let mut bbegin_bkt = 0usize;
                while p != NIL {
                    let following = next[p];
                    let bkt = (self.keys[p] % n_bkt) as usize;
                    if before[bkt] == NIL {
                        next[p] = head;
                        head = p;
                        before[bkt] = HEAD;
                        if next[p] != NIL {
                            before[bbegin_bkt] = p;
                        }
                        bbegin_bkt = bkt;
                    } else {
                        link_after(&mut head, &mut next, before[bkt], p);
                    }
                    p = following;
                }
            }
            // _M_insert_bucket_begin
            let bkt = (key % n_bkt) as usize;
            if before[bkt] == NIL {
                next[node] = head;
                head = node;
                if next[node] != NIL {
                    let other = (self.keys[next[node]] % n_bkt) as usize;
                    before[other] = node;
                }
                before[bkt] = HEAD;
            } else {
                link_after(&mut head, &mut next, before[bkt], node);
            }
        }
        let mut order = Vec::with_capacity(n);
        let mut p = head;
        while p != NIL {
            order.push(p);
            p = next[p];
        }
        order
    }
}

/// Inserts `node` after `b` (`HEAD`: at the front of the list).
fn link_after(head: &mut usize, next: &mut [usize], b: usize, node: usize) {
    if b == HEAD {
        next[node] = *head;
        *head = node;
    } else {
        next[node] = next[b];
        next[b] = node;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(keys: &[u64]) -> Vec<u64> {
        let mut o = StdUnorderedOrder::new();
        keys.iter().for_each(|&k| o.insert(k));
        o.iteration_order().into_iter().map(|i| keys[i]).collect()
    }

    /// Expected orders printed by a C++ program inserting the same keys with
    /// `operator[]` into `std::unordered_map<size_t, int>` (GCC 12) and iterating.
    #[test]
    fn matches_libstdcxx() {
        assert_eq!(order(&[6, 8, 7, 14]), vec![14, 7, 8, 6]);
        assert_eq!(order(&[1, 14, 27, 2]), vec![2, 27, 14, 1]);
        assert_eq!(order(&[0, 13, 26, 5, 18]), vec![18, 5, 26, 13, 0]);
        let keys: Vec<u64> = (0..40).map(|i| (i * 37 + 11) % 101).collect();
        assert_eq!(
            order(&keys),
            vec![
                40, 3, 67, 30, 94, 57, 20, 84, 47, 10, 74, 51, 14, 78, 41, 68, 31, 4, 91, 95, 37, 58, 0, 21, 85, 27, 48, 11, 98, 88, 24,
                61, 34, 71, 7, 44, 81, 17, 54, 64
            ]
        );
    }
}
