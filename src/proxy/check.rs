//! The first stage: what a request must satisfy before it is routed, beyond what the
//! wire parsers already refuse, and its path normalized (`path`).
//!
//! Our HTTP/1 head parser (`worker/http1/head.rs`) and hyper's HTTP/2 server reject
//! broken request lines, bad header bytes and ambiguous framing (conflicting
//! Content-Lengths, Content-Length with Transfer-Encoding, Transfer-Encoding on HTTP/1.0).
//! Neither checks Host, transfer codings other than the last, or the request target
//! form: that is done here, for both.

use super::failure::Failure;
use super::path;
use crate::config::ClientLimits;
use http::header::{HeaderMap, HOST, TRANSFER_ENCODING};
use http::{Method, StatusCode, Uri, Version};
use std::borrow::Cow;

/// A request refused with `status`, for the reason given (logged, and sent as the body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub status: StatusCode,
    pub reason: &'static str,
}

fn reject(status: StatusCode, reason: &'static str) -> Result<(), Rejection> {
    Err(Rejection { status, reason })
}

/// The stage: refuses what may not go on, and leaves the path normalized (routed and
/// forwarded as such, so the app acts on the path that matched).
pub fn request(head: &mut http::request::Parts, limits: &ClientLimits) -> Result<(), Failure> {
    check(&head.method, &head.uri, head.version, &head.headers, limits)?;
    match path::normalize(head.uri.path()) {
        Ok(Cow::Borrowed(_)) => Ok(()),
        Ok(Cow::Owned(normal)) => {
            head.uri = path::with_path(&head.uri, &normal);
            Ok(())
        }
        Err(e) => Err(Failure::Refused(Rejection {
            status: StatusCode::BAD_REQUEST,
            reason: e.reason(),
        })),
    }
}

/// The checks that do not touch the request, shared with the HTTP/1 head parser's
/// differential test.
pub fn check(
    method: &Method,
    uri: &Uri,
    version: Version,
    headers: &HeaderMap,
    limits: &ClientLimits,
) -> Result<(), Rejection> {
    let target_len = uri.path_and_query().map_or(0, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.scheme_str().map_or(0, str::len);
    if target_len > limits.max_request_line {
        return reject(StatusCode::URI_TOO_LONG, "request target too long");
    }
    let header_bytes: usize = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len())
        .sum();
    if header_bytes > limits.max_header_bytes {
        return reject(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request headers too large",
        );
    }

    check_target(method, uri)?;
    check_host(uri, version, headers)?;
    check_transfer_encoding(headers)
}

fn check_target(method: &Method, uri: &Uri) -> Result<(), Rejection> {
    if method == Method::CONNECT {
        return reject(StatusCode::METHOD_NOT_ALLOWED, "CONNECT is not supported");
    }
    // TRACE echoes the request back, cookies and credentials the gateway added included
    // (cross-site tracing); nginx refuses it too.
    if method == Method::TRACE {
        return reject(StatusCode::METHOD_NOT_ALLOWED, "TRACE is not allowed");
    }
    match uri.scheme_str() {
        None if uri.authority().is_some() => {
            reject(StatusCode::BAD_REQUEST, "authority-form target")
        }
        None if uri.path() == "*" && method != Method::OPTIONS => reject(
            StatusCode::BAD_REQUEST,
            "asterisk-form target on a method other than OPTIONS",
        ),
        None => Ok(()),
        Some(s) if s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https") => Ok(()),
        Some(_) => reject(
            StatusCode::BAD_REQUEST,
            "absolute-form target with a scheme other than http(s)",
        ),
    }
}

fn check_host(uri: &Uri, version: Version, headers: &HeaderMap) -> Result<(), Rejection> {
    let mut hosts = headers.get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return reject(StatusCode::BAD_REQUEST, "more than one Host header");
    }
    let Some(host) = host else {
        return if version == Version::HTTP_11 {
            reject(StatusCode::BAD_REQUEST, "HTTP/1.1 request without Host")
        } else {
            Ok(())
        };
    };
    let Some(host) = host.to_str().ok().filter(|h| valid_host(h)) else {
        return reject(StatusCode::BAD_REQUEST, "invalid Host header");
    };
    if let Some(authority) = uri.authority() {
        if !authority.as_str().eq_ignore_ascii_case(host) {
            return reject(
                StatusCode::BAD_REQUEST,
                "absolute-form target and Host disagree",
            );
        }
    }
    Ok(())
}

/// `host[:port]` with host a DNS name, an IPv4 address or a bracketed IPv6 address; no
/// user info, no path, no spaces.
pub fn valid_host(host: &str) -> bool {
    let (name, port) = match host.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((v6, tail)) if v6.parse::<std::net::Ipv6Addr>().is_ok() => {
                ("v6", tail.strip_prefix(':'))
            }
            _ => return false,
        },
        None => match host.rsplit_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        },
    };
    let name_ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    name_ok && port_ok
}

