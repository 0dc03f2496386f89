//! The request path after the protocol engines: each request walks the stages in this
//! order, each a module with one entry point that returns a [`Failure`] when the
//! request goes no further. One place, [`answer`], writes whatever the gateway answers
//! itself.
//!
//! ```text
//! handle ─► check::request          refuse what may not go on; normalize the path
//!           ├ an ACME HTTP-01 token ───────────────────────────► answer::challenge
//!           └ a listener with redirect_https ────────────────────► answer::redirect
//!        ─► client::address         the client: the peer, or whom a trusted proxy names
//!        ─► RouteTable::route       host, path, methods and headers to a route
//!        ─► route.access            allow / deny: 403
//!        ─► limit::Limits::check    the route's rate limit: 429
//!           ├ a redirect route ─────────────────────────────────► answer::redirect
//!           └ a root route: files::serve (or its fallback: index, upstream, 404)
//!        ─► cache::Cache::lookup    a route with `cache`: a hit (or a stale entry, a
//!                                   fill another request streams) answered from disk;
//!                                   else forwarded, conditionally when stale, and the
//!                                   response stored as it streams (cache::Pending)
//!        ─► request_rewrite::request the upstream's view: prefix, X-Forwarded-*, edits
//!        ─► forward::forward        a server of the upstream (connector: pool or new
//!                                   connection), retries, passive health
//!        ─► response_rewrite::response  hop-by-hop out, sticky cookie, header edits
//!        ─► compress::response      upstream and file responses, by Accept-Encoding
//!        any stage's Failure ──────────────────────────────────► answer::failure
//! ```
//!
//! The stages are a plain chain of calls rather than tower layers: their order is fixed,
//! each is called once per request inside the client connection's own future, and a
//! layer per stage would add a boxed future (an allocation) per stage per request for a
//! composition the gateway does not need.

pub mod answer;
pub mod body;
pub mod cache;
pub mod check;
pub mod client;
pub mod compress;
pub mod failure;
pub mod files;
pub mod forward;
pub mod hop_by_hop;
pub mod limit;
pub mod path;
pub mod request_log;
pub mod request_rewrite;
pub mod response_rewrite;
pub mod route;
pub mod trace;

use crate::access_log::AccessLog;
use crate::config::{
    ClientLimits, Coding, CompressionConfig, Config, Fallback, Redirect, RouteAction, RouteConfig,
};
use crate::table::{RequestMetrics, WorkerRecord, WorkerShare};
use crate::upstream::connector::Connector;
use crate::upstream::{Lease, Upstream};
use crate::wire::has_token;
use crate::wire::stack_text::StackText;
use body::{RequestBody, ResponseBody};
use bytes::BytesMut;
use failure::Failure;
use forward::{Answered, Forwarding};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, Version};
use request_log::RequestLog;
use request_rewrite::X_REQUEST_ID;
use route::RouteTable;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// What the gateway knows of the client a request came from.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// The client's address: the TCP peer's, or the one a trusted proxy named.
    pub client: SocketAddr,
    /// Over TLS: X-Forwarded-Proto is `https`.
    pub tls: bool,
    /// The trusted proxy (the TCP peer) that named the client, if one did.
    pub via: Option<IpAddr>,
    /// The listener (its index in the config) the connection came in on.
    pub listener: usize,
}

impl ConnInfo {
    pub fn new(client: SocketAddr, tls: bool) -> Self {
        ConnInfo {
            client,
            tls,
            via: None,
            listener: 0,
        }
    }

