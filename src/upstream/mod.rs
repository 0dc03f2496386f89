//! Upstream pools as a worker sees them: servers with their passive health, in-flight
//! counts and idle connections, and the policy that picks among them.

pub mod affinity;
pub mod balancer;
pub mod connector;
pub mod http1;
pub mod pool;

use crate::config::{Policy, ServerConfig, UpstreamConfig};
use crate::table::{RequestMetrics, RetryBudget, SharedServer, WorkerShare};
use balancer::{affinity_hash, Balancer, Candidate, Select};
use http::{HeaderMap, HeaderValue, Uri};
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::RwLock;
use std::time::Duration;

/// Milliseconds on the machine's monotonic clock: the same in every worker, so passive
/// health deadlines in the shared table mean the same to all of them.
pub fn now_ms() -> u64 {
    crate::sys::monotonic_ms()
}

/// One server of an upstream, with this worker's idle connections to it.
pub struct Server {
    pub config: ServerConfig,
    /// Health, counters and in-flight requests, shared with the other workers.
    pub shared: SharedServer,
    max_fails: u32,
    fail_timeout_ms: u64,
    slow_start_ms: u64,
    pool: pool::Pool,
}

impl Server {
    /// May take a new request: it has an address, health checks and passive failures
    /// allow it, and it is not drained.
    pub fn takes_requests(&self, now: u64) -> bool {
        !self.config.unresolved && self.shared.record.is_up(now) && !self.shared.record.draining()
    }

    /// Out of rotation only because of its `max_fails` period: health checks, a drain
    /// and DNS would all let it serve.
    fn out_by_failures_only(&self, now: u64) -> bool {
        let record = self.shared.record;
        !self.config.unresolved
            && !record.checked_down()
            && !record.draining()
            && record.passive_down(now)
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

    /// The time the server took to its response head (least_time's sample).
    pub fn note_latency(&self, took: Duration) {
        let record = self.shared.record;
        record.record_latency(took.as_secs_f64() * 1e6, now_ms());
        record.response_time.observe(took);
    }
}

/// A server picked for one request: counts as in flight until dropped.
pub struct Lease {
    pub server: Arc<Server>,
}

impl Lease {
    pub fn new(server: Arc<Server>) -> Self {
        server.shared.enter();
        Lease { server }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.server.shared.leave();
    }
}

impl Candidate for Arc<Server> {
    fn weight(&self) -> u32 {
        self.shared.record.weight(self.config.weight)
    }
    fn ramp(&self) -> f64 {
        self.shared.record.ramp(now_ms(), self.slow_start_ms)
    }
    fn in_flight(&self) -> usize {
        self.shared.record.in_flight() as usize
    }
    fn latency_us(&self) -> f64 {
        self.shared.record.latency_us(now_ms())
    }
    fn key(&self) -> &str {
        &self.config.name
    }
}

pub struct Upstream {
    /// The upstream's settings. Its `servers` are left empty: the servers it has now are
    /// its [`ServerSet`], which changes while the worker runs.
    pub config: UpstreamConfig,
    set: RwLock<Arc<ServerSet>>,
    /// Shared by all workers, in the upstream's record.
    budget: &'static RetryBudget,
    rotation: &'static std::sync::atomic::AtomicU64,
    /// Its requests by status and duration, for /metrics (shared the same way).
    pub requests: &'static RequestMetrics,
}

/// The servers an upstream has at one moment, with what depends on them: the policy's
/// state and the sticky tokens. A request keeps the set it started with, retries
/// included; a change of servers (DNS, `add-server`, `remove-server`) makes a new set,
/// in which the servers that stay are the same ones, with their idle connections.
pub struct ServerSet {
    pub servers: Vec<Arc<Server>>,
    balancer: Balancer,
    /// With `sticky_cookie`: each server's token, and the `Set-Cookie` that hands it out.
    sticky: Option<Vec<(String, HeaderValue)>>,
}

/// What a request brings to the choice of its server, read from it once.
pub struct Affinity {
    /// What `ip_hash` or `hash` keeps together, hashed; `None` without a key.
    hash: Option<u64>,
    /// The server the request's sticky cookie names, if it names one of ours.
    sticky: Option<usize>,
}

impl Upstream {
    /// `record` is the upstream's table record, `server_records` its servers', in config
    /// order.
    pub fn new(
        config: &UpstreamConfig,
        share: WorkerShare,
        record: usize,
        server_records: &[usize],
    ) -> Self {
        let shared = share.upstream(record);
        let mut settings = config.clone();
        settings.servers = Vec::new();
        let upstream = Upstream {
            config: settings,
            set: RwLock::new(Arc::new(ServerSet {
                servers: Vec::new(),
                balancer: Balancer::new(config.policy, &[], &shared.rotation),
                sticky: None,
            })),
            budget: &shared.budget,
            rotation: &shared.rotation,
            requests: &shared.requests,
        };
        upstream.replace_servers(&config.servers, share, server_records);
        upstream
    }

