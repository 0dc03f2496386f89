//! One request through the gateway: check it, route it, rewrite its headers, send it to a
//! server of the upstream (trying others while a server cannot be reached), and turn the
//! answer, or the failure, into the client's response.

use super::body::{ClientBodyError, Exchange, FromUpstream, Lease, RequestBody, ResponseBody};
use super::path;
use super::request_check::{self, Rejection};
use super::router::{host_without_port, Router};
use super::{Server, Upstream};
use crate::access_log::AccessLog;
use crate::config::{ClientLimits, Config, Redirect, RetryOn, RouteConfig};
use crate::table::{RequestMetrics, WorkerRecord, WorkerShare};
use crate::upstream::http1::{ConnectError, Connection, ExchangeError, SendError, Timeouts};
use crate::wire::has_token;
use crate::wire::stack_text::StackText;
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use smallvec::SmallVec;
use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The least an upstream is read at a time, and so the largest response head it may
/// send at least.
const MIN_UPSTREAM_READ: usize = 8 * 1024;

/// The client's `X-Request-ID` if it is 1 to 200 visible ASCII characters, else a new
/// random one (128 bits, hex).
fn request_id(headers: &HeaderMap) -> HeaderValue {
    let usable = |v: &&HeaderValue| {
        let bytes = v.as_bytes();
        (1..=200).contains(&bytes.len()) && bytes.iter().all(|b| (0x21..=0x7e).contains(b))
    };
    if let Some(id) = headers.get(&X_REQUEST_ID).filter(usable) {
        return id.clone();
    }
    let mut hex = [0u8; 32];
    let mut bits = fastrand::u128(..);
    for digit in hex.iter_mut().rev() {
        *digit = b"0123456789abcdef"[(bits & 0xf) as usize];
        bits >>= 4;
    }
    HeaderValue::from_maybe_shared(Bytes::from_owner(hex)).expect("hex digits")
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus the
/// ones that only make sense between a client and the gateway.
///
/// `Trailer` is not among them: it declares which trailer fields follow the body
/// (RFC 9110 §6.6.2), end to end.
static HOP_BY_HOP: [HeaderName; 7] = [
    // First: strip_hop_by_hop looks for the names it lists only when it is there.
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("http2-settings"),
];

/// What the gateway knows of the client connection a request came on.
pub struct ConnInfo {
    pub client: SocketAddr,
    /// Over TLS: X-Forwarded-Proto is `https`.
    pub tls: bool,
}

impl ConnInfo {
    pub fn new(client: SocketAddr, tls: bool) -> Self {
        ConnInfo { client, tls }
    }

    /// The client's IP as text, made per request rather than kept, as this is part of
    /// every idle connection (the longest IPv6 address is 45 characters).
    fn client_ip(&self) -> StackText<48> {
        let mut ip = StackText::new();
        match self.client.ip() {
            // The common case without the formatting machinery.
            IpAddr::V4(v4) => {
                let mut digits = itoa::Buffer::new();
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        ip.push(b".");
                    }
                    ip.push(digits.format(octet).as_bytes());
                }
            }
            IpAddr::V6(v6) => {
                use std::fmt::Write;
                let _ = write!(ip, "{v6}");
            }
        }
        ip
    }
}

