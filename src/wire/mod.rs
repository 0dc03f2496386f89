//! HTTP/1 as it goes over the wire, the parts both sides of the proxy share: where a
//! body ends (`decode`), how header fields and chunk lines are written, what
//! Content-Length and Transfer-Encoding say. The client-facing engine
//! (`worker::http1`) reads requests and writes responses with it, the upstream client
//! (`upstream::http1`) writes requests and reads responses.

pub mod decode;
pub mod proxy_protocol;
pub mod stack_text;

use bytes::{Buf, Bytes};
use http::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING,
};
use http::Version;
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

/// The fields httparse found in the head `buf[..len]`, put into `headers` (empty, with
/// room for them) with values that are slices of one copy of the head: one allocation
/// instead of one per value, and a copy of the map counts references instead of
/// allocating again. The copy is the message's own, not the read buffer, which is reused.
pub fn field_map(
    buf: &[u8],
    len: usize,
    fields: &[httparse::Header<'_>],
    mut headers: HeaderMap,
) -> Result<HeaderMap, &'static str> {
    let copy = Bytes::copy_from_slice(&buf[..len]);
    for field in fields {
        let name =
            HeaderName::from_bytes(field.name.as_bytes()).map_err(|_| "invalid header name")?;
        let offset = field.value.as_ptr() as usize - buf.as_ptr() as usize;
        let value = HeaderValue::from_maybe_shared(copy.slice(offset..offset + field.value.len()))
            .map_err(|_| "invalid header value")?;
        headers.append(name, value);
    }
    Ok(headers)
}

thread_local! {
    /// The buffer message heads are written into, kept by the worker's thread between
    /// messages: a head written whole, nearly every one, gives it back.
    static HEAD_BUFFER: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// A head buffer that grew past this is not kept.
const MAX_KEPT_HEAD_BUFFER: usize = 16 * 1024;

/// An empty buffer to write a head into: the thread's kept one if it is free.
pub fn take_head_buffer() -> Vec<u8> {
    let mut head = HEAD_BUFFER.take();
    head.clear();
    head
}

/// Keeps `head`, once written, for the next head. An empty placeholder is not kept: it
/// would put out a buffer another message gave back meanwhile.
pub fn give_back_head_buffer(head: Vec<u8>) {
    if (1..=MAX_KEPT_HEAD_BUFFER).contains(&head.capacity()) {
        HEAD_BUFFER.set(head);
    }
}

thread_local! {
    /// Emptied maps of response heads, kept for the next responses: a new map costs two
    /// allocations. Only responses: keeping request maps as well read the same in
    /// callgrind but left about 0.13 KiB more per idle client in `make bench` (the heap
    /// was no larger, so glibc's free memory was laid out worse).
    static MAPS: std::cell::RefCell<Vec<HeaderMap>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Maps kept per thread, and the largest kept (`HeaderMap::capacity`): at most a few
/// hundred KB.
const KEPT_MAPS: usize = 64;
const KEPT_MAP_CAPACITY: usize = 48;

/// An empty map for a response head with room for `capacity` fields, a kept one if there
/// is.
pub fn response_map(capacity: usize) -> HeaderMap {
    match MAPS.with(|maps| maps.borrow_mut().pop()) {
        Some(mut map) => {
            map.reserve(capacity);
            map
        }
        None => HeaderMap::with_capacity(capacity),
    }
}

/// Empties the map of a response whose head has been written, and keeps it for a later
/// response, if it is not one of the rare large ones.
pub fn recycle_response_map(mut map: HeaderMap) {
    if map.capacity() > KEPT_MAP_CAPACITY {
        return;
    }
    map.clear();
    MAPS.with(|maps| {
        let mut maps = maps.borrow_mut();
        if maps.len() < KEPT_MAPS {
            maps.push(map);
        }
    });
}

/// Whether the sender of a message keeps the connection open after it (RFC 9112 §9.3):
/// HTTP/1.0 only when it says `keep-alive`, HTTP/1.1 unless it says `close`.
pub fn keeps_alive(version: Version, headers: &HeaderMap) -> bool {
    match version {
        Version::HTTP_10 => has_token(headers, &CONNECTION, "keep-alive"),
        _ => !has_token(headers, &CONNECTION, "close"),
    }
}

/// Takes `n` written bytes off the front of `parts`, in order.
pub fn consume<B: Buf>(parts: &mut [B], mut n: usize) {
    for part in parts {
        let taken = n.min(part.remaining());
        part.advance(taken);
        n -= taken;
    }
}

/// Writes each field as `name: value\r\n`.
pub fn encode_fields(out: &mut Vec<u8>, headers: &HeaderMap) {
    for (name, value) in headers {
        encode_field(out, name, value);
    }
}

/// Writes one field as `name: value\r\n`.
pub fn encode_field(out: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
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
    fn a_kept_map_comes_back_empty_with_room() {
        let mut map = with("x-a", &["1", "2"]);
        map.insert("x-b", HeaderValue::from_static("3"));
        recycle_response_map(map);
        let head = b"x-c: 4";
        let fields = [httparse::Header {
            name: "x-c",
            value: &head[5..6],
        }];
        let map = field_map(head, head.len(), &fields, response_map(21)).unwrap();
        assert_eq!(map.len(), 1);
        assert_eq!(map["x-c"], "4");
        assert!(map.capacity() >= 21);
        // A large map is not kept.
        let mut large = HeaderMap::with_capacity(KEPT_MAP_CAPACITY + 1);
        large.insert("x-a", HeaderValue::from_static("1"));
        recycle_response_map(large);
        assert!(response_map(0).is_empty());
    }

    #[test]
    fn chunk_lines_are_hex() {
        assert_eq!(&chunk_line(0)[..], b"0\r\n");
        assert_eq!(&chunk_line(8000)[..], b"1f40\r\n");
        assert_eq!(&chunk_line(usize::MAX)[..], b"ffffffffffffffff\r\n");
    }
}
