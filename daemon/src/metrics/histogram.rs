//! A fixed-bucket, log-scale latency histogram on atomics: recording is two relaxed
//! `fetch_add`s, no lock and no allocation, so it can sit on the hot path of every stage.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Finite buckets. Bucket `i` counts observations ≤ 2^i µs: 1 µs, 2 µs, … 2^23 µs ≈ 8.4 s;
/// one more bucket holds everything longer (`+Inf`).
pub const BUCKETS: usize = 24;

/// Upper bound of finite bucket `i`, in seconds.
pub fn bucket_bound_secs(i: usize) -> f64 {
    (1u64 << i) as f64 * 1e-6
}

/// Counts of observations per bucket and their sum. Observations from several threads may
/// interleave with a read; each bucket and the sum are then individually exact.
#[derive(Debug)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS + 1],
    sum_ns: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

/// A histogram read at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Per-bucket counts (not cumulative); the last one is the `+Inf` bucket.
    pub counts: [u64; BUCKETS + 1],
    pub sum_ns: u64,
}

impl HistogramSnapshot {
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

impl Histogram {
    pub const fn new() -> Self {
        Self {
            buckets: [const { AtomicU64::new(0) }; BUCKETS + 1],
            sum_ns: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        self.observe_ns(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    pub fn observe_ns(&self, ns: u64) {
        self.buckets[bucket_index(ns)].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            counts: std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed)),
            sum_ns: self.sum_ns.load(Ordering::Relaxed),
        }
    }
}

/// The smallest `i` with `ns ≤ 2^i µs`, or [`BUCKETS`] (`+Inf`) when there is none.
fn bucket_index(ns: u64) -> usize {
    let us = ns.div_ceil(1000);
    if us <= 1 {
        0
    } else {
        // ceil(log2(us)) for us ≥ 2.
        ((u64::BITS - (us - 1).leading_zeros()) as usize).min(BUCKETS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The obvious definition, as an oracle for the bit trick.
    fn naive_index(ns: u64) -> usize {
        (0..BUCKETS)
            .find(|&i| ns as f64 <= bucket_bound_secs(i) * 1e9)
            .unwrap_or(BUCKETS)
    }

    #[test]
    fn bucket_index_agrees_with_the_definition_at_and_around_every_bound() {
        let mut cases = vec![0, 1, 999, 1000, 1001, u64::MAX];
        for i in 0..=BUCKETS + 1 {
            let b = (1u64 << i) * 1000;
            cases.extend([b - 1, b, b + 1]);
        }
        for ns in cases {
            assert_eq!(bucket_index(ns), naive_index(ns), "ns = {ns}");
        }
    }

    #[test]
    fn observations_land_in_their_buckets_and_add_up() {
        let h = Histogram::new();
        h.observe(Duration::from_nanos(500)); // ≤ 1 µs
        h.observe(Duration::from_micros(3)); // ≤ 4 µs
        h.observe(Duration::from_millis(1)); // ≤ 1024 µs
        h.observe(Duration::from_secs(60)); // +Inf
        let s = h.snapshot();
        assert_eq!(s.count(), 4);
        assert_eq!((s.counts[0], s.counts[2], s.counts[10]), (1, 1, 1));
        assert_eq!(s.counts[BUCKETS], 1);
        assert_eq!(s.sum_ns, 500 + 3_000 + 1_000_000 + 60_000_000_000);
    }
}
