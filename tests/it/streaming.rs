//! Bodies stream both ways with bounded memory; WebSocket, trailers, 100-continue and
//! bodiless responses come through intact.

use crate::common::*;
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const GIB: u64 = 1 << 30;
const CHUNK: usize = 256 * 1024;
const RSS_LIMIT_KIB: u64 = 64 * 1024;

/// Samples the gateway's RSS every 50 ms until dropped; returns the peak.
fn watch_rss(gw: &Gateway) -> (Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let pid = gw.child.id();
    let peak = Arc::new(AtomicU64::new(0));
    let p = peak.clone();
    let task = tokio::spawn(async move {
        loop {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            if let Some(kib) = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
            {
                p.fetch_max(kib, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    (peak, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_upload_streams_with_bounded_memory() {
    let backend = Backend::start(|req| async move {
        let mut body = req.into_body();
        let mut total = 0u64;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                total += data.len() as u64;
            }
        }
        hyper::Response::new(full(total.to_string()))
    })
    .await;
    let gw = Gateway::start(&upstream_config("app", &[backend.addr], ""));
    let (peak, sampler) = watch_rss(&gw);
    let chunk = Bytes::from(vec![b'x'; CHUNK]);
    let chunks = (GIB / CHUNK as u64) as usize;
    let stream =
        futures_util::stream::iter(0..chunks).map(move |_| Ok::<_, std::io::Error>(chunk.clone()));
    let res = client()
        .post(gw.url("/upload"))
        .header("content-length", GIB)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), GIB.to_string());
    sampler.abort();
    let peak = peak.load(Ordering::Relaxed);
    assert!(
        peak > 0 && peak < RSS_LIMIT_KIB,
        "gateway RSS peaked at {peak} KiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_download_streams_with_bounded_memory() {
    let backend = Backend::start(|_req| async move {
        let chunk = Bytes::from(vec![b'y'; CHUNK]);
        let chunks = (GIB / CHUNK as u64) as usize;
        let stream =
            futures_util::stream::iter(0..chunks).map(move |_| Ok(Frame::data(chunk.clone())));
        hyper::Response::new(BodyExt::boxed(StreamBody::new(stream)))
    })
    .await;
    let gw = Gateway::start(&upstream_config("app", &[backend.addr], ""));
    let (peak, sampler) = watch_rss(&gw);
    let res = client().get(gw.url("/download")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let mut total = 0u64;
    let mut stream = res.bytes_stream();
    while let Some(chunk) = stream.next().await {
        total += chunk.unwrap().len() as u64;
    }
    assert_eq!(total, GIB);
    sampler.abort();
    let peak = peak.load(Ordering::Relaxed);
    assert!(
        peak > 0 && peak < RSS_LIMIT_KIB,
        "gateway RSS peaked at {peak} KiB"
    );
}

/// A backend that accepts every WebSocket upgrade and hands the connection to `serve`.
async fn websocket_backend<F, Fut>(serve: F) -> Backend
where
    F: Fn(hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    Backend::start(move |mut req| {
        let serve = serve.clone();
        async move {
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(upgraded) = upgrade.await {
                    serve(hyper_util::rt::TokioIo::new(upgraded)).await;
                }
            });
            let mut r = hyper::Response::new(full(""));
            *r.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
            r.headers_mut()
                .insert("upgrade", "websocket".parse().unwrap());
            r.headers_mut()
                .insert("connection", "Upgrade".parse().unwrap());
            r.headers_mut().insert(
                "sec-websocket-accept",
                "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".parse().unwrap(),
            );
            r
        }
    })
    .await
}

/// A backend that accepts WebSocket upgrades and then echoes every byte.
async fn websocket_echo() -> Backend {
    websocket_backend(|mut io| async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = [0u8; 1024];
        while let Ok(n) = io.read(&mut buf).await {
            if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    })
    .await
}

/// Asks the gateway at `addr` for a WebSocket upgrade: the connection, and the answer's
/// head in lower case.
fn open_websocket(addr: std::net::SocketAddr) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
        .write_all(b"GET /chat HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    (stream, String::from_utf8_lossy(&head).to_ascii_lowercase())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_is_relayed_both_ways() {
    let backend = websocket_echo().await;
    let gw = Gateway::start(&upstream_config("app", &[backend.addr], ""));
    let (mut stream, head) = open_websocket(gw.addr);
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains("upgrade: websocket")
            && head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=")
    );
    for message in [&b"hello"[..], &b"second frame"[..]] {
        stream.write_all(message).unwrap();
        let mut echo = vec![0u8; message.len()];
        stream.read_exact(&mut echo).unwrap();
        assert_eq!(echo, message);
    }
    let seen = &backend.seen()[0];
    assert_eq!(seen.header("upgrade"), Some("websocket"));
    assert_eq!(seen.header("connection"), Some("upgrade"));
    assert_eq!(
        seen.header("sec-websocket-key"),
        Some("dGhlIHNhbXBsZSBub25jZQ==")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_pass_through_when_the_client_accepts_them() {
    let backend = Backend::start(|_req| async {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-checksum", "abc123".parse().unwrap());
        let frames = vec![
            Ok(Frame::data(Bytes::from_static(b"body"))),
            Ok(Frame::trailers(trailers)),
        ];
        let mut r = hyper::Response::new(BodyExt::boxed(StreamBody::new(
            futures_util::stream::iter(frames),
        )));
        r.headers_mut()
            .insert("trailer", "x-checksum".parse().unwrap());
        r
    })
    .await;
    let gw = Gateway::start(&upstream_config("app", &[backend.addr], ""));
    let reply = raw_exchange(
        gw.addr,
        b"GET / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    );
    assert_eq!(status_of(&reply), 200);
    assert!(
        reply.to_ascii_lowercase().contains("x-checksum: abc123"),
        "{reply:?}"
    );
    assert_eq!(backend.seen()[0].header("te"), Some("trailers"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_answered_before_the_body_is_sent() {
    let backend = Backend::start(|req| async move {
        let body = req.into_body().collect().await.unwrap().to_bytes();
        hyper::Response::new(full(body))
    })
    .await;
    let gw = Gateway::start(&upstream_config("app", &[backend.addr], ""));
    let mut stream = TcpStream::connect(gw.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
        .write_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut interim = [0u8; 25];
    stream.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(b"hello").unwrap();
    let mut rest = String::new();
    let _ = stream.read_to_string(&mut rest);
    assert!(
        rest.starts_with("HTTP/1.1 200") && rest.ends_with("hello"),
        "{rest:?}"
    );
    assert_eq!(backend.seen()[0].header("expect"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_204_and_304_carry_no_body() {
    let backend = Backend::start(|req| async move {
        let mut r = hyper::Response::new(full(if req.method() == http::Method::HEAD {
            ""
        } else {
            "twelve bytes"
        }));
        match req.uri().path() {
            "/204" => *r.status_mut() = http::StatusCode::NO_CONTENT,
            "/304" => *r.status_mut() = http::StatusCode::NOT_MODIFIED,
            _ => {
                r.headers_mut()
                    .insert("content-length", "12".parse().unwrap());
            }
        }
        r
    })
    .await;
    let gw = Gateway::start(&upstream_config("app", &[backend.addr], ""));
    // All three on one keep-alive connection: a stray body would corrupt the next response.
    let reply = raw_exchange(
        gw.addr,
        b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\nGET /204 HTTP/1.1\r\nHost: a\r\n\r\nGET /304 HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    );
    let statuses: Vec<&str> = reply
        .lines()
        .filter(|l| l.starts_with("HTTP/1.1"))
        .collect();
    assert_eq!(
        statuses,
        [
            "HTTP/1.1 200 OK",
            "HTTP/1.1 204 No Content",
            "HTTP/1.1 304 Not Modified",
            "HTTP/1.1 200 OK"
        ],
        "{reply:?}"
    );
    assert!(reply.to_ascii_lowercase().contains("content-length: 12"));
    assert_eq!(reply.matches("twelve bytes").count(), 1, "{reply:?}");
    // The upstream connection went back to the pool after each bodiless response.
    assert_eq!(backend.connections.load(Ordering::SeqCst), 1);
}

/// The 101 head of a WebSocket upgrade sent with `cookie` (if any).
fn upgrade_head(gw: &Gateway, cookie: Option<&str>) -> String {
    let mut stream = TcpStream::connect(gw.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let cookie = cookie.map_or(String::new(), |c| format!("Cookie: {c}\r\n"));
    let request = format!("GET /chat HTTP/1.1\r\nHost: a\r\n{cookie}Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).to_ascii_lowercase()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_honour_the_sticky_cookie() {
    let (one, two) = (websocket_echo().await, websocket_echo().await);
    let gw = Gateway::start(&upstream_config(
        "app",
        &[one.addr, two.addr],
        "sticky_cookie = \"gw\"",
    ));
    let first = upgrade_head(&gw, None);
    assert!(first.starts_with("http/1.1 101"), "{first}");
    let token = first
        .split("\r\nset-cookie: gw=")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .unwrap_or_else(|| panic!("no sticky cookie on the 101: {first}"))
        .to_string();
    let home = if one.requests() == 1 { &one } else { &two };
    for _ in 0..4 {
        let head = upgrade_head(&gw, Some(&format!("gw={token}")));
        assert!(head.starts_with("http/1.1 101"), "{head}");
        assert!(!head.contains("set-cookie"), "{head}");
    }
    assert_eq!(
        home.requests(),
        5,
        "every upgrade with the cookie went to its server"
    );
}

/// A WebSocket still open when its worker drains (here a reload with
/// `shutdown_timeout = "2s"`) is ended with a Close frame, status 1001 (going away), to
/// each side before the time is up, rather than cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_worker_tells_both_sides_of_a_websocket_it_is_going_away() {
    let received = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = received.clone();
    let backend = websocket_backend(move |mut io| {
        let seen = seen.clone();
        async move {
            use tokio::io::AsyncReadExt;
            let mut buf = [0u8; 1024];
            while let Ok(n) = io.read(&mut buf).await {
                if n == 0 {
                    return;
                }
                seen.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        }
    })
    .await;
    let gw = Gateway::start(&format!(
        "[gateway]\nshutdown_timeout = \"2s\"\n{}",
        upstream_config("app", &[backend.addr], "")
    ));
    let (mut stream, head) = open_websocket(gw.addr);
    assert!(head.starts_with("http/1.1 101"), "{head}");
    // A masked text frame "hi", whole.
    let hi = [0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2];
    stream.write_all(&hi).unwrap();
    let (code, out, err) = gw.ctl(&["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    let asked = std::time::Instant::now();
    let mut close = [0u8; 4];
    stream.read_exact(&mut close).unwrap();
    assert_eq!(close, [0x88, 0x02, 0x03, 0xE9], "a Close frame, 1001");
    assert!(
        asked.elapsed() < Duration::from_millis(2500),
        "{:?}",
        asked.elapsed()
    );
    // The client answers with its own Close; the connection then ends.
    let _ = stream.write_all(&[0x88, 0x82, 1, 2, 3, 4, 0x03 ^ 1, 0xE9 ^ 2]);
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{rest:?}");
    // The server got the text frame, then a masked Close saying 1001.
    let got = received.lock().unwrap().clone();
    assert_eq!(got.len(), hi.len() + 8, "{got:?}");
    assert_eq!(&got[..hi.len()], &hi);
    let to_server = &got[hi.len()..];
    assert_eq!(&to_server[..2], &[0x88, 0x82]);
    let status = [to_server[6] ^ to_server[2], to_server[7] ^ to_server[3]];
    assert_eq!(u16::from_be_bytes(status), 1001);
}

/// A server removed at run time (`remove-server`) keeps relaying the WebSockets it has
/// until they close, and `--wait` returns only then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_server_keeps_its_websockets_until_they_close() {
    let (ws, other) = (websocket_echo().await, Backend::named("other").await);
    let gw = Gateway::start(&format!(
        "[gateway]\nworkers = 1\n{}",
        upstream_config("app", &[ws.addr], "")
    ));
    let (mut stream, head) = open_websocket(gw.addr);
    assert!(head.starts_with("http/1.1 101"), "{head}");
    let (code, _, err) = gw.ctl(&["add-server", "app", &other.addr.to_string()]);
    assert_eq!(code, 0, "{err}");
    let socket = gw.socket();
    let removed = ws.addr.to_string();
    let waiting = std::thread::spawn(move || {
        let started = std::time::Instant::now();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_gatewayctl"))
            .args([
                "-s",
                socket.to_str().unwrap(),
                "remove-server",
                "app",
                &removed,
                "--wait",
            ])
            .output()
            .unwrap();
        (out.status.code(), started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Removed, and the WebSocket still goes both ways; new requests go to the other.
    stream.write_all(b"still here").unwrap();
    let mut echo = [0u8; 10];
    stream.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"still here");
    assert_eq!(get_fresh(gw.url("/")).await, (200, "other".to_string()));
    assert!(
        !waiting.is_finished(),
        "--wait returned with a WebSocket open"
    );
    drop(stream);
    let (code, took) = waiting.join().unwrap();
    assert_eq!(code, Some(0));
    assert!(took >= Duration::from_millis(500), "{took:?}");
}
