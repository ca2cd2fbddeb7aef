//! Capacity at a latency target (W9): which typing loads to try, in what order, and what one
//! step measured. Pure logic; the workload that runs the steps is
//! `workloads::w9_capacity`.
//!
//! The load is stepped up a ladder of typist counts (1, 2, 4, 8, 12, 16, 24, 32, 48, …) until a
//! step fails (keystroke p99 at or over the target, or a delivery missing); then, optionally,
//! the gap between the highest passing step and the first failing one is bisected a few times.
//! The capacity is the highest passing step.

use serde::{Deserialize, Serialize};

/// The typist counts of the ladder up to `max`: 1, 2, 4, 8, then steps of a quarter to a half
/// (12, 16, 24, 32, 48, 64, 96, …).
pub fn rungs(max: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut n = 1usize;
    while n <= max {
        out.push(n);
        n = if n < 8 {
            n * 2
        } else if n.is_power_of_two() {
            n + n / 2
        } else {
            // n is 1.5 × a power of two: the next power of two.
            n / 3 * 4
        };
    }
    out
}

/// Chooses the next step from the results so far.
#[derive(Debug, Clone)]
pub struct Ladder {
    rungs: Vec<usize>,
    next_rung: usize,
    refine: usize,
    refined: usize,
    passed: Option<usize>,
    failed: Option<usize>,
}

impl Ladder {
    /// A ladder up to `max` typists, bisecting the last gap `refine` times at most.
    pub fn new(max: usize, refine: usize) -> Self {
        Ladder {
            rungs: rungs(max),
            next_rung: 0,
            refine,
            refined: 0,
            passed: None,
            failed: None,
        }
    }

    /// The typist count to try next; `None` when done.
    pub fn next(&self) -> Option<usize> {
        match self.failed {
            None => self.rungs.get(self.next_rung).copied(),
            Some(f) => {
                let p = self.passed.unwrap_or(0);
                (self.refined < self.refine && f > p + 1 && p > 0).then_some(p + (f - p) / 2)
            }
        }
    }

    /// Records the outcome of a step at `typists`.
    pub fn record(&mut self, typists: usize, pass: bool) {
        if self.failed.is_some() {
            self.refined += 1;
        } else {
            self.next_rung += 1;
        }
        if pass {
            self.passed = Some(self.passed.map_or(typists, |p| p.max(typists)));
        } else {
            self.failed = Some(self.failed.map_or(typists, |f| f.min(typists)));
        }
    }

    /// The highest passing typist count below the first failure (`None`: none passed).
    pub fn capacity(&self) -> Option<usize> {
        self.passed
    }

    /// The lowest failing typist count (`None`: every step tried passed).
    pub fn first_failure(&self) -> Option<usize> {
        self.failed
    }
}

/// What one step measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Step {
    /// Typists at this step.
    pub typists: usize,
    /// Keystrokes offered per second (typists × rate), each followed by a cursor update.
    pub keystrokes_per_s: f64,
    /// Seconds of typing.
    pub seconds: f64,
    /// Whether this is the fixed-load step (CPU per delivery) rather than a ladder step.
    pub fixed: bool,
    /// Deliveries expected: every keystroke and cursor update to every client but its sender.
    pub expected: u64,
    /// Deliveries received (first copies).
    pub received: u64,
    /// Keystroke latency, ms.
    pub p50_ms: f64,
    /// Keystroke latency p99, ms.
    pub p99_ms: f64,
    /// Keystroke latency max, ms.
    pub max_ms: f64,
    /// Cursor (awareness) latency p99, ms.
    pub awareness_p99_ms: f64,
    /// Server CPU seconds (user + system) from the first keystroke to the last delivery.
    pub server_cpu_s: f64,
    /// Server CPU per delivery, µs.
    pub cpu_us_per_delivery: f64,
    /// Of the server CPU, tandem's store writer thread's (absent for other servers).
    #[serde(default)]
    pub store_cpu_s: Option<f64>,
    /// Server CPU over the window, in cores (1.0: its core saturated).
    pub server_load: f64,
    /// Time the server was runnable but waited for its CPU (other processes on it), over the
    /// window, in cores: well above 0, the machine was not quiet and latencies are inflated.
    #[serde(default)]
    pub server_wait: f64,
    /// Generator CPU over the window, in cores (near 1.0: the generator limited the step).
    pub generator_load: f64,
    /// Whether the step passed: p99 under the target, every delivery arrived, no failure.
    pub pass: bool,
    /// Why it did not pass.
    pub failures: Vec<String>,
}

