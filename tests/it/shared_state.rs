//! One view of the upstreams for all workers: least_conn and passive health across
//! workers, active health checks run once by the supervisor, state kept across reloads,
//! and the admin endpoints that show it all.

use crate::common::*;
use hyper::Response;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const ADMIN: &str = "[admin]\nlisten = \"127.0.0.1:0\"\n";

/// A backend that answers `name`, and on `/healthz` 200 or 503 as `healthy` says.
async fn checked_backend(name: &'static str) -> (Backend, Arc<AtomicBool>) {
    let healthy = Arc::new(AtomicBool::new(true));
    let flag = healthy.clone();
    let backend = Backend::start(move |req| {
        let ok = flag.load(Ordering::SeqCst);
        async move {
            if req.uri().path() == "/healthz" {
                let mut response = Response::new(full(if ok { "ok" } else { "sick" }));
                if !ok {
                    *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                }
                response
            } else {
                Response::new(full(name))
            }
        }
    })
    .await;
    (backend, healthy)
}

fn health_check(interval: &str) -> String {
    format!(
        "[upstream.app.health_check]\npath = \"/healthz\"\ninterval = \"{interval}\"\ntimeout = \"500ms\"\nfall = 2\nrise = 2\n"
    )
}

/// The `/status` entry of server `addr` in upstream `app`.
fn server_entry(status: &serde_json::Value, addr: SocketAddr) -> serde_json::Value {
    status["upstreams"]["app"]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["address"] == addr.to_string())
        .cloned()
        .unwrap_or_else(|| panic!("{addr} not in {status}"))
}