    /// The client's IP as text, made per request rather than kept, as this is part of
    /// every idle connection (the longest IPv6 address is 45 characters).
    pub(crate) fn client_ip(&self) -> StackText<48> {
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

/// Everything a worker needs to take requests through the stages, built once per
/// configuration.
pub struct Proxy {
    routes: RouteTable,
    upstreams: Vec<Upstream>,
    connector: Connector,
    max_body_size: Option<u64>,
    /// Where requests that reach no upstream are counted.
    unrouted: &'static RequestMetrics,
    limits: ClientLimits,
    compression: Option<CompressionConfig>,
    /// The codings precompressed files are looked for in, by preference.
    codings: Vec<Coding>,
    access_log: Arc<AccessLog>,
    /// This worker's counters in the shared table.
    pub counters: &'static WorkerRecord,
    trusted_proxies: crate::config::CidrList,
    rate_limits: limit::Limits,
    /// `[cache]`: where cached routes keep their responses.
    cache: Option<cache::Cache>,
    /// Each route's answer counts by cache outcome (routes with `cache`).
    cache_counts: Vec<Option<&'static cache::Counts>>,
    /// The config has ACME entries: plain requests may be HTTP-01 validations.
    acme: bool,
    /// Per listener: `redirect_https`, the redirect every request gets.
    redirect_https: Vec<Option<Redirect>>,
    /// The proxy itself, for a stale entry's refresh, which outlives the request.
    me: std::sync::Weak<Proxy>,
}

/// Where a request's walk ended, short of a failure. Moved once, from the walk to the
/// answer: boxing the large variant would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
enum Outcome<'a> {
    Redirect(&'a Redirect, Option<HeaderValue>),
    /// A directory without its trailing `/`: redirected there.
    Moved(String),
    /// An HTTP-01 validation: the token's key authorization.
    Challenge(String),
    /// From the cache.
    Cached(Box<cache::Hit>, &'a RouteConfig),
    /// Boxed: a file answer's head would make every request's outcome larger.
    File(Box<files::FileAnswer>, &'a RouteConfig),
    Forwarded {
        answered: Answered,
        route: &'a RouteConfig,
        upstream: &'a Upstream,
    },
}

/// What the answer to a request needs from its walk, however the walk ended.
#[derive(Default)]
struct Trail<'a> {
    /// The route it took, once routed.
    route: Option<&'a RouteConfig>,
    /// Its route's rate limit count.
    counted: Option<limit::Counted>,
    /// A cached route's `Cache-Status`, and the fill its upstream's body goes to.
    cache_status: Option<String>,
    /// Boxed: every request's trail carries the place, few a fill.
    fill: Option<Box<cache::entry::Filler>>,
    /// The route's place in the config.
    route_index: Option<usize>,
}

impl Proxy {
    /// `records` are the table records the supervisor assigned to the upstreams and their
    /// servers (see `table::assignment`).
    pub fn new(
        config: &Config,
        access_log: Arc<AccessLog>,
        share: WorkerShare,
        records: &[usize],
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Proxy::build(config, access_log, share, records, me.clone()))
    }

    fn build(
        config: &Config,
        access_log: Arc<AccessLog>,
        share: WorkerShare,
        records: &[usize],
        me: std::sync::Weak<Proxy>,
    ) -> Self {
        let upstreams = crate::table::assignment::per_upstream(config, records)
            .into_iter()
            .map(|(u, record, servers)| Upstream::new(u, share, record, servers))
            .collect();
        Proxy {
            routes: RouteTable::new(&config.routes, config.listeners.len()),
            redirect_https: config
                .listeners
                .iter()
                .map(|l| {
                    l.redirect_https.then(|| Redirect {
                        location: "https://{host}{uri}".into(),
                        status: http::StatusCode::PERMANENT_REDIRECT,
                    })
                })
                .collect(),
            upstreams,
            connector: Connector::new(config.gateway.response_buffer),
            max_body_size: config.gateway.max_body_size,
            unrouted: share.unrouted_requests(),
            limits: config.gateway.limits.clone(),
            compression: config.compression.clone(),
            codings: config.compression.as_ref().map_or_else(
                || crate::config::DEFAULT_ALGORITHMS.to_vec(),
                |c| c.algorithms.clone(),
            ),
            access_log,
            counters: share.counters(),
            trusted_proxies: config.gateway.trusted_proxies.clone(),
            rate_limits: limit::Limits::new(&config.routes, share, config.redis.as_ref()),
            cache: (config.cache.as_ref()).map(|c| cache::Cache::new(c, share.cache_written())),
            cache_counts: cache::slots(&config.routes, |slot| share.cache_outcomes(slot)),
            acme: crate::acme::Plan::of(config).is_some(),
            me,
        }
    }

    /// Serves with the servers of `config` (table records `records`) from now on, in
    /// place: the routes and everything else stay as they are. `config` differs from the
    /// one the proxy was made with only in its upstreams' servers (new DNS answers,
    /// servers added or removed at run time).
    pub fn replace_servers(&self, config: &Config, share: WorkerShare, records: &[usize]) {
        for ((u, _, servers), upstream) in crate::table::assignment::per_upstream(config, records)
            .into_iter()
            .zip(&self.upstreams)
        {
            upstream.replace_servers(&u.servers, share, servers);
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
        let request_id = request_rewrite::request_id(req.headers());
        let upgrade = is_websocket_upgrade(&req);
        // The client address stage: everything below sees the real client.
        let peer = conn.client.ip();
        let client = client::address(peer, req.headers(), &self.trusted_proxies);
        let named;
        let conn = if client == peer {
            conn
        } else {
            named = ConnInfo {
                client: SocketAddr::new(client, 0),
                via: Some(peer),
                ..*conn
            };
            &named
        };
        let (mut head, body) = req.into_parts();
        // The trace stage: the request goes on as this hop of its trace (or a new one).
        let hop = trace::hop(&head.headers, fastrand::u64(..));
        trace::rewrite(&mut head.headers, &hop);
        // The compression stage reads the client's Accept-Encoding, before the rewrite.
        let accept = self
            .compression
            .as_ref()
            .and_then(|_| head.headers.get(header::ACCEPT_ENCODING).cloned());
        let mut log = RequestLog::new(self.access_log.clone(), conn.client, &head);
        log.request_id = Some(request_id.clone());
        log.trace_id = Some(hop.trace_id);
        log.metrics = Some(self.unrouted);
        let mut trail = Trail::default();
        let walked = self
            .walk(
                &mut head,
                body,
                conn,
                &mut log,
                upgrade,
                &request_id,
                &mut trail,
            )
            .await;
        let (mut response, tunnel, route) = match walked {
            Ok(Outcome::Forwarded {
                answered,
                route,
                upstream,
            }) => {
                let read_timeout = upstream.config.read_timeout;
                let (response, tunnel) =
                    response_rewrite::response(log, answered, route, upgrade, read_timeout);
                (response, tunnel, Some(route))
            }
            Ok(Outcome::File(file, route)) => (file_response(log, *file), None, Some(route)),
            Ok(Outcome::Redirect(redirect, host)) => (
                answer::redirect(log, redirect, host.as_ref(), &head.uri),
                None,
                None,
            ),
            Ok(Outcome::Moved(location)) => (answer::moved(log, &location), None, None),
            Ok(Outcome::Cached(hit, route)) => {
                let mut response = cached_response(log, *hit);
                response_rewrite::edit_headers(response.headers_mut(), route);
                (response, None, Some(route))
            }
            Ok(Outcome::Challenge(key_authorization)) => {
                (answer::challenge(log, key_authorization), None, None)
            }
            Err(failure) => (answer::failure(log, failure, upgrade), None, None),
        };
        if let Some(fill) = trail.fill.take() {
            response.body_mut().fill_cache(fill);
        }
        if let Some(status) = trail.cache_status.take() {
            if let Some(Some(counts)) = trail.route_index.map(|i| self.cache_counts[i]) {
                counts[cache::outcome(&status)].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            if let Ok(value) = HeaderValue::from_str(&status) {
                response.headers_mut().insert(CACHE_STATUS.clone(), value);
            }
        }
        // An error page is the answer's body from here on: compressed like any other.
        if let Some(route) = trail.route.filter(|r| !r.error_pages.is_empty()) {
            answer::error_page(&mut response, &route.error_pages);
        }
        if let (Some(settings), Some(route), None) = (&self.compression, route, &tunnel) {
            if route.compression {
                let asked = compress::Asked {
                    method: &head.method,
                    accept: accept.as_ref(),
                };
                response = compress::response(response, &asked, settings);
            }
        }
        if let Some(counted) = &trail.counted {
            counted.add_headers(response.headers_mut());
        }
        response.headers_mut().insert(&X_REQUEST_ID, request_id);
        (response, tunnel)
    }

    /// The stages, in order (see the module's map). What the answer needs whichever way
    /// the walk ends (the route, a limited route's count) is left in `trail`.
    #[allow(clippy::too_many_arguments)]
    async fn walk<'a>(
        &'a self,
        head: &mut http::request::Parts,
        body: RequestBody,
        conn: &ConnInfo,
        log: &mut RequestLog,
        upgrade: bool,
        request_id: &HeaderValue,
        trail: &mut Trail<'a>,
    ) -> Result<Outcome<'a>, Failure> {
        check::request(head, &self.limits)?;
        // HTTP-01 is answered ahead of every route (a redirect to https included).
        if self.acme && !conn.tls && head.uri.path().starts_with(crate::tls::acme::HTTP_PREFIX) {
            if let Some(answer) = crate::tls::acme::http_answer(head.uri.path()) {
                return Ok(Outcome::Challenge(answer));
            }
        }
        if let Some(Some(redirect)) = self.redirect_https.get(conn.listener) {
            return Ok(Outcome::Redirect(redirect, route::request_host(head)));
        }
        let routed = self.routes.route(head, conn.listener)?;
        let route = routed.route;
        trail.route = Some(route);
        trail.route_index = Some(routed.index);
        // Access lists: before anything else is done for the request.
        if !route.access.lets_in(conn.client.ip()) {
            return Err(Failure::Forbidden);
        }
        match self
            .rate_limits
            .check(routed.index, conn, &head.headers)
            .await
        {
            Ok(count) => trail.counted = count,
            Err((count, failure)) => {
                trail.counted = Some(count);
                return Err(failure);
            }
        }
        let mut pending = None;
        if let (Some(cache), Some(settings)) = (&self.cache, route.cache) {
            match cache.lookup(head, settings).await {
                cache::Lookup::Hit(mut hit) => {
                    cache::conditional(&mut hit, &head.headers);
                    trail.cache_status = Some(hit.cache_status.clone());
                    return Ok(Outcome::Cached(Box::new(hit), route));
                }
                cache::Lookup::Stale(mut hit, refresh) => {
                    cache::conditional(&mut hit, &head.headers);
                    self.refresh_in_background(head, *conn, *refresh);
                    trail.cache_status = Some(hit.cache_status.clone());
                    return Ok(Outcome::Cached(Box::new(hit), route));
                }
                cache::Lookup::Forward(p) => {
                    trail.cache_status = Some(p.status.clone());
                    pending = Some(p);
                }
            }
        }
        let upstream = match &route.action {
            RouteAction::Redirect(redirect) => {
                return Ok(Outcome::Redirect(redirect, routed.host));
            }
            RouteAction::Forward(index) => &self.upstreams[*index],
            RouteAction::Files(files) => {
                let missed =
                    match files::serve(head, files, routed.root, &route.path_prefix, &self.codings)
                    {
                        Ok(file) => return Ok(Outcome::File(Box::new(file), route)),
                        Err(files::Miss::Directory(location)) => {
                            return Ok(Outcome::Moved(location))
                        }
                        Err(missed) => missed,
                    };
                match (files.fallback, missed) {
                    (Fallback::Upstream(index), _) => &self.upstreams[index],
                    (_, files::Miss::MethodNotAllowed) => {
                        return Err(Failure::MethodNotAllowed(HeaderValue::from_static(
                            "GET, HEAD",
                        )))
                    }
                    (Fallback::Index, _) => {
                        let file = files::index(head, files, routed.root, &self.codings)
                            .ok_or(Failure::NoFile)?;
                        return Ok(Outcome::File(Box::new(file), route));
                    }
                    (Fallback::NotFound, _) => return Err(Failure::NoFile),
                }
            }
        };
        let to = Upstreamward {
            upstream,
            routed: &routed,
            conn,
            upgrade,
            request_id,
            body_limit: routed.route.max_body_size.or(self.max_body_size),
            pending: pending.as_deref(),
        };
        let forwarded = self.ask_upstream(to, head, body, log).await;
        let Some(mut p) = pending else {
            return forwarded.map(|answered| Outcome::Forwarded {
                answered,
                route: routed.route,
                upstream,
            });
        };
        let answered = match forwarded {
            Ok(answered) => answered,
            Err(failure) => {
                if let Some(hit) = p.stale_if_error(None) {
                    log.error = Some(failure.reason());
                    trail.cache_status = Some(hit.cache_status.clone());
                    return Ok(Outcome::Cached(Box::new(hit), route));
                }
                return Err(failure);
            }
        };
        if let forward::Reply::Response(response) = &answered.reply {
            match p.answered(response.status(), response.headers()) {
                cache::After::Serve(hit) => {
                    trail.cache_status = Some(hit.cache_status.clone());
                    return Ok(Outcome::Cached(Box::new(hit), route));
                }
                cache::After::Pass(fill) => trail.fill = fill,
            }
        }
        trail.cache_status = Some(p.status.clone());
        Ok(Outcome::Forwarded {
            answered,
            route: routed.route,
            upstream,
        })
    }
}

/// Where a request goes upstream, and what it carries there (see [`Proxy::ask_upstream`]).
struct Upstreamward<'a> {
    upstream: &'a Upstream,
    routed: &'a route::Routed<'a>,
    conn: &'a ConnInfo,
    upgrade: bool,
    request_id: &'a HeaderValue,
    body_limit: Option<u64>,
    /// A cached route's fill or refresh: its conditionals instead of the client's.
    pending: Option<&'a cache::Pending>,
}

impl Proxy {
    /// The upstream's view of the request (request_rewrite), then one of its servers
    /// (forward): for a client's request, and for a stale entry's background refresh.
    async fn ask_upstream(
        &self,
        to: Upstreamward<'_>,
        head: &mut http::request::Parts,
        body: RequestBody,
        log: &mut RequestLog,
    ) -> Result<Answered, Failure> {
        let upstream = to.upstream;
        log.metrics = Some(upstream.requests);
        // Read before the rewrite: the client's own Cookie and headers, and the path
        // that matched (as nginx's $request_uri is the client's).
        let servers = upstream.servers();
        let client = to.conn.client.ip();
        let affinity = upstream.affinity(&servers, client, &head.uri, &head.headers);
        request_rewrite::request(head, to.conn, to.routed, to.upgrade, to.request_id);
        if let Some(p) = to.pending {
            p.prepare(head);
        }
        let forwarding = Forwarding {
            connector: &self.connector,
            upstream,
            servers: &servers,
            affinity: &affinity,
            body_limit: to.body_limit,
            upgrade: to.upgrade,
        };
        forward::forward(forwarding, head, body, log).await
    }

