//! What the gateway says about itself: the status document, readiness, liveness and the
//! Prometheus metrics, built from the supervisor's latest snapshot of its workers and
//! the live counters of the shared table. The control socket and the admin listener
//! answer from here, so neither waits for the supervisor (which may be mid-reload).

use super::health::LastFailures;
use crate::config::Config;
use crate::protocol::{
    AppInstanceStatus, AppStatus, CertificateStatus, DownReason, HealthCheckCounts, Reply,
    ServerChange, ServerState, ServerStatus, Status, UpstreamStatus, WorkerState, WorkerStatus,
};
use crate::table::assignment::per_upstream;
use crate::table::{Histogram, Table, LATENCY_BUCKETS};
use crate::tls::cert_info::CertInfo;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;

/// The supervisor's view, published after every event it handles.
pub struct Snapshot {
    pub generation: u64,
    pub reloads: u64,
    pub restarts: u64,
    /// The current generation's configuration.
    pub config: Arc<Config>,
    /// Its upstreams' and servers' table records (see `table::assignment`).
    pub records: Vec<usize>,
    pub workers: Vec<WorkerView>,
}

pub struct WorkerView {
    pub pid: u32,
    pub generation: u64,
    pub seat: usize,
    pub record: usize,
    pub started: Instant,
    pub state: WorkerState,
}

/// Reads the latest snapshot together with the table.
#[derive(Clone)]
pub struct StatusSource {
    pub view: watch::Receiver<Arc<Snapshot>>,
    pub table: &'static Table,
    pub check_failures: LastFailures,
    /// The ACME client's entries.
    pub acme: crate::acme::Board,
    /// What the cache's entries take on disk.
    pub cache_bytes: super::cache::Stored,
    /// The instances of the apps the gateway runs.
    pub apps: crate::apps::Board,
    /// The upstreams' last minutes (`/status/history`).
    pub history: super::history::History,
}

impl StatusSource {
    /// `gatewayctl drain|enable|weight`: changes the servers of `upstream` that `server`
    /// names (an address as /status lists it, or as the file writes it) in the shared
    /// table, where every worker sees it at once and a reload keeps it.
    pub fn change_server(&self, upstream: &str, server: &str, change: ServerChange) -> Reply {
        if let ServerChange::Weight(n) = change {
            if !(1..=1000).contains(&n) {
                return Reply::failed(format!("weight {n}: must be from 1 to 1000"));
            }
        }
        let view = self.view.borrow().clone();
        let mut upstream_found = false;
        let mut changed = 0;
        for (u, _, records) in per_upstream(&view.config, &view.records) {
            for (s, &record) in u.servers.iter().zip(records) {
                if u.name != upstream {
                    continue;
                }
                upstream_found = true;
                let named = s.entry.as_deref() == Some(server);
                if s.name != server && s.addr.to_string() != server && !named {
                    continue;
                }
                let shared = self.table.server(record);
                match change {
                    ServerChange::Drain => shared.set_draining(true, crate::upstream::now_ms()),
                    ServerChange::Enable => shared.set_draining(false, crate::upstream::now_ms()),
                    ServerChange::Weight(n) => shared.set_weight(n, s.weight),
                }
                changed += 1;
            }
        }
        if !upstream_found {
            return Reply::failed(format!("no upstream {upstream:?}"));
        }
        if changed == 0 {
            return Reply::failed(format!("upstream {upstream:?} has no server {server:?}"));
        }
        tracing::info!(upstream, server, "{change:?} by gatewayctl");
        Reply {
            ok: true,
            generation: Some(view.generation),
            ..Reply::default()
        }
    }

    /// `gatewayctl purge`: the cache is on disk, shared by every worker; removing the
    /// entries is all it takes.
    pub fn purge(&self, url: &str, prefix: bool) -> Reply {
        let Some(cache) = self.view.borrow().config.cache.clone() else {
            return Reply::failed("no [cache] in the config");
        };
        let uri: http::Uri = match url.parse() {
            Ok(uri) => uri,
            Err(e) => return Reply::failed(format!("{url}: not a URL: {e}")),
        };
        let Some(authority) = uri.authority() else {
            return Reply::failed(format!("{url}: give the host too, as http://HOST/PATH"));
        };
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let host = crate::proxy::route::host_without_port(authority.as_str());
        let key = format!("{}{path}", host.to_ascii_lowercase());
        let purged = crate::proxy::cache::entry::purge(&cache.dir, &key, prefix);
        tracing::info!(
            "purged {purged} cached responses of {key}{}",
            if prefix { "*" } else { "" }
        );
        Reply {
            ok: true,
            purged: Some(purged),
            ..Reply::default()
        }
    }

