//! The client side of `make bench`'s memory table: opens COUNT connections to a proxy,
//! makes one request on each, and keeps them open until its stdin closes, so the caller
//! can read the proxy's RSS growth per connection. Only for loopback benchmarks.
//!
//! Usage: `memprobe MODE HOST:PORT COUNT [CA_FILE | PATH [ACCEPT_ENCODING]]`, MODE one of
//! - `idle`: HTTP/1.1 keep-alive, one GET each, then idle;
//! - `idle-tls`: the same over TLS (CA_FILE trusted, SNI `localhost`);
//! - `idle-h2`: HTTP/2 over TLS, one GET each, then idle;
//! - `slow`: GET PATH (`/big` unless given), with `Accept-Encoding: ACCEPT_ENCODING` when
//!   given, through a 4 KiB receive buffer, reading 4 KiB a second.
//!
//! It prints `ready` once every connection is set up, then waits for stdin to close.

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

type Held = Box<dyn std::any::Any + Send>;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(mode), Some(addr), Some(count)) = (args.first(), args.get(1), args.get(2)) else {
        eprintln!(
            "usage: memprobe idle|idle-tls|idle-h2|slow HOST:PORT COUNT [CA_FILE | PATH [ACCEPT_ENCODING]]"
        );
        std::process::exit(2);
    };
    let addr: SocketAddr = addr.parse().expect("HOST:PORT");
    assert!(addr.ip().is_loopback(), "memprobe only talks to loopback");
    let count: usize = count.parse().expect("COUNT");
    let slow_request = format!(
        "GET {} HTTP/1.1\r\nHost: localhost\r\n{}\r\n",
        args.get(3).map_or("/big", String::as_str),
        args.get(4)
            .map(|coding| format!("Accept-Encoding: {coding}\r\n"))
            .unwrap_or_default()
    );
    let tls = (mode != "slow")
        .then(|| args.get(3).map(|ca| tls_connector(ca, mode == "idle-h2")))
        .flatten();
    // Slow readers that have had a 200 head: counted as they come, since a compressing
    // proxy may send the head only once it has compressed output.
    let ok_heads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut held: Vec<Held> = Vec::with_capacity(count);
    let mut failed = 0;
    for _ in 0..count {
        let opened = match mode.as_str() {
            "idle" => idle_h1(TcpStream::connect(addr).await.ok()).await,
            "idle-tls" => match connect_tls(addr, tls.as_ref()).await {
                Some(stream) => idle_h1(Some(stream)).await,
                None => None,
            },
            "idle-h2" => idle_h2(addr, tls.as_ref()).await,
            "slow" => slow_reader(addr, &slow_request, ok_heads.clone()).await,
            other => panic!("unknown mode {other}"),
        };
        match opened {
            Some(h) => held.push(h),
            None => failed += 1,
        }
    }
    if failed > 0 {
        eprintln!("memprobe: {failed} of {count} connections failed");
    }
    println!("ready");
    let mut line = String::new();
    let _ = tokio::io::BufReader::new(tokio::io::stdin())
        .read_line(&mut line)
        .await;
    if mode == "slow" {
        let ok = ok_heads.load(std::sync::atomic::Ordering::Relaxed);
        if ok < count {
            eprintln!("memprobe: {ok} of {count} slow readers had a 200 head by the end");
        }
    }
    drop(held);
}

/// One keep-alive GET, the response read in full, the connection kept.
async fn idle_h1<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    stream: Option<S>,
) -> Option<Held> {
    let mut stream = stream?;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .ok()?;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    // The backend answers "ok\n" with a Content-Length: the head and 3 bytes.
    while !(got.windows(4).any(|w| w == b"\r\n\r\n") && got.ends_with(b"ok\n")) {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        got.extend_from_slice(&buf[..n]);
    }
    Some(Box::new(stream))
}

async fn idle_h2(addr: SocketAddr, tls: Option<&tokio_rustls::TlsConnector>) -> Option<Held> {
    let stream = connect_tls(addr, tls).await?;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .ok()?;
    tokio::spawn(conn);
    let request = hyper::Request::builder()
        .uri(format!("https://localhost:{}/", addr.port()))
        .body(Empty::<Bytes>::new())
        .ok()?;
    let response = sender.send_request(request).await.ok()?;
    response.into_body().collect().await.ok()?;
    Some(Box::new(sender))
}

/// A client that takes a large response 4 KiB a second; `ok_heads` counts the 200s.
async fn slow_reader(
    addr: SocketAddr,
    request: &str,
    ok_heads: Arc<std::sync::atomic::AtomicUsize>,
) -> Option<Held> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
    socket.set_recv_buffer_size(4096).ok()?;
    socket.connect(&addr.into()).ok()?;
    socket.set_nonblocking(true).ok()?;
    let mut stream = TcpStream::from_std(socket.into()).ok()?;
    stream.write_all(request.as_bytes()).await.ok()?;
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        // A slow reader of an error page would measure nothing: only a 200 counts.
        match stream.read(&mut buf).await {
            Ok(n) if buf[..n].starts_with(b"HTTP/1.1 200") => {
                ok_heads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            _ => return,
        }
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            match stream.read(&mut buf).await {
                Ok(n) if n > 0 => {}
                _ => return,
            }
        }
    });
    Some(Box::new(AbortOnDrop(task)))
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn tls_connector(ca: &str, h2: bool) -> tokio_rustls::TlsConnector {
    let pem = std::fs::read(ca).expect("CA_FILE");
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile_certs(&pem) {
        roots.add(cert).expect("a certificate");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = if h2 {
        vec![b"h2".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// The certificates of a PEM file.
fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .collect()
}

async fn connect_tls(
    addr: SocketAddr,
    tls: Option<&tokio_rustls::TlsConnector>,
) -> Option<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await.ok()?;
    tls?.connect("localhost".try_into().ok()?, tcp).await.ok()
}
