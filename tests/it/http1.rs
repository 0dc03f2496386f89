//! The HTTP/1.1 front end on the wire: pipelining, HTTP/1.0 keep-alive, half-close,
//! chunked uploads with trailers, a full-duplex upstream.

use crate::common::*;
use http_body_util::BodyExt;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A backend that answers `METHOD PATH BODY` (the body it read in full).
async fn echo() -> Backend {
    Backend::start(|req| async move {
        let line = format!("{} {} ", req.method(), req.uri());
        let body = req.into_body().collect().await.unwrap().to_bytes();
        hyper::Response::new(full([line.as_bytes(), &body].concat()))
    })
    .await
}

fn read_responses(stream: &mut TcpStream, n: usize) -> String {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while String::from_utf8_lossy(&got).matches("HTTP/1.1 ").count() < n
        || !complete(&String::from_utf8_lossy(&got), n)
    {
        let k = stream.read(&mut buf).unwrap();
        assert!(k > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..k]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// All `n` responses are in, each body as long as its content-length.
fn complete(text: &str, n: usize) -> bool {
    let mut rest = text;
    for _ in 0..n {
        let Some(end) = rest.find("\r\n\r\n") else {
            return false;
        };
        let head = rest[..end].to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if rest.len() < end + 4 + len {
            return false;
        }
        rest = &rest[end + 4 + len..];
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let backend = echo().await;
    let gw = Gateway::start(&upstream_config("app", &[backend.addr], ""));
    let mut stream = TcpStream::connect(gw.addr).unwrap();
    stream
        .write_all(
            b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n\
              POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
              POST /3 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n\
              GET /4 HTTP/1.1\r\nHost: a\r\n\r\n",
        )
        .unwrap();
    let replies = read_responses(&mut stream, 4);
    let bodies: Vec<&str> = replies
        .split("HTTP/1.1 ")
        .skip(1)
        .map(|r| r.split("\r\n\r\n").nth(1).unwrap())
        .collect();
    assert_eq!(
        bodies,
        ["GET /1 ", "POST /2 hello", "POST /3 abcde", "GET /4 "]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_1_0_keeps_alive_only_when_asked() {
    let backend = Backend::named("a").await;
    let gw = Gateway::start(&upstream_config("app", &[backend.addr], ""));
    let mut stream = TcpStream::connect(gw.addr).unwrap();
    for _ in 0..2 {
        stream
            .write_all(b"GET / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n")
            .unwrap();
        let reply = read_responses(&mut stream, 1).to_ascii_lowercase();
        assert!(reply.contains("connection: keep-alive"), "{reply}");
        assert!(reply.contains("content-length: 1"), "{reply}");
    }
    let reply = raw_exchange(
        gw.addr,
        b"GET / HTTP/1.0\r\nHost: a\r\n\r\n",
        Duration::from_secs(5),
    );
    assert_eq!(status_of(&reply), 200);
    assert!(
        reply.ends_with("\r\n\r\na"),
        "closed after the body: {reply:?}"
    );
}

/// A client that shuts down its sending side after the request still gets the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_closed_client_gets_its_response() {
    let backend = echo().await;
    let gw = Gateway::start(&upstream_config("app", &[backend.addr], ""));
    let mut stream = TcpStream::connect(gw.addr).unwrap();
    stream
        .write_all(b"POST /half HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc")
        .unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut reply = String::new();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.read_to_string(&mut reply).unwrap();
    assert_eq!(status_of(&reply), 200);
    assert!(reply.ends_with("POST /half abc"), "{reply:?}");
}

/// Trailers of a chunked upload reach the upstream (those the request declares in
/// `Trailer`, which is what hyper's client sends on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_upload_trailers_reach_the_upstream() {
    let backend = Backend::start(|req| async move {
        let collected = req.into_body().collect().await.unwrap();
        let trailer = collected
            .trailers()
            .and_then(|t| t.get("x-sum"))
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = collected.to_bytes();
        hyper::Response::new(full(format!(
            "{} {trailer}",
            String::from_utf8_lossy(&body)
        )))
    })
    .await;
    let gw = Gateway::start(&upstream_config("app", &[backend.addr], ""));
    let reply = raw_exchange(
        gw.addr,
        b"POST / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\nTrailer: X-Sum\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n4\r\ndata\r\n0\r\nX-Sum: 42\r\n\r\n",
        Duration::from_secs(5),
    );
    assert_eq!(status_of(&reply), 200, "{reply}");
    assert!(reply.ends_with("data 42"), "{reply:?}");
}

/// An upstream that streams its answer while it still reads the upload (an echo) works:
/// the response goes out while the body still comes in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_duplex_upstream_streams_both_ways_at_once() {
    let backend = Backend::start(|req| async move {
        // Answer at once with the request body itself as the response body.
        let mut r = hyper::Response::new(req.into_body().map_err(|e| e.into()).boxed());
        r.headers_mut().insert("x-echo", "1".parse().unwrap());
        r
    })
    .await;
    let gw = Gateway::start(&upstream_config("app", &[backend.addr], ""));
    let mut stream = TcpStream::connect(gw.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
        .write_all(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n",
        )
        .unwrap();
    // The first piece comes back before the upload is over.
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&got).contains("first") {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    stream.write_all(b"6\r\nsecond\r\n0\r\n\r\n").unwrap();
    while !String::from_utf8_lossy(&got).contains("0\r\n\r\n") {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&got).contains("second"));
}

/// An answer given before the request body was read whole (here a 502: the upstream is
/// unreachable, so none of the body was wanted) closes the connection and says so, so a
/// client does not send its next request on a connection about to close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_before_the_body_was_read_says_connection_close() {
    let gw = Gateway::start(&upstream_config("app", &[closed_port()], "max_fails = 0"));
    let reply = raw_exchange(
        gw.addr,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\nhello",
        Duration::from_secs(5),
    );
    assert_eq!(status_of(&reply), 502, "{reply}");
    assert!(
        reply
            .to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "{reply}"
    );
    // A body read whole keeps the connection open for the next request.
    let backend = Backend::named("a").await;
    let gw = Gateway::start(&upstream_config("app", &[backend.addr], ""));
    let reply = raw_exchange(
        gw.addr,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    );
    assert_eq!(reply.matches("HTTP/1.1 200").count(), 2, "{reply}");
}
