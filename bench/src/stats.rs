//! Latency samples and their summary (throughput, median, 99th percentile).
//!
//! Every operation's latency is kept (as microseconds in a `u32`), so percentiles are exact. A
//! 10-second level at 20,000 ops/s keeps 200,000 samples: under a megabyte.

use std::time::Duration;

/// Latencies of one worker (or of all workers once merged), in microseconds.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    micros: Vec<u32>,
    /// Operations that failed (not counted in the latencies).
    pub errors: u64,
}

impl Samples {
    pub fn record(&mut self, latency: Duration) {
        self.micros.push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
    }

    /// Latencies recorded (failures not counted).
    pub fn len(&self) -> usize {
        self.micros.len()
    }

    pub fn merge(&mut self, other: Samples) {
        self.micros.extend(other.micros);
        self.errors += other.errors;
    }

    /// The latency at quantile `q` (0.0–1.0), in milliseconds; `None` without samples.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let mut sorted = self.micros.clone();
        sorted.sort_unstable();
        quantile_of_sorted(&sorted, q).map(|us| us as f64 / 1000.0)
    }

    /// Throughput and percentiles over `elapsed`.
    pub fn summary(&self, elapsed: Duration) -> Summary {
        let mut sorted = self.micros.clone();
        sorted.sort_unstable();
        let secs = elapsed.as_secs_f64().max(1e-9);
        Summary {
            ops: sorted.len() as u64,
            errors: self.errors,
            ops_per_sec: sorted.len() as f64 / secs,
            p50_ms: quantile_of_sorted(&sorted, 0.50).map(|us| us as f64 / 1000.0),
            p99_ms: quantile_of_sorted(&sorted, 0.99).map(|us| us as f64 / 1000.0),
        }
    }
}

/// The latencies of one or more measured stretches of a level and the time they took together:
/// a level measured in rounds (interleaved with the other system's) is summed up as one.
#[derive(Debug, Default, Clone)]
pub struct Level {
    samples: Samples,
    elapsed: Duration,
}

impl Level {
    pub fn new(samples: Samples, elapsed: Duration) -> Level {
        Level { samples, elapsed }
    }

    /// Adds another stretch of the same level.
    pub fn merge(&mut self, other: Level) {
        self.samples.merge(other.samples);
        self.elapsed += other.elapsed;
    }

    /// Throughput over all stretches' time, percentiles over all their operations.
    pub fn summary(&self) -> Summary {
        self.samples.summary(self.elapsed)
    }
}

/// Nearest-rank quantile of sorted values.
fn quantile_of_sorted(sorted: &[u32], q: f64) -> Option<u32> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// What one measured level produced.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub ops: u64,
    pub errors: u64,
    pub ops_per_sec: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// Median of durations (the failover figure); `None` when empty.
pub fn median(values: &[Duration]) -> Option<Duration> {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    match sorted.len() {
        0 => None,
        n if n % 2 == 1 => Some(sorted[n / 2]),
        n => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2),
    }
}

/// Least-squares slope of `(x, y)` points (y per unit of x); `None` with fewer than two points.
pub fn slope(points: &[(f64, f64)]) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    let n = points.len() as f64;
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let cov: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    let var: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    (var > 0.0).then(|| cov / var)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_use_the_nearest_rank() {
        let mut samples = Samples::default();
        for ms in 1..=100u64 {
            samples.record(Duration::from_millis(ms));
        }
        let summary = samples.summary(Duration::from_secs(1));
        assert_eq!(summary.ops, 100);
        assert_eq!(summary.p50_ms, Some(50.0));
        assert_eq!(summary.p99_ms, Some(99.0));
    }

    #[test]
    fn rounds_of_a_level_sum_up_as_one() {
        let stretch = |from: u64, to: u64, secs: u64| {
            let mut samples = Samples::default();
            for ms in from..=to {
                samples.record(Duration::from_millis(ms));
            }
            Level::new(samples, Duration::from_secs(secs))
        };
        // A slow round (1 s, 50 ops) and a fast one (3 s, 50 ops): 100 ops over 4 s, the
        // percentiles over both rounds' operations together.
        let mut level = stretch(51, 100, 1);
        level.merge(stretch(1, 50, 3));
        let summary = level.summary();
        assert_eq!(summary.ops, 100);
        assert!((summary.ops_per_sec - 25.0).abs() < 1e-9);
        assert_eq!(summary.p50_ms, Some(50.0));
        assert_eq!(summary.p99_ms, Some(99.0));
    }

    #[test]
    fn median_and_slope() {
        let d = Duration::from_millis;
        assert_eq!(median(&[d(5), d(1), d(3)]), Some(d(3)));
        assert_eq!(median(&[]), None);
        let s = slope(&[(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]).unwrap_or(0.0);
        assert!((s - 2.0).abs() < 1e-9);
    }
}