    pub fn status(&self) -> Status {
        let view = self.view.borrow().clone();
        let table = self.table;
        let workers = view
            .workers
            .iter()
            .map(|w| {
                let counters = table.worker(w.record);
                WorkerStatus {
                    pid: w.pid,
                    generation: w.generation,
                    seat: w.seat,
                    uptime_s: w.started.elapsed().as_secs(),
                    rss_bytes: rss_bytes(w.pid),
                    active_connections: counters.connections.load(Relaxed),
                    requests_total: counters.requests.load(Relaxed),
                    state: w.state,
                }
            })
            .collect();
        let now = crate::upstream::now_ms();
        let check_failures = self
            .check_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let upstreams = per_upstream(&view.config, &view.records)
            .into_iter()
            .map(|(u, _, records)| {
                let servers = u
                    .servers
                    .iter()
                    .zip(records)
                    .map(|(s, &record)| {
                        let shared = table.server(record);
                        let down_reason = if s.unresolved {
                            Some(DownReason::Unresolved)
                        } else if shared.checked_down() {
                            Some(DownReason::HealthCheck)
                        } else if shared.passive_down(now) {
                            Some(DownReason::MaxFails)
                        } else {
                            None
                        };
                        let state = match (down_reason, s.backup) {
                            _ if shared.draining() => ServerState::Draining,
                            (Some(_), _) => ServerState::Down,
                            (None, true) => ServerState::Backup,
                            (None, false) => ServerState::Up,
                        };
                        ServerStatus {
                            address: s.name.clone(),
                            name: s.entry.clone(),
                            state,
                            down_reason,
                            source: s.source,
                            active_connections: shared.in_flight(),
                            requests_total: shared.requests.load(Relaxed),
                            failures_total: shared.failures.load(Relaxed),
                            latency_ms: (shared.latency_average_us() / 10.0).round() / 100.0,
                            p99_ms: shared
                                .response_time
                                .quantile_bound(0.99)
                                .map(|s| s * 1000.0),
                            weight: shared.weight(s.weight),
                            backup: s.backup,
                            health_checks: u.health_check.as_ref().map(|_| HealthCheckCounts {
                                passed: shared.checks_passed.load(Relaxed),
                                failed: shared.checks_failed.load(Relaxed),
                                last_failure: check_failures.get(&record).cloned(),
                            }),
                        }
                    })
                    .collect();
                let status = UpstreamStatus {
                    policy: u.policy.as_str().into(),
                    servers,
                };
                (u.name.clone(), status)
            })
            .collect();
        Status {
            generation: view.generation,
            reloads: view.reloads,
            restarts: view.restarts,
            workers,
            upstreams,
            certificates: self.certificates(&view.config),
            apps: self.apps(),
        }
    }

    fn apps(&self) -> BTreeMap<String, AppStatus> {
        let apps = self.apps.get().into_iter().map(|(name, instances)| {
            let instances = instances
                .into_iter()
                .map(|i| AppInstanceStatus {
                    instance: i.instance,
                    pid: i.pid,
                    port: i.port,
                    state: i.state.to_string(),
                    uptime_s: i.started.map_or(0, |s| s.elapsed().as_secs()),
                    restarts: i.restarts,
                    rss_bytes: match i.started {
                        Some(_) => crate::apps::rss_bytes(i.pid).unwrap_or(0),
                        None => 0,
                    },
                })
                .collect();
            (name, AppStatus { instances })
        });
        apps.collect()
    }