/// The client's address as a header value, in a reference-counted buffer of its own (a
/// value copied from a slice would allocate once more on its first clone).
fn ip_header(ip: StackText<48>) -> HeaderValue {
    HeaderValue::from_maybe_shared(Bytes::from_owner(ip))
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Why a request got no upstream response; each maps to one status.
enum Failure {
    NoRoute,
    NoServerUp,
    Unreachable(ConnectError),
    /// The gateway is out of file descriptors or the like: its own trouble, not the
    /// server's.
    OutOfResources(ConnectError),
    /// The upstream did not take the request within send_timeout or answer within
    /// read_timeout: which, and how, in words.
    Timeout(&'static str),
    /// The connection closed or was reset before any response byte.
    Reset(String),
    BadResponse(String),
    /// The client's body broke, stalled or was too large: its status says which.
    ClientBody {
        status: StatusCode,
        why: String,
    },
}

impl Failure {
    /// What an exchange that went out and got no response says.
    fn of_exchange(error: ExchangeError<ClientBodyError>) -> Self {
        match error {
            ExchangeError::RequestBody(body) => Failure::ClientBody {
                status: body.status(),
                why: body.to_string(),
            },
            ExchangeError::HeadTooLarge => Failure::BadResponse(
                "upstream response head too large: it must fit in one read, an eighth of \
                 gateway.response_buffer"
                    .to_string(),
            ),
            ExchangeError::Invalid(why) => {
                Failure::BadResponse(format!("upstream sent an invalid response: {why}"))
            }
            ExchangeError::Closed(why) => Failure::Reset(format!(
                "upstream closed the connection before answering: {why}"
            )),
            ExchangeError::SendTimeout => {
                Failure::Timeout("upstream took no request bytes within send_timeout")
            }
            ExchangeError::ReadTimeout => Failure::Timeout(
                "upstream did not answer within read_timeout of the end of the request",
            ),
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Failure::NoRoute => StatusCode::NOT_FOUND,
            Failure::NoServerUp | Failure::OutOfResources(_) => StatusCode::SERVICE_UNAVAILABLE,
            Failure::Unreachable(ConnectError::Timeout(_)) | Failure::Timeout(_) => {
                StatusCode::GATEWAY_TIMEOUT
            }
            Failure::Unreachable(_) | Failure::Reset(_) | Failure::BadResponse(_) => {
                StatusCode::BAD_GATEWAY
            }
            Failure::ClientBody { status, .. } => *status,
        }
    }

    fn reason(&self) -> String {
        match self {
            Failure::NoRoute => "no route matches".into(),
            Failure::NoServerUp => "no server of the upstream is up".into(),
            Failure::Unreachable(e) => e.to_string(),
            Failure::OutOfResources(e) => format!("the gateway is out of resources: {e}"),
            Failure::Timeout(why) => why.to_string(),
            Failure::Reset(why) | Failure::BadResponse(why) | Failure::ClientBody { why, .. } => {
                why.clone()
            }
        }
    }

    /// Whether the failure says something about the upstream server's health.
    fn blames_server(&self) -> bool {
        matches!(
            self,
            Failure::Unreachable(_)
                | Failure::Timeout(_)
                | Failure::Reset(_)
                | Failure::BadResponse(_)
        )
    }

    /// Whether the client connection must close after the answer: a body that broke or
    /// was cut off leaves unread bytes that must not be taken for the next request.
    fn closes_client(&self) -> bool {
        matches!(self, Failure::ClientBody { .. })
    }

    /// Whether `retry_on` lets this failure send the request to another server.
    fn retried_by(&self, retry_on: RetryOn) -> bool {
        match self {
            Failure::Reset(_) => retry_on.reset,
            Failure::Timeout(_) => retry_on.timeout,
            _ => false,
        }
    }
}

/// Whether a request may be sent again after it went out (RFC 9110 §9.2.2), if it has
/// no body (a body, once streamed, is gone).
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    )
}

/// The upstream side of an accepted WebSocket upgrade: the client connection relays
/// both ways between itself and this once it has sent the `101`.
pub struct Tunnel {
    pub upstream: tokio::net::TcpStream,
    /// What the server sent right after its `101` (its first frames): the client gets
    /// it first.
    pub early: BytesMut,
    /// Keeps the server's in-flight count for as long as the tunnel is open.
    pub lease: Lease,
}

/// Result of one try on one server.
enum TryError {
    /// The request did not leave, or may leave again (a replayable request whose server
    /// went away): it may go to another server.
    NotSent(RequestBody, ConnectError),
    /// The request went out (at least in part): it cannot be sent again.
    Failed(Failure),
}

/// Everything a worker needs to forward requests, built once per configuration.
pub struct Proxy {
    router: Router,
    routes: Vec<RouteConfig>,
    upstreams: Vec<Upstream>,
    max_body_size: Option<u64>,
    /// Where requests that reach no upstream are counted.
    unrouted: &'static RequestMetrics,
    limits: ClientLimits,
    /// How much of a response is read from an upstream at a time: an eighth of
    /// `response_buffer` (8 KiB by default, nginx's buffer size). A slow client holds one
    /// read, or two while the last frame is still being written.
    upstream_read_size: usize,
    log: Arc<AccessLog>,
    /// This worker's counters in the shared table.
    pub counters: &'static WorkerRecord,
}

