//! Accepting client connections, each in its own task: HTTP/1.1 on plain listeners
//! (our own engine, `http1`); on TLS listeners the handshake, then HTTP/2 (hyper) or
//! HTTP/1.1 as ALPN chose.

use super::http1::{self, DRAIN_GRACE};
use crate::config::ClientLimits;
use crate::proxy::body::{RequestBody, ResponseBody};
use crate::proxy::{ConnInfo, Proxy};
use crate::table::WorkerRecord;
use bytes::BytesMut;
use http::header::CONNECTION;
use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The HTTP/2 settings every client connection gets, built once per worker.
pub struct Protocols {
    http2: http2::Builder<TokioExecutor>,
    handshake_timeout: Duration,
    body_timeout: Duration,
}

impl Protocols {
    pub fn new(limits: &ClientLimits) -> Self {
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        // h2's defaults already limit rapid resets (CVE-2023-44487), CONTINUATION floods
        // and HPACK bombs; the stream and header limits are set here explicitly.
        h2.timer(TokioTimer::new())
            .max_concurrent_streams(100)
            .max_header_list_size((limits.max_request_line + limits.max_header_bytes) as u32)
            .max_pending_accept_reset_streams(20)
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10));
        Protocols {
            http2: h2,
            handshake_timeout: limits.header_read_timeout,
            body_timeout: limits.client_body_timeout,
        }
    }
}

/// What a listener puts before HTTP: TLS, and a PROXY protocol header.
#[derive(Clone)]
pub struct Front {
    pub tls: Option<TlsAcceptor>,
    pub proxy_protocol: bool,
    /// Its index in the config's listeners: the routes it takes.
    pub listener: usize,
}

