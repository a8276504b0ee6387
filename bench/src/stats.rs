//! Latency recording (HDR histograms, microseconds) and the figures derived from it.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency a histogram tracks (anything slower is clamped): 5 minutes.
const MAX_TRACKABLE_US: u64 = 300_000_000;

/// A latency histogram in microseconds, 3 significant figures.
#[derive(Debug, Clone)]
pub struct Latencies(Histogram<u64>);

impl Default for Latencies {
    fn default() -> Self {
        Self::new()
    }
}

impl Latencies {
    #[expect(clippy::expect_used, reason = "constant bounds that are valid")]
    pub fn new() -> Self {
        // 1 µs .. 5 min at 3 significant digits: a few hundred KiB, fixed.
        Self(Histogram::new_with_bounds(1, MAX_TRACKABLE_US, 3).expect("valid histogram bounds"))
    }

    pub fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros())
            .unwrap_or(u64::MAX)
            .clamp(1, MAX_TRACKABLE_US);
        // Cannot fail: the value is clamped into the histogram's range.
        let _ = self.0.record(us);
    }

    pub fn merge(&mut self, other: &Latencies) {
        let _ = self.0.add(&other.0);
    }

    #[cfg(test)]
    pub fn count(&self) -> u64 {
        self.0.len()
    }

    pub fn percentiles(&self) -> Percentiles {
        if self.0.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            p50_us: self.0.value_at_quantile(0.50),
            p90_us: self.0.value_at_quantile(0.90),
            p99_us: self.0.value_at_quantile(0.99),
            p999_us: self.0.value_at_quantile(0.999),
            max_us: self.0.max(),
            mean_us: (self.0.mean() * 10.0).round() / 10.0,
        }
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

/// What one load phase measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Requests completed successfully within the measured window.
    pub requests: u64,
    /// Failed requests (transport error, timeout, non-2xx, truncated stream).
    pub errors: u64,
    /// First error seen, for the report.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    /// Length of the measured window.
    pub duration_s: f64,
    /// Successful requests per second over the window.
    pub rps: f64,
    /// Latency (non-streaming) or time to last byte (streaming).
    pub latency: Percentiles,
    /// Time to first body byte (streaming only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttfb: Option<Percentiles>,
    /// Open loop only: how late the generator sent requests behind their schedule
    /// (already included in `latency`, which counts from the scheduled time).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_lag: Option<Percentiles>,
    /// Closed loop with the gateway pinned: seconds its CPU was busy during the window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway_cpu_s: Option<f64>,
    /// Requests per second of gateway CPU (`requests / gateway_cpu_s`): what one core
    /// of the gateway serves, whether or not the load generator's side kept it busy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_gateway_cpu_s: Option<f64>,
}

impl Summary {
    /// Records the gateway CPU seconds the window cost.
    pub fn with_gateway_cpu(mut self, cpu_s: f64) -> Self {
        self.gateway_cpu_s = Some(cpu_s);
        self.per_gateway_cpu_s = (cpu_s > 0.0).then(|| self.requests as f64 / cpu_s);
        self
    }
}

/// Formats microseconds for humans: `87 µs`, `1.24 ms`, `2.10 s`.
pub fn fmt_us(us: u64) -> String {
    if us < 1_000 {
        format!("{us} µs")
    } else if us < 1_000_000 {
        format!("{:.2} ms", us as f64 / 1e3)
    } else {
        format!("{:.2} s", us as f64 / 1e6)
    }
}

/// Formats a signed difference in microseconds: `+42 µs`, `-3 µs`, `+1.20 ms`.
pub fn fmt_added_us(delta: i64) -> String {
    let sign = if delta < 0 { "-" } else { "+" };
    format!("{sign}{}", fmt_us(delta.unsigned_abs()))
}

/// Formats a rate: `12,345.6`.
pub fn fmt_rate(rps: f64) -> String {
    let whole = rps.trunc() as u64;
    let digits = whole.to_string();
    let mut grouped = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(c);
    }
    format!("{grouped}.{}", ((rps.fract() * 10.0).round() as u64).min(9))
}

/// `tollgate - direct` in microseconds.
pub fn added(direct: u64, via: u64) -> i64 {
    via as i64 - direct as i64
}

/// `via / direct`, `None` when `direct` is zero.
pub fn ratio(direct: f64, via: f64) -> Option<f64> {
    (direct > 0.0).then(|| via / direct)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut l = Latencies::new();
        for us in 1..=1000u64 {
            l.record(Duration::from_micros(us));
        }
        let p = l.percentiles();
        assert_eq!(l.count(), 1000);
        assert_eq!(p.p50_us, 500);
        assert_eq!(p.p90_us, 900);
        assert_eq!(p.p99_us, 990);
        assert_eq!(p.max_us, 1000);
    }

    #[test]
    fn merging_adds_counts_and_empty_is_zero() {
        let mut a = Latencies::new();
        let mut b = Latencies::new();
        a.record(Duration::from_micros(10));
        b.record(Duration::from_micros(20));
        b.record(Duration::from_nanos(1)); // clamped to 1 µs
        a.merge(&b);
        assert_eq!(a.count(), 3);
        assert_eq!(Latencies::new().percentiles(), Percentiles::default());
    }

    #[test]
    fn human_formatting() {
        assert_eq!(fmt_us(87), "87 µs");
        assert_eq!(fmt_us(1_240), "1.24 ms");
        assert_eq!(fmt_us(2_100_000), "2.10 s");
        assert_eq!(fmt_added_us(42), "+42 µs");
        assert_eq!(fmt_added_us(-3), "-3 µs");
        assert_eq!(fmt_added_us(1_200), "+1.20 ms");
        assert_eq!(fmt_rate(12_345.64), "12,345.6");
        assert_eq!(fmt_rate(999.0), "999.0");
        assert_eq!(fmt_rate(1_000_000.0), "1,000,000.0");
        assert_eq!(added(100, 160), 60);
        assert_eq!(ratio(0.0, 1.0), None);
        assert_eq!(ratio(2.0, 1.0), Some(0.5));
    }
}
