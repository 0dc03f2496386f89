//! A catalogue of malformed and ambiguous requests (RFC 9110/9112, and the cases the nginx
//! and HAProxy test suites cover). Each one gets its answer, and no smuggled request ever
//! reaches the backend.

use crate::common::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Every case appends this request; the backend must never see its path.
const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";

struct Case {
    name: &'static str,
    request: String,
    status: u16,
    /// The flaw is in the body, found only while streaming it: the head may already have
    /// reached the backend, but the backend must never get a complete body.
    mid_body: bool,
}

fn case(name: &'static str, head_and_body: &str, status: u16) -> Case {
    Case {
        name,
        request: format!("{head_and_body}{SMUGGLED}"),
        status,
        mid_body: false,
    }
}

fn mid_body(c: Case) -> Case {
    Case {
        mid_body: true,
        ..c
    }
}

fn catalogue() -> Vec<Case> {
    let long_target = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(10_000));
    let huge_target = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(100_000));
    let big_headers = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "b".repeat(40_000)
    );
    let many_headers = format!(
        "GET / HTTP/1.1\r\nHost: a\r\n{}\r\n",
        (0..200)
            .map(|i| format!("X-H{i}: v\r\n"))
            .collect::<String>()
    );
    vec![
        // Framing conflicts.
        case("TE chunked twice", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", 400),
        case("TE chunked in two lines", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        case("TE gzip then chunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
        case("TE gzip only", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
        case("TE chunked then identity", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n", 400),
        case("TE xchunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", 400),
        case("TE with space before colon", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400),
        case("TE on HTTP/1.0", "POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        // Content-Length with Transfer-Encoding: refused (RFC 9112 §6.1 allows it, nginx
        // does it), so no proxy behind us can pick the other framing.
        case("Content-Length then Transfer-Encoding", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 400),
        case("Transfer-Encoding then Content-Length", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 400),
        case("two different Content-Lengths", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 41\r\n\r\nabc", 400),
        case("Content-Length with sign", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc", 400),
        case("Content-Length not a number", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3a\r\n\r\nabc", 400),
        // A broken first chunk line is found before the head goes upstream.
        case("bad chunk size", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", 400),
        case("chunk size overflow", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff1\r\nabc\r\n0\r\n\r\n", 400),
        case("chunk size after a space", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n 5\r\nhello\r\n0\r\n\r\n", 400),
        case("chunk size in 0x form", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n", 400),
        case("chunk size before a space", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n", 400),
        case("chunk size line ended by a bare LF", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n", 400),
        mid_body(case("bad second chunk size", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\nabc\r\n0\r\n\r\n", 400)),
        mid_body(case("chunk without CRLF", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX0\r\n\r\n", 400)),
        // Host.
        case("HTTP/1.1 without Host", "GET / HTTP/1.1\r\n\r\n", 400),
        case("two Host headers", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        case("Host with user info", "GET / HTTP/1.1\r\nHost: evil@a\r\n\r\n", 400),
        case("Host with a path", "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400),
        case("absolute-form against another Host", "GET http://b/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        // Request line and header bytes.
        case("target not origin-form", "GET foo HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        case("space in target", "GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        case("unknown version", "GET / HTTP/1.2\r\nHost: a\r\n\r\n", 400),
        case("asterisk on GET", "GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        case("CONNECT", "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 405),
        case("TRACE", "TRACE / HTTP/1.1\r\nHost: a\r\n\r\n", 405),
        // Paths that cannot be normalized safely.
        case("dot-dot above the root", "GET /../etc/passwd HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        case("encoded dot-dot above the root", "GET /a/%2e%2e/%2E%2E/x HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        case("encoded slash", "GET /a%2fb HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        case("encoded backslash", "GET /a%5Cb HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        case("raw backslash", "GET /a\\b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        case("broken percent-escape", "GET /a%zz HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        case("dot-dot with parameters", "GET /a/..;/b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        case("NUL in a header value", "GET / HTTP/1.1\r\nHost: a\r\nX-A: a\0b\r\n\r\n", 400),
        case("space in a header name", "GET / HTTP/1.1\r\nHost: a\r\nX A: b\r\n\r\n", 400),
        case("obsolete line folding", "GET / HTTP/1.1\r\nHost: a\r\nX-A: a\r\n b\r\n\r\n", 400),
        case("bare CR", "GET / HTTP/1.1\r\nHost: a\r\nX-A: a\rb\r\n\r\n", 400),
        // Sizes.
        case("request target over max_request_line", &long_target, 414),
        case("100 KB request target", &huge_target, 414),
        case("headers over max_header_bytes", &big_headers, 431),
        case("too many headers", &many_headers, 431),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_their_status_and_never_reach_a_backend() {
    let complete_bodies = Arc::new(AtomicUsize::new(0));
    let counter = complete_bodies.clone();
    let backend = Backend::start(move |req| {
        let counter = counter.clone();
        async move {
            use http_body_util::BodyExt;
            if req.into_body().collect().await.is_ok() {
                counter.fetch_add(1, Ordering::SeqCst);
            }
            hyper::Response::new(full("a"))
        }
    })
    .await;
    let gw = Gateway::start(&upstream_config("app", &[backend.addr], ""));
    let mut failures = Vec::new();
    for c in catalogue() {
        let before = backend.requests();
        let complete_before = complete_bodies.load(Ordering::SeqCst);
        let reply = raw_exchange(gw.addr, c.request.as_bytes(), Duration::from_secs(5));
        let status = reply
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok());
        if status != Some(c.status) {
            failures.push(format!(
                "{}: expected {}, got {:?}",
                c.name,
                c.status,
                reply.lines().next()
            ));
        }
        if reply.matches("HTTP/1.1 ").count() > 1 {
            failures.push(format!(
                "{}: the connection went on after the error: {reply:?}",
                c.name
            ));
        }
        let reached: Vec<String> = backend.seen()[before..]
            .iter()
            .map(|s| s.uri.clone())
            .collect();
        if !c.mid_body && !reached.is_empty() {
            failures.push(format!("{}: reached the backend: {reached:?}", c.name));
        }
        // Give the backend a moment to finish reading whatever it got.
        tokio::time::sleep(Duration::from_millis(20)).await;
        if complete_bodies.load(Ordering::SeqCst) != complete_before {
            failures.push(format!("{}: the backend got a complete body", c.name));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(backend.seen().iter().all(|s| s.uri != "/smuggled"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_named_in_connection_cannot_strip_what_the_gateway_adds() {
    let backend = Backend::named("a").await;
    let gw = Gateway::start(&upstream_config("app", &[backend.addr], ""));
    let reply = raw_exchange(
        gw.addr,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close, X-Forwarded-For, X-Real-IP, X-Forwarded-Proto, X-Forwarded-Host, Host, X-Secret\r\nX-Secret: 1\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n",
        Duration::from_secs(5),
    );
    assert_eq!(status_of(&reply), 200);
    let seen = &backend.seen()[0];
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-real-ip"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-forwarded-host"), Some("a"));
    assert_eq!(seen.header("host"), Some("a"));
    assert_eq!(seen.header("x-secret"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_upgrade_is_not_passed_on() {
    let backend = Backend::named("a").await;
    let gw = Gateway::start(&upstream_config("app", &[backend.addr], ""));
    let reply = raw_exchange(
        gw.addr,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
        Duration::from_secs(3),
    );
    assert_eq!(status_of(&reply), 200);
    let seen = &backend.seen()[0];
    for gone in ["upgrade", "http2-settings", "connection"] {
        assert_eq!(seen.header(gone), None, "{gone} reached the backend");
    }
}

/// A client that sends WebSocket frames (here: a whole second request) before the
/// upstream agreed to switch protocols must not get them read as HTTP when the upstream
/// refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_sent_before_a_refused_websocket_upgrade_is_not_read_as_a_request() {
    let backend = Backend::start(|_req| async {
        let mut r = hyper::Response::new(full("no"));
        *r.status_mut() = http::StatusCode::FORBIDDEN;
        r
    })
    .await;
    let gw = Gateway::start(&upstream_config("app", &[backend.addr], ""));
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n{SMUGGLED}"
    );
    let reply = raw_exchange(gw.addr, request.as_bytes(), Duration::from_secs(3));
    assert_eq!(status_of(&reply), 403);
    assert!(
        reply.to_ascii_lowercase().contains("connection: close"),
        "{reply}"
    );
    assert_eq!(reply.matches("HTTP/1.1 ").count(), 1, "{reply:?}");
    assert!(backend.seen().iter().all(|s| s.uri == "/ws"));
}

/// A chunked body broken from its first chunk-size line is refused before a byte of the
/// request leaves for the backend (a raw listener counts every byte it is sent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_first_chunk_line_sends_nothing_upstream() {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(AtomicUsize::new(0));
    let count = received.clone();
    let _server = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    count.fetch_add(n, Ordering::SeqCst);
                }
            });
        }
    });
    let gw = Gateway::start(&upstream_config("app", &[addr], "max_fails = 0"));
    for first_line in [" 5", "0x5", "5 ", "zz", "fffffffffffffffffff1"] {
        let request = format!(
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{first_line}\r\nhello\r\n0\r\n\r\n"
        );
        let reply = raw_exchange(gw.addr, request.as_bytes(), Duration::from_secs(5));
        assert_eq!(status_of(&reply), 400, "{first_line:?}: {reply:?}");
    }
    let reply = raw_exchange(
        gw.addr,
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
        Duration::from_secs(5),
    );
    assert_eq!(status_of(&reply), 400, "bare LF: {reply:?}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        received.load(Ordering::SeqCst),
        0,
        "bytes reached the backend"
    );
}
