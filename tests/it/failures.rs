//! Broken upstreams and slow clients: the right status, a log line that says why, and
//! nothing passed off as complete when it was not.

use crate::common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// A 504 within 3 s, with `why` in its access-log line.
async fn expect_prompt_504(gw: &Gateway, why: &str) {
    let started = Instant::now();
    let res = client().get(gw.url("/")).send().await.unwrap();
    assert_eq!(res.status(), 504);
    assert!(started.elapsed() < Duration::from_secs(3));
    let log = gw.wait_log_lines(1).await.join("\n");
    assert!(log.contains(why), "{log}");
}

async fn status_and_log(reply: &'static [u8]) -> (u16, String, String) {
    let (addr, _task) = raw_backend(reply).await;
    let gw = Gateway::start(&upstream_config("app", &[addr], "max_fails = 0"));
    let res = client().get(gw.url("/")).send().await.unwrap();
    let status = res.status().as_u16();
    let body = res.text().await.unwrap_or_default();
    let log = gw.wait_log_lines(1).await.join("\n");
    (status, body, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_http_upstream_is_502() {
    let (status, body, log) = status_and_log(b"SSH-2.0-OpenSSH_9.2\r\n\r\n").await;
    assert_eq!((status, body.as_str()), (502, "502 Bad Gateway\n"));
    assert!(
        log.contains("error=\"upstream sent an invalid response"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_content_length_and_transfer_encoding_is_502() {
    let (status, _, log) = status_and_log(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(status, 502);
    assert!(
        log.contains("both Content-Length and Transfer-Encoding"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_closing_before_answering_is_502() {
    let (status, _, log) = status_and_log(b"").await;
    assert_eq!(status, 502);
    assert!(log.contains("error=\"upstream"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unexpected_101_is_502() {
    let (status, _, _) = status_and_log(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n",
    )
    .await;
    assert_eq!(status, 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_cut_mid_body_aborts_the_client_response() {
    for reply in [
        // Declared 100 bytes, sent 5.
        &b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhello"[..],
        // Chunked, closed before the last chunk.
        &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"[..],
        // Invalid chunk framing.
        &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nZZ\r\n"[..],
    ] {
        let reply: &'static [u8] = Box::leak(reply.to_vec().into_boxed_slice());
        let (addr, _task) = raw_backend(reply).await;
        let gw = Gateway::start(&upstream_config("app", &[addr], "max_fails = 0"));
        let raw = raw_exchange(
            gw.addr,
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            Duration::from_secs(5),
        );
        assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
        assert!(
            !raw.ends_with("0\r\n\r\n"),
            "a cut body was finished as if complete: {raw:?}"
        );
        if raw.contains("content-length: 100") {
            let body = raw.split("\r\n\r\n").nth(1).unwrap();
            assert!(body.len() < 100, "{raw:?}");
        }
        let log = gw.wait_log_lines(1).await.join("\n");
        assert!(
            log.contains("error=\"upstream response body broken"),
            "{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_is_504_after_read_timeout() {
    let backend = Backend::start(|_req| async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        hyper::Response::new(full("late"))
    })
    .await;
    let gw = Gateway::start(&upstream_config(
        "app",
        &[backend.addr],
        "read_timeout = \"300ms\"",
    ));
    expect_prompt_504(&gw, "read_timeout").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_that_never_accepts_is_504_after_connect_timeout() {
    // A listener with a full accept queue: further SYNs are dropped, connect hangs.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    socket.listen(0).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            fillers.push(s);
        }
    }
    let gw = Gateway::start(&upstream_config(
        "app",
        &[addr],
        "connect_timeout = \"300ms\"\nretries = 0",
    ));
    expect_prompt_504(&gw, "timed out").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_cut_off_after_header_read_timeout() {
    let backend = Backend::named("a").await;
    let config = format!(
        "[gateway]\nheader_read_timeout = \"1s\"\n{}",
        upstream_config("app", &[backend.addr], "")
    );
    let gw = Gateway::start(&config);
    let mut stream = TcpStream::connect(gw.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let started = Instant::now();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ")
        .unwrap();
    let mut buf = Vec::new();
    let _ = stream.read_to_end(&mut buf);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
    assert_eq!(backend.requests(), 0);
    // Told why, as HAProxy does.
    let reply = String::from_utf8_lossy(&buf);
    assert!(reply.starts_with("HTTP/1.1 408 "), "{reply:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keepalive_connection_is_closed() {
    let backend = Backend::named("a").await;
    let config = format!(
        "[gateway]\nheader_read_timeout = \"1s\"\n{}",
        upstream_config("app", &[backend.addr], "")
    );
    let gw = Gateway::start(&config);
    let mut stream = TcpStream::connect(gw.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let _ = stream.read_to_end(&mut buf);
    assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"));
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "idle connection kept open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_body_is_408() {
    let backend = Backend::start(|req| async move {
        use http_body_util::BodyExt;
        let _ = req.into_body().collect().await;
        hyper::Response::new(full("got it"))
    })
    .await;
    let config = format!(
        "[gateway]\nclient_body_timeout = \"500ms\"\n{}",
        upstream_config("app", &[backend.addr], "")
    );
    let gw = Gateway::start(&config);
    let reply = raw_exchange(
        gw.addr,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nhello",
        Duration::from_secs(5),
    );
    assert_eq!(status_of(&reply), 408, "{reply:?} {}", gw.access_log());
    let log = gw.wait_log_lines(1).await.join("\n");
    assert!(log.contains("client sent no body data"), "{log}");
}

/// An upstream is read an eighth of `response_buffer` at a time (8 KiB by default) and a
/// response head must fit in one read: a 6 KiB head passes whole, a 12 KiB one is a 502
/// that says why, and a larger `response_buffer` lets it through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_heads_must_fit_in_one_upstream_read() {
    let reply = |cookie: usize| -> &'static [u8] {
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nSet-Cookie: c={}\r\n\r\nok",
            "x".repeat(cookie)
        );
        Box::leak(head.into_bytes().into_boxed_slice())
    };
    let (status, body, _) = status_and_log(reply(6 * 1024)).await;
    assert_eq!((status, body.as_str()), (200, "ok"));

    let (status, _, log) = status_and_log(reply(12 * 1024)).await;
    assert_eq!(status, 502);
    assert!(log.contains("response head too large"), "{log}");

    let (addr, _task) = raw_backend(reply(12 * 1024)).await;
    let gw = Gateway::start(&format!(
        "[gateway]\nresponse_buffer = \"128k\"\n{}",
        upstream_config("app", &[addr], "")
    ));
    let res = client().get(gw.url("/")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["set-cookie"].len(), 12 * 1024 + 2);
}

/// A client that uploads slowly (here 3 s, under `read_timeout = "500ms"`) gets its 200:
/// `read_timeout` counts from the end of the body, the client's pace is not the server's
/// fault, and six such uploads at once take no server out through `max_fails`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upload_is_not_a_timeout_nor_a_failure_of_the_server() {
    use futures_util::StreamExt;
    let backend = Backend::start(|req| async move {
        use http_body_util::BodyExt;
        let body = req.into_body().collect().await.unwrap().to_bytes();
        hyper::Response::new(full(body.len().to_string()))
    })
    .await;
    let gw = Gateway::start(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n{}",
        upstream_config(
            "app",
            &[backend.addr],
            "read_timeout = \"500ms\"\nmax_fails = 2\nfail_timeout = \"30s\"",
        )
    ));
    let uploads = (0..6).map(|_| {
        let url = gw.url("/upload");
        tokio::spawn(async move {
            let pieces = futures_util::stream::iter(0..15).then(|_| async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'u'; 1024]))
            });
            let res = client()
                .post(url)
                .header("content-length", 15 * 1024)
                .body(reqwest::Body::wrap_stream(pieces))
                .send()
                .await
                .unwrap();
            (res.status().as_u16(), res.text().await.unwrap())
        })
    });
    for upload in uploads.collect::<Vec<_>>() {
        assert_eq!(upload.await.unwrap(), (200, "15360".to_string()));
    }
    let status = gw.admin_status().await;
    let server = &status["upstreams"]["app"]["servers"][0];
    assert_eq!(server["failures_total"], 0, "{status}");
    assert_eq!(server["state"], "up", "{status}");
}

/// Servers restarted one after the other without a drain (as PM2 does) each fail a
/// request and go out under `max_fails`; once every server is out by passive failures
/// alone, they are tried anyway instead of answering 503 for `fail_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_failures_never_take_every_server_out() {
    let names = ["a", "b", "c"];
    let started: Vec<_> = names.into_iter().map(demo_backend).collect();
    let addrs: Vec<_> = started.iter().map(|(_, addr)| *addr).collect();
    let mut backends = KillOnDrop(started.into_iter().map(|(child, _)| child).collect());
    let gw = Gateway::start(&upstream_config(
        "app",
        &addrs,
        "max_fails = 1\nfail_timeout = \"60s\"\nretries = 0",
    ));
    drop(std::mem::replace(&mut backends, KillOnDrop(Vec::new())));
    // Each request fails on a server and takes it out, until none is left.
    for _ in 0..3 {
        assert_eq!(get_fresh(gw.url("/")).await.0, 502);
    }
    backends.0 = names
        .into_iter()
        .zip(&addrs)
        .map(|(name, addr)| demo_backend_at(name, *addr))
        .collect();
    for _ in 0..6 {
        let (status, body) = get_fresh(gw.url("/")).await;
        assert_eq!(status, 200, "{body}");
    }
    let log = gw.stderr();
    assert!(log.contains("every server is out after max_fails"), "{log}");
}

/// A passing active health check ends a `max_fails` period at once: a server that was
/// back in a moment is not kept out for the rest of `fail_timeout`, and the supervisor
/// says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passing_health_check_ends_a_max_fails_period() {
    let (a, a_addr) = demo_backend("a");
    let (b, b_addr) = demo_backend("b");
    let mut backends = KillOnDrop(vec![a, b]);
    let gw = Gateway::start(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n{}",
        upstream_config(
            "app",
            &[a_addr, b_addr],
            "max_fails = 1\nfail_timeout = \"60s\"\nretries = 0\n\
             [upstream.app.health_check]\npath = \"/\"\ninterval = \"200ms\"\nfall = 5\nrise = 1",
        )
    ));
    let _ = backends.0[0].kill();
    let _ = backends.0[0].wait();
    // Round robin: one of two requests goes to a and fails, taking it out.
    let statuses = [
        get_fresh(gw.url("/")).await.0,
        get_fresh(gw.url("/")).await.0,
    ];
    assert!(statuses.contains(&502), "{statuses:?}");
    let state =
        |status: &serde_json::Value| status["upstreams"]["app"]["servers"][0]["state"].clone();
    assert_eq!(state(&gw.admin_status().await), "down");
    // The supervisor looks every 500 ms: let it see the server out.
    tokio::time::sleep(Duration::from_millis(700)).await;
    backends.0[0] = demo_backend_at("a", a_addr);
    let deadline = Instant::now() + Duration::from_secs(3);
    while state(&gw.admin_status().await) != "up" {
        assert!(
            Instant::now() < deadline,
            "a is still out: {}",
            gw.admin_status().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_until("the return in the log", Duration::from_secs(3), || {
        gw.stderr()
            .contains("max_fails period over: the server is back in rotation")
    })
    .await;
}
