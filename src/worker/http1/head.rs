//! Reading an HTTP/1.1 request head from the bytes a client sent: httparse for the
//! syntax, then the framing rules of RFC 9112 that decide where the body ends. Anything
//! ambiguous about the framing is refused here, before the request exists, so that no
//! two parties (the gateway and the app) can read one message as two.
//!
//! The checks that do not depend on the wire format (Host, target form, transfer codings
//! other than the last, sizes) are `proxy::check`'s, shared with HTTP/2.

use crate::config::ClientLimits;
use crate::proxy::check::Rejection;
use crate::wire::{self, Framing, MAX_HEADERS};
use http::header::HeaderMap;
use http::{Method, StatusCode, Uri, Version};

/// Room for the method, the version and the line ends around a request target.
const REQUEST_LINE_OVERHEAD: usize = 32;

/// A parsed request head and what the connection needs to know about it.
#[derive(Debug)]
pub struct RequestHead {
    pub parts: http::request::Parts,
    pub framing: Framing,
    /// The client wants the connection kept open after this request.
    pub keep_alive: bool,
    /// `Expect: 100-continue`: the client waits for a go-ahead before the body.
    pub expect_continue: bool,
}

fn reject(status: StatusCode, reason: &'static str) -> Rejection {
    Rejection { status, reason }
}

fn bad(reason: &'static str) -> Rejection {
    reject(StatusCode::BAD_REQUEST, reason)
}

/// How many headers the proxy may add to a request (X-Forwarded-For, -Proto and -Host,
/// X-Real-IP, X-Request-ID, Host).
const ADDED_BY_PROXY: usize = 6;

/// The largest head (request line and headers) a client may send.
pub fn max_head_len(limits: &ClientLimits) -> usize {
    limits.max_request_line + limits.max_header_bytes + 4 * 1024
}

/// Parses the head at the start of `buf`: `Ok(None)` while it is incomplete (and within
/// the limits), else the head and its length in bytes.
pub fn parse(buf: &[u8], limits: &ClientLimits) -> Result<Option<(RequestHead, usize)>, Rejection> {
    let max_line = limits.max_request_line + REQUEST_LINE_OVERHEAD;
    // Empty lines before a request line are ignored (RFC 9112 §2.2); httparse skips them.
    let start = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len());
    match buf[start..].iter().position(|&b| b == b'\n') {
        Some(end) if end > max_line => {
            return Err(reject(StatusCode::URI_TOO_LONG, "request line too long"))
        }
        None if buf.len() - start > max_line => {
            return Err(reject(StatusCode::URI_TOO_LONG, "request line too long"))
        }
        _ => {}
    }
    // Left uninitialised: filling 128 empty fields cost about 600 instructions a request.
    let mut slots = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let len = match request.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > max_head_len(limits) => {
            return Err(reject(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request head too large",
            ))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(reject(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "too many request headers",
            ))
        }
        Err(httparse::Error::Version) => return Err(bad("unsupported HTTP version")),
        Err(_) => return Err(bad("malformed request head")),
    };
    if len > max_head_len(limits) {
        return Err(reject(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request head too large",
        ));
    }
    let method = Method::from_bytes(request.method.unwrap_or_default().as_bytes())
        .map_err(|_| bad("invalid method"))?;
    let target = request.path.unwrap_or_default();
    if target.len() > limits.max_request_line {
        return Err(reject(StatusCode::URI_TOO_LONG, "request target too long"));
    }
    let uri: Uri = target.parse().map_err(|_| bad("invalid request target"))?;
    let version = match request.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    // Room for the forwarding headers the proxy adds, so that adding them does not grow
    // (and rehash) the map.
    let headers = wire::field_map(
        buf,
        len,
        request.headers,
        HeaderMap::with_capacity(request.headers.len() + ADDED_BY_PROXY),
    )
    .map_err(bad)?;
    let framing = framing(&headers, version)?;
    let keep_alive = wire::keeps_alive(version, &headers);
    let expect_continue = version == Version::HTTP_11
        && headers
            .get(http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let mut parts = http::Request::new(()).into_parts().0;
    parts.method = method;
    parts.uri = uri;
    parts.version = version;
    parts.headers = headers;
    Ok(Some((
        RequestHead {
            parts,
            framing,
            keep_alive,
            expect_continue,
        },
        len,
    )))
}