    /// A stale entry's refresh, after the stale answer went out: a task of its own, as
    /// the request that started it is over.
    fn refresh_in_background(
        &self,
        head: &http::request::Parts,
        conn: ConnInfo,
        refresh: cache::Pending,
    ) {
        let Some(proxy) = self.me.upgrade() else {
            return;
        };
        // Always a GET: a HEAD that found the entry stale refreshes it whole.
        let Ok(request) = Request::get(head.uri.clone())
            .version(head.version)
            .body(())
        else {
            return;
        };
        let (mut copy, ()) = request.into_parts();
        copy.headers = head.headers.clone();
        tokio::spawn(async move { proxy.refresh(copy, conn, refresh).await });
    }

    /// The route's upstream asked again (conditionally); a `304` refreshes the entry, a
    /// new response replaces it (its body read to the end into the cache).
    async fn refresh(
        &self,
        mut head: http::request::Parts,
        conn: ConnInfo,
        mut pending: cache::Pending,
    ) {
        let request_id = request_rewrite::request_id(&head.headers);
        let mut log = RequestLog::new(self.access_log.clone(), conn.client, &head);
        log.request_id = Some(request_id.clone());
        log.metrics = Some(self.unrouted);
        let Ok(routed) = self.routes.route(&head, conn.listener) else {
            return;
        };
        let RouteAction::Forward(index) = &routed.route.action else {
            return;
        };
        let upstream = &self.upstreams[*index];
        let to = Upstreamward {
            upstream,
            routed: &routed,
            conn: &conn,
            upgrade: false,
            request_id: &request_id,
            body_limit: None,
            pending: Some(&pending),
        };
        let Ok(answered) = self
            .ask_upstream(to, &mut head, RequestBody::empty(), &mut log)
            .await
        else {
            return;
        };
        let forward::Reply::Response(response) = answered.reply else {
            return;
        };
        let answer = pending.answered(response.status(), response.headers());
        if let cache::After::Pass(Some(filler)) = answer {
            let read_timeout = upstream.config.read_timeout;
            let mut body = ResponseBody::upstream(response.into_body(), read_timeout, log);
            body.fill_cache(filler);
            while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
                if frame.is_err() {
                    break;
                }
            }
        }
    }
}