/// Accepts on `listener` until `stop_accepting` is cancelled; connections are tracked in
/// `tasks` so the worker can wait for them to finish, and wind down once `shutdown` is.
pub async fn accept_loop(
    listener: TcpListener,
    front: Front,
    proxy: Arc<Proxy>,
    protocols: Arc<Protocols>,
    tasks: TaskTracker,
    stop_accepting: CancellationToken,
    shutdown: CancellationToken,
) {
    let mut failures = AcceptFailures::default();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop_accepting.cancelled() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let conn = ConnInfo {
                    listener: front.listener,
                    ..ConnInfo::new(peer, front.tls.is_some())
                };
                let open = OpenConnection::count(proxy.counters);
                let (proxy, shutdown) = (proxy.clone(), shutdown.clone());
                if front.proxy_protocol {
                    // Rare enough (behind a balancer) to pay for a task of its own.
                    let within = protocols.handshake_timeout;
                    let (tls, protocols, tasks2) =
                        (front.tls.clone(), protocols.clone(), tasks.clone());
                    tasks.spawn(Counted {
                        connection: async move {
                            let Some(conn) = proxy_header(&stream, conn, within).await else {
                                return;
                            };
                            match tls {
                                None => http1::serve(stream, conn, proxy, shutdown).await,
                                Some(tls) => {
                                    serve_tls(tls, stream, conn, proxy, protocols, shutdown, tasks2)
                                        .await
                                }
                            }
                        },
                        _open: open,
                    });
                    continue;
                }
                // The connection's future is spawned as it is, not awaited inside another
                // async block (that would hold its arguments twice): a plain connection's
                // task is what an idle client costs.
                match &front.tls {
                    None => {
                        tasks.spawn(Counted {
                            connection: http1::serve(stream, conn, proxy, shutdown),
                            _open: open,
                        });
                    }
                    Some(tls) => {
                        let serving = serve_tls(
                            tls.clone(),
                            stream,
                            conn,
                            proxy,
                            protocols.clone(),
                            shutdown,
                            tasks.clone(),
                        );
                        tasks.spawn(Counted {
                            connection: serving,
                            _open: open,
                        });
                    }
                }
            }
            Err(e) => {
                // Out of file descriptors or similar: back off instead of spinning.
                failures.note(&e);
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// Takes the PROXY protocol header off the start of `stream` within `within`: the
/// connection with the client it names, or `None` (closed) when it has none that is valid.
async fn proxy_header(
    stream: &tokio::net::TcpStream,
    mut conn: ConnInfo,
    within: Duration,
) -> Option<ConnInfo> {
    use crate::wire::proxy_protocol::{parse, Parsed, V2_MAX};
    let read = async {
        let mut buf = [0u8; V2_MAX];
        // Doubles up to 100 ms: a client that sends half a header and waits costs a few
        // peeks a second, not hundreds.
        let mut pause = Duration::from_millis(5);
        loop {
            let n = stream.peek(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            match parse(&buf[..n]) {
                // The rest of a header split across segments: peek again shortly (a
                // peek leaves the socket readable, so waiting for readiness would spin).
                Parsed::Incomplete => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
                Parsed::Header { len, client } => {
                    // Take exactly the header: what follows is the TLS or HTTP reader's.
                    let mut taken = 0;
                    while taken < len {
                        stream.readable().await.ok()?;
                        match stream.try_read(&mut buf[taken..len]) {
                            Ok(0) => return None,
                            Ok(n) => taken += n,
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                            Err(_) => return None,
                        }
                    }
                    return Some(client);
                }
                Parsed::Invalid(why) => {
                    tracing::debug!("closing a connection from {}: {why}", conn.client);
                    return None;
                }
            }
        }
    };
    match tokio::time::timeout(within, read).await {
        Ok(Some(client)) => {
            if let Some(client) = client {
                conn.client = client;
            }
            Some(conn)
        }
        Ok(None) => None,
        Err(_) => {
            tracing::debug!(
                "closing a connection from {}: no PROXY protocol header within header_read_timeout",
                conn.client
            );
            None
        }
    }
}

/// How long the accept loop pauses after a failure (EMFILE and the like).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// Accept failures are logged at most once per this interval.
const ACCEPT_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Logs accept failures once per interval, with how many there were, instead of once
/// per back-off: a worker out of file descriptors would otherwise log 20 lines a second.
#[derive(Default)]
struct AcceptFailures {
    last_logged: Option<tokio::time::Instant>,
    unlogged: u64,
}

impl AcceptFailures {
    fn note(&mut self, error: &std::io::Error) {
        let now = tokio::time::Instant::now();
        if self
            .last_logged
            .is_some_and(|at| now.duration_since(at) < ACCEPT_LOG_INTERVAL)
        {
            self.unlogged += 1;
            return;
        }
        let earlier = std::mem::take(&mut self.unlogged);
        if earlier > 0 {
            tracing::error!(
                "accept failed: {error} (and {earlier} more times in the last {}s)",
                ACCEPT_LOG_INTERVAL.as_secs()
            );
        } else {
            tracing::error!("accept failed: {error}");
        }
        self.last_logged = Some(now);
    }
}

/// Counts a client connection in the worker's `connections` while it is open.
struct OpenConnection(&'static WorkerRecord);

pin_project_lite::pin_project! {
    /// A client connection's future, counted while it lives.
    struct Counted<F> {
        #[pin]
        connection: F,
        _open: OpenConnection,
    }
}

impl<F: std::future::Future<Output = ()>> std::future::Future for Counted<F> {
    type Output = ();
    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        self.project().connection.poll(cx)
    }
}

impl OpenConnection {
    fn count(counters: &'static WorkerRecord) -> Self {
        counters.connections.fetch_add(1, Ordering::Relaxed);
        OpenConnection(counters)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The HTTP/2 service: the proxy, one stream at a time.
fn h2_service(
    proxy: Arc<Proxy>,
    conn: ConnInfo,
    body_timeout: Duration,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<ResponseBody>,
    Error = Infallible,
    Future: Send + 'static,
> + Clone
       + Send
       + 'static {
    let conn = Arc::new(conn);
    service_fn(move |req: Request<Incoming>| {
        let proxy = proxy.clone();
        let conn = conn.clone();
        async move {
            proxy.counters.requests.fetch_add(1, Ordering::Relaxed);
            let req = req.map(|body| RequestBody::hyper(body, body_timeout));
            let (mut response, _) = proxy.handle(req, &conn).await;
            // Connection-specific headers do not exist in HTTP/2.
            response.headers_mut().remove(CONNECTION);
            own_header_values(response.headers_mut());
            Ok(response)
        }
    })
}

/// Gives the header values one copy of their bytes alone. The upstream client's header
/// values are slices of one copy of the whole response head (`wire::field_map`), and HPACK
/// keeps the values it indexes for the life of the client connection: without this copy,
/// every idle HTTP/2 client would hold on to the whole head of its last response, names
/// and the gateway's own fields included.
fn own_header_values(headers: &mut http::HeaderMap) {
    // One copy for all the values (split, not reallocated: it is sized for them all).
    let mut copy = BytesMut::with_capacity(headers.values().map(HeaderValue::len).sum());
    for value in headers.values_mut() {
        copy.extend_from_slice(value.as_bytes());
        if let Ok(mut owned) = HeaderValue::from_maybe_shared(copy.split().freeze()) {
            owned.set_sensitive(value.is_sensitive());
            *value = owned;
        }
    }
}

/// The TLS handshake, then HTTP/2 or HTTP/1.1 as ALPN chose. An HTTP/2 connection goes on
/// in a task of its own: its state is four times the size of an HTTP/1.1 connection's,
/// and this task's room, sized for the handshake, is given back instead of being kept
/// beside it (the connection is counted twice for that moment).
async fn serve_tls(
    tls: TlsAcceptor,
    stream: TcpStream,
    conn: ConnInfo,
    proxy: Arc<Proxy>,
    protocols: Arc<Protocols>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let Some((stream, h2)) = handshake(&tls, stream, &conn, protocols.handshake_timeout).await
    else {
        return;
    };
    if h2 {
        let open = OpenConnection::count(proxy.counters);
        tasks.spawn(Counted {
            connection: serve_h2(stream, conn, proxy, &protocols, shutdown),
            _open: open,
        });
    } else {
        http1::serve(stream, conn, proxy, shutdown).await;
    }
}

/// The handshake within `timeout` (tokio-rustls has no timeout of its own): the stream,
/// and whether ALPN chose HTTP/2. (The stream is looked at here rather than in the
/// caller, which would then keep a second copy of it in its state.)
async fn handshake(
    tls: &TlsAcceptor,
    stream: TcpStream,
    conn: &ConnInfo,
    timeout: Duration,
) -> Option<(TlsStream<TcpStream>, bool)> {
    match tokio::time::timeout(timeout, tls.accept(stream)).await {
        Ok(Ok(stream)) => {
            let alpn = stream.get_ref().1.alpn_protocol();
            // A CA's TLS-ALPN-01 validation: it has seen the certificate; nothing follows.
            if alpn == Some(crate::tls::acme::ALPN) {
                return None;
            }
            let h2 = alpn == Some(b"h2");
            Some((stream, h2))
        }
        Ok(Err(e)) => {
            tracing::debug!(client = %conn.client, "TLS handshake failed: {e}");
            None
        }
        Err(_) => {
            tracing::debug!(client = %conn.client, "TLS handshake timed out");
            None
        }
    }
}

/// Builds the HTTP/2 connection before its future starts, so that the future holds it once
/// (an async fn would keep the TLS stream it was given beside the connection made of it).
fn serve_h2(
    stream: TlsStream<TcpStream>,
    conn: ConnInfo,
    proxy: Arc<Proxy>,
    protocols: &Protocols,
    shutdown: CancellationToken,
) -> impl std::future::Future<Output = ()> + Send {
    let metered = super::h2_flood::Metered::new(stream, conn.client);
    let service = h2_service(proxy, conn, protocols.body_timeout);
    let connection = protocols
        .http2
        .serve_connection(TokioIo::new(metered), service);
    drive(connection, shutdown, |c| c.graceful_shutdown())
}

/// Runs an HTTP/2 connection until it ends, or, once the worker drains, gives it
/// DRAIN_GRACE for a request that may be on its way, then sends GOAWAY: streams in flight
/// are finished first. The connection is only ever borrowed, never moved, inside the
/// returned future: an async fn, or a pin, or awaiting it by value, would each keep
/// another copy of its 2.8 KB in the future.
#[allow(clippy::manual_async_fn)]
fn drive<C, E>(
    mut connection: C,
    shutdown: CancellationToken,
    graceful: impl FnOnce(std::pin::Pin<&mut C>) + Send,
) -> impl std::future::Future<Output = ()> + Send
where
    C: std::future::Future<Output = Result<(), E>> + Unpin + Send,
    E: std::fmt::Display,
{
    async move {
        tokio::select! {
            result = &mut connection => {
                if let Err(e) = result {
                    tracing::debug!("client connection ended: {e}");
                }
                return;
            }
            _ = shutdown.cancelled() => {}
        }
        let grace = tokio::time::sleep(DRAIN_GRACE);
        tokio::pin!(grace);
        tokio::select! {
            _ = &mut connection => return,
            _ = &mut grace => {}
        }
        graceful(std::pin::Pin::new(&mut connection));
        let _ = (&mut connection).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_header_values_are_the_same_values() {
        let mut headers = http::HeaderMap::new();
        headers.append("x-a", HeaderValue::from_static("one"));
        headers.append("x-a", HeaderValue::from_static(""));
        headers.append("x-b", HeaderValue::from_static("two, three"));
        let mut secret = HeaderValue::from_static("s");
        secret.set_sensitive(true);
        headers.append("x-c", secret);
        let before = headers.clone();
        own_header_values(&mut headers);
        assert_eq!(headers, before);
        assert!(headers["x-c"].is_sensitive());
    }
}
