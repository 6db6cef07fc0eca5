//! The arithmetic of sampled captures, shared by the payload (which weighs each sampled
//! allocation) and the reporter (which turns weights back into estimated counts).
//!
//! Sampling is a Poisson process over allocated bytes with mean spacing `interval`: an
//! allocation of `size` bytes is sampled when the process has at least one point inside
//! it, which happens with probability `p = 1 - exp(-size / interval)`. A sampled
//! allocation is written with the size `size / p` (its *weight*), so the expected total
//! of the weights of a site's allocations is its true total, and `1 / p` is the number of
//! allocations the record stands for. The weight is a strictly increasing function of the
//! size, which lets a reader recover the size, and with it the count, from the weight
//! alone: the capture keeps Memray's record layout and Memray sees the estimated bytes.
//!
//! The interval itself travels in the header's `n_frames` field, which Memray never sets.
//! Runs inside the payload's hooks: no allocation here.

/// The weight written for a sampled allocation of `size` bytes (`interval` > 0).
pub fn weight(size: u64, interval: u64) -> u64 {
    if interval == 0 || size == 0 {
        return size;
    }
    let p = inclusion_probability(size as f64, interval as f64);
    let w = (size as f64 / p).round();
    if w >= u64::MAX as f64 {
        u64::MAX
    } else {
        (w as u64).max(size)
    }
}

/// `1 - exp(-size / interval)`, accurate for small sizes.
fn inclusion_probability(size: f64, interval: f64) -> f64 {
    -(-size / interval).exp_m1()
}

/// The size whose weight is `weight`: the inverse of [`weight`], as a real number. The
/// weight was rounded to an integer and grows by about half a byte per byte of a small
/// size, so a size is known to about a byte.
pub fn size_from_weight(weight: u64, interval: u64) -> f64 {
    let (w, t) = (weight as f64, interval as f64);
    if interval == 0 || w <= t {
        // Only a size below one byte weighs at most the interval.
        return w.clamp(f64::MIN_POSITIVE, 1.0);
    }
    // In units of the interval: solve h(x) = x / (1 - exp(-x)) = w / t. h is increasing
    // and convex with h(x) = 1 + x/2 + x^2/12 + ..., so Newton's method from a point
    // right of the root (both guesses below are) converges monotonically.
    let excess = (w - t) / t;
    let mut x = (2.0 * excess).min(1.0 + excess);
    for _ in 0..100 {
        let q = -(-x).exp_m1();
        let h = x / q;
        let dh = (q - x * (-x).exp()) / (q * q);
        if dh.is_nan() || dh <= 0.0 {
            break;
        }
        let step = (h - w / t) / dh;
        x -= step;
        if step.abs() <= 1e-13 * x {
            break;
        }
    }
    (x * t).max(f64::MIN_POSITIVE)
}

/// The number of allocations a record of `weight` bytes stands for, given the size it
/// had. Non-integral expectations are rounded up or down by a hash of `key` (the block's
/// address and weight), so every reader of a capture gets the same counts and their sum
/// over many records stays unbiased.
pub fn count_for(size: f64, weight: u64, key: u64) -> u64 {
    let expected = (weight as f64 / size).max(1.0);
    let whole = expected.floor();
    let fraction = expected - whole;
    let mut h = key.wrapping_add(weight.rotate_left(32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    h ^= h >> 29;
    h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h ^= h >> 32;
    let u = (h >> 11) as f64 / (1u64 << 53) as f64;
    whole as u64 + (u < fraction) as u64
}

/// How many allocations a sampled record of `weight` bytes at `address` stands for.
/// `exact` records (mmap, which is always recorded in full) stand for one.
pub fn estimated_count(weight: u64, interval: u64, address: u64, exact: bool) -> u64 {
    if interval == 0 || exact {
        return 1;
    }
    count_for(size_from_weight(weight, interval), weight, address)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_grow_with_size_and_approach_it() {
        let t = 512 * 1024;
        assert_eq!(weight(100, 0), 100);
        let mut last = 0;
        for size in [1u64, 2, 3, 16, 100, 4096, 1 << 20, 1 << 26] {
            let w = weight(size, t);
            // Rounding to whole bytes may give neighbouring tiny sizes one weight.
            assert!(w >= last && w >= size && (size < 16 || w > last), "size {size}: weight {w}");
            last = w;
        }
        // Small blocks stand for about interval/size allocations of their size.
        assert!((weight(64, t) as i64 - (t + 32) as i64).abs() <= 1);
        // Large ones are nearly always sampled, and weigh what they are.
        assert_eq!(weight(64 << 20, t), 64 << 20);
    }

    #[test]
    fn sizes_come_back_from_weights() {
        for t in [4096u64, 64 * 1024, 512 * 1024] {
            for size in [1u64, 7, 64, 500, 4097, 100_000, 3 << 20] {
                let back = size_from_weight(weight(size, t), t);
                assert!((back - size as f64).abs() <= 1.0 + size as f64 * 1e-9, "t {t} size {size}: {back}");
            }
        }
    }

    #[test]
    fn counts_are_unbiased_over_many_records() {
        let (t, size) = (512 * 1024u64, 1000u64);
        let w = weight(size, t);
        let expected = w as f64 / size as f64;
        let n = 100_000u64;
        let total: u64 = (0..n).map(|i| estimated_count(w, t, i * 16, false)).sum();
        let mean = total as f64 / n as f64;
        assert!((mean - expected).abs() / expected < 0.002, "mean {mean} expected {expected}");
        assert_eq!(estimated_count(w, t, 0x1000, true), 1);
        assert_eq!(estimated_count(w, 0, 0x1000, false), 1);
    }
}
