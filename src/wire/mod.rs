//! HTTP/1 as it goes over the wire, the parts both sides of the proxy share: where a
//! body ends (`decode`), how header fields and chunk lines are written, what
//! Content-Length and Transfer-Encoding say. The client-facing engine
//! (`worker::http1`) reads requests and writes responses with it, the upstream client
//! (`upstream::http1`) writes requests and reads responses.

pub mod decode;
pub mod stack_text;

use http::header::{HeaderMap, HeaderName, CONTENT_LENGTH, TRANSFER_ENCODING};
use stack_text::StackText;

/// Header fields a message may have; more is refused (431 for a request, 502 for a
/// response), as in nginx and hyper.
pub const MAX_HEADERS: usize = 128;

/// Where a message body ends in the byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    Length(u64),
    Chunked,
}

/// Writes each field as `name: value\r\n`.
pub fn encode_fields(out: &mut Vec<u8>, headers: &HeaderMap) {
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// A chunk's size line (`1f40\r\n`): 16 hex digits and CRLF at most.
pub fn chunk_line(size: usize) -> StackText<20> {
    use std::fmt::Write;
    let mut line = StackText::new();
    let _ = write!(line, "{size:x}\r\n");
    line
}

/// Whether a comma-separated list header holds `token` (case-insensitive). On the bytes:
/// this runs several times for every request and response.
pub fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .as_bytes()
            .split(|&b| b == b',')
            .any(|item| item.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// The length every Content-Length field states, `None` without one. Each must be the
/// same plain number (a list of equal values is one value, RFC 9110 §8.6).
pub fn content_length(headers: &HeaderMap) -> Result<Option<u64>, &'static str> {
    let mut length = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        for item in value.as_bytes().split(|&b| b == b',') {
            let item = item.trim_ascii();
            // 19 digits cannot overflow a u64.
            if item.is_empty() || item.len() > 19 || !item.iter().all(u8::is_ascii_digit) {
                return Err("invalid Content-Length");
            }
            let n = item
                .iter()
                .fold(0u64, |n, digit| n * 10 + u64::from(digit - b'0'));
            if length.is_some_and(|l| l != n) {
                return Err("conflicting Content-Length values");
            }
            length = Some(n);
        }
    }
    Ok(length)
}

/// Whether `chunked` is the final transfer coding (the body then ends with the last
/// chunk; with another final coding, only the end of the connection ends it).
pub fn chunked_is_last(headers: &HeaderMap) -> bool {
    headers
        .get_all(TRANSFER_ENCODING)
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .map(str::trim)
        .is_some_and(|c| c.eq_ignore_ascii_case("chunked"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn with(name: &'static str, values: &[&'static str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(name, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn content_lengths_must_agree_and_be_plain_numbers() {
        assert_eq!(content_length(&HeaderMap::new()), Ok(None));
        assert_eq!(content_length(&with("content-length", &["5"])), Ok(Some(5)));
        assert_eq!(
            content_length(&with("content-length", &["5, 5", "5"])),
            Ok(Some(5))
        );
        for bad in [
            &["5", "6"][..],
            &["+5"],
            &["0x5"],
            &[""],
            &["5,"],
            &["99999999999999999999"],
        ] {
            assert!(
                content_length(&with("content-length", bad)).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn only_a_final_chunked_coding_counts() {
        assert!(chunked_is_last(&with("transfer-encoding", &["chunked"])));
        assert!(chunked_is_last(&with(
            "transfer-encoding",
            &["gzip, Chunked"]
        )));
        assert!(chunked_is_last(&with(
            "transfer-encoding",
            &["gzip", "chunked"]
        )));
        assert!(!chunked_is_last(&with(
            "transfer-encoding",
            &["chunked, gzip"]
        )));
        assert!(!chunked_is_last(&with(
            "transfer-encoding",
            &["chunked", "gzip"]
        )));
        assert!(!chunked_is_last(&HeaderMap::new()));
    }

    #[test]
    fn tokens_are_whole_list_items() {
        let connection = |v| with("connection", &[v]);
        let upgrade = |h: &HeaderMap| has_token(h, &http::header::CONNECTION, "upgrade");
        assert!(upgrade(&connection("Keep-Alive , Upgrade")));
        assert!(upgrade(&connection("\tUPGRADE")));
        assert!(!upgrade(&connection("keep-alive, upgraded")));
        assert!(!upgrade(&connection("")));
    }

    #[test]
    fn the_largest_length_with_19_digits_is_read() {
        let largest = "9999999999999999999";
        assert_eq!(
            content_length(&with("content-length", &[largest])),
            Ok(Some(9_999_999_999_999_999_999))
        );
    }

    #[test]
    fn chunk_lines_are_hex() {
        assert_eq!(&chunk_line(0)[..], b"0\r\n");
        assert_eq!(&chunk_line(8000)[..], b"1f40\r\n");
        assert_eq!(&chunk_line(usize::MAX)[..], b"ffffffffffffffff\r\n");
    }
}
