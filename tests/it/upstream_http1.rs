//! The upstream side of the HTTP/1 engine against servers that use the corners of the
//! protocol: informational answers, bodies ended by a close, idle connections closed
//! under the pool, answers streamed while the request still uploads, and requests whose
//! body needs chunking on the way to the server.

use crate::common::*;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::Response;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A server that reads one request head (and `Content-Length` bytes of body) per
/// exchange, answers `reply` and keeps the connection open for `linger` afterwards (then
/// closes it). Counts the connections it accepted.
async fn scripted_backend(
    reply: &'static [u8],
    linger: Duration,
) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match tokio::time::timeout(linger, stream.read(&mut chunk)).await {
                            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                            _ => return,
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let body: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    while buf.len() < end + 4 + body {
                        match stream.read(&mut chunk).await {
                            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                            _ => return,
                        }
                    }
                    buf.drain(..end + 4 + body);
                    if stream.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn informational_answers_before_the_final_one_are_passed_over() {
    let (addr, _) = scripted_backend(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </app.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal",
        Duration::from_secs(5),
    )
    .await;
    let gw = Gateway::start(&upstream_config("app", &[addr], ""));
    let c = client();
    for _ in 0..3 {
        let res = c.get(gw.url("/")).send().await.unwrap();
        assert_eq!(res.status(), 200);
        assert!(res.headers().get("link").is_none());
        assert_eq!(res.text().await.unwrap(), "final");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_ended_by_the_close_is_passed_on_whole_and_the_connection_not_reused() {
    let (addr, _task) =
        raw_backend(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the very end").await;
    let gw = Gateway::start(&upstream_config("app", &[addr], "max_fails = 0"));
    let c = client();
    for _ in 0..3 {
        let res = c.get(gw.url("/")).send().await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.text().await.unwrap(), "until the very end");
    }
    // Also to an HTTP/1.0 client, which gets it ended by the close as well.
    let reply = raw_exchange(
        gw.addr,
        b"GET / HTTP/1.0\r\nHost: a\r\n\r\n",
        Duration::from_secs(5),
    );
    assert_eq!(status_of(&reply), 200);
    assert!(reply.ends_with("\r\n\r\nuntil the very end"), "{reply}");
    let log = gw.wait_log_lines(4).await.join("\n");
    assert!(!log.contains("error="), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_the_server_closed_is_not_used_for_the_next_request() {
    // The server says keep-alive, then closes each connection 200 ms after its answer.
    let (addr, accepted) = scripted_backend(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        Duration::from_millis(200),
    )
    .await;
    let gw = Gateway::start(&upstream_config("app", &[addr], "max_fails = 0"));
    let c = client();
    let res = c.get(gw.url("/")).send().await.unwrap();
    assert_eq!(res.text().await.unwrap(), "ok");
    tokio::time::sleep(Duration::from_millis(600)).await;
    // A POST cannot be sent again: it must not go out on the closed connection.
    let res = c
        .post(gw.url("/"))
        .body(vec![b'x'; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "ok");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    // And while the server keeps it, the connection is reused.
    let res = c.get(gw.url("/")).send().await.unwrap();
    assert_eq!(res.text().await.unwrap(), "ok");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    let log = gw.wait_log_lines(3).await.join("\n");
    assert!(!log.contains("error="), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_answers_as_it_reads_gets_the_whole_upload_back() {
    // The answer streams while the request is still uploading: neither side may wait for
    // the other to finish (8 MiB is more than the socket buffers on the way hold).
    let backend = Backend::start(|req| async move {
        let body = req.into_body().map_err(|e| e.into()).boxed();
        Response::new(body)
    })
    .await;
    let gw = Gateway::start(&upstream_config("app", &[backend.addr], ""));
    let piece = Bytes::from(vec![b'z'; 64 * 1024]);
    let pieces: Vec<Result<Bytes, std::io::Error>> = (0..128).map(|_| Ok(piece.clone())).collect();
    let upload = reqwest::Body::wrap_stream(futures_util::stream::iter(pieces));
    let res = tokio::time::timeout(
        Duration::from_secs(30),
        client().put(gw.url("/echo")).body(upload).send(),
    )
    .await
    .expect("the echo did not start")
    .unwrap();
    assert_eq!(res.status(), 200);
    let body = tokio::time::timeout(Duration::from_secs(30), res.bytes())
        .await
        .expect("the echo did not finish")
        .unwrap();
    assert_eq!(body.len(), 128 * 64 * 1024);
    assert!(body.iter().all(|&b| b == b'z'));
    // The client sent it chunked: so did the gateway.
    let seen = backend.seen();
    assert_eq!(seen[0].header("transfer-encoding"), Some("chunked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_answer_carries_no_body_whatever_its_length_says() {
    // The length of a HEAD answer describes the GET's body: none follows, and the
    // connection serves the next request.
    let (addr, accepted) = scripted_backend(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    let gw = Gateway::start(&upstream_config("app", &[addr], ""));
    let c = client();
    for _ in 0..3 {
        let res = c.head(gw.url("/")).send().await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["content-length"], "1234");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}
