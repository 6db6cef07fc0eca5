//! Live `mmap` ranges. `munmap` may release any part of a mapping, several mappings at
//! once, or nothing; what remains of a mapping may be split in two. Overlapping ranges
//! are kept as recorded (Memray's interval list does the same). Shared by the reporter and
//! the payload's aggregating writer, so a `munmap` counts the same in both.

use std::collections::BTreeMap;

/// How a `munmap` affected one recorded range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// The whole range was released.
    Freed,
    /// Its start or its end was released: one piece remains.
    Shrunk,
    /// Its middle was released: two pieces remain.
    Split,
}

impl Cut {
    /// The change in the number of live ranges (-1, 0 or +1), as a wrapping u64 for
    /// counters that add it: each piece of a split mapping counts as one allocation.
    pub fn count_change(self) -> u64 {
        match self {
            Cut::Freed => 1u64.wrapping_neg(),
            Cut::Shrunk => 0,
            Cut::Split => 1,
        }
    }
}

/// Part of a recorded range released by a `munmap`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Released<T> {
    pub owner: T,
    pub bytes: u64,
    pub cut: Cut,
}

/// Ranges `[begin, end)` with an owner each.
pub struct RangeSet<T> {
    by_begin: BTreeMap<(u64, u64), (u64, T)>,
    /// Longest range ever added: bounds how far before a `munmap` a range may start.
    max_len: u64,
    seq: u64,
}

impl<T: Copy> Default for RangeSet<T> {
    fn default() -> Self {
        RangeSet { by_begin: BTreeMap::new(), max_len: 0, seq: 0 }
    }
}

impl<T: Copy> RangeSet<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `[begin, begin + size)`; empty ranges are not recorded.
    pub fn add(&mut self, begin: u64, size: u64, owner: T) {
        if size == 0 {
            return;
        }
        let end = begin.saturating_add(size);
        self.insert(begin, end, owner);
        self.max_len = self.max_len.max(end - begin);
    }

    fn insert(&mut self, begin: u64, end: u64, owner: T) {
        self.seq += 1;
        self.by_begin.insert((begin, self.seq), (end, owner));
    }

    /// Releases `[begin, begin + size)` from every range it intersects.
    pub fn remove(&mut self, begin: u64, size: u64) -> Vec<Released<T>> {
        let mut out = Vec::new();
        if size == 0 {
            return out;
        }
        let end = begin.saturating_add(size);
        let lo = begin.saturating_sub(self.max_len);
        let hits: Vec<((u64, u64), (u64, T))> =
            self.by_begin.range((lo, 0)..(end, 0)).filter(|(&(b, _), &(e, _))| b.max(begin) < e.min(end)).map(|(&k, &v)| (k, v)).collect();
        for ((b, seq), (e, owner)) in hits {
            self.by_begin.remove(&(b, seq));
            let (cut_begin, cut_end) = (b.max(begin), e.min(end));
            let cut = if cut_begin == b && cut_end == e {
                Cut::Freed
            } else if cut_begin == b {
                self.insert(cut_end, e, owner);
                Cut::Shrunk
            } else if cut_end == e {
                self.insert(b, cut_begin, owner);
                Cut::Shrunk
            } else {
                self.insert(b, cut_begin, owner);
                self.insert(cut_end, e, owner);
                Cut::Split
            };
            out.push(Released { owner, bytes: cut_end - cut_begin, cut });
        }
        out
    }

    /// Remaining pieces: (begin, end, owner).
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64, T)> + '_ {
        self.by_begin.iter().map(|(&(b, _), &(e, o))| (b, e, o))
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_begin.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_unmaps() {
        let mut r = RangeSet::new();
        r.add(0x1000, 0x4000, 'a');
        r.add(0x10000, 0x1000, 'b');
        r.add(0x20000, 0, 'z');
        assert_eq!(r.len(), 2);
        // Middle of a: split.
        assert_eq!(r.remove(0x2000, 0x1000), vec![Released { owner: 'a', bytes: 0x1000, cut: Cut::Split }]);
        // Start of the first piece: shrunk.
        assert_eq!(r.remove(0x1000, 0x800), vec![Released { owner: 'a', bytes: 0x800, cut: Cut::Shrunk }]);
        // Spanning the rest of a's second piece and all of b.
        let mut got = r.remove(0x3000, 0x20000);
        got.sort_by_key(|x| x.owner);
        assert_eq!(
            got,
            vec![Released { owner: 'a', bytes: 0x2000, cut: Cut::Freed }, Released { owner: 'b', bytes: 0x1000, cut: Cut::Freed },]
        );
        assert_eq!(r.iter().collect::<Vec<_>>(), vec![(0x1800, 0x2000, 'a')]);
        assert!(r.remove(0x9000_0000, 10).is_empty());
    }
}