impl Proxy {
    /// `server_records` are the table records of every server in config order (upstreams,
    /// then their servers), as the supervisor assigned them.
    pub fn new(
        config: &Config,
        log: Arc<AccessLog>,
        share: WorkerShare,
        server_records: &[usize],
    ) -> Self {
        let mut records = server_records;
        let upstreams = config
            .upstreams
            .iter()
            .map(|u| {
                let (mine, rest) = records.split_at(u.servers.len().min(records.len()));
                records = rest;
                Upstream::new(u, share, mine)
            })
            .collect();
        Proxy {
            router: Router::new(&config.routes),
            routes: config.routes.clone(),
            max_body_size: config.gateway.max_body_size,
            unrouted: share.unrouted_requests(),
            upstreams,
            limits: config.gateway.limits.clone(),
            upstream_read_size: (config.gateway.response_buffer / 8).max(MIN_UPSTREAM_READ),
            log,
            counters: share.counters(),
        }
    }

    /// What clients may send, for the front ends.
    pub fn limits(&self) -> &ClientLimits {
        &self.limits
    }

    /// The response to `req`, and for an accepted WebSocket upgrade the upstream side of
    /// the tunnel, which the client connection joins once the `101` is sent.
    ///
    /// Every response carries the request's `X-Request-ID`: the client's when it sent a
    /// usable one, else a new one; the upstream gets the same and the log records it.
    pub async fn handle(
        &self,
        req: Request<RequestBody>,
        conn: &ConnInfo,
    ) -> (Response<ResponseBody>, Option<Tunnel>) {
        let request_id = request_id(req.headers());
        let (mut response, tunnel) = self.forward(req, conn, &request_id).await;
        response.headers_mut().insert(&X_REQUEST_ID, request_id);
        (response, tunnel)
    }

