//! Latency histograms (HdrHistogram, microsecond resolution) shared by many client tasks.

use std::sync::Mutex;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest latency a histogram records exactly, in microseconds (larger values saturate).
const MAX_US: u64 = 600_000_000;

/// A latency histogram split into shards so concurrent client tasks rarely contend: each task
/// records into the shard its index picks. The std `Mutex` is never held across an await.
#[derive(Debug)]
pub struct LatencyRecorder {
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl LatencyRecorder {
    /// A recorder with `shards` shards.
    pub fn new(shards: usize) -> Self {
        let shards = (0..shards.max(1))
            .map(|_| Mutex::new(new_histogram()))
            .collect();
        LatencyRecorder { shards }
    }

    /// Records one latency given in nanoseconds.
    pub fn record_ns(&self, shard: usize, ns: u64) {
        let us = (ns / 1_000).max(1);
        let mut h = match self.shards[shard % self.shards.len()].lock() {
            Ok(h) => h,
            Err(poisoned) => poisoned.into_inner(),
        };
        h.saturating_record(us);
    }

    /// Merges every shard into one summary.
    pub fn summary(&self) -> LatencySummary {
        let mut all = new_histogram();
        for s in &self.shards {
            let h = match s.lock() {
                Ok(h) => h,
                Err(poisoned) => poisoned.into_inner(),
            };
            // Same bounds on both sides: adding cannot fail.
            let _ = all.add(&*h);
        }
        LatencySummary::of(&all)
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("constant histogram bounds are valid")
}

/// Percentiles of a latency distribution, in milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LatencySummary {
    /// Number of samples.
    pub count: u64,
    /// Mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest sample.
    pub max_ms: f64,
}

impl LatencySummary {
    fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return LatencySummary::default();
        }
        let ms = |us: u64| us as f64 / 1_000.0;
        LatencySummary {
            count: h.len(),
            mean_ms: h.mean() / 1_000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }

    /// Summary of plain samples given in nanoseconds.
    pub fn of_samples_ns(samples: impl IntoIterator<Item = u64>) -> Self {
        let mut h = new_histogram();
        for ns in samples {
            h.saturating_record((ns / 1_000).max(1));
        }
        LatencySummary::of(&h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_from_sharded_samples() {
        let r = LatencyRecorder::new(4);
        for i in 1..=1000u64 {
            r.record_ns(i as usize, i * 1_000_000);
        }
        let s = r.summary();
        assert_eq!(s.count, 1000);
        assert!((s.p50_ms - 500.0).abs() < 1.0, "{s:?}");
        assert!((s.p99_ms - 990.0).abs() < 1.0, "{s:?}");
        assert!((s.max_ms - 1000.0).abs() < 1.0, "{s:?}");
        assert_eq!(LatencyRecorder::new(1).summary().count, 0);
    }
}
