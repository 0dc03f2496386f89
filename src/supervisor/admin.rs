//! The admin listener (`[admin] listen`), served by the supervisor for curl and
//! Prometheus: `/healthz`, `/readyz`, `/status` (JSON), `/status/history` (the
//! upstreams' last minutes, JSON), `/metrics`, and `/`, a live page for people that reads
//! `/status` and `/status/history` every two seconds and draws the history (one
//! self-contained file).

use super::status::StatusSource;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

/// The admin listener's accept loop; dropping it stops accepting.
pub struct AdminListener {
    /// The address as configured (a reload rebinds only when it changes).
    pub configured: SocketAddr,
    /// The listening socket's descriptor, open while the accept loop runs.
    pub fd: std::os::fd::RawFd,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for AdminListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl AdminListener {
    pub async fn bind(
        configured: SocketAddr,
        source: StatusSource,
    ) -> std::io::Result<AdminListener> {
        let listener = tokio::net::TcpListener::bind(configured).await?;
        AdminListener::serve(configured, listener, source)
    }

    /// Serves on a listener already bound (the one a replaced supervisor handed over).
    pub fn serve(
        configured: SocketAddr,
        listener: tokio::net::TcpListener,
        source: StatusSource,
    ) -> std::io::Result<AdminListener> {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
        let addr = listener.local_addr()?;
        if !addr.ip().is_loopback() {
            tracing::warn!(
                "admin endpoints on {addr} are reachable from other machines; they have no authentication"
            );
        }
        tracing::info!("admin endpoints at http://{addr}/");
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let source = source.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let response = answer(&req, &source);
                        async move { Ok::<_, Infallible>(response) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(Duration::from_secs(10))
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(AdminListener {
            configured,
            fd,
            task,
        })
    }
}

fn answer(req: &Request<Incoming>, source: &StatusSource) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".into());
    }
    match req.uri().path() {
        "/" => with_type(
            StatusCode::OK,
            STATUS_PAGE.into(),
            "text/html; charset=utf-8",
        ),
        "/healthz" => match source.liveness() {
            Ok(()) => text(StatusCode::OK, "ok\n".into()),
            Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
        },
        "/readyz" => {
            let notes: String = source
                .readiness_notes()
                .into_iter()
                .map(|n| n + "\n")
                .collect();
            match source.readiness() {
                Ok(()) => text(StatusCode::OK, format!("ready\n{notes}")),
                Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n{notes}")),
            }
        }
        "/status" => {
            let mut json = serde_json::to_string_pretty(&source.status()).unwrap_or_default();
            json.push('\n');
            with_type(StatusCode::OK, json, "application/json")
        }
        "/status/history" => with_type(StatusCode::OK, source.history.json(), "application/json"),
        "/metrics" => with_type(
            StatusCode::OK,
            source.metrics(),
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try / /healthz /readyz /status /status/history /metrics\n".into(),
        ),
    }
}

/// The live status page: HTML, CSS and script in one file, nothing from another site.
const STATUS_PAGE: &str = include_str!("status_page.html");

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    with_type(status, body, "text/plain; charset=utf-8")
}

fn with_type(
    status: StatusCode,
    body: String,
    content_type: &'static str,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}