    async fn forward(
        &self,
        req: Request<RequestBody>,
        conn: &ConnInfo,
        request_id: &HeaderValue,
    ) -> (Response<ResponseBody>, Option<Tunnel>) {
        let websocket = is_websocket_upgrade(&req);
        let (mut head, body) = req.into_parts();
        let mut exchange = Exchange::new(self.log.clone(), conn.client, &head);
        exchange.request_id = Some(request_id.clone());
        exchange.metrics = Some(self.unrouted);

        if let Err(Rejection { status, reason }) = request_check::check(
            &head.method,
            &head.uri,
            head.version,
            &head.headers,
            &self.limits,
        ) {
            return (
                error_response(exchange, status, reason.to_string(), true),
                None,
            );
        }

        // HTTP/2 names the host in :authority (the URI), HTTP/1 in Host.
        let host = head.headers.get(header::HOST).cloned().or_else(|| {
            let authority = head.uri.authority()?;
            HeaderValue::from_str(authority.as_str()).ok()
        });
        let route_host = host_without_port(
            host.as_ref()
                .and_then(|h| h.to_str().ok())
                .unwrap_or_default(),
        );
        // Routed and forwarded as normalized, so the app acts on the path that matched.
        match path::normalize(head.uri.path()) {
            Ok(Cow::Borrowed(_)) => {}
            Ok(Cow::Owned(normal)) => head.uri = with_path(&head.uri, &normal),
            Err(e) => {
                let refused =
                    error_response(exchange, StatusCode::BAD_REQUEST, e.reason().into(), true);
                return (refused, None);
            }
        }
        let Some(route) = self
            .router
            .route(route_host, head.uri.path())
            .map(|i| &self.routes[i])
        else {
            let reason = Failure::NoRoute.reason();
            return (
                error_response(exchange, StatusCode::NOT_FOUND, reason, false),
                None,
            );
        };
        if let Some(redirect) = &route.redirect {
            return (
                redirect_response(exchange, redirect, route_host, &head.uri),
                None,
            );
        }
        let upstream = &self.upstreams[route.upstream.expect("a route without redirect has one")];
        exchange.metrics = Some(upstream.requests);

        let mut body = body;
        if let Some(limit) = route.max_body_size.or(self.max_body_size) {
            let declared = head
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            if declared.is_some_and(|n| n > limit) {
                let why = format!("request body larger than max_body_size ({limit} bytes)");
                let refused = error_response(exchange, StatusCode::PAYLOAD_TOO_LARGE, why, true);
                return (refused, None);
            }
            body.limit(limit);
        }
        if let Some(replacement) = &route.rewrite_prefix {
            let rewritten = rewrite_prefix(head.uri.path(), &route.path_prefix, replacement);
            head.uri = with_path(&head.uri, &rewritten);
        }

        let affinity = upstream.affinity(conn.client.ip(), &head.uri, &head.headers);
        rewrite_request_head(&mut head, conn, host.as_ref(), websocket);
        for name in &route.remove_request_headers {
            head.headers.remove(name);
        }
        for (name, value) in &route.request_headers {
            head.headers.insert(name, value.clone());
        }
        head.headers.insert(&X_REQUEST_ID, request_id.clone());
        // The head stays here and every try writes it anew: a request without a body can
        // be sent again after it went out, if that is safe.
        let replayable = !websocket && is_idempotent(&head.method) && body.is_end_stream();
        let mut body = body;
        upstream.note_request();

        let retry_on = upstream.config.retry_on;
        let retries = upstream.config.retries as usize;
        // Servers tried, on the stack for the first few (one allocation less per request).
        let mut tried: SmallVec<[usize; 4]> = SmallVec::new();
        let mut last_failure = None;
        let outcome = loop {
            let Some((index, give_cookie)) = upstream.pick(&affinity, &tried) else {
                break Err(last_failure.unwrap_or(Failure::NoServerUp));
            };
            let server = &upstream.servers[index];
            server.count_request();
            exchange.upstream = Some(Lease::new(server.clone()));
            if host.is_none() {
                if let Ok(v) = HeaderValue::from_str(&server.config.name) {
                    head.headers.insert(header::HOST, v);
                }
            }
            tried.push(index);
            // Another try for a request that went out: within `retries`, to a server not
            // tried yet, from the budget.
            let may_retry = || {
                replayable
                    && tried.len() <= retries
                    && upstream.any_untried(&tried)
                    && upstream.try_retry()
            };
            let sent_at = Instant::now();
            match self
                .try_server(upstream, server, &head, body, replayable, websocket)
                .await
            {
                Ok(response) => {
                    exchange.upstream_time = Some(sent_at.elapsed());
                    // The server's own time: neither the connect nor the upload.
                    server.note_latency(response.body().waited);
                    let status = response.status();
                    if retry_on.status(status.as_u16()) && may_retry() {
                        let why = format!("answered {}", status.as_u16());
                        server.note_failure(&why);
                        exchange.note_try(server, why);
                        body = RequestBody::empty();
                        continue;
                    }
                    let cookie = give_cookie
                        .then(|| upstream.sticky_cookie(index).cloned())
                        .flatten();
                    break Ok((response, cookie));
                }
                Err(TryError::NotSent(_, why)) if why.is_local() => {
                    break Err(Failure::OutOfResources(why));
                }
                Err(TryError::NotSent(back, why)) => {
                    server.note_failure(&why.to_string());
                    exchange.note_try(server, why.to_string());
                    body = back;
                    last_failure = Some(Failure::Unreachable(why));
                    if tried.len() > retries {
                        break Err(last_failure.take().expect("just set"));
                    }
                }
                Err(TryError::Failed(failure)) => {
                    let took = sent_at.elapsed();
                    exchange.upstream_time = Some(took);
                    if failure.blames_server() {
                        server.note_failure(&failure.reason());
                        // A timeout waited its limit on the server; other failures are
                        // quick and their time says little (it may be the upload's).
                        if let Failure::Timeout(_) = failure {
                            server.note_latency(upstream.config.read_timeout);
                        }
                    }
                    if failure.retried_by(retry_on) && may_retry() {
                        exchange.note_try(server, failure.reason());
                        body = RequestBody::empty();
                        last_failure = Some(failure);
                        continue;
                    }
                    break Err(failure);
                }
            }
        };

        match outcome {
            Ok((response, cookie)) => {
                let (mut response, tunnel) = self.respond(exchange, upstream, response, websocket);
                let headers = response.headers_mut();
                if let Some(cookie) = cookie {
                    headers.append(header::SET_COOKIE, cookie);
                }
                for name in &route.remove_response_headers {
                    headers.remove(name);
                }
                for (name, value) in &route.response_headers {
                    headers.insert(name, value.clone());
                }
                (response, tunnel)
            }
            Err(failure) => {
                let close = failure.closes_client() || websocket;
                let response = error_response(exchange, failure.status(), failure.reason(), close);
                (response, None)
            }
        }
    }

