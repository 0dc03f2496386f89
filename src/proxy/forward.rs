//! The upstream stage: the request goes to a server of the route's upstream, and on to
//! another while a server cannot be reached (within `retries`), or, for a request that
//! can be sent again, fails in a way `retry_on` names (within the retry budget too).
//! Every try is counted on its server: its failures for passive health, its time to the
//! response head for least_time.

use super::body::{ClientBodyError, FromUpstream, RequestBody};
use super::failure::Failure;
use super::request_log::RequestLog;
use super::Tunnel;
use crate::upstream::connector::{Connector, TryError};
use crate::upstream::{Affinity, Lease, Server, ServerSet, Upstream};
use crate::wire::has_token;
use http::header::{self, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body::Body as _;
use smallvec::SmallVec;
use std::time::Instant;

/// What the upstream answered.
pub enum Reply {
    Response(Response<FromUpstream>),
    /// A WebSocket upgrade it accepted: its `101` head, and its side of the tunnel.
    Upgraded(http::response::Parts, Tunnel),
}

/// The answer, and the sticky cookie the client is to get with it, if any.
pub struct Answered {
    pub reply: Reply,
    pub cookie: Option<HeaderValue>,
}

/// What the stage needs besides the request.
pub struct Forwarding<'a> {
    pub connector: &'a Connector,
    pub upstream: &'a Upstream,
    /// The upstream's servers as the request found them (kept for its retries).
    pub servers: &'a ServerSet,
    pub affinity: &'a Affinity,
    /// `max_body_size` for this request (the route's, else the gateway's).
    pub body_limit: Option<u64>,
    /// A WebSocket upgrade: it gets a connection of its own, and no replay.
    pub upgrade: bool,
}

/// The stage. `head` is the upstream's view of the request; without a Host of its own it
/// gets each server's name.
pub async fn forward(
    to: Forwarding<'_>,
    head: &mut http::request::Parts,
    mut body: RequestBody,
    log: &mut RequestLog,
) -> Result<Answered, Failure> {
    let upstream = to.upstream;
    if let Some(limit) = to.body_limit {
        let declared = head
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(Failure::ClientBody(ClientBodyError::TooLarge(limit)));
        }
        body.limit(limit);
    }
    let host_named = head.headers.contains_key(header::HOST);
    // The head stays here and every try writes it anew: a request without a body can
    // be sent again after it went out, if that is safe.
    let replayable = !to.upgrade && is_idempotent(&head.method) && body.is_end_stream();
    upstream.note_request();

    let retry_on = upstream.config.retry_on;
    let retries = upstream.config.retries as usize;
    // Servers tried, on the stack for the first few (one allocation less per request).
    let mut tried: SmallVec<[usize; 4]> = SmallVec::new();
    let mut last_failure = None;
    loop {
        let Some((index, give_cookie)) = upstream.pick(to.servers, to.affinity, &tried) else {
            return Err(last_failure.unwrap_or(Failure::NoServerUp));
        };
        let server = &to.servers.servers[index];
        server.count_request();
        log.upstream = Some(Lease::new(server.clone()));
        if !host_named {
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
                && to.servers.any_untried(&tried)
                && upstream.try_retry()
        };
        let sent_at = Instant::now();
        let sent = to
            .connector
            .send(upstream, server, head, body, replayable, to.upgrade)
            .await;
        let failure = match sent {
            Ok(response) => {
                log.upstream_time = Some(sent_at.elapsed());
                // The server's own time: neither the connect nor the upload.
                server.note_latency(response.body().waited);
                let status = response.status();
                if retry_on.status(status.as_u16()) && may_retry() {
                    let why = format!("answered {}", status.as_u16());
                    server.note_failure(&why);
                    log.note_try(server, why);
                    body = RequestBody::empty();
                    continue;
                }
                match accept(response, server, to.upgrade) {
                    Ok(reply) => {
                        server.note_success();
                        let cookie = give_cookie
                            .then(|| to.servers.sticky_cookie(index).cloned())
                            .flatten();
                        return Ok(Answered { reply, cookie });
                    }
                    Err(failure) => failure,
                }
            }
            Err(TryError::NotSent(back, why)) => {
                let failure = Failure::of_connect(why);
                if !failure.blames_server() {
                    return Err(failure);
                }
                server.note_failure(&failure.reason());
                log.note_try(server, failure.reason());
                body = back;
                if tried.len() > retries {
                    return Err(failure);
                }
                last_failure = Some(failure);
                continue;
            }
            Err(TryError::Failed(e)) => {
                log.upstream_time = Some(sent_at.elapsed());
                Failure::from(e)
            }
        };
        // The request went out and failed.
        if failure.blames_server() {
            server.note_failure(&failure.reason());
            // A timeout waited its limit on the server; other failures are quick and
            // their time says little (it may be the upload's).
            if let Failure::Timeout(_) = failure {
                server.note_latency(upstream.config.read_timeout);
            }
        }
        if failure.retryable(retry_on) && may_retry() {
            log.note_try(server, failure.reason());
            body = RequestBody::empty();
            last_failure = Some(failure);
            continue;
        }
        return Err(failure);
    }
}

/// The server's response as the client may get it: a `101` only for a WebSocket upgrade
/// the client asked for, with the connection it was sent on.
fn accept(
    response: Response<FromUpstream>,
    server: &std::sync::Arc<Server>,
    upgrade: bool,
) -> Result<Reply, Failure> {
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(Reply::Response(response));
    }
    let (head, body) = response.into_parts();
    let upgraded = (upgrade && has_token(&head.headers, &header::UPGRADE, "websocket"))
        .then(|| body.upgrade())
        .flatten();
    let Some((stream, early)) = upgraded else {
        return Err(Failure::BadResponse(
            "upstream switched protocols without a WebSocket upgrade".to_string(),
        ));
    };
    let tunnel = Tunnel {
        upstream: stream,
        early,
        lease: Lease::new(server.clone()),
    };
    Ok(Reply::Upgraded(head, tunnel))
}

/// Whether a request may be sent again after it went out (RFC 9110 §9.2.2), if it has
/// no body (a body, once streamed, is gone).
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    )
}
