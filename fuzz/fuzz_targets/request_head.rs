//! The HTTP/1 request-head parser and the body decoder on arbitrary bytes: never panic,
//! and a head that parses has a consistent framing and the length it claims.
#![no_main]

use gateway::config::ClientLimits;
use gateway::wire::decode::{BodyDecoder, Step};
use gateway::wire::Framing;
use gateway::worker::http1::head;
use libfuzzer_sys::fuzz_target;
use std::time::Duration;

fuzz_target!(|data: &[u8]| {
    let limits = ClientLimits {
        header_read_timeout: Duration::from_secs(10),
        client_body_timeout: Duration::from_secs(10),
        max_request_line: 1024,
        max_header_bytes: 2048,
    };
    let Ok(Some((head, len))) = head::parse(data, &limits) else {
        return;
    };
    assert!(len <= data.len());
    let headers = &head.parts.headers;
    match head.framing {
        Framing::Chunked => assert!(!headers.contains_key("content-length")),
        Framing::Length(n) => assert!(n > 0 && !headers.contains_key("transfer-encoding")),
        Framing::Empty => assert!(!headers.contains_key("transfer-encoding")),
    }
    // The early check of a chunked body's first line reads it as the decoder does.
    if head.framing == Framing::Chunked {
        let first = gateway::wire::decode::first_chunk_line(&data[len..]);
        let mut probe = bytes::BytesMut::from(&data[len..]);
        let step = BodyDecoder::new(Framing::Chunked).step(&mut probe);
        match first {
            Err(_) => assert!(step.is_err()),
            Ok(false) => assert!(matches!(step, Ok(Step::NeedMore))),
            Ok(true) => {}
        }
    }
    // Whatever follows the head, decoding it as the body ends or asks for more.
    let mut buf = bytes::BytesMut::from(&data[len..]);
    let mut decoder = BodyDecoder::new(head.framing);
    for _ in 0..10_000 {
        match decoder.step(&mut buf) {
            Ok(Step::Frame(_)) => {}
            Ok(Step::NeedMore) | Ok(Step::End) | Err(_) => break,
        }
    }
});
