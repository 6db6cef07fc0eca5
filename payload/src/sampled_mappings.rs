//! Sampled mappings smaller than the sampling interval.
//!
//! A sampled record's size is its weight, more than the block's size. For a malloc'd
//! block that is harmless, but a reader keeps mmap records as address ranges, which a
//! weight would stretch over the mappings next to it, and munmap may release any part of
//! a range. So a sampled small mapping is written at a synthetic address, in a region no
//! user-space mapping can have (the upper, kernel half of the address space), as a range
//! of its weight; when the program unmaps any part of the real mapping, that whole
//! synthetic range is unmapped. Mappings as large as the interval are nearly always
//! sampled anyway and are recorded in full, at their real addresses.
//!
//! Used under the writer lock (the list belongs to the `Writer`).

/// Where synthetic ranges start: user space never reaches the upper half on x86-64 or
/// aarch64 (both keep it for the kernel).
pub const SYNTHETIC_BASE: u64 = 0xffff_8000_0000_0000;

struct Mapping {
    start: u64,
    len: u64,
    synthetic: u64,
    weight: u64,
}

#[derive(Default)]
pub struct SampledMappings {
    live: Vec<Mapping>,
    next: u64,
}

impl SampledMappings {
    /// Remembers the sampled mapping `[start, start + len)`; returns the synthetic
    /// address its record is written at.
    pub fn add(&mut self, start: u64, len: u64, weight: u64) -> u64 {
        if self.next == 0 || self.next.checked_add(weight).is_none() {
            // The first one, or after going round 2^63 bytes of ranges: the old ones are
            // long unmapped.
            self.next = SYNTHETIC_BASE;
        }
        let synthetic = self.next;
        // Page-aligned, with a page between ranges, so no two ever touch.
        self.next = synthetic + weight.div_ceil(4096) * 4096 + 4096;
        self.live.push(Mapping { start, len, synthetic, weight });
        synthetic
    }

    /// The synthetic range `(address, weight)` of one sampled mapping that the range
    /// from `start` of `len` bytes touches, now forgotten (unmapping any part of a
    /// mapping ends its range); call until None.
    pub fn take_overlapping(&mut self, start: u64, len: u64) -> Option<(u64, u64)> {
        let end = start.saturating_add(len);
        let i = self.live.iter().position(|m| m.start < end && start < m.start.saturating_add(m.len))?;
        let m = self.live.swap_remove(i);
        Some((m.synthetic, m.weight))
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.live.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_do_not_touch_and_unmapping_any_part_ends_one() {
        let mut m = SampledMappings::default();
        let a = m.add(0x1000_0000, 16384, 70_000);
        let b = m.add(0x2000_0000, 8192, 66_000);
        assert!(a >= SYNTHETIC_BASE && b > a + 70_000);
        // A partial unmap of the first mapping ends its whole range, once.
        assert_eq!(m.take_overlapping(0x1000_2000, 4096), Some((a, 70_000)));
        assert_eq!(m.take_overlapping(0x1000_0000, 16384), None);
        // One unmap over both ends each.
        m.add(0x1000_0000, 4096, 65_600);
        let mut ended = Vec::new();
        while let Some(r) = m.take_overlapping(0x0fff_0000, 0x1100_0000) {
            ended.push(r);
        }
        assert_eq!(ended.len(), 2);
        assert!(ended.contains(&(b, 66_000)));
        assert!(m.is_empty());
    }
}
