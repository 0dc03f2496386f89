//! The response rewrite stage: what the upstream answered, as the client gets it:
//! hop-by-hop headers gone, a WebSocket's upgrade headers carried, the sticky cookie
//! handed out, and the route's header edits.

use super::body::ResponseBody;
use super::forward::{Answered, Reply};
use super::hop_by_hop::strip_hop_by_hop;
use super::request_log::RequestLog;
use super::Tunnel;
use crate::config::RouteConfig;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::Response;
use std::time::Duration;

/// The stage. `upgrade`: the client asked for a WebSocket; `read_timeout` bounds the
/// silences of the upstream's body.
pub fn response(
    mut log: RequestLog,
    answered: Answered,
    route: &RouteConfig,
    upgrade: bool,
    read_timeout: Duration,
) -> (Response<ResponseBody>, Option<Tunnel>) {
    let (mut response, tunnel) = match answered.reply {
        Reply::Upgraded(mut head, tunnel) => {
            log.upstream_status = Some(head.status.as_u16());
            log.status = head.status.as_u16();
            strip_hop_by_hop(&mut head.headers);
            head.headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            head.headers
                .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            let body = ResponseBody::fixed(Bytes::new(), log);
            (Response::from_parts(head, body), Some(tunnel))
        }
        Reply::Response(response) => {
            let (mut head, body) = response.into_parts();
            log.upstream_status = Some(head.status.as_u16());
            log.status = head.status.as_u16();
            strip_hop_by_hop(&mut head.headers);
            if upgrade {
                // The upgrade was declined, and the client may already be sending
                // WebSocket frames; none of it may be read as a next request.
                head.headers
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            let body = ResponseBody::upstream(body, read_timeout, log);
            (Response::from_parts(head, body), None)
        }
    };
    let headers = response.headers_mut();
    if let Some(cookie) = answered.cookie {
        headers.append(header::SET_COOKIE, cookie);
    }
    edit_headers(headers, route);
    (response, tunnel)
}

/// The route's `remove_response_headers`, then its `response_headers` (also on answers
/// from the cache).
pub fn edit_headers(headers: &mut http::HeaderMap, route: &RouteConfig) {
    for name in &route.remove_response_headers {
        headers.remove(name);
    }
    for (name, value) in &route.response_headers {
        headers.insert(name, value.clone());
    }
}
