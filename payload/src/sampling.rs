//! Sampled tracking (`--sampling-interval`): which allocations are recorded.
//!
//! Each thread walks its own Poisson process over the bytes it allocates (the method of
//! heapprofd, tcmalloc and jemalloc): a countdown drawn from an exponential distribution
//! with mean `interval`; an allocation that reaches zero is sampled and a new countdown is
//! drawn. An allocation of `size` bytes is thus sampled with probability
//! `1 - exp(-size / interval)` whatever came before it, so blocks much larger than the
//! interval are always caught. A sampled block is written with its weight (see
//! `memray_capture::sampling`) and remembered in [`crate::sampled_blocks`], so that its
//! free is recorded and no other free is.
//!
//! mmap and munmap are always recorded in full: they are rare, large, and munmap may
//! release part of a mapping, which only exact sizes can follow.
//!
//! Runs first in every hook of a sampled capture: no allocation, no lock, no panic.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::thread_state::{self, Countdown, GENERATION};

/// Mean bytes between samples; 0 records every allocation.
static INTERVAL: AtomicU64 = AtomicU64::new(0);
/// Non-zero: every thread's random stream starts from this seed mixed with its capture
/// thread id, so a single-threaded run samples the same allocations each time (tests).
static SEED: AtomicU64 = AtomicU64::new(0);

/// Sets the interval (and optional fixed seed) of the capture about to start.
pub fn configure(interval: u64, seed: u64) {
    INTERVAL.store(interval, Ordering::Release);
    SEED.store(seed, Ordering::Release);
}

#[inline(always)]
pub fn interval() -> u64 {
    INTERVAL.load(Ordering::Relaxed)
}

/// Whether an allocation of `size` bytes on this thread is to be recorded, and if so the
/// size to write for it. Call with sampling on (`interval() != 0`).
#[inline(always)]
pub fn sample(size: usize, interval: u64) -> Option<u64> {
    let generation = GENERATION.load(Ordering::Relaxed);
    let mut c = thread_state::countdown_unless_guarded()?;
    if c.generation != generation {
        start_countdown(generation, interval);
        // Borrowed anew: start_countdown went through the thread's TLS block itself.
        c = thread_state::countdown_unless_guarded()?;
    }
    let size = size.min(i64::MAX as usize) as i64;
    if c.bytes_left > size {
        c.bytes_left -= size;
        return None;
    }
    c.bytes_left = draw(c, interval);
    Some(memray_capture::sampling::weight(size as u64, interval))
}

/// A new capture: seed the thread's stream and draw its first countdown. (By the
/// exponential distribution's memorylessness, a countdown drawn afresh is as good as one
/// carried over; carrying none over keeps a forked child's stream apart from its parent's.)
#[cold]
fn start_countdown(generation: u64, interval: u64) {
    let fixed = SEED.load(Ordering::Relaxed);
    let tid = thread_state::current_tid();
    let Some(c) = thread_state::countdown_unless_guarded() else { return };
    c.rng = if fixed != 0 {
        fixed ^ tid.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    } else {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_gettime writes the timespec we pass; it allocates nothing.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() } as u64;
        let stack_address = &ts as *const _ as u64;
        (ts.tv_nsec as u64) ^ (ts.tv_sec as u64).rotate_left(32) ^ pid.rotate_left(17) ^ stack_address ^ tid.rotate_left(48)
    };
    c.generation = generation;
    c.bytes_left = draw(c, interval);
}

/// An exponentially distributed number of bytes with mean `interval`, at least 1.
#[inline]
fn draw(c: &mut Countdown, interval: u64) -> i64 {
    // splitmix64: one multiply-xorshift step per draw, good enough for sampling.
    c.rng = c.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = c.rng;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    // Uniform on (0, 1]: never 0, whose logarithm is infinite.
    let u = ((z >> 11) + 1) as f64 / (1u64 << 53) as f64;
    let bytes = -u.ln() * interval as f64;
    (bytes as i64).clamp(1, i64::MAX / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn countdowns_are_exponential_with_the_interval_as_mean() {
        let mut c = Countdown { bytes_left: 0, rng: 42, generation: 0 };
        let interval = 512 * 1024;
        let n = 200_000;
        let draws: Vec<f64> = (0..n).map(|_| draw(&mut c, interval) as f64).collect();
        let mean = draws.iter().sum::<f64>() / n as f64;
        assert!((mean / interval as f64 - 1.0).abs() < 0.01, "mean {mean}");
        // An exponential's median is ln 2 times its mean.
        let below = draws.iter().filter(|&&d| d < interval as f64 * std::f64::consts::LN_2).count();
        assert!((below as f64 / n as f64 - 0.5).abs() < 0.01, "{below} of {n} below the median");
    }
}
