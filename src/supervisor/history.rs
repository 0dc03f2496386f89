//! The last minutes of each upstream, for the live page's charts (`/status/history`):
//! every second the supervisor reads each upstream's request counters and latency
//! histogram from the table and keeps the second's request rate, error rate (5xx
//! answers per request) and p99, for [`KEPT`] seconds.

use super::status::Snapshot;
use crate::table::assignment::per_upstream;
use crate::table::{Table, LATENCY_BUCKETS};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

pub const EVERY: Duration = Duration::from_secs(1);
/// Five minutes of seconds.
pub const KEPT: usize = 300;

/// One second of an upstream.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Point {
    /// Seconds since the epoch.
    pub t: i64,
    pub rps: f64,
    /// 5xx answers per request, 0 to 1.
    pub error_rate: f64,
    /// The bucket bound that holds the second's 99th percentile; none without requests.
    pub p99_ms: Option<f64>,
}

/// The points of every upstream, shared with the admin listener.
#[derive(Clone, Default)]
pub struct History(Arc<Mutex<BTreeMap<String, VecDeque<Point>>>>);

impl History {
    pub fn json(&self) -> String {
        let upstreams = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let doc = serde_json::json!({
            "interval_s": EVERY.as_secs(),
            "upstreams": upstreams,
        });
        serde_json::to_string(&doc).unwrap_or_default()
    }
}

/// What was read of an upstream at the last tick.
#[derive(Clone, Copy)]
struct Counted {
    requests: u64,
    errors: u64,
    buckets: [u64; LATENCY_BUCKETS.len() + 1],
}

/// Samples every [`EVERY`] until the supervisor is gone.
pub async fn keep(view: watch::Receiver<Arc<Snapshot>>, table: &'static Table, history: History) {
    let mut last: BTreeMap<String, Counted> = BTreeMap::new();
    let mut ticks = tokio::time::interval(EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if view.has_changed().is_err() {
            return;
        }
        let snapshot = view.borrow().clone();
        let now = crate::sys::unix_seconds();
        let mut current = BTreeMap::new();
        for (upstream, own, _) in per_upstream(&snapshot.config, &snapshot.records) {
            let metrics = &table.upstream(own).requests;
            let codes = metrics.codes();
            let counted = Counted {
                requests: codes.iter().map(|(_, n)| n).sum(),
                errors: codes
                    .iter()
                    .filter(|(code, _)| *code >= 500)
                    .map(|(_, n)| n)
                    .sum(),
                buckets: metrics.duration.read().0,
            };
            current.insert(upstream.name.clone(), counted);
        }
        let mut kept = history.0.lock().unwrap_or_else(|p| p.into_inner());
        kept.retain(|name, _| current.contains_key(name));
        for (name, now_counted) in &current {
            // A first tick, or counters that went back (a record reused): no point.
            let Some(before) = last.get(name) else {
                continue;
            };
            if now_counted.requests < before.requests {
                continue;
            }
            let point = point(now, before, now_counted);
            let points = kept.entry(name.clone()).or_default();
            points.push_back(point);
            while points.len() > KEPT {
                points.pop_front();
            }
        }
        drop(kept);
        last = current;
    }
}

fn point(t: i64, before: &Counted, now: &Counted) -> Point {
    let requests = now.requests - before.requests;
    let errors = now.errors.saturating_sub(before.errors);
    let mut buckets = [0u64; LATENCY_BUCKETS.len() + 1];
    for (i, b) in buckets.iter_mut().enumerate() {
        *b = now.buckets[i].saturating_sub(before.buckets[i]);
    }
    Point {
        t,
        rps: requests as f64 / EVERY.as_secs_f64(),
        error_rate: if requests == 0 {
            0.0
        } else {
            errors as f64 / requests as f64
        },
        p99_ms: crate::table::quantile(&buckets, 0.99).map(|s| s * 1000.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_point_is_the_second_between_two_readings() {
        let mut before = Counted {
            requests: 10,
            errors: 1,
            buckets: [0; LATENCY_BUCKETS.len() + 1],
        };
        before.buckets.iter_mut().for_each(|b| *b = 10);
        let mut now = before;
        now.requests = 110;
        now.errors = 6;
        // 100 more requests: 98 in the first bucket, 2 in the last.
        for (i, b) in now.buckets.iter_mut().enumerate() {
            *b += if i + 1 == LATENCY_BUCKETS.len() + 1 {
                100
            } else {
                98
            };
        }
        let p = point(7, &before, &now);
        assert_eq!((p.t, p.rps, p.error_rate), (7, 100.0, 0.05));
        assert_eq!(
            p.p99_ms,
            Some(LATENCY_BUCKETS[LATENCY_BUCKETS.len() - 1] * 1000.0)
        );
        let idle = point(8, &now, &now);
        assert_eq!((idle.rps, idle.error_rate, idle.p99_ms), (0.0, 0.0, None));
    }
}
