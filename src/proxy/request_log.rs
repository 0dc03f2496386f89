//! The end of a request: written once, when its response body is finished or dropped
//! (a client gone in the middle included), whatever path the request took.

use crate::access_log::{AccessLog, Entry};
use crate::table::RequestMetrics;
use crate::upstream::connector::Connector;
use crate::upstream::http1::Connection;
use crate::upstream::{Lease, Server};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// What the end of a request does, and what it needs for it: the access-log line's
/// fields, the /metrics count, the lease on the server (its in-flight count) and the
/// upstream connection to give back when the response completed cleanly.
pub struct RequestLog {
    pub access_log: Arc<AccessLog>,
    pub started: Instant,
    pub client: SocketAddr,
    pub method: http::Method,
    pub uri: http::Uri,
    pub version: http::Version,
    pub referer: Option<http::HeaderValue>,
    pub user_agent: Option<http::HeaderValue>,
    pub status: u16,
    pub bytes_sent: u64,
    pub upstream: Option<Lease>,
    pub upstream_time: Option<Duration>,
    /// The status the (last) upstream answered with.
    pub upstream_status: Option<u16>,
    pub request_id: Option<http::HeaderValue>,
    /// The W3C trace id, once the trace stage ran.
    pub trace_id: Option<super::trace::TraceId>,
    /// Where the request is counted for /metrics: its upstream's, or the unrouted ones.
    pub metrics: Option<&'static RequestMetrics>,
    pub error: Option<String>,
    /// Servers tried and left before the one that answered, each with why it was left.
    tries: Vec<(String, String)>,
    complete: bool,
}

impl RequestLog {
    pub fn new(
        access_log: Arc<AccessLog>,
        client: SocketAddr,
        head: &http::request::Parts,
    ) -> Self {
        let keep = access_log.enabled();
        RequestLog {
            started: Instant::now(),
            client,
            method: head.method.clone(),
            uri: if keep {
                head.uri.clone()
            } else {
                http::Uri::default()
            },
            version: head.version,
            referer: keep
                .then(|| head.headers.get(http::header::REFERER).cloned())
                .flatten(),
            user_agent: keep
                .then(|| head.headers.get(http::header::USER_AGENT).cloned())
                .flatten(),
            status: 0,
            bytes_sent: 0,
            upstream: None,
            upstream_time: None,
            upstream_status: None,
            request_id: None,
            trace_id: None,
            metrics: None,
            error: None,
            tries: Vec::new(),
            complete: false,
            access_log,
        }
    }

    /// `server` was tried and left for `why` (for the access log).
    pub fn note_try(&mut self, server: &Server, why: String) {
        if self.access_log.enabled() {
            self.tries.push((server.config.name.clone(), why));
        }
    }

    /// The whole body went out; `idle` is the upstream connection if it may serve
    /// another request.
    pub fn finish(&mut self, idle: Option<Connection>) {
        if self.complete {
            return;
        }
        self.complete = true;
        if let (Some(lease), Some(conn)) = (&self.upstream, idle) {
            Connector::give_back(&lease.server, conn);
        }
    }

    pub fn fail_body(&mut self, why: String, blames_server: bool) {
        if let (Some(lease), true) = (&self.upstream, blames_server) {
            lease.server.note_failure(&why);
        }
        self.error.get_or_insert(why);
    }
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        if !self.complete && self.error.is_none() {
            self.error = Some("client closed the connection before the response was sent".into());
        }
        if let Some(metrics) = self.metrics {
            metrics.observe(self.status, self.started.elapsed());
        }
        if !self.access_log.enabled() {
            return;
        }
        fn header_str(v: &Option<http::HeaderValue>) -> Option<&str> {
            v.as_ref().and_then(|v| v.to_str().ok())
        }
        let target = self.uri.path_and_query().map_or("/", |p| p.as_str());
        let upstream = self
            .upstream
            .as_ref()
            .map(|l| l.server.config.name.as_str());
        self.access_log.write(&Entry {
            time: SystemTime::now() - self.started.elapsed(),
            client: self.client,
            method: self.method.as_str(),
            target,
            version: self.version,
            status: self.status,
            bytes_sent: self.bytes_sent,
            referer: header_str(&self.referer),
            user_agent: header_str(&self.user_agent),
            upstream,
            upstream_time: self.upstream_time,
            upstream_status: self.upstream_status,
            request_id: header_str(&self.request_id),
            trace_id: self.trace_id.as_ref().map(|t| t.as_str()),
            request_time: self.started.elapsed(),
            error: self.error.as_deref(),
            tries: &self.tries,
        });
    }
}
