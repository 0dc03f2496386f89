//! Body framing: where a Content-Length or chunked body ends in a byte stream, and its
//! data and trailers as frames. Pure (no I/O): the connection feeds it what it read and
//! gets frames back, so the bytes after the body stay in the buffer for the next message
//! (a pipelined request, or the next response on a kept-alive upstream connection).

use super::{Framing, MAX_HEADERS};
use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;
use http_body::Frame;

/// The longest chunk-size line (size, extensions, CRLF) and trailer section accepted.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;

pub enum Step {
    Frame(Frame<Bytes>),
    /// The buffer holds no more of the body: read more.
    NeedMore,
    /// The body is complete; what follows in the buffer is the next request.
    End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length(u64),
    /// Reading a chunk-size line.
    ChunkSize,
    ChunkData(u64),
    /// The CRLF after a chunk's data.
    ChunkEnd,
    /// Reading the trailer section after the last chunk.
    Trailers,
    Done,
}

pub struct BodyDecoder {
    state: State,
}

impl BodyDecoder {
    pub fn new(framing: Framing) -> Self {
        BodyDecoder {
            state: match framing {
                Framing::Empty | Framing::Length(0) => State::Done,
                Framing::Length(n) => State::Length(n),
                Framing::Chunked => State::ChunkSize,
            },
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The body bytes still to come, when the framing says (a chunked body does not).
    pub fn remaining(&self) -> Option<u64> {
        match self.state {
            State::Done => Some(0),
            State::Length(n) => Some(n),
            _ => None,
        }
    }

    /// The next frame from the front of `buf` (consumed from it).
    pub fn step(&mut self, buf: &mut BytesMut) -> Result<Step, &'static str> {
        loop {
            match self.state {
                State::Done => return Ok(Step::End),
                State::Length(_) | State::ChunkData(_) if buf.is_empty() => {
                    return Ok(Step::NeedMore)
                }
                State::Length(left) => {
                    let (data, rest) = take_data(buf, left);
                    // Done as soon as the last byte is out, so that the body is known to
                    // be complete with its last frame.
                    self.state = match rest {
                        0 => State::Done,
                        rest => State::Length(rest),
                    };
                    return Ok(data);
                }
                State::ChunkSize => {
                    let Some(line_end) = find_crlf(buf, MAX_CHUNK_LINE)? else {
                        return Ok(Step::NeedMore);
                    };
                    let size = chunk_size(&buf[..line_end])?;
                    buf.advance(line_end + 2);
                    self.state = if size == 0 {
                        State::Trailers
                    } else {
                        State::ChunkData(size)
                    };
                }
                State::ChunkData(left) => {
                    let (data, rest) = take_data(buf, left);
                    self.state = match rest {
                        0 => State::ChunkEnd,
                        rest => State::ChunkData(rest),
                    };
                    return Ok(data);
                }
                State::ChunkEnd => {
                    if buf.len() < 2 {
                        return Ok(Step::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err("chunk data not followed by CRLF");
                    }
                    buf.advance(2);
                    self.state = State::ChunkSize;
                }
                State::Trailers => {
                    if buf.starts_with(b"\r\n") {
                        buf.advance(2);
                        self.state = State::Done;
                        continue;
                    }
                    let Some(end) = find(buf, b"\r\n\r\n", MAX_TRAILERS)? else {
                        return Ok(Step::NeedMore);
                    };
                    let section = buf.split_to(end + 4);
                    self.state = State::Done;
                    return Ok(Step::Frame(Frame::trailers(trailers(&section)?)));
                }
            }
        }
    }
}

/// Whether the first chunk-size line of a chunked body at the front of `buf` is whole
/// (`Ok(false)`: read more) and valid: a body broken from its first line is refused
/// before the request goes anywhere.
pub fn first_chunk_line(buf: &[u8]) -> Result<bool, &'static str> {
    match find_crlf(buf, MAX_CHUNK_LINE)? {
        Some(end) => chunk_size(&buf[..end]).map(|_| true),
        None => Ok(false),
    }
}

/// Fields a trailer section must not carry (RFC 9110 §6.5.1): framing, routing, request
/// modifiers, authentication, response control and content processing. A sender that
/// puts them there is not heeded, and they are not passed on.
const NOT_IN_TRAILERS: [&str; 28] = [
    "age",
    "authorization",
    "cache-control",
    "connection",
    "content-encoding",
    "content-length",
    "content-range",
    "content-type",
    "date",
    "expect",
    "expires",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "keep-alive",
    "location",
    "max-forwards",
    "proxy-authorization",
    "range",
    "retry-after",
    "set-cookie",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Up to `left` body bytes from the front of `buf` (not empty) as a data frame, and how
/// many the body still has after them.
fn take_data(buf: &mut BytesMut, left: u64) -> (Step, u64) {
    let n = left.min(buf.len() as u64);
    let data = buf.split_to(n as usize).freeze();
    (Step::Frame(Frame::data(data)), left - n)
}

fn find(buf: &[u8], needle: &[u8], limit: usize) -> Result<Option<usize>, &'static str> {
    match buf.windows(needle.len()).position(|w| w == needle) {
        Some(at) if at <= limit => Ok(Some(at)),
        Some(_) => Err("chunk framing line too long"),
        None if buf.len() > limit => Err("chunk framing line too long"),
        None => Ok(None),
    }
}

fn find_crlf(buf: &[u8], limit: usize) -> Result<Option<usize>, &'static str> {
    let found = find(buf, b"\r\n", limit)?;
    // A bare LF in a chunk-size line is a framing difference between parsers: refuse it.
    let scanned = found.unwrap_or(buf.len());
    if buf[..scanned].contains(&b'\n') {
        return Err("bare LF in a chunk-size line");
    }
    Ok(found)
}

