//! The upstream's view of the request: the route's path prefix replaced, hop-by-hop
//! headers gone, the forwarding headers (X-Forwarded-*, X-Real-IP) set by us alone, the
//! route's header edits, and the request's X-Request-ID.

use super::hop_by_hop::strip_hop_by_hop;
use super::path::with_path;
use super::route::Routed;
use super::ConnInfo;
use crate::wire::has_token;
use crate::wire::stack_text::StackText;
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Uri, Version};

pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Rewrites `head` into what the upstream gets. `upgrade`: a WebSocket upgrade, whose
/// Connection and Upgrade headers are carried.
pub fn request(
    head: &mut http::request::Parts,
    conn: &ConnInfo,
    routed: &Routed<'_>,
    upgrade: bool,
    request_id: &HeaderValue,
) {
    let route = routed.route;
    if let Some(replacement) = &route.rewrite_prefix {
        let rewritten = rewrite_prefix(head.uri.path(), &route.path_prefix, replacement);
        head.uri = with_path(&head.uri, &rewritten);
    }
    rewrite_request_head(head, conn, routed.host.as_ref(), upgrade);
    for name in &route.remove_request_headers {
        head.headers.remove(name);
    }
    for (name, value) in &route.request_headers {
        head.headers.insert(name, value.clone());
    }
    head.headers.insert(&X_REQUEST_ID, request_id.clone());
}

/// The client's `X-Request-ID` if it is 1 to 200 visible ASCII characters, else a new
/// random one (128 bits, hex).
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
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

/// The client's address as a header value, in a reference-counted buffer of its own (a
/// value copied from a slice would allocate once more on its first clone).
fn ip_header(ip: StackText<48>) -> HeaderValue {
    HeaderValue::from_maybe_shared(Bytes::from_owner(ip))
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
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
    // Each hop appends whom it heard from: the trusted proxy, when one named the client.
    let hop = match conn.via {
        Some(proxy) => {
            ip_header(ConnInfo::new(std::net::SocketAddr::new(proxy, 0), false).client_ip())
        }
        None => ip_value.clone(),
    };
    let forwarded_for = match headers.get(&X_FORWARDED_FOR) {
        None => hop,
        Some(_) => {
            let mut joined = BytesMut::new();
            for value in headers.get_all(&X_FORWARDED_FOR) {
                joined.extend_from_slice(value.as_bytes());
                joined.extend_from_slice(b", ");
            }
            joined.extend_from_slice(hop.as_bytes());
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
    use http::Request;

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