    /// Sends the request on a pooled connection, or a new one; a pooled connection that
    /// turns out to be closing is replaced by a new one without counting as a failure,
    /// also when it was reset after the request went out, if the request can be sent
    /// again (`replayable`): the server closed an idle connection as we reused it. If the new
    /// connection is reset as well, the server is going away (killed, restarting): the
    /// replayable request goes to another server as if this one had refused it.
    async fn try_server(
        &self,
        upstream: &Upstream,
        server: &Server,
        head: &http::request::Parts,
        mut body: RequestBody,
        replayable: bool,
        websocket: bool,
    ) -> Result<Response<FromUpstream>, TryError> {
        let config = &upstream.config;
        let addr = server.config.addr;
        let mut pooled = if websocket { None } else { server.pool.take() };
        let mut replayed = false;
        loop {
            let reused = pooled.is_some();
            let conn = match pooled.take() {
                Some(conn) => conn,
                None => {
                    match Connection::open(addr, config.connect_timeout, self.upstream_read_size)
                        .await
                    {
                        Ok(conn) => conn,
                        Err(e) => return Err(TryError::NotSent(body, e)),
                    }
                }
            };
            let timeouts = Timeouts {
                send: config.send_timeout,
                read: config.read_timeout,
            };
            let failure = match conn.send(head, body, timeouts).await {
                Ok(response) => return Ok(response),
                Err(SendError::NotSent(back, _)) if reused => {
                    body = back;
                    continue;
                }
                Err(SendError::NotSent(back, e)) => {
                    return Err(TryError::NotSent(back, ConnectError::Io(addr, e)))
                }
                Err(SendError::Failed(e)) => Failure::of_exchange(e),
            };
            match &failure {
                Failure::Reset(_) if replayable && reused => {
                    body = RequestBody::empty();
                    replayed = true;
                }
                Failure::Reset(why) if replayable && replayed => {
                    let reset =
                        std::io::Error::new(std::io::ErrorKind::ConnectionReset, why.clone());
                    return Err(TryError::NotSent(
                        RequestBody::empty(),
                        ConnectError::Io(addr, reset),
                    ));
                }
                _ => return Err(TryError::Failed(failure)),
            }
        }
    }

    fn respond(
        &self,
        mut exchange: Exchange,
        upstream: &Upstream,
        response: Response<FromUpstream>,
        websocket: bool,
    ) -> (Response<ResponseBody>, Option<Tunnel>) {
        let status = response.status();
        exchange.upstream_status = Some(status.as_u16());
        let server = exchange
            .upstream
            .as_ref()
            .expect("a response comes from a server")
            .server
            .clone();
        let (mut head, body) = response.into_parts();

        if status == StatusCode::SWITCHING_PROTOCOLS {
            let upgraded = (websocket && is_websocket_response(&head.headers))
                .then(|| body.upgrade())
                .flatten();
            let Some((upstream, early)) = upgraded else {
                let why = "upstream switched protocols without a WebSocket upgrade".to_string();
                server.note_failure(&why);
                return (
                    error_response(exchange, StatusCode::BAD_GATEWAY, why, true),
                    None,
                );
            };
            server.note_success();
            let tunnel = Tunnel {
                upstream,
                early,
                lease: Lease::new(server),
            };
            strip_hop_by_hop(&mut head.headers);
            head.headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            head.headers
                .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            exchange.status = status.as_u16();
            let response = Response::from_parts(head, ResponseBody::fixed(Bytes::new(), exchange));
            return (response, Some(tunnel));
        }

        server.note_success();
        strip_hop_by_hop(&mut head.headers);
        if websocket {
            // The client may already be sending WebSocket frames; none of it may be read
            // as a next request.
            head.headers
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        exchange.status = status.as_u16();
        let body = ResponseBody::upstream(body, upstream.config.read_timeout, exchange);
        (Response::from_parts(head, body), None)
    }
}

/// `uri` in origin form with `path` in place of its path (the query is kept).
fn with_path(uri: &Uri, path: &str) -> Uri {
    let target = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_string(),
    };
    // A normalized path is made of the bytes of a valid one (and upper-case hex digits).
    Uri::try_from(target).unwrap_or_else(|_| Uri::from_static("/"))
}

/// `path` with the route's `prefix` replaced by `replacement`, without doubling the `/`
/// between them (`/api/` -> `/` makes `/api/users` `/users`).
fn rewrite_prefix(path: &str, prefix: &str, replacement: &str) -> String {
    let rest = path.strip_prefix(prefix).unwrap_or(path);
    let rest = rest.strip_prefix('/').unwrap_or(rest);
    if rest.is_empty() {
        replacement.to_string()
    } else if replacement.ends_with('/') {
        format!("{replacement}{rest}")
    } else {
        format!("{replacement}/{rest}")
    }
}

