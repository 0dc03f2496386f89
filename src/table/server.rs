//! One upstream server's record: in-flight count, counters, least_time's latency, slow
//! start, weight and drain set at run time. Its health is `health.rs`'s.

use super::metrics::Histogram;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

/// One upstream server as every process sees it. Aligned to a cache line so that
/// workers busy with neighbouring servers do not contend.
#[repr(C, align(64))]
pub struct ServerRecord {
    /// Requests in flight, summed over all workers (what `least_conn` compares).
    pub(super) in_flight: AtomicU64,
    pub requests: AtomicU64,
    pub failures: AtomicU64,
    /// Passive health: failures in the window that started at `window_start`…
    pub(super) fails: AtomicU32,
    /// 1 while active health checks have the server down.
    pub(super) checked_down: AtomicU32,
    pub(super) window_start: AtomicU64,
    /// … and until when `max_fails` of them keep the server out (monotonic ms).
    pub(super) down_until: AtomicU64,
    pub(super) passed_in_a_row: AtomicU32,
    pub(super) failed_in_a_row: AtomicU32,
    pub checks_passed: AtomicU64,
    pub checks_failed: AtomicU64,
    /// least_time: peak-EWMA of the time to the response head, microseconds as f64 bits…
    pub(super) latency_us: AtomicU64,
    /// … and when the last sample came in (monotonic ms; 0 = never).
    pub(super) latency_stamp: AtomicU64,
    /// When `in_flight` last went up from zero (monotonic ms).
    pub(super) busy_since: AtomicU64,
    /// Time to the response head, for /metrics.
    pub response_time: Histogram,
    /// 1 while `gatewayctl drain` has the server out of rotation.
    pub(super) draining: AtomicU32,
    /// A weight set by `gatewayctl weight` (0: none)…
    pub(super) weight_set: AtomicU32,
    /// … and the file's weight it replaced: a reload with another weight in the file wins.
    pub(super) weight_set_over: AtomicU32,
    /// When the server last came back (health check passed again, `enable`; monotonic
    /// ms), where slow start ramps from.
    pub(super) rejoined_at: AtomicU64,
}

/// How fast the peak-EWMA forgets: the weight of the old value after `t` ms is
/// `exp(-t / LATENCY_DECAY_MS)`. An idle server's average fades to the others' level in
/// `ln(ratio)` of these (from 300 ms to 0.3 ms: 7 of them), and it gets a request only
/// then: at 2 s a server that had been slow waited 14 s for its first request when fast
/// again, 1 to 3 of 550 sequential requests in 15 s. At 500 ms it is back within about
/// 3.5 s, and a server that stays slow still gets about one request per fade (its peak
/// sample resets the average, and while it has a request in flight it is not faded).
pub const LATENCY_DECAY_MS: f64 = 500.0;

/// What least_time reckons a server that has never answered and has a request in flight
/// takes (1 s): it waits for that answer before it gets more.
const UNANSWERED_BUSY_US: f64 = 1_000_000.0;