    /// The servers as they are now.
    pub fn servers(&self) -> Arc<ServerSet> {
        self.set.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Serves with `servers` (table records `records`) from now on. A server that stays
    /// (same record, same address, same settings) is kept as it is, with its idle
    /// connections; one that goes finishes the requests that have it.
    pub fn replace_servers(&self, servers: &[ServerConfig], share: WorkerShare, records: &[usize]) {
        let config = &self.config;
        let old = self.servers();
        let servers: Vec<Arc<Server>> = servers
            .iter()
            .zip(records)
            .map(|(s, &record)| {
                let shared = share.server(record);
                let stays = old
                    .servers
                    .iter()
                    .find(|o| std::ptr::eq(o.shared.record, shared.record) && o.config == *s);
                if let Some(server) = stays {
                    return server.clone();
                }
                Arc::new(Server {
                    config: s.clone(),
                    shared,
                    // nginx's rule: the only server of an upstream is never taken out
                    // by passive failures (a 503 would be no better than trying it);
                    // active health checks still apply.
                    max_fails: if servers.len() == 1 {
                        0
                    } else {
                        config.max_fails
                    },
                    fail_timeout_ms: config.fail_timeout.as_millis() as u64,
                    slow_start_ms: config.slow_start.as_millis() as u64,
                    pool: pool::Pool::new(config.keepalive, config.idle_timeout),
                })
            })
            .collect();
        let weights: Vec<u32> = servers.iter().map(|s| s.config.weight).collect();
        let sticky = config.sticky_cookie.as_ref().map(|cookie| {
            servers
                .iter()
                .map(|s| {
                    let token = sticky_token(&config.name, &s.config.name);
                    let set = HeaderValue::from_str(&cookie.set_cookie(&token))
                        .expect("a token, a cookie name and fixed attributes");
                    (token, set)
                })
                .collect()
        });
        let set = Arc::new(ServerSet {
            balancer: Balancer::new(config.policy, &weights, self.rotation),
            servers,
            sticky,
        });
        *self.set.write().unwrap_or_else(|p| p.into_inner()) = set;
    }

    /// Picks a server of `set` that is up and not in `tried`: the one the sticky cookie
    /// names if it may serve, else what the policy chooses, a primary if any is up, else
    /// a backup. Says also whether the client must be given a (new) sticky cookie.
    pub fn pick(
        &self,
        set: &ServerSet,
        affinity: &Affinity,
        tried: &[usize],
    ) -> Option<(usize, bool)> {
        let now = now_ms();
        let servers = &set.servers;
        let usable = |i: usize| !tried.contains(&i) && servers[i].takes_requests(now);
        if let Some(i) = affinity.sticky.filter(|&i| usable(i)) {
            return Some((i, false));
        }
        let hash = affinity.hash;
        let chosen = set.pick_primary_then_backup(hash, usable).or_else(|| {
            // Every server is out, and some only by passive failures: try those
            // rather than answer 503 (nginx forgets the failures then, Envoy has its
            // panic threshold). Servers restarted one after the other come back in
            // a moment, and `max_fails` must not keep them all out for fail_timeout.
            let passive_only =
                |i: usize| !tried.contains(&i) && servers[i].out_by_failures_only(now);
            let chosen = set.pick_primary_then_backup(hash, passive_only)?;
            if servers[chosen].shared.record.end_passive_down(now) {
                tracing::warn!(
                    upstream = %self.config.name,
                    server = %servers[chosen].config.name,
                    "every server is out after max_fails: this one serves again"
                );
            }
            Some(chosen)
        })?;
        Some((chosen, set.sticky.is_some()))
    }

    /// Counts a request for the retry budget.
    pub fn note_request(&self) {
        self.budget.note_request(now_ms());
    }

    /// Takes a retry from the budget, if it has one left.
    pub fn try_retry(&self) -> bool {
        self.budget.try_retry(now_ms(), self.config.retry_budget)
    }

    /// What of the request bears on the choice of its server in `set` under this
    /// upstream's policy and sticky cookie.
    pub fn affinity(
        &self,
        set: &ServerSet,
        client: IpAddr,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> Affinity {
        let hash = match (&self.config.policy, &self.config.hash_key) {
            (Policy::IpHash, _) => Some(match client {
                IpAddr::V4(ip) => affinity_hash(&ip.octets()),
                IpAddr::V6(ip) => affinity_hash(&ip.octets()),
            }),
            (Policy::Hash, Some(key)) => affinity::hash_key(key, uri, headers).map(affinity_hash),
            _ => None,
        };
        let sticky = set.sticky.as_ref().and_then(|tokens| {
            let name = &self.config.sticky_cookie.as_ref()?.name;
            let token = affinity::cookie(headers, name)?;
            tokens.iter().position(|(t, _)| t == token)
        });
        Affinity { hash, sticky }
    }
}

impl ServerSet {
    /// What the policy chooses among the primaries `eligible` allows, else among its
    /// backups.
    fn pick_primary_then_backup(
        &self,
        hash: Option<u64>,
        eligible: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let servers = &self.servers;
        let primary = |i: usize| !servers[i].config.backup && eligible(i);
        let backup = |i: usize| servers[i].config.backup && eligible(i);
        self.balancer
            .pick(servers, hash, primary)
            .or_else(|| self.balancer.pick(servers, hash, backup))
    }

    /// Whether a server not in `tried` may take the request (a retry has somewhere to go).
    pub fn any_untried(&self, tried: &[usize]) -> bool {
        let now = now_ms();
        (0..self.servers.len()).any(|i| {
            let server = &self.servers[i];
            !tried.contains(&i) && (server.takes_requests(now) || server.out_by_failures_only(now))
        })
    }

    /// The `Set-Cookie` that pins a client to server `index`.
    pub fn sticky_cookie(&self, index: usize) -> Option<&HeaderValue> {
        self.sticky.as_ref().map(|tokens| &tokens[index].1)
    }
}

/// The sticky cookie's token for a server: derived from the upstream's name and the
/// server's address alone, so every worker, every reload and every gateway with the same
/// servers gives the same token, and one-way, so it does not reveal the address.
pub fn sticky_token(upstream: &str, server: &str) -> String {
    let mut input = Vec::with_capacity(upstream.len() + server.len() + 16);
    input.extend_from_slice(b"gateway-sticky\0");
    input.extend_from_slice(upstream.as_bytes());
    input.push(0);
    input.extend_from_slice(server.as_bytes());
    let digest = ring::digest::digest(&ring::digest::SHA256, &input);
    digest.as_ref()[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(servers: &str) -> Upstream {
        upstream_with(servers, "")
    }

    fn upstream_with(servers: &str, keys: &str) -> Upstream {
        let text = format!(
            "[[listener]]\nlisten = \"127.0.0.1:1\"\n[[route]]\nupstream = \"u\"\n[upstream.u]\nmax_fails = 1\nservers = [{servers}]\n{keys}"
        );
        let config = crate::config::parse(std::path::Path::new("t.toml"), &text).unwrap();
        let table = Box::leak(Box::new(crate::table::Table::create().unwrap()));
        let records: Vec<usize> = (0..config.upstreams[0].servers.len()).collect();
        Upstream::new(&config.upstreams[0], table.share(0), 0, &records)
    }

    #[test]
    fn backups_serve_only_while_no_primary_is_up() {
        let u = upstream(
            r#"{ address = "127.0.0.1:1" }, { address = "127.0.0.1:2" }, { address = "127.0.0.1:3", backup = true }"#,
        );
        let ip = affinity(&u, &[]);
        let pick = |tried: &[usize]| u.pick(&u.servers(), &ip, tried).map(|(i, _)| i);
        for _ in 0..6 {
            assert_ne!(pick(&[]), Some(2));
        }
        assert_eq!(pick(&[0, 1]), Some(2), "all primaries tried: the backup");
        u.servers().servers[0].note_failure("test");
        u.servers().servers[1]
            .shared
            .record
            .record_check(false, 1, 1, now_ms());
        assert_eq!(
            pick(&[]),
            Some(2),
            "all primaries down (passive, active): the backup"
        );
        // Nothing else left: the primary out by passive failures alone (not the one the
        // health check has down) is tried rather than a 503.
        assert_eq!(pick(&[2]), Some(0));
        assert_eq!(pick(&[0, 2]), None);
    }

    #[test]
    fn a_draining_server_gets_nothing_new_and_its_sticky_clients_move() {
        let u = upstream_with(
            r#"{ address = "127.0.0.1:1" }, { address = "127.0.0.1:2" }"#,
            "sticky_cookie = \"gw\"\n",
        );
        let token = sticky_token("u", "127.0.0.1:2");
        let pinned = affinity(&u, &[&format!("gw={token}")]);
        assert_eq!(u.pick(&u.servers(), &pinned, &[]), Some((1, false)));
        u.servers().servers[1]
            .shared
            .record
            .set_draining(true, now_ms());
        for _ in 0..6 {
            assert_eq!(u.pick(&u.servers(), &pinned, &[]), Some((0, true)));
        }
        assert!(!u.servers().any_untried(&[0]));
        u.servers().servers[1]
            .shared
            .record
            .set_draining(false, now_ms());
        assert_eq!(u.pick(&u.servers(), &pinned, &[]), Some((1, false)));
    }

    fn affinity(u: &Upstream, cookies: &[&str]) -> Affinity {
        let mut headers = HeaderMap::new();
        for c in cookies {
            headers.append(http::header::COOKIE, HeaderValue::from_str(c).unwrap());
        }
        let uri = Uri::from_static("/");
        u.affinity(&u.servers(), IpAddr::from([127, 0, 0, 1]), &uri, &headers)
    }

    #[test]
    fn a_sticky_cookie_pins_the_server_while_it_is_up_and_garbage_is_ignored() {
        let u = upstream_with(
            r#"{ address = "127.0.0.1:1" }, { address = "127.0.0.1:2" }, { address = "127.0.0.1:3" }"#,
            "sticky_cookie = \"gw\"\n",
        );
        let token = sticky_token("u", "127.0.0.1:2");
        assert_eq!(token.len(), 24);
        assert!(
            !token.contains("127"),
            "the token does not show the address"
        );
        assert_ne!(token, sticky_token("other", "127.0.0.1:2"));
        let pinned = affinity(&u, &[&format!("other=1; gw={token}")]);
        for _ in 0..10 {
            assert_eq!(u.pick(&u.servers(), &pinned, &[]), Some((1, false)));
        }
        assert_eq!(
            u.servers().sticky_cookie(1).unwrap(),
            &format!("gw={token}; Path=/; HttpOnly")
        );
        for garbage in ["", "zzz", "../../etc", &"f".repeat(5000)] {
            let a = affinity(&u, &[&format!("gw={garbage}")]);
            assert!(
                matches!(u.pick(&u.servers(), &a, &[]), Some((_, true))),
                "{garbage:?}"
            );
        }
        // Its server down: the client moves and gets a new cookie.
        u.servers().servers[1].note_failure("test");
        let (moved, renew) = u.pick(&u.servers(), &pinned, &[]).unwrap();
        assert!(moved != 1 && renew);
        // Nothing else left: the server out by passive failures alone serves again.
        assert_eq!(u.pick(&u.servers(), &pinned, &[0, 2]), Some((1, true)));
        assert!(u.servers().servers[1].takes_requests(now_ms()));
        u.servers().servers[1]
            .shared
            .record
            .record_check(false, 1, 1, now_ms());
        assert!(u.pick(&u.servers(), &pinned, &[0, 2]).is_none());
    }

    #[test]
    fn servers_that_stay_in_a_new_set_are_the_same_ones_with_their_connections() {
        let text = "[[listener]]\nlisten = \"127.0.0.1:1\"\n[[route]]\nupstream = \"u\"\n[upstream.u]\nservers = [{ address = \"127.0.0.1:1\" }, { address = \"127.0.0.1:2\" }]\n";
        let config = crate::config::parse(std::path::Path::new("t.toml"), text).unwrap();
        let table = Box::leak(Box::new(crate::table::Table::create().unwrap()));
        let share = table.share(0);
        let u = Upstream::new(&config.upstreams[0], share, 0, &[0, 1]);
        let before = u.servers();
        let mut servers = config.upstreams[0].servers.clone();
        servers.remove(0);
        let mut added = servers[0].clone();
        added.addr = "127.0.0.1:3".parse().unwrap();
        added.name = "127.0.0.1:3".into();
        servers.push(added);
        // :1 leaves, :2 stays on record 1, :3 arrives on record 2.
        u.replace_servers(&servers, share, &[1, 2]);
        let after = u.servers();
        assert_eq!(after.servers.len(), 2);
        assert!(
            Arc::ptr_eq(&after.servers[0], &before.servers[1]),
            "the same server"
        );
        assert_eq!(after.servers[1].config.name, "127.0.0.1:3");
        // A request that started with the old set still has :1.
        assert_eq!(before.servers[0].config.name, "127.0.0.1:1");
        let a = u.affinity(
            &after,
            IpAddr::from([127, 0, 0, 1]),
            &Uri::from_static("/"),
            &HeaderMap::new(),
        );
        assert!(u.pick(&after, &a, &[]).is_some());
    }
}