/// The answer of a `redirect` route: `Location` from its template.
fn redirect_response(
    mut exchange: Exchange,
    redirect: &Redirect,
    host: &str,
    uri: &Uri,
) -> Response<ResponseBody> {
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let location = redirect
        .location
        .replace("{host}", host)
        .replace("{uri}", target);
    exchange.status = redirect.status.as_u16();
    let body = format!("{} {}\n", redirect.status.as_u16(), location);
    let mut response = Response::new(ResponseBody::fixed(Bytes::from(body), exchange));
    *response.status_mut() = redirect.status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    match HeaderValue::from_str(&location) {
        Ok(value) => {
            headers.insert(header::LOCATION, value);
        }
        Err(_) => *response.status_mut() = StatusCode::BAD_REQUEST,
    }
    response
}

/// A 502/503/… of our own: short plain text, and a log line that says why.
fn error_response(
    mut exchange: Exchange,
    status: StatusCode,
    reason: String,
    close: bool,
) -> Response<ResponseBody> {
    exchange.status = status.as_u16();
    exchange.error = Some(reason);
    let text = format!(
        "{} {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let mut response = Response::new(ResponseBody::fixed(Bytes::from(text), exchange));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if close {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

fn is_websocket_upgrade<B>(req: &Request<B>) -> bool {
    req.method() == Method::GET
        && req.version() == Version::HTTP_11
        && has_token(req.headers(), &header::UPGRADE, "websocket")
        && has_token(req.headers(), &header::CONNECTION, "upgrade")
}

fn is_websocket_response(headers: &HeaderMap) -> bool {
    has_token(headers, &header::UPGRADE, "websocket")
}

/// The headers a Connection header names beyond `close` and the hop-by-hop ones (most
/// name only those: then nothing needs collecting).
fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = HeaderName> + '_ {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| names_a_field(t))
        .filter_map(|t| HeaderName::from_bytes(t).ok())
        .filter(|n| n != header::HOST)
}

/// Whether a Connection token names a field to remove beyond the hop-by-hop ones
/// (`close` names none).
fn names_a_field(token: &[u8]) -> bool {
    !token.is_empty()
        && !token.eq_ignore_ascii_case(b"close")
        && !HOP_BY_HOP
            .iter()
            .any(|h| token.eq_ignore_ascii_case(h.as_str().as_bytes()))
}

/// Where `name` is in HOP_BY_HOP. Lengths first: nearly every other name has a length
/// none of them has, and is let go without a comparison.
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    let name = name.as_str();
    if !matches!(name.len(), 2 | 7 | 10 | 14 | 16 | 17) {
        return None;
    }
    HOP_BY_HOP.iter().position(|h| h.as_str() == name)
}

/// Removes the headers named in Connection and the hop-by-hop ones. Host is never removed
/// this way: the request must keep saying which site it is for.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the fields is cheaper than a lookup per hop-by-hop name, and most
    // heads carry none or only `Connection: keep-alive`: only the names found are
    // removed, and the Connection list is read in the same pass.
    let mut present = [false; HOP_BY_HOP.len()];
    let mut names_fields = false;
    for (name, value) in headers.iter() {
        if let Some(i) = hop_by_hop_index(name) {
            present[i] = true;
            if i == 0 {
                names_fields |= value
                    .as_bytes()
                    .split(|&b| b == b',')
                    .any(|t| names_a_field(t.trim_ascii()));
            }
        }
    }
    if names_fields {
        let named: Vec<HeaderName> = connection_tokens(headers).collect();
        for name in named {
            headers.remove(&name);
        }
    }
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, found)| *found) {
        headers.remove(name);
    }
}

