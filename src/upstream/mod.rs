//! Upstream pools as a worker sees them: servers with their passive health, in-flight
//! counts and idle connections, and the policy that picks among them.

pub mod balancer;
pub mod pool;

use crate::config::{ServerConfig, UpstreamConfig};
use crate::table::{SharedServer, WorkerShare};
use balancer::{Balancer, Candidate, Select};
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Milliseconds on the machine's monotonic clock: the same in every worker, so passive
/// health deadlines in the shared table mean the same to all of them.
pub fn now_ms() -> u64 {
    crate::sys::monotonic_ms()
}

pub struct Server {
    pub config: ServerConfig,
    /// Health, counters and in-flight requests, shared with the other workers.
    pub shared: SharedServer,
    max_fails: u32,
    fail_timeout_ms: u64,
    pub pool: pool::Pool,
}

impl Server {
    pub fn is_up(&self, now: u64) -> bool {
        self.shared.record.is_up(now)
    }

    /// Counts a request sent to the server (each try counts).
    pub fn count_request(&self) {
        self.shared.record.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a failure against the server for passive health, and says so in the log
    /// when it takes the server out (for every worker).
    pub fn note_failure(&self, why: &str) {
        if self
            .shared
            .record
            .record_failure(now_ms(), self.max_fails, self.fail_timeout_ms)
        {
            tracing::warn!(
                server = %self.config.name,
                "server marked down for fail_timeout after {} failures; last: {why}",
                self.max_fails
            );
        }
    }

    pub fn note_success(&self) {
        self.shared.record.record_success();
    }
}

impl Candidate for Arc<Server> {
    fn weight(&self) -> u32 {
        self.config.weight
    }
    fn in_flight(&self) -> usize {
        self.shared.record.in_flight() as usize
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
    /// `records` are the table records of the upstream's servers, in config order.
    pub fn new(config: &UpstreamConfig, share: WorkerShare, records: &[usize]) -> Self {
        let servers = config
            .servers
            .iter()
            .zip(records)
            .map(|(s, &record)| {
                Arc::new(Server {
                    config: s.clone(),
                    shared: share.server(record),
                    // nginx's rule: the only server of an upstream is never taken out
                    // by passive failures (a 503 would be no better than trying it);
                    // active health checks still apply.
                    max_fails: if config.servers.len() == 1 {
                        0
                    } else {
                        config.max_fails
                    },
                    fail_timeout_ms: config.fail_timeout.as_millis() as u64,
                    pool: pool::Pool::new(config.keepalive),
                })
            })
            .collect();
        let weights: Vec<u32> = config.servers.iter().map(|s| s.weight).collect();
        // Validation guarantees a server; its record holds the upstream's rotation.
        let rotation = share.server(records[0]).record.rotation();
        Upstream {
            config: config.clone(),
            balancer: Balancer::new(config.policy, &weights, rotation),
            servers,
        }
    }

    /// Picks a server that is up and not in `tried`: a primary if any is up, else a
    /// backup.
    pub fn pick(&self, client: IpAddr, tried: &[usize]) -> Option<usize> {
        let now = now_ms();
        let servers = &self.servers;
        let usable = |i: usize, backup: bool| {
            servers[i].config.backup == backup && !tried.contains(&i) && servers[i].is_up(now)
        };
        self.balancer
            .pick(servers, client, |i| usable(i, false))
            .or_else(|| self.balancer.pick(servers, client, |i| usable(i, true)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(servers: &str) -> Upstream {
        let text = format!(
            "[[listener]]\nlisten = \"127.0.0.1:1\"\n[[route]]\nupstream = \"u\"\n[upstream.u]\nmax_fails = 1\nservers = [{servers}]\n"
        );
        let config = crate::config::parse(std::path::Path::new("t.toml"), &text).unwrap();
        let table = Box::leak(Box::new(crate::table::Table::create().unwrap()));
        let records: Vec<usize> = (0..config.upstreams[0].servers.len()).collect();
        Upstream::new(&config.upstreams[0], table.share(0), &records)
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
        u.servers[0].note_failure("test");
        u.servers[1].shared.record.record_check(false, 1, 1);
        assert_eq!(
            u.pick(ip, &[]),
            Some(2),
            "all primaries down (passive, active): the backup"
        );
        assert_eq!(u.pick(ip, &[2]), None);
    }
}