    /// The listeners' certificates: each file's (read now, so a renewed file shows), then
    /// the ACME entries'.
    fn certificates(&self, config: &Config) -> Vec<CertificateStatus> {
        let now = crate::sys::unix_seconds();
        let mut out = Vec::new();
        let files = config.listeners.iter().flat_map(|l| &l.tls);
        for files in files.filter_map(|t| match t {
            crate::config::TlsSource::Files(files) => Some(files),
            crate::config::TlsSource::Acme(_) => None,
        }) {
            let file = files.cert.display().to_string();
            if out
                .iter()
                .any(|c: &CertificateStatus| c.file.as_ref() == Some(&file))
            {
                continue;
            }
            let info = std::fs::read(&files.cert)
                .map_err(|e| e.to_string())
                .and_then(|pem| CertInfo::from_pem(&pem));
            let mut status = CertificateStatus {
                source: "file".into(),
                file: Some(file),
                ..CertificateStatus::default()
            };
            match info {
                Ok(info) => {
                    status.names = info.names;
                    status.issuer = Some(info.issuer);
                    status.not_before = Some(info.not_before);
                    status.not_after = Some(info.not_after);
                }
                Err(e) => status.last_error = Some(e),
            }
            out.push(status);
        }
        out.extend(
            self.acme
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .cloned(),
        );
        for c in &mut out {
            c.expires_in_s = c.not_after.map(|t| t - now);
        }
        out
    }

    /// Ok while at least one worker serves (`/healthz`).
    pub fn liveness(&self) -> Result<(), String> {
        let view = self.view.borrow();
        if view.workers.iter().any(|w| w.state == WorkerState::Serving) {
            Ok(())
        } else {
            Err("no worker is serving".into())
        }
    }

