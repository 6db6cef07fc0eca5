//! Counts in sampled captures. A sampled capture records about one allocation per
//! `interval` bytes, each with its *weight* (the bytes it stands for) as its size, so
//! bytes need no correction, but a record stands for more than one allocation: how many
//! is [`memray_capture::sampling::estimated_count`], a deterministic function of the
//! record, so a free can take back exactly what its allocation added by recomputing it.
//! Full captures (interval 0) count one per record, behind a single branch.

use memray_capture::sampling;
use memray_capture::Allocator;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Estimates {
    /// The capture's sampling interval (0: every allocation was recorded).
    interval: u64,
}

impl Estimates {
    pub fn new(interval: u64) -> Self {
        Estimates { interval }
    }

    pub fn is_sampled(self) -> bool {
        self.interval != 0
    }

    /// The allocations an allocation record of `size` bytes at `address` stands for
    /// (mmap records are never sampled).
    #[inline(always)]
    pub fn count(self, size: u64, address: u64, allocator: Allocator) -> u64 {
        if self.interval == 0 {
            1
        } else {
            self.sampled_count(size, address, allocator)
        }
    }

    // Out of line: the inversion's loop stays out of the reading loops of full captures.
    #[inline(never)]
    fn sampled_count(self, size: u64, address: u64, allocator: Allocator) -> u64 {
        sampling::estimated_count(size, self.interval, address, allocator == Allocator::Mmap)
    }

    /// The size of the allocations a record stands for and how many they are: the
    /// record's own size and 1 in a full capture; in a sampled one, the size its weight
    /// was computed from (to about a byte) and [`Estimates::count`].
    #[inline(never)]
    pub fn size_and_count(self, size: u64, address: u64, allocator: Allocator) -> (u64, u64) {
        if self.interval == 0 || allocator == Allocator::Mmap {
            return (size, 1);
        }
        let real = sampling::size_from_weight(size, self.interval);
        // The same arithmetic as `estimated_count`, sharing the inversion.
        let count = sampling::count_for(real, size, address);
        // To a byte: a small size's weight grows by about half a byte per byte, so
        // neighbouring sizes may share a (rounded) weight.
        ((real.round() as u64).min(size), count)
    }
}

/// A small capture for tests, sampled at `interval` (0: a full capture of the same
/// allocations, sizes as they are). Thread 1: `main` (app.py) allocates 100 bytes at
/// 0x10; `build` under it 1000 bytes at 0x20, 100 bytes at 0x30 (freed) and maps 16 KiB;
/// back in `main`, 5000 bytes at 0x40 and 300 at 0x10 again (replacing the first block,
/// never freed).
#[cfg(test)]
pub(crate) fn test_capture(interval: u64) -> Vec<u8> {
    use memray_capture::{FileFormat, Header, StreamEncoder};
    let header = Header {
        file_format: FileFormat::AllAllocations,
        python_version: 0x030c0000,
        main_tid: 1,
        command_line: "python app.py".into(),
        sampling_interval: interval,
        ..Header::default()
    };
    let w = |size| sampling::weight(size, interval);
    let mut out = Vec::new();
    header.encode(&mut out);
    let mut e = StreamEncoder::new();
    let s = &mut out;
    e.code_object(s, 1, b"main", b"app.py", 1, b"");
    e.code_object(s, 2, b"build", b"app.py", 10, b"");
    e.context_switch(s, 1);
    e.frame_push(s, 1, 0, true);
    e.allocation(s, 0x10, w(100), Allocator::Malloc, 0, false);
    e.frame_push(s, 2, 0, true);
    e.allocation(s, 0x20, w(1000), Allocator::Malloc, 0, false);
    e.allocation(s, 0x30, w(100), Allocator::Malloc, 0, false);
    e.allocation(s, 0x30, 0, Allocator::Free, 0, false);
    e.allocation(s, 0x10_0000, 0x4000, Allocator::Mmap, 0, false);
    e.frame_pop(s, 1);
    e.allocation(s, 0x40, w(5000), Allocator::Malloc, 0, false);
    e.allocation(s, 0x10, w(300), Allocator::Malloc, 0, false);
    e.memory_record(s, 1 << 20, 10);
    e.trailer(s);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_captures_count_one_and_sampled_ones_their_estimate() {
        let full = Estimates::new(0);
        assert_eq!(full.count(100, 0x10, Allocator::Malloc), 1);
        assert_eq!(full.size_and_count(100, 0x10, Allocator::Malloc), (100, 1));

        let t = 64 * 1024;
        let sampled = Estimates::new(t);
        let w = sampling::weight(100, t);
        for address in [0x10u64, 0x20, 0x1234_5670] {
            let n = sampled.count(w, address, Allocator::Malloc);
            assert_eq!(n, sampling::estimated_count(w, t, address, false));
            assert_eq!(sampled.size_and_count(w, address, Allocator::Malloc), (100, n));
        }
        // Sizes come back to a byte.
        for size in [1u64, 7, 999, 1000, 1001, 4097, 100_000] {
            let back = sampled.size_and_count(sampling::weight(size, t), 0x10, Allocator::Malloc).0;
            assert!(back.abs_diff(size) <= 1, "{size}: {back}");
        }
        // About t / 100 allocations of 100 bytes.
        assert!((655..=657).contains(&sampled.count(w, 0x10, Allocator::Malloc)));
        assert_eq!(sampled.count(1 << 20, 0x10, Allocator::Mmap), 1);
        assert_eq!(sampled.size_and_count(1 << 20, 0x10, Allocator::Mmap), (1 << 20, 1));
    }
}