/// `1*HEXDIG [ ; extensions ]`: the size, extensions ignored.
fn chunk_size(line: &[u8]) -> Result<u64, &'static str> {
    let digits = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    if digits == 0 || digits > 16 {
        return Err("invalid chunk size");
    }
    let rest = &line[digits..];
    let extensions_ok = rest.is_empty()
        || (rest.trim_ascii_start().starts_with(b";")
            && rest
                .iter()
                .all(|&b| b == b'\t' || (b' '..0x7f).contains(&b)));
    if !extensions_ok {
        return Err("invalid chunk size");
    }
    let digits = std::str::from_utf8(&line[..digits]).map_err(|_| "invalid chunk size")?;
    u64::from_str_radix(digits, 16).map_err(|_| "chunk size too large")
}

fn trailers(section: &[u8]) -> Result<HeaderMap, &'static str> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let parsed = match httparse::parse_headers(section, &mut slots) {
        Ok(httparse::Status::Complete((_, parsed))) => parsed,
        _ => return Err("malformed trailers"),
    };
    let mut map = HeaderMap::new();
    for h in parsed {
        let name =
            http::HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| "malformed trailers")?;
        let value = http::HeaderValue::from_bytes(h.value).map_err(|_| "malformed trailers")?;
        if !NOT_IN_TRAILERS.contains(&name.as_str()) {
            map.append(name, value);
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_first_chunk_line_is_checked_whole() {
        assert_eq!(first_chunk_line(b"5\r\nhel"), Ok(true));
        assert_eq!(first_chunk_line(b"5;name=value\r\n"), Ok(true));
        assert_eq!(first_chunk_line(b"5"), Ok(false));
        assert_eq!(first_chunk_line(b""), Ok(false));
        for bad in [
            &b" 5\r\n"[..],
            b"0x5\r\n",
            b"5 \r\n",
            b"5\nhello",
            b"10000000000000000\r\n",
            b"-5\r\n",
            b"\r\n",
        ] {
            assert!(
                first_chunk_line(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    proptest! {
        /// The early check of the first chunk-size line and the decoder read it alike: a
        /// line the check refuses, the decoder refuses; one it passes, the decoder takes.
        #[test]
        fn the_first_chunk_line_check_agrees_with_the_decoder(
            line in prop_oneof![
                prop::collection::vec(any::<u8>(), 0..40),
                "[0-9a-fA-F ;=x\t\n\r-]{0,24}".prop_map(String::into_bytes),
            ],
        ) {
            let mut buf = BytesMut::from(&line[..]);
            let step = BodyDecoder::new(Framing::Chunked).step(&mut buf);
            match first_chunk_line(&line) {
                Err(_) => prop_assert!(step.is_err()),
                Ok(true) => prop_assert!(!matches!(step, Err("invalid chunk size" | "chunk size too large" | "bare LF in a chunk-size line" | "chunk framing line too long"))),
                Ok(false) => prop_assert!(matches!(step, Ok(Step::NeedMore))),
            }
        }
    }

    #[test]
    fn framing_and_routing_fields_are_dropped_from_trailers() {
        let map = trailers(b"Checksum: abc\r\nContent-Length: 5\r\nHost: evil\r\nTransfer-Encoding: chunked\r\nX-Ok: 1\r\n\r\n").unwrap();
        let names: Vec<&str> = map.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["checksum", "x-ok"]);
    }

    /// The data, the trailers, and what was left after the body.
    type Decoded = (Vec<u8>, Option<HeaderMap>, Vec<u8>);

    /// Decodes `input` fed in pieces of `cut` bytes.
    pub(crate) fn decode_in_pieces(
        framing: Framing,
        input: &[u8],
        cut: usize,
    ) -> Result<Decoded, &'static str> {
        let mut decoder = BodyDecoder::new(framing);
        let mut buf = BytesMut::new();
        let (mut data, mut trailers) = (Vec::new(), None);
        let mut fed = 0;
        loop {
            match decoder.step(&mut buf)? {
                Step::Frame(frame) => match frame.into_data() {
                    Ok(d) => data.extend_from_slice(&d),
                    Err(frame) => trailers = frame.into_trailers().ok(),
                },
                Step::NeedMore if fed < input.len() => {
                    let n = cut.max(1).min(input.len() - fed);
                    buf.extend_from_slice(&input[fed..fed + n]);
                    fed += n;
                }
                Step::NeedMore => return Err("incomplete"),
                Step::End => {
                    buf.extend_from_slice(&input[fed..]);
                    return Ok((data, trailers, buf.to_vec()));
                }
            }
        }
    }

    #[test]
    fn length_bodies_end_where_they_say() {
        let (data, _, rest) = decode_in_pieces(Framing::Length(5), b"helloGET /", 3).unwrap();
        assert_eq!((&data[..], &rest[..]), (&b"hello"[..], &b"GET /"[..]));
        assert_eq!(
            decode_in_pieces(Framing::Length(5), b"hel", 3),
            Err("incomplete")
        );
    }

    #[test]
    fn chunked_bodies_with_extensions_and_trailers() {
        let input = b"3;name=value\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nX-Sum: 1\r\n\r\nNEXT";
        for cut in [1, 2, 5, 100] {
            let (data, trailers, rest) = decode_in_pieces(Framing::Chunked, input, cut).unwrap();
            assert_eq!(data, b"abc0123456789abcdef");
            assert_eq!(trailers.unwrap()["x-sum"], "1");
            assert_eq!(rest, b"NEXT");
        }
        let (data, trailers, rest) = decode_in_pieces(Framing::Chunked, b"0\r\n\r\n", 1).unwrap();
        assert!(data.is_empty() && trailers.is_none() && rest.is_empty());
    }

    #[test]
    fn broken_chunked_framing_is_an_error() {
        for bad in [
            &b"zz\r\nabc\r\n0\r\n\r\n"[..],
            b"fffffffffffffffff1\r\nabc\r\n0\r\n\r\n",
            b"3\r\nabcX0\r\n\r\n",
            b"3\nabc\r\n0\r\n\r\n",
            b"-3\r\nabc\r\n0\r\n\r\n",
            b" 3\r\nabc\r\n0\r\n\r\n",
            b"3 x\r\nabc\r\n0\r\n\r\n",
            b"0\r\nX A: b\r\n\r\n",
        ] {
            assert!(
                decode_in_pieces(Framing::Chunked, bad, 4).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let endless = vec![b'1'; MAX_CHUNK_LINE + 10];
        assert!(decode_in_pieces(Framing::Chunked, &endless, 100).is_err());
    }

    proptest! {
        /// How the bytes arrive never changes what the body is.
        #[test]
        fn the_split_of_the_input_does_not_matter(
            chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..8),
            cut in 1usize..64,
            tail in prop::collection::vec(any::<u8>(), 0..20),
        ) {
            let mut input = Vec::new();
            let mut expected = Vec::new();
            for chunk in chunks.iter().filter(|c| !c.is_empty()) {
                input.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                input.extend_from_slice(chunk);
                input.extend_from_slice(b"\r\n");
                expected.extend_from_slice(chunk);
            }
            input.extend_from_slice(b"0\r\n\r\n");
            input.extend_from_slice(&tail);
            let (data, _, rest) = decode_in_pieces(Framing::Chunked, &input, cut).unwrap();
            prop_assert_eq!(data, expected);
            prop_assert_eq!(rest, tail);
        }

        /// Arbitrary bytes: an answer, never a panic.
        #[test]
        fn arbitrary_bytes_do_not_panic(input in prop::collection::vec(any::<u8>(), 0..200), cut in 1usize..32) {
            let _ = decode_in_pieces(Framing::Chunked, &input, cut);
        }
    }
}
