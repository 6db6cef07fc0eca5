//! Heap size over the whole run in bounded memory: the highest heap seen in each time
//! bucket; when the buckets run out, neighbours merge and each bucket covers twice as long.

/// Buckets kept at most (a sparkline is never wider than a terminal).
const CAPACITY: usize = 1024;
/// Width of a bucket at the start.
const FIRST_STEP_MS: u64 = 100;

pub struct HeapHistory {
    step_ms: u64,
    points: Vec<u64>,
}

impl Default for HeapHistory {
    fn default() -> Self {
        Self::new()
    }
}

impl HeapHistory {
    pub fn new() -> Self {
        HeapHistory { step_ms: FIRST_STEP_MS, points: Vec::new() }
    }

    /// The heap was `heap` bytes `ms` after the start.
    pub fn record(&mut self, ms: u64, heap: u64) {
        let mut i = (ms / self.step_ms) as usize;
        while i >= CAPACITY {
            self.halve();
            i = (ms / self.step_ms) as usize;
        }
        if i >= self.points.len() {
            // Buckets without a sample carry the last value on.
            let last = self.points.last().copied().unwrap_or(heap);
            self.points.resize(i + 1, last);
            self.points[i] = heap;
        } else {
            self.points[i] = self.points[i].max(heap);
        }
    }

    fn halve(&mut self) {
        self.points = self.points.chunks(2).map(|c| c.iter().copied().max().unwrap_or(0)).collect();
        self.step_ms *= 2;
    }

    pub fn points(&self) -> &[u64] {
        &self.points
    }

    pub fn step_ms(&self) -> u64 {
        self.step_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_maximum_per_bucket_and_fills_gaps() {
        let mut h = HeapHistory::new();
        h.record(0, 5);
        h.record(50, 9);
        h.record(60, 7);
        h.record(350, 3);
        assert_eq!(h.points(), &[9, 9, 9, 3]);
    }

    #[test]
    fn long_runs_merge_buckets_instead_of_growing() {
        let mut h = HeapHistory::new();
        for i in 0..10_000u64 {
            h.record(i * 50, i);
        }
        assert!(h.points().len() <= CAPACITY);
        assert!(h.step_ms() > FIRST_STEP_MS);
        assert_eq!(*h.points().last().unwrap(), 9_999);
        assert!(h.points().windows(2).all(|w| w[0] <= w[1]), "a growing heap stays monotonic");
    }
}