/// The upstream's view of the request: origin-form target, HTTP/1.1, hop-by-hop headers
/// gone, and the forwarding headers set after the client's own were removed so a client
/// cannot suppress them.
fn rewrite_request_head(
    head: &mut http::request::Parts,
    conn: &ConnInfo,
    host: Option<&HeaderValue>,
    websocket: bool,
) {
    let headers = &mut head.headers;
    let trailers = has_token(headers, &header::TE, "trailers");
    strip_hop_by_hop(headers);
    // We answer 100-continue ourselves (hyper does when the body is first read).
    headers.remove(header::EXPECT);
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if websocket {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }

    // One value for both headers (and for the copy a replay keeps): it is cloned by count.
    let ip_value = ip_header(conn.client_ip());
    let forwarded_for = match headers.get(&X_FORWARDED_FOR) {
        None => ip_value.clone(),
        Some(_) => {
            let mut joined = BytesMut::new();
            for value in headers.get_all(&X_FORWARDED_FOR) {
                joined.extend_from_slice(value.as_bytes());
                joined.extend_from_slice(b", ");
            }
            joined.extend_from_slice(ip_value.as_bytes());
            HeaderValue::from_maybe_shared(joined.freeze()).unwrap_or_else(|_| ip_value.clone())
        }
    };
    headers.insert(X_FORWARDED_FOR.clone(), forwarded_for);
    headers.insert(X_REAL_IP.clone(), ip_value);
    let proto = if conn.tls { "https" } else { "http" };
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    match host {
        Some(host) => {
            headers.insert(X_FORWARDED_HOST.clone(), host.clone());
            if !headers.contains_key(header::HOST) {
                headers.insert(header::HOST, host.clone());
            }
        }
        None => {
            headers.remove(&X_FORWARDED_HOST);
        }
    }

    if head.uri.scheme().is_some() {
        let origin = head.uri.path_and_query().map_or("/", |p| p.as_str());
        head.uri = Uri::try_from(origin).unwrap_or_else(|_| Uri::from_static("/"));
    }
    head.version = Version::HTTP_11;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ips_are_written_as_the_standard_library_writes_them() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "255.255.255.255",
            "::1",
            "::ffff:1.2.3.4",
            "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff",
            "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255",
        ] {
            let addr: IpAddr = ip.parse().unwrap();
            let conn = ConnInfo::new(SocketAddr::new(addr, 1), false);
            assert_eq!(&conn.client_ip()[..], addr.to_string().as_bytes());
        }
    }

    fn head(headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = Request::builder().uri("http://a.com/x?y");
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn conn() -> ConnInfo {
        ConnInfo::new("10.0.0.9:1234".parse().unwrap(), false)
    }

    fn values<'a>(h: &'a HeaderMap, name: &str) -> Vec<&'a str> {
        h.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    #[test]
    fn forwarding_headers_are_set_and_appended() {
        let mut h = head(&[
            ("host", "a.com"),
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
        ]);
        let host = h.headers.get("host").cloned();
        rewrite_request_head(&mut h, &conn(), host.as_ref(), false);
        assert_eq!(
            values(&h.headers, "x-forwarded-for"),
            ["1.1.1.1, 2.2.2.2, 10.0.0.9"]
        );
        assert_eq!(values(&h.headers, "x-real-ip"), ["10.0.0.9"]);
        assert_eq!(values(&h.headers, "x-forwarded-proto"), ["http"]);
        assert_eq!(values(&h.headers, "x-forwarded-host"), ["a.com"]);
        assert_eq!(values(&h.headers, "host"), ["a.com"]);
        assert_eq!(h.uri, "/x?y");
    }

    #[test]
    fn every_hop_by_hop_name_is_found_by_its_length_first() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name), Some(i), "{name}");
        }
        assert_eq!(hop_by_hop_index(&header::CONTENT_LENGTH), None);
    }

    #[test]
    fn each_hop_by_hop_header_goes_on_its_own_too() {
        for name in &HOP_BY_HOP {
            let mut headers = HeaderMap::new();
            headers.insert(name.clone(), HeaderValue::from_static("x"));
            headers.insert("x-kept", HeaderValue::from_static("yes"));
            strip_hop_by_hop(&mut headers);
            assert!(!headers.contains_key(name), "{name} was kept");
            assert!(headers.contains_key("x-kept"));
        }
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go_but_ours_stay() {
        let mut h = head(&[
            ("host", "a.com"),
            (
                "connection",
                "keep-alive, x-secret, X-Real-IP, x-forwarded-for, host",
            ),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("x-real-ip", "6.6.6.6"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAA"),
            ("te", "trailers, deflate"),
            ("proxy-connection", "keep-alive"),
            ("expect", "100-continue"),
            ("x-kept", "yes"),
        ]);
        let host = h.headers.get("host").cloned();
        rewrite_request_head(&mut h, &conn(), host.as_ref(), false);
        for gone in [
            "connection",
            "keep-alive",
            "x-secret",
            "upgrade",
            "http2-settings",
            "proxy-connection",
            "expect",
        ] {
            assert!(!h.headers.contains_key(gone), "{gone} was forwarded");
        }
        assert_eq!(values(&h.headers, "te"), ["trailers"]);
        assert_eq!(values(&h.headers, "x-real-ip"), ["10.0.0.9"]);
        assert_eq!(values(&h.headers, "x-forwarded-for"), ["10.0.0.9"]);
        assert_eq!(values(&h.headers, "host"), ["a.com"]);
        assert_eq!(values(&h.headers, "x-kept"), ["yes"]);
    }

    proptest::proptest! {
        /// Whatever a head carries and its Connection lists (any case, spacing, empty
        /// items), the hop-by-hop fields and the ones Connection names go, Host stays,
        /// and every other field stays with all its values.
        #[test]
        fn only_hop_by_hop_and_named_fields_go(
            fields in proptest::collection::vec((0usize..10, 0u8..3), 0..12),
            lists in proptest::collection::vec(
                proptest::collection::vec((0usize..11, proptest::bool::ANY, 0usize..3), 0..5),
                0..3,
            ),
        ) {
            const NAMES: [&str; 10] = [
                "connection", "keep-alive", "te", "upgrade", "proxy-connection",
                "host", "x-a", "x-b", "x-c", "content-type",
            ];
            let mut headers = HeaderMap::new();
            for (name, value) in &fields {
                headers.append(NAMES[*name], HeaderValue::from(u16::from(*value)));
            }
            let mut named = Vec::new();
            for list in &lists {
                let mut value = String::new();
                for (token, upper, spaces) in list {
                    let token = NAMES.get(*token).copied().unwrap_or("close");
                    named.push(token);
                    let token = if *upper { token.to_uppercase() } else { token.to_string() };
                    value.push_str(&" ".repeat(*spaces));
                    value.push_str(&token);
                    value.push(',');
                }
                headers.append(header::CONNECTION, HeaderValue::from_str(&value).unwrap());
            }
            let before = headers.clone();
            strip_hop_by_hop(&mut headers);
            for name in NAMES {
                let hop = HOP_BY_HOP.iter().any(|h| h == name);
                let gone = hop || (named.contains(&name) && name != "host");
                if gone {
                    proptest::prop_assert!(!headers.contains_key(name), "{} kept", name);
                } else {
                    let kept: Vec<_> = headers.get_all(name).iter().collect();
                    let had: Vec<_> = before.get_all(name).iter().collect();
                    proptest::prop_assert_eq!(kept, had, "{}", name);
                }
            }
        }
    }

    #[test]
    fn a_rewritten_prefix_keeps_one_slash() {
        assert_eq!(rewrite_prefix("/api/users", "/api/", "/"), "/users");
        assert_eq!(rewrite_prefix("/api/", "/api/", "/"), "/");
        assert_eq!(rewrite_prefix("/api/users", "/api", "/"), "/users");
        assert_eq!(rewrite_prefix("/api", "/api", "/"), "/");
        assert_eq!(rewrite_prefix("/api/users", "/api/", "/v2/"), "/v2/users");
        assert_eq!(rewrite_prefix("/api/users", "/api/", "/v2"), "/v2/users");
        assert_eq!(rewrite_prefix("/old/x", "/old", "/new"), "/new/x");
    }

    #[test]
    fn a_usable_request_id_is_kept_and_any_other_replaced() {
        let with = |v: &[u8]| {
            let mut h = HeaderMap::new();
            h.insert("x-request-id", HeaderValue::from_bytes(v).unwrap());
            request_id(&h)
        };
        assert_eq!(with(b"abc-123"), "abc-123");
        let long = "x".repeat(200);
        assert_eq!(with(long.as_bytes()), long.as_str());
        for bad in [&b""[..], b"has space", &[b'y'; 201][..], b"tab\there"] {
            let made = with(bad);
            assert_eq!(made.len(), 32, "{bad:?}");
            assert!(made.as_bytes().iter().all(u8::is_ascii_hexdigit));
        }
        assert_ne!(request_id(&HeaderMap::new()), request_id(&HeaderMap::new()));
    }

    #[test]
    fn websocket_upgrade_is_carried() {
        let mut h = head(&[
            ("host", "a.com"),
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
        ]);
        rewrite_request_head(&mut h, &conn(), None, true);
        assert_eq!(values(&h.headers, "upgrade"), ["websocket"]);
        assert_eq!(values(&h.headers, "connection"), ["upgrade"]);
        assert!(!h.headers.contains_key("x-forwarded-host"));
    }
}
