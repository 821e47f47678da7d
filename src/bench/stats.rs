//! Pure arithmetic of the reports: shares, rates, percentiles, summaries, number format.

use std::time::Duration;

use serde::Serialize;

/// The part of `total` that worker `index` of `workers` does: equal shares, the remainder
/// going one each to the first workers, so the shares add up to `total` exactly.
pub(super) fn share(total: u64, workers: u64, index: u64) -> u64 {
    if workers == 0 {
        return 0;
    }
    total / workers + u64::from(index < total % workers)
}

/// `amount` per second over `elapsed`; zero for an empty interval rather than infinity,
/// so a report never prints `inf` for a run that moved nothing.
pub(super) fn per_sec(amount: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 { 0.0 } else { amount as f64 / secs }
}

/// The `p`-th percentile (0..=100) of `sorted` by the nearest-rank method: the smallest
/// value with at least p% of the values at or below it, so it is always a measured value.
pub(super) fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    let n = sorted.len();
    if n == 0 {
        return None;
    }
    // Shaved by a relative hair so that 99.9% of 1000, which is 999.0000000000001 in
    // floating point, is rank 999 and not 1000.
    let rank = (p / 100.0 * n as f64 * (1.0 - 1e-12)).ceil() as usize;
    sorted.get(rank.clamp(1, n) - 1).copied()
}

/// Nanoseconds since `base`, the clock a run's connections stamp with.
pub(super) fn since(base: tokio::time::Instant) -> u64 {
    between(base, tokio::time::Instant::now())
}

/// Nanoseconds from `base` to `at` (zero if `at` is earlier).
pub(super) fn between(base: tokio::time::Instant, at: tokio::time::Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(base).as_nanos()).unwrap_or(u64::MAX)
}

/// Latency in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    /// Summarises latencies in nanoseconds; `None` for no samples.
    pub(super) fn of(mut nanos: Vec<u64>) -> Option<Percentiles> {
        nanos.sort_unstable();
        let us = |p: f64| percentile(&nanos, p).map(|ns| ns as f64 / 1e3);
        let mean = nanos.iter().map(|&ns| ns as f64).sum::<f64>() / nanos.len() as f64 / 1e3;
        Some(Percentiles {
            min: us(0.0)?,
            p50: us(50.0)?,
            p90: us(90.0)?,
            p99: us(99.0)?,
            p99_9: us(99.9)?,
            max: us(100.0)?,
            mean,
        })
    }
}

impl Percentiles {
    /// One report line: `<label> µs: min .. p50 .. p90 .. p99 .. p99.9 .. max .. mean ..`.
    pub(super) fn line(&self, label: &str) -> String {
        format!(
            "{label} µs: min {:.1}  p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  mean {:.1}\n",
            self.min, self.p50, self.p90, self.p99, self.p99_9, self.max, self.mean
        )
    }
}

/// Minimum, median and maximum of some per-connection figures.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

impl Summary {
    /// `None` for no values. The median of an even count is the mean of the middle two.
    pub(super) fn of(values: &[f64]) -> Option<Summary> {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let (first, last) = (*sorted.first()?, *sorted.last()?);
        let mid = sorted.len() / 2;
        let median = if sorted.len() % 2 == 1 { sorted[mid] } else { (sorted[mid - 1] + sorted[mid]) / 2.0 };
        Some(Summary { min: first, median, max: last })
    }
}

/// A rate rounded to a whole number with thousands separators: `1234567.8` -> `1,234,568`.
pub(super) fn grouped(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Bytes per second as decimal megabytes (10^6), the unit nats bench reports.
pub(super) fn mb(bytes_per_sec: f64) -> f64 {
    bytes_per_sec / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up() {
        assert_eq!((0..3).map(|i| share(10, 3, i)).collect::<Vec<_>>(), [4, 3, 3]);
        assert_eq!((0..4).map(|i| share(2, 4, i)).collect::<Vec<_>>(), [1, 1, 0, 0]);
        assert_eq!(share(7, 1, 0), 7);
        assert_eq!(share(7, 0, 0), 0);
        for total in 0..50 {
            for workers in 1..8 {
                assert_eq!((0..workers).map(|i| share(total, workers, i)).sum::<u64>(), total);
            }
        }
    }

    #[test]
    fn rates() {
        assert_eq!(per_sec(1000, Duration::from_millis(500)), 2000.0);
        assert_eq!(per_sec(1000, Duration::ZERO), 0.0);
        assert_eq!(mb(2_500_000.0), 2.5);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let hundred: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&hundred, 0.0), Some(1));
        assert_eq!(percentile(&hundred, 50.0), Some(50));
        assert_eq!(percentile(&hundred, 90.0), Some(90));
        assert_eq!(percentile(&hundred, 99.0), Some(99));
        assert_eq!(percentile(&hundred, 99.9), Some(100));
        assert_eq!(percentile(&hundred, 100.0), Some(100));
        let thousand: Vec<u64> = (1..=1000).collect();
        assert_eq!(percentile(&thousand, 99.9), Some(999));
        assert_eq!(percentile(&[7], 50.0), Some(7));
        assert_eq!(percentile(&[7], 99.9), Some(7));
        assert_eq!(percentile(&[1, 2], 50.0), Some(1));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn percentiles_in_microseconds() {
        assert_eq!(Percentiles::of(Vec::new()), None);
        let nanos: Vec<u64> = (1..=1000).rev().map(|i| i * 1000).collect();
        let p = Percentiles::of(nanos);
        assert_eq!(
            p,
            Some(Percentiles { min: 1.0, p50: 500.0, p90: 900.0, p99: 990.0, p99_9: 999.0, max: 1000.0, mean: 500.5 })
        );
    }

    #[test]
    fn a_percentile_line_names_every_figure() {
        let p = Percentiles { min: 1.0, p50: 2.0, p90: 3.0, p99: 4.0, p99_9: 5.0, max: 6.0, mean: 2.5 };
        assert_eq!(p.line("ack"), "ack µs: min 1.0  p50 2.0  p90 3.0  p99 4.0  p99.9 5.0  max 6.0  mean 2.5\n");
    }

    #[test]
    fn summaries() {
        assert_eq!(Summary::of(&[]), None);
        assert_eq!(Summary::of(&[3.0]), Some(Summary { min: 3.0, median: 3.0, max: 3.0 }));
        assert_eq!(Summary::of(&[5.0, 1.0, 3.0]), Some(Summary { min: 1.0, median: 3.0, max: 5.0 }));
        assert_eq!(Summary::of(&[4.0, 1.0, 2.0, 10.0]), Some(Summary { min: 1.0, median: 3.0, max: 10.0 }));
    }

    #[test]
    fn grouping() {
        assert_eq!(grouped(0.0), "0");
        assert_eq!(grouped(999.4), "999");
        assert_eq!(grouped(1000.0), "1,000");
        assert_eq!(grouped(1_234_567.8), "1,234,568");
        assert_eq!(grouped(123_456.0), "123,456");
        assert_eq!(grouped(-5.0), "0");
    }
}