/// RFC 9112 §6.3: Transfer-Encoding wins and must end in `chunked`; with Content-Length
/// as well, the request is refused (a proxy behind us might pick the other); every
/// Content-Length must be the same plain number.
fn framing(headers: &HeaderMap, version: Version) -> Result<Framing, Rejection> {
    if headers.contains_key(http::header::TRANSFER_ENCODING) {
        if version == Version::HTTP_10 {
            return Err(bad("Transfer-Encoding on an HTTP/1.0 request"));
        }
        if headers.contains_key(http::header::CONTENT_LENGTH) {
            return Err(bad("both Content-Length and Transfer-Encoding"));
        }
        if !wire::chunked_is_last(headers) {
            return Err(bad("chunked is not the final transfer coding"));
        }
        // Other codings before it are proxy::check's (501).
        return Ok(Framing::Chunked);
    }
    Ok(match wire::content_length(headers).map_err(bad)? {
        None | Some(0) => Framing::Empty,
        Some(n) => Framing::Length(n),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    pub(crate) fn limits() -> ClientLimits {
        ClientLimits {
            header_read_timeout: Duration::from_secs(10),
            client_body_timeout: Duration::from_secs(10),
            max_request_line: 100,
            max_header_bytes: 200,
        }
    }

    fn status(raw: &str) -> Result<Option<Framing>, StatusCode> {
        parse(raw.as_bytes(), &limits())
            .map(|r| r.map(|(h, _)| h.framing))
            .map_err(|r| r.status)
    }

    #[test]
    fn a_complete_head_is_parsed_and_its_length_given() {
        let raw = b"\r\nGET /a?b HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nX-A: 2\r\n\r\nrest";
        let (head, len) = parse(raw, &limits()).unwrap().unwrap();
        assert_eq!(&raw[len..], b"rest");
        assert_eq!(head.parts.method, Method::GET);
        assert_eq!(head.parts.uri, "/a?b");
        assert_eq!(head.parts.headers.get_all("x-a").iter().count(), 2);
        assert_eq!(head.framing, Framing::Empty);
        assert!(head.keep_alive && !head.expect_continue);
    }

    #[test]
    fn header_values_are_the_bytes_the_client_sent() {
        let raw = b"GET / HTTP/1.1\r\nHost: x\r\nX-Empty:\r\nX-A:  spaced \t\r\nX-A: 2\r\nX-Last: \xffz\r\n\r\n";
        let (head, _) = parse(raw, &limits()).unwrap().unwrap();
        let headers = &head.parts.headers;
        assert_eq!(headers["host"], "x");
        assert_eq!(headers["x-empty"], "");
        let a: Vec<_> = headers.get_all("x-a").iter().collect();
        assert_eq!(a, ["spaced", "2"]);
        assert_eq!(headers["x-last"].as_bytes(), b"\xffz");
    }

    #[test]
    fn an_incomplete_head_waits_for_more() {
        assert_eq!(status("GET / HTTP/1.1\r\nHost: x\r\n"), Ok(None));
        assert_eq!(status("GE"), Ok(None));
    }

    #[test]
    fn framing_rules() {
        let head = |h: &str| status(&format!("POST / HTTP/1.1\r\nHost: x\r\n{h}\r\n"));
        assert_eq!(head("Content-Length: 5\r\n"), Ok(Some(Framing::Length(5))));
        assert_eq!(
            head("Content-Length: 5, 5\r\n"),
            Ok(Some(Framing::Length(5)))
        );
        assert_eq!(head("Content-Length: 0\r\n"), Ok(Some(Framing::Empty)));
        assert_eq!(
            head("Transfer-Encoding: chunked\r\n"),
            Ok(Some(Framing::Chunked))
        );
        for refused in [
            "Content-Length: 5\r\nContent-Length: 6\r\n",
            "Content-Length: +5\r\n",
            "Content-Length: 5a\r\n",
            "Content-Length: \r\n",
            "Content-Length: 99999999999999999999\r\n",
            "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
            "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
            "Transfer-Encoding: gzip\r\n",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
            "Transfer-Encoding: xchunked\r\n",
            "Transfer-Encoding : chunked\r\n",
        ] {
            assert_eq!(head(refused), Err(StatusCode::BAD_REQUEST), "{refused:?}");
        }
        assert_eq!(
            status("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(StatusCode::BAD_REQUEST)
        );
    }

    #[test]
    fn sizes_have_their_own_statuses() {
        let long_target = format!("GET /{} HTTP/1.1\r\n", "a".repeat(200));
        assert_eq!(status(&long_target), Err(StatusCode::URI_TOO_LONG));
        // Even before the line ends.
        assert_eq!(status(&long_target[..150]), Err(StatusCode::URI_TOO_LONG));
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n", "b".repeat(5000));
        assert_eq!(
            status(&big),
            Err(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        );
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(
            status(&format!("GET / HTTP/1.1\r\n{many}\r\n")),
            Err(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        );
    }

    #[test]
    fn syntax_errors_and_unknown_versions_are_400() {
        for raw in [
            "GET /a b HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nX A: b\r\n\r\n",
            "GET / HTTP/1.1\r\nX-A: a\0b\r\n\r\n",
            "GET / HTTP/1.1\r\nX-A: a\r\n b\r\n\r\n",
            "GET / HTTP/1.1\r\nX-A: a\rb\r\n\r\n",
            "G(T / HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(status(raw), Err(StatusCode::BAD_REQUEST), "{raw:?}");
        }
        assert_eq!(
            status("GET / HTTP/1.2\r\n\r\n"),
            Err(StatusCode::BAD_REQUEST)
        );
    }

    #[test]
    fn keep_alive_and_expect() {
        let head = |raw: &str| parse(raw.as_bytes(), &limits()).unwrap().unwrap().0;
        assert!(!head("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(!head("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(head("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
        assert!(
            head("POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n")
                .expect_continue
        );
    }
}
