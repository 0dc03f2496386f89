//! Counters every worker adds to and the supervisor reads for /metrics: latency
//! histograms and requests by status.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Upper bounds (seconds) of the latency histograms' buckets; one more counts the rest.
pub const LATENCY_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A latency histogram every worker adds to: counts per bucket (not cumulative) and the
/// sum in microseconds.
#[repr(C)]
#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, took: std::time::Duration) {
        let seconds = took.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(took.as_micros() as u64, Relaxed);
    }

    /// Cumulative counts per bucket (the last is the total) and the sum in seconds, as
    /// Prometheus wants them.
    pub fn read(&self) -> ([u64; LATENCY_BUCKETS.len() + 1], f64) {
        let mut cumulative = [0; LATENCY_BUCKETS.len() + 1];
        let mut running = 0;
        for (out, bucket) in cumulative.iter_mut().zip(&self.buckets) {
            running += bucket.load(Relaxed);
            *out = running;
        }
        (cumulative, self.sum_us.load(Relaxed) as f64 / 1e6)
    }

    /// The upper bound (seconds) of the bucket that holds quantile `q`, `None` when empty.
    pub fn quantile_bound(&self, q: f64) -> Option<f64> {
        quantile(&self.read().0, q)
    }

    pub(super) fn reset(&self) {
        for bucket in &self.buckets {
            bucket.store(0, Relaxed);
        }
        self.sum_us.store(0, Relaxed);
    }
}

/// The upper bound (seconds) of the bucket that holds quantile `q` of cumulative bucket
/// counts (as [`Histogram::read`] gives them, or the difference of two readings); `None`
/// when they count nothing.
pub fn quantile(cumulative: &[u64; LATENCY_BUCKETS.len() + 1], q: f64) -> Option<f64> {
    let total = cumulative[LATENCY_BUCKETS.len()];
    if total == 0 {
        return None;
    }
    let wanted = (q * total as f64).ceil() as u64;
    let bucket = cumulative.iter().position(|&c| c >= wanted)?;
    Some(LATENCY_BUCKETS[bucket.min(LATENCY_BUCKETS.len() - 1)])
}

/// Requests of an upstream: how many per status code, and how long they took in all.
#[repr(C)]
pub struct RequestMetrics {
    /// Index `status - 100`, for 100 to 599.
    codes: [AtomicU64; 500],
    pub duration: Histogram,
}

impl RequestMetrics {
    pub fn observe(&self, status: u16, took: std::time::Duration) {
        if let Some(count) = status
            .checked_sub(100)
            .and_then(|i| self.codes.get(usize::from(i)))
        {
            count.fetch_add(1, Relaxed);
        }
        self.duration.observe(took);
    }

    /// `(status, count)` for every status seen.
    pub fn codes(&self) -> Vec<(u16, u64)> {
        (100u16..)
            .zip(&self.codes)
            .map(|(code, count)| (code, count.load(Relaxed)))
            .filter(|&(_, count)| count > 0)
            .collect()
    }

    pub(super) fn reset(&self) {
        for count in &self.codes {
            count.store(0, Relaxed);
        }
        self.duration.reset();
    }
}
