//! Routes that match more (path_regex, methods, headers), access lists, the real client
//! address behind a trusted proxy, error pages and per-gateway rate limits.

use crate::common::*;
use hyper::Response;

/// `[upstream.NAME]` with one server (no route: each test says its routes).
fn pool(name: &str, server: std::net::SocketAddr) -> String {
    format!("[upstream.{name}]\nservers = [ {{ address = \"{server}\" }} ]\n")
}

/// A backend that answers with the path it was asked for.
async fn echo_path() -> Backend {
    Backend::start(|req| async move { Response::new(full(req.uri().path().to_string())) }).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regex_method_and_header_routes_pick_the_upstream() {
    let (a, b, c) = (
        Backend::named("a").await,
        Backend::named("b").await,
        Backend::named("c").await,
    );
    let gw = Gateway::start(&format!(
        "[[route]]\npath_prefix = \"/api/\"\nupstream = \"a\"\n\n\
         [[route]]\npath_regex = \"^/api/v[0-9]+/\"\nupstream = \"b\"\n\n\
         [[route]]\npath_prefix = \"/api/\"\nheaders = {{ \"X-Canary\" = \"1\" }}\nupstream = \"c\"\n\n\
         [[route]]\npath_prefix = \"/form\"\nmethods = [\"POST\", \"PUT\"]\nupstream = \"a\"\n\n\
         {}{}{}",
        pool("a", a.addr),
        pool("b", b.addr),
        pool("c", c.addr)
    ));
    let c_ = client();
    let text = |r: reqwest::Response| async move { r.text().await.unwrap() };
    assert_eq!(
        text(c_.get(gw.url("/api/v2/users")).send().await.unwrap()).await,
        "b"
    );
    assert_eq!(
        text(c_.get(gw.url("/api/users")).send().await.unwrap()).await,
        "a"
    );
    let canary = c_.get(gw.url("/api/users")).header("x-canary", "1");
    assert_eq!(text(canary.send().await.unwrap()).await, "c");
    assert_eq!(
        text(c_.post(gw.url("/form")).send().await.unwrap()).await,
        "a"
    );
    // Only the method keeps the route from matching: 405 with Allow, nothing forwarded.
    let r = c_.get(gw.url("/form")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "POST, PUT");
    assert_eq!(a.requests() + b.requests() + c.requests(), 4);
    // A path no route takes is still a 404.
    assert_eq!(c_.get(gw.url("/else")).send().await.unwrap().status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_regex_that_cannot_match_is_a_warning_and_a_bad_one_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.toml");
    std::fs::write(
        &path,
        "[[listener]]\nlisten = \"127.0.0.1:0\"\n[[route]]\npath_regex = \"^api/\"\nredirect = \"/\"\n",
    )
    .unwrap();
    let (code, out) = gateway_with_config(&["check"], &path);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("route[0].path_regex") && out.contains("can never match"),
        "{out}"
    );
    std::fs::write(
        &path,
        "[[listener]]\nlisten = \"127.0.0.1:0\"\n[[route]]\npath_regex = \"^/(a\"\nredirect = \"/\"\n\n[[route]]\nmethods = []\nredirect = \"/\"\nrate_limit = { rate = \"10/x\" }\nallow = [\"10.1.2.3/8\"]\n[[route]]\npath_prefix = \"/g\"\nredirect = \"/\"\nrate_limit = { rate = \"1/s\", scope = \"global\" }\n[redis]\nurl = \"http://10.0.0.1:6379\"\n",
    )
    .unwrap();
    let (code, out) = gateway_with_config(&["check"], &path);
    assert_ne!(code, Some(0));
    for key in [
        "g.toml:4:14: route[0].path_regex",
        "route[1].methods",
        "route[1].rate_limit.rate",
        "route[1].allow",
        "redis.url",
    ] {
        assert!(out.contains(key), "{key} in {out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_and_deny_use_the_client_a_trusted_proxy_names() {
    let backend = echo_path().await;
    let gw = Gateway::start(&format!(
        "[gateway]\ntrusted_proxies = [\"127.0.0.1\"]\n\
         [[route]]\npath_prefix = \"/admin\"\nallow = [\"10.0.0.0/8\", \"::1\"]\nupstream = \"app\"\n\n\
         [[route]]\npath_prefix = \"/\"\ndeny = [\"203.0.113.0/24\"]\nupstream = \"app\"\n\n{}",
        pool("app", backend.addr)
    ));
    let c = client();
    let get = |path: &str, xff: Option<&str>| {
        let mut r = c.get(gw.url(path));
        if let Some(xff) = xff {
            r = r.header("x-forwarded-for", xff);
        }
        r.send()
    };
    // The peer (127.0.0.1, trusted) names no one: the client is the peer.
    assert_eq!(get("/admin", None).await.unwrap().status(), 403);
    assert_eq!(get("/admin", Some("10.2.3.4")).await.unwrap().status(), 200);
    assert_eq!(get("/x", Some("203.0.113.9")).await.unwrap().status(), 403);
    // A made-up entry left of the real client's changes nothing.
    assert_eq!(
        get("/x", Some("10.2.3.4, 203.0.113.9"))
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(get("/x", Some("198.51.100.1")).await.unwrap().status(), 200);
    // Nothing refused reached the backend; the upstream sees the client and the hop.
    let seen = backend.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].header("x-real-ip"), Some("198.51.100.1"));
    assert_eq!(
        seen[1].header("x-forwarded-for"),
        Some("198.51.100.1, 127.0.0.1")
    );
    // The access log records the client, not the proxy.
    let lines = gw.wait_log_lines(5).await;
    assert!(
        lines.iter().any(|l| l.starts_with("198.51.100.1 ")),
        "{lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_peer_cannot_name_another_client() {
    let backend = echo_path().await;
    let gw = Gateway::start(&format!(
        "[gateway]\ntrusted_proxies = [\"10.0.0.0/8\"]\n\
         [[route]]\nallow = [\"10.0.0.0/8\"]\nupstream = \"app\"\n\n{}",
        pool("app", backend.addr)
    ));
    let r = client()
        .get(gw.url("/"))
        .header("x-forwarded-for", "10.0.0.5")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(backend.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_pages_replace_the_gateways_and_the_upstreams_errors() {
    let pages = tempfile::tempdir().unwrap();
    let page = pages.path().join("maintenance.html");
    std::fs::write(&page, "<h1>back soon</h1>").unwrap();
    let bad_gateway = pages.path().join("502.html");
    std::fs::write(&bad_gateway, "<h1>upstream down</h1>").unwrap();
    let backend = Backend::start(|req| async move {
        let mut r = Response::new(full(format!("upstream says {}", req.uri().path())));
        if req.uri().path() == "/busy" {
            *r.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
        }
        r
    })
    .await;
    let gw = Gateway::start(&format!(
        "[[route]]\npath_prefix = \"/down\"\nupstream = \"down\"\nerror_pages = {{ 502 = {:?}, 503 = {:?} }}\n\n\
         [[route]]\nupstream = \"app\"\nerror_pages = {{ 503 = {:?} }}\n\n{}{}",
        bad_gateway.display().to_string(),
        page.display().to_string(),
        page.display().to_string(),
        pool("app", backend.addr),
        pool("down", closed_port())
    ));
    let r = client().get(gw.url("/busy")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["content-type"], "text/html");
    assert_eq!(r.text().await.unwrap(), "<h1>back soon</h1>");
    let r = client().get(gw.url("/fine")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "upstream says /fine");
    let r = client().get(gw.url("/down")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(r.text().await.unwrap(), "<h1>upstream down</h1>");
    // A missing page is an error at load, naming the key.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.toml");
    std::fs::write(
        &path,
        "[[listener]]\nlisten = \"127.0.0.1:0\"\n[[route]]\nredirect = \"/\"\nerror_pages = { 503 = \"nope.html\", 404 = \"x.html\" }\n",
    )
    .unwrap();
    let (code, out) = gateway_with_config(&["check"], &path);
    assert_ne!(code, Some(0));
    assert!(
        out.contains("route[0].error_pages") && out.contains("nope.html"),
        "{out}"
    );
    assert!(out.contains("only 502, 503 and 504"), "{out}");
}

/// The count is shared by the workers: with two of them and a fresh connection per
/// request (each may land on either), exactly `burst + 1` go through at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_is_shared_by_all_workers_and_refuses_with_429() {
    let backend = echo_path().await;
    let gw = Gateway::start(&format!(
        "[gateway]\nworkers = 2\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [[route]]\npath_prefix = \"/login\"\nupstream = \"app\"\nrate_limit = {{ rate = \"1/m\", burst = 4 }}\n\n\
         [[route]]\npath_prefix = \"/keyed\"\nupstream = \"app\"\nrate_limit = {{ rate = \"1/m\", burst = 0, key = \"header:X-Api-Key\" }}\n\n\
         [[route]]\nupstream = \"app\"\n\n{}",
        pool("app", backend.addr)
    ));
    let mut statuses = Vec::new();
    for i in 0..8 {
        let r = get_fresh(gw.url("/login")).await;
        statuses.push(r.0);
        if i == 0 {
            // The first answer carries the quota.
            let r = client().get(gw.url("/")).send().await.unwrap();
            assert!(
                r.headers().get("ratelimit-limit").is_none(),
                "unlimited route"
            );
        }
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429]);
    let r = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
        .get(gw.url("/login"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let h = r.headers();
    assert_eq!(h["ratelimit-limit"], "5");
    assert_eq!(h["ratelimit-remaining"], "0");
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(
        backend.requests(),
        6,
        "refused requests never reach the upstream"
    );

    // By header: each key has its own count.
    let keyed = |key: &'static str| {
        client()
            .get(gw.url("/keyed"))
            .header("x-api-key", key)
            .send()
    };
    assert_eq!(keyed("a").await.unwrap().status(), 200);
    assert_eq!(keyed("a").await.unwrap().status(), 429);
    let b = keyed("b").await.unwrap();
    assert_eq!(b.status(), 200);
    assert_eq!(b.headers()["ratelimit-remaining"], "0");

    let (_, metrics) = gw.admin_get("/metrics").await;
    assert!(
        metrics.contains("gateway_rate_limited_total{route=\"*/login\"} 4"),
        "{metrics}"
    );
    assert!(metrics.contains("gateway_rate_limited_total{route=\"*/keyed\"} 1"));
}

/// Memory stays bounded whatever the number of client keys: many keys come and go, the
/// worker does not grow with them, and a key at its limit is still refused after them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_client_keys_do_not_grow_memory_and_a_limited_key_is_remembered() {
    let backend = echo_path().await;
    let gw = Gateway::start(&format!(
        "[gateway]\naccess_log = \"off\"\n[[route]]\nupstream = \"app\"\nrate_limit = {{ rate = \"1/h\", burst = 0, key = \"header:X-Key\" }}\n\n{}",
        pool("app", backend.addr)
    ));
    let c = client();
    let send = |key: String| c.get(gw.url("/")).header("x-key", key).send();
    assert_eq!(send("hot".into()).await.unwrap().status(), 200);
    assert_eq!(send("hot".into()).await.unwrap().status(), 429);
    let before = gw.rss_kib();
    // 2000 keys for a route's 8192 slots: that the hot key's bucket (8 of them) fills up
    // with keys limited longer than it, and forgets it, is a chance of under 1 in 1000.
    for round in 0..2 {
        for i in 0..1000 {
            let status = send(format!("k{round}-{i}")).await.unwrap().status();
            assert!(status == 200 || status == 429);
        }
    }
    let grown = gw.rss_kib().saturating_sub(before);
    // The route's whole region is 64 KiB; allow for the allocator and the connection.
    assert!(grown < 4096, "the worker grew {grown} KiB over 2000 keys");
    assert_eq!(send("hot".into()).await.unwrap().status(), 429);
}

/// A listener behind a balancer that speaks the PROXY protocol: the client is the one
/// the header names (v1 and v2), and a connection without a valid header is closed
/// without reaching anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_names_the_client_and_a_connection_without_it_is_closed() {
    let backend = echo_path().await;
    let gw = Gateway::start(&format!(
        "[gateway]\nheader_read_timeout = \"1s\"\n\
         [[listener]]\nlisten = \"127.0.0.1:0\"\nproxy_protocol = true\n\
         [[route]]\ndeny = [\"198.51.100.0/24\"]\nupstream = \"app\"\n\n{}",
        pool("app", backend.addr)
    ));
    let behind = gw.addrs[1];
    let wait = std::time::Duration::from_secs(3);
    let request = b"GET /v1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    let v1 = [
        &b"PROXY TCP4 203.0.113.7 127.0.0.1 51234 80\r\n"[..],
        request,
    ]
    .concat();
    let reply = raw_exchange(behind, &v1, wait);
    assert_eq!(status_of(&reply), 200, "{reply}");
    // v2, split in two writes, as a balancer may send it.
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    v2.extend_from_slice(&[198, 51, 100, 9, 127, 0, 0, 1, 0x1f, 0x90, 0, 80]);
    {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(behind).unwrap();
        s.set_read_timeout(Some(wait)).unwrap();
        s.write_all(&v2[..10]).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        s.write_all(&v2[10..]).unwrap();
        s.write_all(request).unwrap();
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        assert_eq!(
            status_of(&reply),
            403,
            "the client 198.51.100.9 is denied: {reply}"
        );
    }
    // No header, or a broken one: closed with no answer.
    for bad in [&request[..], b"PROXY TCP4 nonsense\r\n"] {
        let reply = raw_exchange(behind, bad, wait);
        assert_eq!(reply, "", "{:?}", String::from_utf8_lossy(bad));
    }
    // Half a header and then nothing: closed at header_read_timeout (1s).
    let started = std::time::Instant::now();
    assert_eq!(raw_exchange(behind, b"PROXY TCP4 203.0", wait), "");
    assert!(started.elapsed() < std::time::Duration::from_millis(2500));
    // The plain listener beside it takes no header.
    let reply = raw_exchange(gw.addr, request, wait);
    assert_eq!(status_of(&reply), 200, "{reply}");
    let seen = backend.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].header("x-real-ip"), Some("203.0.113.7"));
    assert_eq!(seen[1].header("x-real-ip"), Some("127.0.0.1"));
}
