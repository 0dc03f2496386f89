//! An upstream's own record: what belongs to the upstream rather than to any one of its
//! servers, so that it stays when servers come and go.

use super::metrics::RequestMetrics;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

/// One upstream as every process sees it.
#[repr(C, align(64))]
pub struct UpstreamRecord {
    /// The round-robin position: every worker draws from it, so the rotation is the
    /// upstream's, not each worker's.
    pub rotation: AtomicU64,
    pub budget: RetryBudget,
    /// Its requests by status and duration, for /metrics.
    pub requests: RequestMetrics,
}

impl UpstreamRecord {
    /// A fresh record for an upstream new to the table.
    pub(super) fn reset(&self) {
        self.rotation.store(0, Relaxed);
        for bucket in &self.budget.buckets {
            bucket.period.store(0, Relaxed);
        }
        self.requests.reset();
    }
}

/// Retries of the last 10 s, counted in five 2 s buckets shared by all workers.
#[repr(C)]
#[derive(Default)]
pub struct RetryBudget {
    buckets: [BudgetBucket; BUDGET_BUCKETS],
}

#[repr(C)]
#[derive(Default)]
struct BudgetBucket {
    /// Which 2 s period (plus one, so zero-filled memory is no period) the counts are of.
    period: AtomicU64,
    requests: AtomicU32,
    retries: AtomicU32,
}

const BUDGET_BUCKETS: usize = 5;
const BUDGET_BUCKET_MS: u64 = 2_000;
/// However little traffic there is, this many retries per 10 s are allowed (one a second,
/// like Linkerd's minimum retries per second): failed requests on a quiet upstream are
/// still retried.
pub const BUDGET_MIN_RETRIES: u64 = 10;

impl RetryBudget {
    fn bucket(&self, now_ms: u64) -> &BudgetBucket {
        let period = now_ms / BUDGET_BUCKET_MS + 1;
        let bucket = &self.buckets[(period % BUDGET_BUCKETS as u64) as usize];
        let seen = bucket.period.load(Relaxed);
        if seen != period
            && bucket
                .period
                .compare_exchange(seen, period, Relaxed, Relaxed)
                .is_ok()
        {
            // Racing workers may lose a count or two at the turn of a period: tolerated.
            bucket.requests.store(0, Relaxed);
            bucket.retries.store(0, Relaxed);
        }
        bucket
    }

    /// Counts a request to the upstream.
    pub fn note_request(&self, now_ms: u64) {
        self.bucket(now_ms).requests.fetch_add(1, Relaxed);
    }

    /// Takes one retry from the budget if `share` of the last 10 s of requests (at least
    /// [`BUDGET_MIN_RETRIES`] when `share` > 0) allows another.
    pub fn try_retry(&self, now_ms: u64, share: f64) -> bool {
        if share <= 0.0 {
            return false;
        }
        let current = self.bucket(now_ms);
        let newest = now_ms / BUDGET_BUCKET_MS + 1;
        let (mut requests, mut retries) = (0u64, 0u64);
        for bucket in &self.buckets {
            let period = bucket.period.load(Relaxed);
            if period + (BUDGET_BUCKETS as u64) > newest {
                requests += u64::from(bucket.requests.load(Relaxed));
                retries += u64::from(bucket.retries.load(Relaxed));
            }
        }
        let allowed = ((requests as f64 * share) as u64).max(BUDGET_MIN_RETRIES);
        if retries >= allowed {
            return false;
        }
        current.retries.fetch_add(1, Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retry_budget_allows_its_share_of_the_last_ten_seconds() {
        let b = RetryBudget::default();
        for _ in 0..BUDGET_MIN_RETRIES {
            assert!(b.try_retry(1_000, 0.2), "the minimum on a quiet upstream");
        }
        assert!(!b.try_retry(1_000, 0.2));
        assert!(!b.try_retry(1_000, 0.0) && !RetryBudget::default().try_retry(0, 0.0));
        for _ in 0..100 {
            b.note_request(3_000);
        }
        let granted = (0..100).filter(|_| b.try_retry(3_500, 0.2)).count();
        assert_eq!(
            granted as u64,
            20 - BUDGET_MIN_RETRIES,
            "20% of 100, 3 used"
        );
        // Ten seconds on, the old requests and retries are forgotten.
        assert_eq!(
            (0..10).filter(|_| b.try_retry(14_000, 0.2)).count() as u64,
            BUDGET_MIN_RETRIES
        );
    }
}