fn check_transfer_encoding(headers: &HeaderMap) -> Result<(), Rejection> {
    let mut codings = 0;
    for value in headers.get_all(TRANSFER_ENCODING) {
        let Ok(value) = value.to_str() else {
            return reject(StatusCode::BAD_REQUEST, "invalid Transfer-Encoding");
        };
        for coding in value.split(',').map(str::trim) {
            codings += 1;
            if coding.is_empty() {
                return reject(StatusCode::BAD_REQUEST, "empty transfer coding");
            }
            if !coding.eq_ignore_ascii_case("chunked") {
                return reject(StatusCode::NOT_IMPLEMENTED, "unsupported transfer coding");
            }
        }
    }
    if codings > 1 {
        return reject(StatusCode::BAD_REQUEST, "chunked applied more than once");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits() -> ClientLimits {
        ClientLimits {
            header_read_timeout: Duration::from_secs(10),
            client_body_timeout: Duration::from_secs(10),
            max_request_line: 100,
            max_header_bytes: 200,
        }
    }

    fn run(
        method: &str,
        uri: &str,
        version: Version,
        headers: &[(&str, &str)],
    ) -> Result<(), StatusCode> {
        let mut map = HeaderMap::new();
        for (n, v) in headers {
            map.append(
                http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                http::HeaderValue::from_str(v).unwrap(),
            );
        }
        check(
            &Method::from_bytes(method.as_bytes()).unwrap(),
            &uri.parse().unwrap(),
            version,
            &map,
            &limits(),
        )
        .map_err(|r| r.status)
    }
    const H11: Version = Version::HTTP_11;

    #[test]
    fn plain_request_passes() {
        assert_eq!(
            run("GET", "/a?b", H11, &[("host", "example.com:8080")]),
            Ok(())
        );
        assert_eq!(run("GET", "/", Version::HTTP_10, &[]), Ok(()));
        assert_eq!(run("GET", "/", H11, &[("host", "[::1]:80")]), Ok(()));
    }

    #[test]
    fn host_problems() {
        assert_eq!(run("GET", "/", H11, &[]), Err(StatusCode::BAD_REQUEST));
        assert_eq!(
            run("GET", "/", H11, &[("host", "a.com"), ("host", "b.com")]),
            Err(StatusCode::BAD_REQUEST)
        );
        for bad in [
            "a b",
            "user@a.com",
            "a.com/x",
            "",
            "a.com:http",
            "[::1",
            "a.com:123456",
        ] {
            assert_eq!(
                run("GET", "/", H11, &[("host", bad)]),
                Err(StatusCode::BAD_REQUEST),
                "{bad}"
            );
        }
        assert_eq!(
            run("GET", "http://a.com/x", H11, &[("host", "b.com")]),
            Err(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            run("GET", "http://a.com/x", H11, &[("host", "A.com")]),
            Ok(())
        );
    }

    #[test]
    fn target_forms() {
        assert_eq!(run("OPTIONS", "*", H11, &[("host", "a")]), Ok(()));
        assert_eq!(
            run("GET", "*", H11, &[("host", "a")]),
            Err(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            run("CONNECT", "a.com:443", H11, &[("host", "a.com:443")]),
            Err(StatusCode::METHOD_NOT_ALLOWED)
        );
        assert_eq!(
            run("TRACE", "/", H11, &[("host", "a")]),
            Err(StatusCode::METHOD_NOT_ALLOWED)
        );
        assert_eq!(
            run("GET", "ftp://a/x", H11, &[("host", "a")]),
            Err(StatusCode::BAD_REQUEST)
        );
    }

    #[test]
    fn transfer_codings() {
        let te = |v: &str| run("POST", "/", H11, &[("host", "a"), ("transfer-encoding", v)]);
        assert_eq!(te("chunked"), Ok(()));
        assert_eq!(te("Chunked"), Ok(()));
        assert_eq!(te("chunked, chunked"), Err(StatusCode::BAD_REQUEST));
        assert_eq!(te("gzip, chunked"), Err(StatusCode::NOT_IMPLEMENTED));
        assert_eq!(te(", chunked"), Err(StatusCode::BAD_REQUEST));
    }

    #[test]
    fn sizes() {
        let long = format!("/{}", "a".repeat(100));
        assert_eq!(
            run("GET", &long, H11, &[("host", "a")]),
            Err(StatusCode::URI_TOO_LONG)
        );
        let big = "b".repeat(200);
        assert_eq!(
            run("GET", "/", H11, &[("host", "a"), ("x-big", &big)]),
            Err(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        );
    }
}
