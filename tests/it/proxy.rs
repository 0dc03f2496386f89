//! Forwarding, routing and balancing through the real binary.

use crate::common::*;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_with_forwarding_headers_and_without_hop_by_hop() {
    let backend = Backend::start(|_req| async {
        let mut r = hyper::Response::new(full("hi"));
        r.headers_mut()
            .insert("keep-alive", "timeout=5".parse().unwrap());
        r.headers_mut()
            .insert("connection", "x-internal".parse().unwrap());
        r.headers_mut()
            .insert("x-internal", "secret".parse().unwrap());
        r.headers_mut().insert("x-app", "yes".parse().unwrap());
        r
    })
    .await;
    let gw = Gateway::start(&upstream_config("app", &[backend.addr], ""));
    let res = client()
        .get(gw.url("/path?q=1"))
        .header("host", "shop.example.com:8080")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-real-ip", "6.6.6.6")
        .header("x-forwarded-proto", "https")
        .header("te", "trailers")
        .header("keep-alive", "timeout=1")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    for gone in ["keep-alive", "x-internal"] {
        assert!(
            res.headers().get(gone).is_none(),
            "{gone} reached the client"
        );
    }
    assert_eq!(res.headers()["x-app"], "yes");
    assert_eq!(res.text().await.unwrap(), "hi");

    let seen = &backend.seen()[0];
    assert_eq!(seen.uri, "/path?q=1");
    assert_eq!(seen.header("host"), Some("shop.example.com:8080"));
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("203.0.113.7, 127.0.0.1")
    );
    assert_eq!(seen.header("x-real-ip"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(
        seen.header("x-forwarded-host"),
        Some("shop.example.com:8080")
    );
    assert_eq!(seen.header("keep-alive"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_then_longest_prefix_and_404_otherwise() {
    let (api, www, any, v2) = (
        Backend::named("api").await,
        Backend::named("www").await,
        Backend::named("any").await,
        Backend::named("v2").await,
    );
    let config = format!(
        r#"
[[route]]
host = "api.example.com"
path_prefix = "/"
upstream = "api"
[[route]]
host = "api.example.com"
path_prefix = "/v2"
upstream = "v2"
[[route]]
host = "*.example.com"
upstream = "www"
[[route]]
host = "*"
path_prefix = "/public"
upstream = "any"
[upstream.api]
servers = [ {{ address = "{}" }} ]
[upstream.www]
servers = [ {{ address = "{}" }} ]
[upstream.any]
servers = [ {{ address = "{}" }} ]
[upstream.v2]
servers = [ {{ address = "{}" }} ]
"#,
        api.addr, www.addr, any.addr, v2.addr
    );
    let gw = Gateway::start(&config);
    let c = client();
    for (host, path, expect) in [
        ("api.example.com", "/x", "api"),
        ("API.example.com:80", "/v2/users", "v2"),
        ("shop.example.com", "/", "www"),
        ("other.org", "/public/a.css", "any"),
        ("example.com", "/public", "any"),
    ] {
        let res = c
            .get(gw.url(path))
            .header("host", host)
            .send()
            .await
            .unwrap();
        assert_eq!(res.text().await.unwrap(), expect, "{host}{path}");
    }
    let res = c
        .get(gw.url("/private"))
        .header("host", "other.org")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(res.text().await.unwrap(), "404 Not Found\n");
}

async fn counts(gw: &Gateway, n: usize) -> (Vec<String>, HashMap<String, usize>) {
    let c = client();
    let mut order = Vec::new();
    for _ in 0..n {
        order.push(
            c.get(gw.url("/"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
        );
    }
    let mut counts = HashMap::new();
    for name in &order {
        *counts.entry(name.clone()).or_insert(0) += 1;
    }
    (order, counts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_honours_weights_smoothly() {
    let (a, b) = (Backend::named("a").await, Backend::named("b").await);
    let config = format!(
        "[[route]]\nupstream = \"app\"\n[upstream.app]\nservers = [ {{ address = \"{}\", weight = 3 }}, {{ address = \"{}\" }} ]\n",
        a.addr, b.addr
    );
    let gw = Gateway::start(&config);
    let (order, counts) = counts(&gw, 40).await;
    assert_eq!(counts["a"], 30);
    assert_eq!(counts["b"], 10);
    let longest_a_run = order
        .split(|n| n == "b")
        .map(<[String]>::len)
        .max()
        .unwrap();
    assert!(longest_a_run <= 3, "{order:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_reuses_upstream_connections() {
    let backend = Backend::named("a").await;
    let gw = Gateway::start(&upstream_config("app", &[backend.addr], "keepalive = 4"));
    counts(&gw, 20).await;
    assert_eq!(backend.requests(), 20);
    assert_eq!(
        backend
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}

/// A GET from a chosen loopback source address (Linux routes all of 127/8 to lo).
async fn get_from(gw: &Gateway, source: std::net::IpAddr) -> String {
    let c = reqwest::Client::builder()
        .no_proxy()
        .local_address(source)
        .build()
        .unwrap();
    c.get(gw.url("/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_hash_keeps_each_client_on_one_server() {
    let (a, b, c) = (
        Backend::named("a").await,
        Backend::named("b").await,
        Backend::named("c").await,
    );
    let gw = Gateway::start(&upstream_config(
        "app",
        &[a.addr, b.addr, c.addr],
        "policy = \"ip_hash\"",
    ));
    let mut used = HashMap::new();
    for i in 2..32u8 {
        let ip = std::net::IpAddr::from([127, 0, 1, i]);
        let first = get_from(&gw, ip).await;
        for _ in 0..3 {
            assert_eq!(get_from(&gw, ip).await, first, "client {ip} moved");
        }
        *used.entry(first).or_insert(0) += 1;
    }
    assert_eq!(
        used.len(),
        3,
        "30 clients should spread over all servers: {used:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_conn_avoids_the_busy_server() {
    let slow = |name: &'static str| {
        Backend::start(move |req| async move {
            if req.uri().path() == "/slow" {
                tokio::time::sleep(Duration::from_millis(1500)).await;
            }
            hyper::Response::new(full(name))
        })
    };
    let (a, b) = (slow("a").await, slow("b").await);
    let gw = Gateway::start(&upstream_config(
        "app",
        &[a.addr, b.addr],
        "policy = \"least_conn\"",
    ));
    let url = gw.url("/slow");
    let busy = tokio::spawn(get_text(url));
    // Wait until the slow request reached a backend.
    while a.requests() + b.requests() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (_, counts) = counts(&gw, 6).await;
    let busy_name = busy.await.unwrap();
    assert_eq!(
        counts.get(&busy_name),
        None,
        "a fast request went to the busy server: {counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_is_retried_on_the_next_and_then_left_out() {
    let live = Backend::named("live").await;
    let dead = closed_port();
    let gw = Gateway::start(&upstream_config(
        "app",
        &[dead, live.addr],
        "retries = 1\nmax_fails = 2\nfail_timeout = \"30s\"",
    ));
    let (_, counts) = counts(&gw, 10).await;
    assert_eq!(
        counts["live"], 10,
        "every request answered by the live server"
    );
    let log = gw.wait_log_lines(10).await;
    assert!(log.iter().all(|l| l.contains(" 200 ")), "{log:#?}");
    // Passive health: after 2 refusals the dead server is out, so it was tried only twice.
    // (The worker's log reaches us on another pipe than the access log.)
    wait_until("the marked-down line", Duration::from_secs(5), || {
        gw.stderr().contains("marked down")
    })
    .await;
    let refused = gw.stderr().matches("marked down").count();
    assert_eq!(refused, 1, "{}", gw.stderr());
}

/// Every server unreachable: 502. Once `max_fails` has them all out, they are tried
/// again rather than answered 503 (passive failures alone never empty an upstream), so
/// the answer stays 502 with the connect error, and a server back in a moment would serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_unreachable_is_502_and_passive_failures_alone_do_not_make_it_503() {
    let (d1, d2) = (closed_port(), closed_port());
    let gw = Gateway::start(&upstream_config(
        "app",
        &[d1, d2],
        "retries = 1\nmax_fails = 1\nfail_timeout = \"30s\"",
    ));
    let c = client();
    let first = c.get(gw.url("/")).send().await.unwrap();
    assert_eq!(first.status(), 502);
    assert_eq!(first.text().await.unwrap(), "502 Bad Gateway\n");
    let second = c.get(gw.url("/")).send().await.unwrap();
    assert_eq!(second.status(), 502);
    let log = gw.wait_log_lines(2).await;
    for line in &log {
        assert!(
            line.contains("error=\"connect to") && line.contains("failed"),
            "{log:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_serves_only_while_no_primary_is_up() {
    let (primary, backup) = (
        Backend::named("primary").await,
        Backend::named("backup").await,
    );
    let config = |p: SocketAddr| {
        format!(
            "[[route]]\nupstream = \"app\"\n[upstream.app]\nmax_fails = 1\nservers = [ {{ address = \"{p}\" }}, {{ address = \"{}\", backup = true }} ]\n",
            backup.addr
        )
    };
    let gw = Gateway::start(&config(primary.addr));
    let (_, counts_up) = counts(&gw, 5).await;
    assert_eq!(counts_up["primary"], 5);
    drop(gw);
    let gw = Gateway::start(&config(closed_port()));
    let (_, counts_down) = counts(&gw, 5).await;
    assert_eq!(counts_down["backup"], 5);
}

/// `X-Request-ID`: the client's kept when usable, else made; the upstream, the client and
/// the access log all see the same one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_kept_or_made_and_seen_by_upstream_client_and_log() {
    let backend = Backend::named("a").await;
    let gw = Gateway::start(&upstream_config("app", &[backend.addr], ""));
    let res = client()
        .get(gw.url("/mine"))
        .header("x-request-id", "trace-42")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "trace-42");
    let res = client()
        .get(gw.url("/made"))
        .header("x-request-id", "has a space")
        .send()
        .await
        .unwrap();
    let made = res.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(made.len(), 32, "{made}");
    let seen = backend.seen();
    assert_eq!(seen[0].header("x-request-id"), Some("trace-42"));
    assert_eq!(seen[1].header("x-request-id"), Some(made.as_str()));
    // Answers of the gateway's own carry one too.
    let reply = raw_exchange(
        gw.addr,
        b"GET /a%2Fb HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(5),
    );
    assert_eq!(status_of(&reply), 400);
    assert!(
        reply.to_ascii_lowercase().contains("\r\nx-request-id: "),
        "{reply}"
    );
    let log = gw.wait_log_lines(3).await.join("\n");
    assert!(log.contains("request_id=trace-42"), "{log}");
    assert!(log.contains(&format!("request_id={made}")), "{log}");
    assert!(log.contains("upstream_status=200"), "{log}");
}

/// A server entry by name is every address the name resolves to (here `localhost`: the
/// backend listens on 127.0.0.1 only, so an IPv6 address of localhost is refused and left
/// for the IPv4 one): no request fails, /status lists each address with the name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_by_name_is_each_of_its_addresses() {
    let backend = Backend::named("a").await;
    let entry = format!("localhost:{}", backend.addr.port());
    let gw = Gateway::start(&format!(
        "[[route]]\nupstream = \"app\"\n[upstream.app]\nservers = [ {{ address = \"{entry}\" }} ]\n"
    ));
    for _ in 0..10 {
        assert_eq!(get_fresh(gw.url("/")).await, (200, "a".to_string()));
    }
    let status = status_json(&gw);
    let servers = status["upstreams"]["app"]["servers"].as_array().unwrap();
    let expected: Vec<String> = {
        use std::net::ToSocketAddrs;
        let mut all: Vec<SocketAddr> = entry.to_socket_addrs().unwrap().collect();
        all.sort();
        all.dedup();
        all.iter().map(ToString::to_string).collect()
    };
    let listed: Vec<&str> = servers
        .iter()
        .map(|s| s["address"].as_str().unwrap())
        .collect();
    assert_eq!(listed, expected);
    assert!(
        servers.iter().all(|s| s["name"] == entry.as_str()),
        "{status}"
    );
    // Drained by the name as written: every address it stands for.
    assert_eq!(gw.ctl(&["drain", "app", &entry]).0, 0);
    assert_eq!(get_fresh(gw.url("/")).await.0, 503);
}

/// W3C Trace Context: a valid `traceparent` goes on with the same trace id and a new
/// parent id, with its `tracestate`; a missing or invalid one starts a new trace (and its
/// `tracestate` is dropped); the JSON access log has each request's `trace_id`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_context_is_kept_with_a_new_parent_or_started_and_logged() {
    let backend = Backend::named("a").await;
    let gw = Gateway::start(&format!(
        "[gateway]\naccess_log_format = \"json\"\n{}",
        upstream_config("app", &[backend.addr], "")
    ));
    let given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let client = client();
    client
        .get(gw.url("/kept"))
        .header("traceparent", given)
        .header("tracestate", "vendor=opaque")
        .send()
        .await
        .unwrap();
    client
        .get(gw.url("/invalid"))
        .header("traceparent", "00-4BF92F-nonsense-01")
        .header("tracestate", "vendor=opaque")
        .send()
        .await
        .unwrap();
    client.get(gw.url("/missing")).send().await.unwrap();
    let seen = backend.seen();
    let traceparent = |i: usize| seen[i].header("traceparent").unwrap().to_string();
    let kept = traceparent(0);
    assert!(
        kept.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{kept}"
    );
    assert!(kept.ends_with("-01") && kept.len() == 55, "{kept}");
    assert_ne!(
        &kept[36..52],
        "00f067aa0ba902b7",
        "a new parent id for the hop"
    );
    assert_eq!(seen[0].header("tracestate"), Some("vendor=opaque"));
    for i in [1, 2] {
        let started = traceparent(i);
        assert_eq!(started.len(), 55, "{started}");
        assert!(
            started.starts_with("00-") && !started.contains("4bf92f"),
            "{started}"
        );
        assert_eq!(seen[i].header("tracestate"), None);
    }
    let lines = gw.wait_log_lines(3).await;
    let logged: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (i, line) in logged.iter().enumerate() {
        let sent = traceparent(i);
        assert_eq!(line["trace_id"].as_str(), Some(&sent[3..35]), "{line}");
    }
}
