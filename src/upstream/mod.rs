//! Upstream pools as a worker sees them: servers with their passive health, in-flight
//! counts and idle connections, and the policy that picks among them.

pub mod balancer;
pub mod pool;

use crate::config::{ServerConfig, UpstreamConfig};
use balancer::{Balancer, Candidate, Select};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// Milliseconds on a monotonic clock shared by everything in this process.
pub fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    // Start at 1 so that 0 can mean "never".
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

pub struct Server {
    pub config: ServerConfig,
    pub in_flight: AtomicUsize,
    pub requests: AtomicU64,
    pub failures: AtomicU64,
    pub passive: PassiveHealth,
    pub pool: pool::Pool,
}

impl Server {
    /// Counts a failure against the server for passive health, and says so in the log
    /// when it takes the server out.
    pub fn note_failure(&self, why: &str) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        if self.passive.record_failure(now_ms()) {
            tracing::warn!(
                server = %self.config.name,
                "server marked down for fail_timeout after {} failures; last: {why}",
                self.passive.max_fails()
            );
        }
    }
}

impl Candidate for Arc<Server> {
    fn weight(&self) -> u32 {
        self.config.weight
    }
    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
    fn key(&self) -> &str {
        &self.config.name
    }
}

pub struct Upstream {
    pub config: UpstreamConfig,
    pub servers: Vec<Arc<Server>>,
    balancer: Balancer,
}

impl Upstream {
    pub fn new(config: &UpstreamConfig) -> Self {
        let servers = config
            .servers
            .iter()
            .map(|s| {
                Arc::new(Server {
                    config: s.clone(),
                    in_flight: AtomicUsize::new(0),
                    requests: AtomicU64::new(0),
                    failures: AtomicU64::new(0),
                    passive: PassiveHealth::new(
                        config.max_fails,
                        config.fail_timeout.as_millis() as u64,
                    ),
                    pool: pool::Pool::new(config.keepalive),
                })
            })
            .collect();
        Upstream {
            config: config.clone(),
            balancer: Balancer::new(config.policy, config.servers.len()),
            servers,
        }
    }

    /// Picks a server that is up and not in `tried`: a primary if any is up, else a
    /// backup.
    pub fn pick(&self, client: IpAddr, tried: &[usize]) -> Option<usize> {
        let now = now_ms();
        let servers = &self.servers;
        let usable = |i: usize, backup: bool| {
            servers[i].config.backup == backup
                && !tried.contains(&i)
                && servers[i].passive.is_up(now)
        };
        self.balancer
            .pick(servers, client, |i| usable(i, false))
            .or_else(|| self.balancer.pick(servers, client, |i| usable(i, true)))
    }
}

/// Passive health (nginx's max_fails/fail_timeout): `max_fails` failures within
/// `fail_timeout` take a server out for `fail_timeout`; after that it gets traffic again
/// and the count starts over. `max_fails = 0` turns this off.
///
/// Pure bookkeeping on atomics with the time passed in, so it is tested without a clock.
pub struct PassiveHealth {
    max_fails: u32,
    fail_timeout_ms: u64,
    fails: AtomicU32,
    window_start: AtomicU64,
    down_until: AtomicU64,
}

impl PassiveHealth {
    pub fn new(max_fails: u32, fail_timeout_ms: u64) -> Self {
        PassiveHealth {
            max_fails,
            fail_timeout_ms,
            fails: AtomicU32::new(0),
            window_start: AtomicU64::new(0),
            down_until: AtomicU64::new(0),
        }
    }

    pub fn max_fails(&self) -> u32 {
        self.max_fails
    }

    pub fn is_up(&self, now: u64) -> bool {
        now >= self.down_until.load(Ordering::Relaxed)
    }

    /// Counts a failure; returns true when this failure took the server down.
    pub fn record_failure(&self, now: u64) -> bool {
        if self.max_fails == 0 {
            return false;
        }
        let start = self.window_start.load(Ordering::Relaxed);
        let fails = if now.saturating_sub(start) >= self.fail_timeout_ms {
            self.window_start.store(now, Ordering::Relaxed);
            self.fails.store(1, Ordering::Relaxed);
            1
        } else {
            self.fails.fetch_add(1, Ordering::Relaxed) + 1
        };
        if fails >= self.max_fails {
            self.fails.store(0, Ordering::Relaxed);
            self.window_start.store(0, Ordering::Relaxed);
            self.down_until
                .store(now + self.fail_timeout_ms, Ordering::Relaxed);
            return true;
        }
        false
    }

    pub fn record_success(&self) {
        if self.fails.load(Ordering::Relaxed) != 0 {
            self.fails.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_fails_within_fail_timeout_takes_a_server_down_for_fail_timeout() {
        let h = PassiveHealth::new(3, 10_000);
        assert!(!h.record_failure(1_000));
        assert!(!h.record_failure(2_000));
        assert!(h.is_up(2_000));
        assert!(h.record_failure(3_000));
        assert!(!h.is_up(3_000));
        assert!(!h.is_up(12_999));
        assert!(h.is_up(13_000));
        // Counting starts over once it is back.
        assert!(!h.record_failure(13_100));
    }

    #[test]
    fn failures_spread_wider_than_fail_timeout_do_not_add_up() {
        let h = PassiveHealth::new(2, 1_000);
        assert!(!h.record_failure(1_000));
        assert!(!h.record_failure(2_500));
        assert!(h.record_failure(2_600));
    }

    #[test]
    fn a_success_clears_the_count_and_zero_disables() {
        let h = PassiveHealth::new(2, 1_000);
        h.record_failure(1_000);
        h.record_success();
        assert!(!h.record_failure(1_100));
        let off = PassiveHealth::new(0, 1_000);
        for t in 0..10 {
            assert!(!off.record_failure(t));
        }
        assert!(off.is_up(10));
    }

    fn upstream(servers: &str) -> Upstream {
        let text = format!(
            "[[listener]]\nlisten = \"127.0.0.1:1\"\n[[route]]\nupstream = \"u\"\n[upstream.u]\nmax_fails = 1\nservers = [{servers}]\n"
        );
        let config = crate::config::parse(std::path::Path::new("t.toml"), &text).unwrap();
        Upstream::new(&config.upstreams[0])
    }

    #[test]
    fn backups_serve_only_while_no_primary_is_up() {
        let u = upstream(
            r#"{ address = "127.0.0.1:1" }, { address = "127.0.0.1:2" }, { address = "127.0.0.1:3", backup = true }"#,
        );
        let ip = IpAddr::from([127, 0, 0, 1]);
        for _ in 0..6 {
            assert_ne!(u.pick(ip, &[]), Some(2));
        }
        assert_eq!(
            u.pick(ip, &[0, 1]),
            Some(2),
            "all primaries tried: the backup"
        );
        u.servers[0].passive.record_failure(now_ms());
        u.servers[1].passive.record_failure(now_ms());
        assert_eq!(u.pick(ip, &[]), Some(2), "all primaries down: the backup");
        assert_eq!(u.pick(ip, &[2]), None);
    }
}