/// Polls the admin `/status` until `done` holds (for up to 5 s) and returns the last
/// document, so the caller's assertions show what was there when time ran out.
async fn poll_status(gw: &Gateway, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let status = gw.admin_status().await;
        if done(&status) || std::time::Instant::now() > deadline {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_for_state(gw: &Gateway, addr: SocketAddr, state: &str) {
    let status = poll_status(gw, |s| server_entry(s, addr)["state"] == state).await;
    assert_eq!(
        server_entry(&status, addr)["state"],
        state,
        "{addr} never became {state}: {status}"
    );
}

/// Bodies of `n` requests, each on a new connection.
async fn bodies(gw: &Gateway, n: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let (code, body) = get_fresh(gw.url("/")).await;
        *seen.entry(format!("{code} {body}")).or_insert(0) += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_conn_counts_requests_in_flight_across_all_workers() {
    let mut slow = Vec::new();
    for name in ["a", "b", "c"] {
        slow.push(
            Backend::start(move |_req| async move {
                tokio::time::sleep(Duration::from_millis(1200)).await;
                Response::new(full(name))
            })
            .await,
        );
    }
    let addrs: Vec<SocketAddr> = slow.iter().map(|b| b.addr).collect();
    let gw = Gateway::start(&format!(
        "[gateway]\nworkers = 4\n{}",
        upstream_config("app", &addrs, "policy = \"least_conn\"")
    ));
    for round in 1..=3 {
        let mut answers = Vec::new();
        for _ in 0..3 {
            answers.push(tokio::spawn(get_fresh(gw.url("/"))));
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        let mut servers = BTreeSet::new();
        for answer in answers {
            let (code, body) = answer.await.unwrap();
            assert_eq!(code, 200);
            servers.insert(body);
        }
        assert_eq!(
            servers.len(),
            3,
            "round {round}: 3 overlapping requests went to {servers:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_rotates_for_the_upstream_not_for_each_worker() {
    let a = Backend::named("a").await;
    let b = Backend::named("b").await;
    let gw = Gateway::start(&format!(
        "[gateway]\nworkers = 4\n[[route]]\nupstream = \"app\"\n[upstream.app]\nservers = [ {{ address = \"{}\", weight = 3 }}, {{ address = \"{}\" }} ]\n",
        a.addr, b.addr
    ));
    // Each request on a new connection, so on whichever worker the kernel chooses.
    let seen = bodies(&gw, 16).await;
    assert_eq!(
        seen,
        BTreeMap::from([("200 a".to_string(), 12), ("200 b".to_string(), 4)]),
        "3:1 over the upstream as a whole"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_seen_by_one_worker_takes_the_server_out_for_all() {
    let good = Backend::named("good").await;
    let dead = closed_port();
    let gw = Gateway::start(&format!(
        "[gateway]\nworkers = 4\n{}{ADMIN}",
        upstream_config(
            "app",
            &[dead, good.addr],
            "retries = 0\nmax_fails = 1\nfail_timeout = \"30s\""
        )
    ));
    let seen = bodies(&gw, 24).await;
    assert_eq!(
        seen.iter()
            .filter(|(k, _)| k.starts_with("502"))
            .map(|(_, n)| n)
            .sum::<usize>(),
        1,
        "one failure takes the dead server out for every worker: {seen:?}"
    );
    let status = gw.admin_status().await;
    let dead_entry = server_entry(&status, dead);
    assert_eq!(dead_entry["state"], "down");
    assert_eq!(dead_entry["down_reason"], "max_fails");
    assert_eq!(dead_entry["failures_total"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_take_servers_out_and_back_with_backups_and_503_in_between() {
    let (a, a_ok) = checked_backend("a").await;
    let (b, b_ok) = checked_backend("b").await;
    let (spare, spare_ok) = checked_backend("spare").await;
    let servers = format!(
        "{{ address = \"{}\" }}, {{ address = \"{}\" }}, {{ address = \"{}\", backup = true }}",
        a.addr, b.addr, spare.addr
    );
    let gw = Gateway::start(&format!(
        "[gateway]\nworkers = 2\n{ADMIN}[[route]]\nupstream = \"app\"\n[upstream.app]\nservers = [ {servers} ]\n{}",
        health_check("100ms")
    ));
    let only = |body: &str, n: usize| BTreeMap::from([(format!("200 {body}"), n)]);

    a_ok.store(false, Ordering::SeqCst);
    wait_for_state(&gw, a.addr, "down").await;
    assert_eq!(bodies(&gw, 10).await, only("b", 10));
    let entry = server_entry(&gw.admin_status().await, a.addr);
    assert_eq!(entry["down_reason"], "health_check");
    assert!(entry["health_checks"]["failed"].as_u64().unwrap() >= 2);
    assert_eq!(
        entry["health_checks"]["last_failure"],
        "status 503, expected 200-399"
    );

    b_ok.store(false, Ordering::SeqCst);
    wait_for_state(&gw, b.addr, "down").await;
    assert_eq!(
        bodies(&gw, 6).await,
        only("spare", 6),
        "no primary up: the backup"
    );
    assert_eq!(gw.admin_get("/readyz").await.0, 200);

    spare_ok.store(false, Ordering::SeqCst);
    wait_for_state(&gw, spare.addr, "down").await;
    let seen = bodies(&gw, 3).await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(
        seen.keys().all(|k| k.starts_with("503")),
        "nothing up: 503, got {seen:?}"
    );
    let (code, why) = gw.admin_get("/readyz").await;
    assert_eq!(code, 503);
    assert!(why.contains("upstream app: no server is up"), "{why}");
    assert_eq!(gw.admin_get("/healthz").await, (200, "ok\n".into()));

    for flag in [&a_ok, &b_ok, &spare_ok] {
        flag.store(true, Ordering::SeqCst);
    }
    wait_for_state(&gw, a.addr, "up").await;
    wait_for_state(&gw, b.addr, "up").await;
    wait_for_state(&gw, spare.addr, "backup").await;
    let entry = server_entry(&gw.admin_status().await, a.addr);
    assert!(
        entry["health_checks"].get("last_failure").is_none(),
        "{entry}"
    );
    let seen = bodies(&gw, 10).await;
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        ["200 a", "200 b"],
        "primaries back, backup idle: {seen:?}"
    );
    assert_eq!(gw.admin_get("/readyz").await, (200, "ready\n".into()));
    assert!(gw
        .stderr()
        .contains("server down: 2 health checks failed in a row"));
    assert!(gw.stderr().contains("server up again"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_run_once_per_gateway_not_once_per_worker() {
    let (backend, _) = checked_backend("a").await;
    let gw = Gateway::start(&format!(
        "[gateway]\nworkers = 4\n{}{}",
        upstream_config("app", &[backend.addr], ""),
        health_check("200ms")
    ));
    let probes = || {
        backend
            .seen()
            .iter()
            .filter(|s| s.uri == "/healthz")
            .count()
    };
    let before = probes();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = probes() - before;
    // One checker at 200 ms makes about 10 probes in 2 s; one per worker would make 40.
    assert!(
        (7..=13).contains(&during),
        "{during} probes in 2 s with 4 workers"
    );
    drop(gw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_totals_equal_the_requests_sent_across_workers() {
    let a = Backend::named("a").await;
    let b = Backend::named("b").await;
    let gw = Gateway::start(&format!(
        "[gateway]\nworkers = 3\n{ADMIN}{}",
        upstream_config("app", &[a.addr, b.addr], "")
    ));
    let sent = 30;
    let seen = bodies(&gw, sent).await;
    assert_eq!(seen.values().sum::<usize>(), sent);
    // One idle client connection, held open.
    let held = std::net::TcpStream::connect(gw.addr).unwrap();

    let open_connections = |status: &serde_json::Value| -> u64 {
        status["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["active_connections"].as_u64().unwrap())
            .sum()
    };
    let status = poll_status(&gw, |s| open_connections(s) == 1).await;
    let workers = status["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 3);
    let per_worker: Vec<u64> = workers
        .iter()
        .map(|w| w["requests_total"].as_u64().unwrap())
        .collect();
    assert_eq!(per_worker.iter().sum::<u64>(), sent as u64, "{status}");
    assert!(
        per_worker.iter().filter(|&&n| n > 0).count() >= 2,
        "connections spread over the workers: {per_worker:?}"
    );
    assert_eq!(
        open_connections(&status),
        1,
        "the held connection: {status}"
    );
    for w in workers {
        for field in ["pid", "generation", "uptime_s", "rss_bytes"] {
            assert!(w[field].is_u64(), "worker field {field}: {w}");
        }
        assert!(w["rss_bytes"].as_u64().unwrap() > 0);
    }
    assert_eq!(status["generation"], 1);
    let upstream = &status["upstreams"]["app"];
    assert_eq!(upstream["policy"], "round_robin");
    let mut to_servers = 0;
    for server in upstream["servers"].as_array().unwrap() {
        assert_eq!(server["state"], "up");
        assert_eq!(server["active_connections"], 0);
        assert_eq!(server["failures_total"], 0);
        to_servers += server["requests_total"].as_u64().unwrap();
    }
    assert_eq!(to_servers, sent as u64);
    assert_eq!(
        (a.requests() + b.requests()) as u64,
        to_servers,
        "what the backends saw"
    );

    // gatewayctl reads the same numbers.
    let ctl = status_json(&gw);
    assert_eq!(ctl["upstreams"], status["upstreams"]);
    let (code, table, _) = gw.ctl(&["status"]);
    assert_eq!(code, 0);
    for needle in [
        a.addr.to_string(),
        b.addr.to_string(),
        "requests".into(),
        "failures".into(),
        "connections".into(),
    ] {
        assert!(table.contains(&needle), "{needle} in\n{table}");
    }
    drop(held);

    assert_eq!(gw.admin_get("/healthz").await, (200, "ok\n".into()));
    assert_eq!(gw.admin_get("/nope").await.0, 404);
    let admin = gw.admin.unwrap();
    let post = client()
        .post(format!("http://{admin}/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 405);
}

/// A strict reading of the Prometheus text format: every sample belongs to a family
/// declared by `# TYPE`, names and labels are well formed, values are numbers.
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !n.starts_with(|c: char| c.is_ascii_digit())
    };
    let mut types = BTreeMap::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(name_ok(name), "{line}");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            if kind == "counter" {
                assert!(name.ends_with("_total"), "{line}");
            }
            assert!(
                types.insert(name.to_string(), kind).is_none(),
                "twice: {line}"
            );
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "stray line {line:?}"
        );
        let (series, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value in {line}"));
        let name = series.split('{').next().unwrap();
        let histogram = ["_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|suffix| name.strip_suffix(suffix))
            .any(|family| types.get(family) == Some(&"histogram"));
        assert!(
            types.contains_key(name) || histogram,
            "no # TYPE before {line}"
        );
        if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
            let labels = labels
                .strip_prefix('{')
                .and_then(|l| l.strip_suffix('}'))
                .unwrap_or_else(|| panic!("labels in {line}"));
            for pair in labels.split(',') {
                let (key, quoted) = pair.split_once('=').unwrap();
                assert!(name_ok(key), "{line}");
                assert!(
                    quoted.len() >= 2 && quoted.starts_with('"') && quoted.ends_with('"'),
                    "{line}"
                );
            }
        }
        assert!(
            samples.insert(series.to_string(), value).is_none(),
            "duplicate series {series}"
        );
    }
    samples
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text_and_count_what_happened() {
    let (a, _) = checked_backend("a").await;
    let dead = closed_port();
    let gw = Gateway::start(&format!(
        "[gateway]\nworkers = 2\n{ADMIN}[[route]]\nupstream = \"app\"\n[upstream.app]\nservers = [ {{ address = \"{}\" }}, {{ address = \"{dead}\" }} ]\nretries = 1\n{}",
        a.addr,
        health_check("100ms")
    ));
    wait_for_state(&gw, dead, "down").await;
    bodies(&gw, 5).await;
    // A request is counted, and its server's in-flight count released, once its response
    // is done: just after the client has it.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let metrics = loop {
        let (code, text) = gw.admin_get("/metrics").await;
        assert_eq!(code, 200);
        let metrics = parse_metrics(&text);
        let settled = metrics.get("gateway_http_requests_total{upstream=\"app\",code=\"200\"}")
            == Some(&5.0)
            && metrics[&format!(
                "gateway_upstream_server_active_connections{{upstream=\"app\",server=\"{}\"}}",
                a.addr
            )] == 0.0;
        if settled || std::time::Instant::now() > deadline {
            break metrics;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let series = |name: &str, server: SocketAddr| {
        metrics[&format!("{name}{{upstream=\"app\",server=\"{server}\"}}")]
    };
    assert_eq!(
        series("gateway_upstream_server_requests_total", a.addr),
        5.0
    );
    assert_eq!(series("gateway_upstream_server_up", a.addr), 1.0);
    assert_eq!(series("gateway_upstream_server_up", dead), 0.0);
    assert_eq!(series("gateway_upstream_server_weight", a.addr), 1.0);
    assert_eq!(series("gateway_upstream_server_draining", a.addr), 0.0);
    assert_eq!(
        series("gateway_upstream_server_active_connections", a.addr),
        0.0
    );
    assert!(
        metrics[&format!(
            "gateway_upstream_server_health_checks_total{{upstream=\"app\",server=\"{dead}\",result=\"failed\"}}"
        )] >= 2.0
    );
    assert_eq!(metrics["gateway_generation"], 1.0);
    assert_eq!(metrics["gateway_reloads_total"], 0.0);
    let worker_requests: f64 = metrics
        .iter()
        .filter(|(k, _)| k.starts_with("gateway_worker_requests_total{"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(worker_requests, 5.0);
    assert_eq!(
        metrics
            .keys()
            .filter(|k| k.starts_with("gateway_worker_rss_bytes{"))
            .count(),
        2
    );
    // Requests by status and the latency histograms, summed over both workers.
    assert_eq!(
        metrics["gateway_http_requests_total{upstream=\"app\",code=\"200\"}"],
        5.0
    );
    assert_eq!(
        metrics["gateway_request_duration_seconds_count{upstream=\"app\"}"],
        5.0
    );
    assert_eq!(
        metrics["gateway_request_duration_seconds_bucket{upstream=\"app\",le=\"+Inf\"}"],
        5.0
    );
    let a_responses = format!(
        "gateway_upstream_response_seconds_count{{upstream=\"app\",server=\"{}\"}}",
        a.addr
    );
    assert_eq!(metrics[&a_responses], 5.0);
    let fast = format!(
        "gateway_upstream_response_seconds_bucket{{upstream=\"app\",server=\"{}\",le=\"10\"}}",
        a.addr
    );
    assert_eq!(metrics[&fast], 5.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_what_is_known_about_servers_that_stay() {
    let (a, a_ok) = checked_backend("a").await;
    let (b, _) = checked_backend("b").await;
    let (c, _) = checked_backend("c").await;
    let gw = Gateway::start(&format!(
        "[gateway]\nworkers = 2\n{ADMIN}{}{}",
        upstream_config("app", &[a.addr, b.addr], ""),
        // Slow checks: a cold start would give the down server traffic for seconds.
        health_check("1s")
    ));
    a_ok.store(false, Ordering::SeqCst);
    wait_for_state(&gw, a.addr, "down").await;
    bodies(&gw, 4).await;
    let before = server_entry(&gw.admin_status().await, b.addr)["requests_total"].clone();
    assert_eq!(before, 4);

    let text = std::fs::read_to_string(gw.config_path()).unwrap();
    let with_c = text.replace(
        &format!("{{ address = \"{}\" }} ]", b.addr),
        &format!(
            "{{ address = \"{}\" }}, {{ address = \"{}\" }} ]",
            b.addr, c.addr
        ),
    );
    assert_ne!(text, with_c);
    std::fs::write(gw.config_path(), with_c).unwrap();
    let (code, out, err) = gw.ctl(&["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    let status = gw.admin_status().await;
    assert_eq!(status["generation"], 2);
    assert_eq!(server_entry(&status, a.addr)["state"], "down");
    assert_eq!(server_entry(&status, b.addr)["requests_total"], before);
    assert_eq!(server_entry(&status, c.addr)["requests_total"], 0);
    let seen = bodies(&gw, 10).await;
    assert!(
        !seen.contains_key("200 a"),
        "the down server stays out after the reload: {seen:?}"
    );
    assert_eq!(a.seen().iter().filter(|s| s.uri == "/").count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_worker_leaves_nothing_counted_in_flight() {
    let slow = Backend::start(|_req| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Response::new(full("late"))
    })
    .await;
    let gw = Gateway::start(&format!(
        "{ADMIN}{}",
        upstream_config("app", &[slow.addr], "policy = \"least_conn\"")
    ));
    let pending = tokio::spawn(get_fresh(gw.url("/")));
    let in_flight =
        |status: &serde_json::Value| server_entry(status, slow.addr)["active_connections"].clone();
    let status = poll_status(&gw, |s| in_flight(s) == 1).await;
    assert_eq!(in_flight(&status), 1, "{status}");
    let pid = status["workers"][0]["pid"].as_u64().unwrap();
    signal(pid, "KILL");
    let settled = |s: &serde_json::Value| {
        let replaced = s["workers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["pid"] != pid);
        replaced && in_flight(s) == 0
    };
    let status = poll_status(&gw, settled).await;
    assert!(settled(&status), "{status}");
    assert_eq!(status["restarts"], 1);
    pending.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_moves_the_admin_listener_when_its_address_changes() {
    let backend = Backend::named("a").await;
    let gw = Gateway::start(&format!(
        "{ADMIN}{}",
        upstream_config("app", &[backend.addr], "")
    ));
    let old = gw.admin.unwrap();
    let text = std::fs::read_to_string(gw.config_path()).unwrap();
    std::fs::write(
        gw.config_path(),
        text.replace(
            "[admin]\nlisten = \"127.0.0.1:0\"",
            "[admin]\nlisten = \"127.0.0.3:0\"",
        ),
    )
    .unwrap();
    let (code, out, err) = gw.ctl(&["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    let moved: SocketAddr = gw
        .stderr()
        .rsplit("admin endpoints at http://")
        .next()
        .and_then(|rest| rest.split('/').next())
        .and_then(|addr| addr.parse().ok())
        .unwrap();
    assert_eq!(moved.ip().to_string(), "127.0.0.3");
    let healthz = client()
        .get(format!("http://{moved}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(healthz.status(), 200);
    assert!(
        std::net::TcpStream::connect(old).is_err(),
        "the old admin address is closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstreams_counts_survive_a_reload_that_removes_its_first_server() {
    let (a, _) = checked_backend("a").await;
    let (b, _) = checked_backend("b").await;
    let gw = Gateway::start(&format!(
        "{ADMIN}{}",
        upstream_config("app", &[a.addr, b.addr], "")
    ));
    bodies(&gw, 4).await;
    let requests = "gateway_http_requests_total{upstream=\"app\",code=\"200\"}";
    let counted = |metrics: &BTreeMap<String, f64>| metrics.get(requests).copied();
    let mut metrics = parse_metrics(&gw.admin_get("/metrics").await.1);
    for _ in 0..100 {
        if counted(&metrics) == Some(4.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        metrics = parse_metrics(&gw.admin_get("/metrics").await.1);
    }
    assert_eq!(counted(&metrics), Some(4.0));

    // The upstream's own state (its request counts, round-robin position and retry
    // budget) has a record of its own: it does not go with the server that leaves.
    let text = std::fs::read_to_string(gw.config_path()).unwrap();
    let without_a = text.replace(&format!("{{ address = \"{}\" }}, ", a.addr), "");
    assert_ne!(text, without_a);
    std::fs::write(gw.config_path(), without_a).unwrap();
    let (code, out, err) = gw.ctl(&["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    let metrics = parse_metrics(&gw.admin_get("/metrics").await.1);
    assert_eq!(counted(&metrics), Some(4.0), "counted on across the reload");
    assert_eq!(bodies(&gw, 2).await.get("200 b"), Some(&2));
}