impl Step {
    /// Decides [`Step::pass`] against a p99 target in ms, adding the reasons it failed.
    pub fn judge(&mut self, p99_target_ms: f64) {
        if self.received < self.expected {
            self.failures.push(format!(
                "{} of {} deliveries missing",
                self.expected - self.received,
                self.expected
            ));
        }
        if !self.p99_ms.is_finite() || self.p99_ms >= p99_target_ms {
            self.failures.push(format!(
                "keystroke p99 {:.2} ms ≥ {p99_target_ms} ms",
                self.p99_ms
            ));
        }
        self.pass = self.failures.is_empty();
    }
}

/// The run with the median CPU per delivery (the lower middle of an even number).
pub fn median_run<'a>(runs: impl IntoIterator<Item = &'a Step>) -> Option<&'a Step> {
    let mut v: Vec<&Step> = runs.into_iter().collect();
    v.sort_by(|a, b| a.cpu_us_per_delivery.total_cmp(&b.cpu_us_per_delivery));
    let mid = v.len().saturating_sub(1) / 2;
    v.get(mid).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rungs_double_then_grow_by_half_steps() {
        assert_eq!(rungs(1), vec![1]);
        assert_eq!(rungs(100), vec![1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96]);
        assert_eq!(rungs(128).last(), Some(&128));
    }

    /// Runs a ladder against a server that passes up to `limit` typists; returns the steps
    /// tried and the capacity found.
    fn climb(max: usize, refine: usize, limit: usize) -> (Vec<usize>, Option<usize>) {
        let mut l = Ladder::new(max, refine);
        let mut tried = Vec::new();
        while let Some(t) = l.next() {
            tried.push(t);
            l.record(t, t <= limit);
            assert!(tried.len() < 100, "ladder does not end");
        }
        (tried, l.capacity())
    }

    #[test]
    fn ladder_stops_at_the_first_failure_and_bisects() {
        assert_eq!(climb(64, 0, 10), (vec![1, 2, 4, 8, 12], Some(8)));
        // 8 passes, 12 fails: 10 passes, 11 fails.
        assert_eq!(climb(64, 2, 10), (vec![1, 2, 4, 8, 12, 10, 11], Some(10)));
        // Bisection stops when the gap is closed.
        assert_eq!(climb(64, 5, 2), (vec![1, 2, 4, 3], Some(2)));
        // Everything passes: the top rung is the capacity, and no bisection.
        assert_eq!(climb(16, 3, 1000), (vec![1, 2, 4, 8, 12, 16], Some(16)));
        // Nothing passes: no capacity, no bisection below the first rung.
        assert_eq!(climb(16, 3, 0), (vec![1], None));
        // A ladder up to 0: no step (the fixed load alone).
        assert_eq!(climb(0, 3, 10), (vec![], None));
    }

    #[test]
    fn the_median_run_by_cpu_per_delivery() {
        let run = |cpu| Step {
            cpu_us_per_delivery: cpu,
            ..Default::default()
        };
        let runs = [run(9.0), run(6.0), run(7.5)];
        assert_eq!(median_run(&runs).map(|s| s.cpu_us_per_delivery), Some(7.5));
        assert_eq!(
            median_run(&runs[..2]).map(|s| s.cpu_us_per_delivery),
            Some(6.0)
        );
        assert!(median_run(&[]).is_none());
    }

    #[test]
    fn a_step_passes_only_on_time_and_complete() {
        let ok = Step {
            expected: 10,
            received: 10,
            p99_ms: 9.9,
            ..Default::default()
        };
        let mut s = ok.clone();
        s.judge(10.0);
        assert!(s.pass && s.failures.is_empty());
        let mut slow = Step {
            p99_ms: 10.0,
            ..ok.clone()
        };
        slow.judge(10.0);
        assert!(!slow.pass);
        let mut lost = Step {
            received: 9,
            ..ok.clone()
        };
        lost.judge(10.0);
        assert_eq!(
            lost.failures,
            vec!["1 of 10 deliveries missing".to_string()]
        );
        let mut nan = Step {
            p99_ms: f64::NAN,
            ..ok
        };
        nan.judge(10.0);
        assert!(!nan.pass);
    }
}