impl ServerRecord {
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Relaxed)
    }

    /// A new time-to-response-head sample: a slower answer than the average is taken at
    /// once (the peak), a faster one is averaged in with a weight that grows with the time
    /// since the last sample.
    pub fn record_latency(&self, sample_us: f64, now_ms: u64) {
        let last = self.latency_stamp.swap(now_ms.max(1), Relaxed);
        let old = f64::from_bits(self.latency_us.load(Relaxed));
        let new = if last == 0 || sample_us >= old {
            sample_us
        } else {
            let kept = (-(now_ms.saturating_sub(last) as f64) / LATENCY_DECAY_MS).exp();
            old * kept + sample_us * (1.0 - kept)
        };
        self.latency_us.store(new.to_bits(), Relaxed);
    }

    /// The average as the last sample left it, in microseconds (for status).
    pub fn latency_average_us(&self) -> f64 {
        f64::from_bits(self.latency_us.load(Relaxed))
    }

    /// The latency least_time reckons with now, in microseconds.
    ///
    /// An idle server's average fades towards zero while it gets no samples, so a server
    /// that was slow is tried again after a while and wins its share back if it is fast
    /// again. Once it has requests in flight it is not faded: it counts at least its
    /// average, and at least as long as it has been busy without answering, so a server
    /// that is stuck, or has never answered, gets one request at a time, not a flood.
    pub fn latency_us(&self, now_ms: u64) -> f64 {
        let last = self.latency_stamp.load(Relaxed);
        let average = f64::from_bits(self.latency_us.load(Relaxed));
        if self.in_flight() == 0 {
            let since_ms = now_ms.saturating_sub(last) as f64;
            return average * (-since_ms / LATENCY_DECAY_MS).exp();
        }
        if last == 0 {
            return UNANSWERED_BUSY_US;
        }
        let silent_since = last.max(self.busy_since.load(Relaxed));
        average.max(now_ms.saturating_sub(silent_since) as f64 * 1000.0)
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Relaxed) != 0
    }

    /// Takes the server out of rotation (`true`) or puts it back; putting it back counts
    /// as coming back, for slow start.
    pub fn set_draining(&self, draining: bool, now_ms: u64) {
        let was = self.draining.swap(u32::from(draining), Relaxed) != 0;
        if was && !draining {
            self.rejoined_at.store(now_ms, Relaxed);
        }
    }

    /// The server (re)joins now: slow start ramps from here.
    pub fn mark_rejoined(&self, now_ms: u64) {
        self.rejoined_at.store(now_ms, Relaxed);
    }

    /// The weight to balance with: one set at run time, unless the file's weight for the
    /// server has changed since (a reload read a new one).
    pub fn weight(&self, file_weight: u32) -> u32 {
        let set = self.weight_set.load(Relaxed);
        if set != 0 && self.weight_set_over.load(Relaxed) == file_weight {
            set
        } else {
            file_weight
        }
    }

    pub fn set_weight(&self, weight: u32, file_weight: u32) {
        self.weight_set_over.store(file_weight, Relaxed);
        self.weight_set.store(weight, Relaxed);
    }

    /// Slow start: the share of its weight a server gets `slow_start_ms` after it came
    /// back (health checks, the end of a `max_fails` period, `enable`), growing linearly
    /// from 1/20 to all of it. A server that never left gets all of it.
    pub fn ramp(&self, now_ms: u64, slow_start_ms: u64) -> f64 {
        if slow_start_ms == 0 {
            return 1.0;
        }
        let mut since = self.rejoined_at.load(Relaxed);
        let passive_end = self.down_until.load(Relaxed);
        if passive_end <= now_ms {
            since = since.max(passive_end);
        }
        if since == 0 {
            return 1.0;
        }
        let part = now_ms.saturating_sub(since) as f64 / slow_start_ms as f64;
        part.clamp(0.05, 1.0)
    }

    pub(super) fn reset(&self) {
        for counter in [
            &self.in_flight,
            &self.requests,
            &self.failures,
            &self.window_start,
            &self.down_until,
            &self.checks_passed,
            &self.checks_failed,
            &self.latency_us,
            &self.latency_stamp,
            &self.busy_since,
            &self.rejoined_at,
        ] {
            counter.store(0, Relaxed);
        }
        for flag in [&self.draining, &self.weight_set, &self.weight_set_over] {
            flag.store(0, Relaxed);
        }
        self.response_time.reset();
        self.fails.store(0, Relaxed);
        self.clear_checks();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> crate::table::Table {
        crate::table::Table::create().unwrap()
    }

    #[test]
    fn peak_ewma_takes_a_slow_answer_at_once_and_averages_fast_ones_in() {
        let t = table();
        let s = t.server(0);
        assert_eq!(s.latency_us(1_000), 0.0, "no samples: tried first");
        s.record_latency(1_000.0, 1_000);
        assert_eq!(s.latency_us(1_000), 1_000.0);
        s.record_latency(50_000.0, 1_010);
        assert_eq!(s.latency_us(1_010), 50_000.0, "the peak counts at once");
        // Fast answers bring it down, faster the longer the gap between samples.
        s.record_latency(1_000.0, 1_020);
        let after_one = s.latency_us(1_020);
        assert!(after_one > 49_000.0, "{after_one}");
        for ms in (1_020..5_020).step_by(10) {
            s.record_latency(1_000.0, ms);
        }
        let after_4s = s.latency_us(5_010);
        assert!(after_4s < 8_000.0, "back near 1 ms after 4 s: {after_4s}");
    }

    #[test]
    fn latency_fades_while_idle_but_not_while_requests_hang() {
        let t = table();
        let s = t.server(0);
        s.record_latency(20_000.0, 1_000);
        let faded = s.latency_us(9_000);
        assert!(faded < 400.0, "8 s without samples: {faded}");
        let share = t.share(0).server(0);
        share.enter();
        let now = crate::sys::monotonic_ms();
        assert!(
            s.latency_us(now) >= 20_000.0,
            "tried again: counts its average until it answers"
        );
        assert!(
            s.latency_us(now + 60_000) >= 60_000_000.0,
            "busy for a minute without an answer"
        );
        share.leave();
        let fresh = t.server(1);
        t.share(0).server(1).enter();
        assert_eq!(
            fresh.latency_us(now),
            UNANSWERED_BUSY_US,
            "never answered, one in flight: wait for it"
        );
    }

    #[test]
    fn slow_start_ramps_from_a_twentieth_to_all_after_a_server_comes_back() {
        let t = table();
        let s = t.server(0);
        assert_eq!(s.ramp(50_000, 10_000), 1.0, "never left");
        s.set_draining(true, 1_000);
        assert!(s.draining());
        s.set_draining(false, 100_000);
        assert_eq!(s.ramp(100_000, 10_000), 0.05);
        assert!((s.ramp(105_000, 10_000) - 0.5).abs() < 1e-9);
        assert_eq!(s.ramp(110_000, 10_000), 1.0);
        assert_eq!(s.ramp(100_000, 0), 1.0, "no slow_start");
        // The end of a max_fails period is a return too.
        let p = t.server(1);
        assert!(p.record_failure(200_000, 1, 10_000));
        assert!(!p.is_up(205_000));
        assert!((p.ramp(212_000, 10_000) - 0.2).abs() < 1e-9);
    }

    #[test]
    fn a_weight_set_at_run_time_holds_until_the_file_says_otherwise() {
        let t = table();
        let s = t.server(0);
        assert_eq!(s.weight(3), 3);
        s.set_weight(10, 3);
        assert_eq!(
            s.weight(3),
            10,
            "a reload with the same file weight keeps it"
        );
        assert_eq!(s.weight(5), 5, "a new weight in the file wins");
    }
}