/// `Cache-Status` (RFC 9211).
static CACHE_STATUS: header::HeaderName = header::HeaderName::from_static("cache-status");

/// A response from the cache.
fn cached_response(mut log: RequestLog, hit: cache::Hit) -> Response<ResponseBody> {
    log.status = hit.status.as_u16();
    let body = match hit.body {
        cache::HitBody::Inline(bytes) => ResponseBody::fixed(bytes, log),
        cache::HitBody::Stored(part) => ResponseBody::file(part, log),
        cache::HitBody::Tail(tail) => ResponseBody::tail(tail, log),
        cache::HitBody::None => ResponseBody::fixed(bytes::Bytes::new(), log),
    };
    let mut response = Response::new(body);
    *response.status_mut() = hit.status;
    *response.headers_mut() = hit.headers;
    response
}

/// A file answer as a response, its body read from the file as the client takes it.
fn file_response(mut log: RequestLog, file: files::FileAnswer) -> Response<ResponseBody> {
    log.status = file.status.as_u16();
    let body = match file.body {
        Some(part) => ResponseBody::file(part, log),
        None => ResponseBody::fixed(bytes::Bytes::new(), log),
    };
    let mut response = Response::new(body);
    *response.status_mut() = file.status;
    *response.headers_mut() = file.headers;
    response
}

fn is_websocket_upgrade<B>(req: &Request<B>) -> bool {
    req.method() == Method::GET
        && req.version() == Version::HTTP_11
        && has_token(req.headers(), &header::UPGRADE, "websocket")
        && has_token(req.headers(), &header::CONNECTION, "upgrade")
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
}
