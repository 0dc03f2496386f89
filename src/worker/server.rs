//! Accepting client connections and serving HTTP/1.1 on them with hyper, each connection
//! in its own task, until the worker is told to stop.

use super::forward::{ConnInfo, Proxy};
use super::DRAINING;
use crate::config::ClientLimits;
use http::header::{HeaderValue, CONNECTION};
use http::StatusCode;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

/// How long a draining worker keeps an idle keep-alive connection open for a request that
/// may already be on its way.
const DRAIN_GRACE: Duration = Duration::from_secs(1);

/// The hyper settings every client connection gets.
pub fn http1_builder(limits: &ClientLimits) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // The clock for a request head starts when the connection waits for one, so this
        // also closes idle keep-alive connections and cuts off slowloris clients.
        .header_read_timeout(limits.header_read_timeout)
        // Request line + headers + the bytes ": " and CRLF add per line.
        .max_header_size(limits.max_request_line + limits.max_header_bytes + 4 * 1024)
        .max_headers(128);
    builder
}

/// Accepts on `listener` until `shutdown` turns true; connections are tracked in `tasks`
/// so the worker can wait for them to finish.
pub async fn accept_loop(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    builder: Arc<http1::Builder>,
    tasks: TaskTracker,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped(&mut shutdown) => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let conn = ConnInfo::new(peer, false);
                tasks.spawn(serve_connection(
                    stream,
                    conn,
                    proxy.clone(),
                    builder.clone(),
                    shutdown.clone(),
                ));
            }
            Err(e) => {
                // Out of file descriptors or similar: back off instead of spinning.
                tracing::error!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_connection(
    stream: TcpStream,
    conn: ConnInfo,
    proxy: Arc<Proxy>,
    builder: Arc<http1::Builder>,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let conn = Arc::new(conn);
    let service = service_fn(move |req| {
        let proxy = proxy.clone();
        let conn = conn.clone();
        async move {
            let mut response = proxy.handle(req, &conn).await;
            if DRAINING.load(Ordering::Relaxed)
                && response.status() != StatusCode::SWITCHING_PROTOCOLS
            {
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            Ok::<_, Infallible>(response)
        }
    });
    let connection = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(e) = result {
                tracing::debug!("client connection ended: {e}");
            }
        }
        _ = stopped(&mut shutdown) => {
            // A client may be sending its next request right now: give it DRAIN_GRACE to
            // arrive and be answered with `Connection: close`, then close what is idle
            // (a request in flight is finished first).
            let grace = tokio::time::sleep(DRAIN_GRACE);
            tokio::pin!(grace);
            tokio::select! {
                _ = connection.as_mut() => return,
                _ = &mut grace => {}
            }
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

/// Resolves once `shutdown` is true (or its sender is gone).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
