//! A server's health as every process sees it: passive (nginx's max_fails and
//! fail_timeout, counted by the workers from the failures of real requests) and active
//! (the supervisor's checks, fall and rise).

use super::server::ServerRecord;
use std::sync::atomic::Ordering::Relaxed;

impl ServerRecord {
    /// Up for traffic: neither health checks nor passive failures have it down.
    pub fn is_up(&self, now_ms: u64) -> bool {
        !self.checked_down() && !self.passive_down(now_ms)
    }

    pub fn checked_down(&self) -> bool {
        self.checked_down.load(Relaxed) != 0
    }

    pub fn passive_down(&self, now_ms: u64) -> bool {
        now_ms < self.down_until.load(Relaxed)
    }

    /// Passive health (nginx's max_fails/fail_timeout): `max_fails` failures within
    /// `fail_timeout` take the server out for `fail_timeout`; after that it gets traffic
    /// again and the count starts over. `max_fails = 0` turns this off. Returns true when
    /// this failure took the server down.
    pub fn record_failure(&self, now_ms: u64, max_fails: u32, fail_timeout_ms: u64) -> bool {
        self.failures.fetch_add(1, Relaxed);
        if max_fails == 0 {
            return false;
        }
        let start = self.window_start.load(Relaxed);
        let fails = if now_ms.saturating_sub(start) >= fail_timeout_ms {
            self.window_start.store(now_ms, Relaxed);
            self.fails.store(1, Relaxed);
            1
        } else {
            self.fails.fetch_add(1, Relaxed) + 1
        };
        if fails >= max_fails {
            self.fails.store(0, Relaxed);
            self.window_start.store(0, Relaxed);
            // Only the failure that takes an up server down says so: workers failing at
            // the same moment must not each report (and prolong) the same event.
            let until = self.down_until.load(Relaxed);
            return until <= now_ms
                && self
                    .down_until
                    .compare_exchange(until, now_ms + fail_timeout_ms, Relaxed, Relaxed)
                    .is_ok();
        }
        false
    }

    /// Ends a `max_fails` period now (a health check just reached the server): a server
    /// that came back in a moment is not kept out for the rest of `fail_timeout`. Slow
    /// start runs from now. True when this call ended it (one caller of many at the same
    /// moment).
    pub fn end_passive_down(&self, now: u64) -> bool {
        let until = self.down_until.load(Relaxed);
        until > now
            && self
                .down_until
                .compare_exchange(until, now, Relaxed, Relaxed)
                .is_ok()
    }

    pub fn record_success(&self) {
        if self.fails.load(Relaxed) != 0 {
            self.fails.store(0, Relaxed);
        }
    }

    /// Counts one active health check; `fall` failures in a row take the server down,
    /// `rise` passes in a row bring it back. Returns the new state when it changed
    /// (`Some(true)` = up again). Only the supervisor's checker writes these.
    pub fn record_check(&self, passed: bool, fall: u32, rise: u32, now_ms: u64) -> Option<bool> {
        let down = self.checked_down();
        if passed {
            self.checks_passed.fetch_add(1, Relaxed);
            let _ = self.end_passive_down(now_ms);
            self.failed_in_a_row.store(0, Relaxed);
            let streak = self.passed_in_a_row.fetch_add(1, Relaxed) + 1;
            if down && streak >= rise {
                self.checked_down.store(0, Relaxed);
                self.rejoined_at.store(now_ms, Relaxed);
                return Some(true);
            }
        } else {
            self.checks_failed.fetch_add(1, Relaxed);
            self.passed_in_a_row.store(0, Relaxed);
            let streak = self.failed_in_a_row.fetch_add(1, Relaxed) + 1;
            if !down && streak >= fall {
                self.checked_down.store(1, Relaxed);
                return Some(false);
            }
        }
        None
    }

    /// Forgets active health (the upstream no longer has a health check).
    pub fn clear_checks(&self) {
        self.checked_down.store(0, Relaxed);
        self.passed_in_a_row.store(0, Relaxed);
        self.failed_in_a_row.store(0, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> crate::table::Table {
        crate::table::Table::create().unwrap()
    }

    #[test]
    fn max_fails_within_fail_timeout_takes_a_server_down_for_fail_timeout() {
        let t = table();
        let s = t.server(0);
        assert!(!s.record_failure(1_000, 3, 10_000));
        assert!(!s.record_failure(2_000, 3, 10_000));
        assert!(s.is_up(2_000));
        assert!(s.record_failure(3_000, 3, 10_000));
        assert!(!s.is_up(3_000));
        assert!(!s.is_up(12_999));
        assert!(s.is_up(13_000));
        // Counting starts over once it is back.
        assert!(!s.record_failure(13_100, 3, 10_000));
        assert_eq!(s.failures.load(Relaxed), 4);
    }

    #[test]
    fn only_the_failure_that_takes_the_server_down_reports_it() {
        let t = table();
        let s = t.server(0);
        assert!(s.record_failure(1_000, 1, 10_000));
        // Other workers' requests that were in flight fail too.
        assert!(!s.record_failure(1_001, 1, 10_000));
        assert!(!s.record_failure(5_000, 1, 10_000));
        assert!(s.is_up(11_000), "late failures do not prolong the event");
        assert!(s.record_failure(11_000, 1, 10_000), "a new event");
    }

    #[test]
    fn failures_spread_wider_than_fail_timeout_do_not_add_up() {
        let t = table();
        let s = t.server(0);
        assert!(!s.record_failure(1_000, 2, 1_000));
        assert!(!s.record_failure(2_500, 2, 1_000));
        assert!(s.record_failure(2_600, 2, 1_000));
    }

    #[test]
    fn a_success_clears_the_count_and_zero_max_fails_disables() {
        let t = table();
        let s = t.server(0);
        s.record_failure(1_000, 2, 1_000);
        s.record_success();
        assert!(!s.record_failure(1_100, 2, 1_000));
        let off = t.server(1);
        for now in 0..10 {
            assert!(!off.record_failure(now, 0, 1_000));
        }
        assert!(off.is_up(10));
    }

    #[test]
    fn health_checks_need_fall_failures_to_go_down_and_rise_passes_to_come_back() {
        let t = table();
        let s = t.server(0);
        assert_eq!(s.record_check(false, 2, 3, 0), None);
        assert_eq!(
            s.record_check(true, 2, 3, 0),
            None,
            "a pass breaks the streak"
        );
        assert_eq!(s.record_check(false, 2, 3, 0), None);
        assert!(s.is_up(0));
        assert_eq!(s.record_check(false, 2, 3, 0), Some(false));
        assert!(!s.is_up(0));
        assert_eq!(s.record_check(false, 2, 3, 0), None, "already down");
        assert_eq!(s.record_check(true, 2, 3, 0), None);
        assert_eq!(s.record_check(true, 2, 3, 0), None);
        assert_eq!(s.record_check(true, 2, 3, 0), Some(true));
        assert!(s.is_up(0));
        assert_eq!(s.checks_passed.load(Relaxed), 4);
        assert_eq!(s.checks_failed.load(Relaxed), 4);
    }
}