    /// Ok when every worker of the current generation serves and every upstream has a
    /// server up (`/readyz`); otherwise what is not ready, one reason per line.
    pub fn readiness(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        let status = self.status();
        let wanted = self.view.borrow().config.gateway.workers;
        let serving = status
            .workers
            .iter()
            .filter(|w| w.generation == status.generation && w.state == WorkerState::Serving)
            .count();
        if serving < wanted {
            problems.push(format!(
                "generation {}: {serving} of {wanted} workers serving",
                status.generation
            ));
        }
        for (name, upstream) in &status.upstreams {
            if upstream
                .servers
                .iter()
                .all(|s| s.state == ServerState::Down)
            {
                problems.push(format!("upstream {name}: no server is up"));
            }
            for s in &upstream.servers {
                if s.down_reason == Some(DownReason::Unresolved) {
                    let entry = s.name.as_deref().unwrap_or(&s.address);
                    problems.push(match entry.strip_prefix("app:") {
                        Some(app) => format!("upstream {name}: app {app} has no ready instance"),
                        None => format!("upstream {name}: {entry} does not resolve"),
                    });
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    }

    /// What `/readyz` says besides: things that degrade the gateway without making it
    /// unready.
    pub fn readiness_notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        // A note rather than unready: a load balancer that held back an unready gateway
        // would hold back the CA's validation too, and the certificate would never come.
        for entry in self.acme.lock().unwrap_or_else(|p| p.into_inner()).values() {
            if entry.not_after.is_none() {
                notes.push(format!("acme: waiting for {}", entry.names.join(", ")));
            }
        }
        if let Some(redis) = &self.view.borrow().config.redis {
            if self.table.redis_down() {
                notes.push(format!(
                    "redis {} unreachable: global rate limits count per gateway",
                    redis.url.rsplit('@').next().unwrap_or_default()
                ));
            }
        }
        notes
    }

    /// The same figures in the Prometheus text format (version 0.0.4).
    pub fn metrics(&self) -> String {
        let status = self.status();
        let mut out = Metrics::default();
        out.family(
            "gateway_generation",
            "gauge",
            "Configuration generation serving now.",
        );
        out.sample("gateway_generation", &[], status.generation);
        out.family("gateway_reloads_total", "counter", "Successful reloads.");
        out.sample("gateway_reloads_total", &[], status.reloads);
        out.family(
            "gateway_worker_restarts_total",
            "counter",
            "Workers replaced after they died.",
        );
        out.sample("gateway_worker_restarts_total", &[], status.restarts);

        let worker_families: [Family<WorkerStatus>; 3] = [
            (
                "gateway_worker_requests_total",
                "counter",
                "Requests received by the worker.",
                |w| w.requests_total,
            ),
            (
                "gateway_worker_active_connections",
                "gauge",
                "Client connections open on the worker.",
                |w| w.active_connections,
            ),
            (
                "gateway_worker_rss_bytes",
                "gauge",
                "Resident memory of the worker process.",
                |w| w.rss_bytes,
            ),
        ];
        for (name, kind, help, value) in worker_families {
            out.family(name, kind, help);
            for w in &status.workers {
                let (pid, generation) = (w.pid.to_string(), w.generation.to_string());
                out.sample(
                    name,
                    &[("pid", &pid), ("generation", &generation)],
                    value(w),
                );
            }
        }

        let server_families: [Family<ServerStatus>; 7] = [
            (
                "gateway_upstream_server_up",
                "gauge",
                "1 while the server may get traffic, 0 while it is down or drained.",
                |s| u64::from(matches!(s.state, ServerState::Up | ServerState::Backup)),
            ),
            (
                "gateway_upstream_server_active_connections",
                "gauge",
                "Requests in flight on the server, across all workers.",
                |s| s.active_connections,
            ),
            (
                "gateway_upstream_server_requests_total",
                "counter",
                "Requests sent to the server (each try counts).",
                |s| s.requests_total,
            ),
            (
                "gateway_upstream_server_failures_total",
                "counter",
                "Failed tries: unreachable, timed out, or not HTTP.",
                |s| s.failures_total,
            ),
            (
                "gateway_upstream_server_weight",
                "gauge",
                "The weight balanced with now (the file's, or one set by gatewayctl weight).",
                |s| u64::from(s.weight),
            ),
            (
                "gateway_upstream_server_draining",
                "gauge",
                "1 while gatewayctl drain has the server out of rotation.",
                |s| u64::from(s.state == ServerState::Draining),
            ),
            (
                "gateway_upstream_server_latency_microseconds",
                "gauge",
                "Peak-EWMA of the time to the response head (what least_time weighs).",
                |s| (s.latency_ms * 1000.0) as u64,
            ),
        ];
        for (name, kind, help, value) in server_families {
            out.family(name, kind, help);
            for (upstream, u) in &status.upstreams {
                for s in &u.servers {
                    out.sample(
                        name,
                        &[("upstream", upstream), ("server", &s.address)],
                        value(s),
                    );
                }
            }
        }
        let checks = "gateway_upstream_server_health_checks_total";
        out.family(checks, "counter", "Active health checks by result.");
        for (upstream, u) in &status.upstreams {
            for s in &u.servers {
                if let Some(c) = &s.health_checks {
                    for (result, n) in [("passed", c.passed), ("failed", c.failed)] {
                        out.sample(
                            checks,
                            &[
                                ("upstream", upstream),
                                ("server", &s.address),
                                ("result", result),
                            ],
                            n,
                        );
                    }
                }
            }
        }
        let view = self.view.borrow().clone();
        if view.config.cache.is_some() {
            let bytes = "gateway_cache_bytes";
            out.family(bytes, "gauge", "Bytes the cache's entries take on disk.");
            out.sample(bytes, &[], self.cache_bytes.load(Relaxed));
            let requests = "gateway_cache_requests_total";
            out.family(
                requests,
                "counter",
                "Answers of cached routes by what the cache did; the route as host and path.",
            );
            let slots =
                crate::proxy::cache::slots(&view.config.routes, |s| self.table.cache_outcomes(s));
            for (r, counts) in view.config.routes.iter().zip(slots) {
                let Some(counts) = counts else { continue };
                let route = route_label(r);
                for (status, n) in crate::table::CACHE_OUTCOMES.iter().zip(counts) {
                    out.sample(
                        requests,
                        &[("route", &route), ("status", status)],
                        n.load(Relaxed),
                    );
                }
            }
        }
        let expiry = "gateway_tls_certificate_expiry_seconds";
        out.family(
            expiry,
            "gauge",
            "Seconds until the certificate serving the name expires (negative: expired).",
        );
        for c in &status.certificates {
            if let Some(left) = c.expires_in_s {
                for name in &c.names {
                    out.sample(expiry, &[("name", name)], left);
                }
            }
        }
        let instances = "gateway_app_instances";
        out.family(
            instances,
            "gauge",
            "Instances of each app the gateway runs, by state.",
        );
        let restarts = "gateway_app_restarts_total";
        out.family(
            restarts,
            "counter",
            "Instances of each app started again (crash, memory, restart, reload).",
        );
        for (name, app) in &status.apps {
            for state in ["starting", "ready", "draining", "stopped"] {
                let n = app.instances.iter().filter(|i| i.state == state).count();
                out.sample(instances, &[("app", name), ("state", state)], n);
            }
            let ready = app.instances.iter().filter(|i| i.state != "draining");
            out.sample(
                restarts,
                &[("app", name)],
                ready.map(|i| i.restarts).sum::<u64>(),
            );
        }
        self.request_metrics(&mut out);
        out.text
    }

    /// Requests by upstream and status, and the latency histograms, from the table.
    fn request_metrics(&self, out: &mut Metrics) {
        let view = self.view.borrow().clone();
        let table = self.table;
        let upstreams = per_upstream(&view.config, &view.records);
        let requests = "gateway_http_requests_total";
        out.family(
            requests,
            "counter",
            "Requests answered, by upstream (\"\" for none: no route, redirects, refusals) and status.",
        );
        let unrouted = table.unrouted_requests();
        let all = upstreams
            .iter()
            .map(|(u, own, _)| (u.name.as_str(), &table.upstream(*own).requests))
            .chain(std::iter::once(("", unrouted)));
        for (name, metrics) in all.clone() {
            for (code, count) in metrics.codes() {
                out.sample(
                    requests,
                    &[("upstream", name), ("code", &code.to_string())],
                    count,
                );
            }
        }
        let duration = "gateway_request_duration_seconds";
        out.family(
            duration,
            "histogram",
            "Time from the request head to the end of the response.",
        );
        for (name, metrics) in all {
            out.histogram(duration, &[("upstream", name)], &metrics.duration);
        }
        let response = "gateway_upstream_response_seconds";
        out.family(
            response,
            "histogram",
            "Time from sending a request to the upstream's response head.",
        );
        for (u, _, records) in &upstreams {
            for (s, &record) in u.servers.iter().zip(records.iter()) {
                let labels = [("upstream", u.name.as_str()), ("server", s.name.as_str())];
                out.histogram(response, &labels, &table.server(record).response_time);
            }
        }
        let limited = "gateway_rate_limited_total";
        out.family(
            limited,
            "counter",
            "Requests refused (429) by a route's rate limit; the route as host and path.",
        );
        for (index, refused) in
            crate::proxy::limit::Limits::refused(&view.config.routes, |r| table.rate_region(r))
        {
            let route = route_label(&view.config.routes[index]);
            out.sample(limited, &[("route", &route)], refused);
        }
    }
}

/// A route as metrics label it: its host and path (`~regex` for a regex route).
fn route_label(r: &crate::config::RouteConfig) -> String {
    match &r.matching.path_regex {
        Some(re) => format!("{}~{}", r.host, re.as_str()),
        None => format!("{}{}", r.host, r.path_prefix),
    }
}

/// A metric family (name, type, help) and how to read its value off a status entry.
type Family<T> = (&'static str, &'static str, &'static str, fn(&T) -> u64);

#[derive(Default)]
struct Metrics {
    text: String,
}

impl Metrics {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// `_bucket` series for every bound and `+Inf`, then `_sum` and `_count`.
    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], histogram: &Histogram) {
        let (buckets, sum) = histogram.read();
        let bucket = format!("{name}_bucket");
        let bounds = LATENCY_BUCKETS
            .iter()
            .map(|b| b.to_string())
            .chain(["+Inf".to_string()]);
        for (bound, count) in bounds.zip(buckets) {
            let mut with_le = labels.to_vec();
            with_le.push(("le", &bound));
            self.sample(&bucket, &with_le, count);
        }
        self.sample(&format!("{name}_sum"), labels, sum);
        self.sample(
            &format!("{name}_count"),
            labels,
            buckets[LATENCY_BUCKETS.len()],
        );
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.text.push_str(name);
        if !labels.is_empty() {
            let labels: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
                .collect();
            let _ = write!(self.text, "{{{}}}", labels.join(","));
        }
        let _ = writeln!(self.text, " {value}");
    }
}

/// Label values escape backslash, double quote and newline.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

pub fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label(r#"a"b\c"#), r#"a\"b\\c"#);
        let mut m = Metrics::default();
        m.sample("x_total", &[("server", "h:1"), ("upstream", "a\nb")], 3);
        assert_eq!(m.text, "x_total{server=\"h:1\",upstream=\"a\\nb\"} 3\n");
    }
}
