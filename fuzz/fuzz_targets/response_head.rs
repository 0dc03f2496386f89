//! The upstream client's response-head parser, its framing rules and the body decoder
//! on arbitrary bytes (what a broken or hostile server may send): never panic, and a
//! head that parses has the length it claims and a framing its headers allow.
#![no_main]

use gateway::upstream::http1::{parse_head, response_framing};
use gateway::wire::decode::{BodyDecoder, Step};
use gateway::wire::Framing;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, data)) = data.split_first() else {
        return;
    };
    let Ok(Some(head)) = parse_head(data) else {
        return;
    };
    assert!(head.len <= data.len());
    let head_request = first & 1 == 1;
    let framing = match response_framing(head_request, head.status, &head.headers) {
        Ok(Some(framing)) => framing,
        Ok(None) | Err(_) => return,
    };
    if head_request {
        assert_eq!(framing, Framing::Empty);
    }
    if framing == Framing::Chunked {
        assert!(!head.headers.contains_key("content-length"));
    }
    let mut buf = bytes::BytesMut::from(&data[head.len..]);
    let mut decoder = BodyDecoder::new(framing);
    for _ in 0..10_000 {
        match decoder.step(&mut buf) {
            Ok(Step::Frame(_)) => {}
            Ok(Step::NeedMore) | Ok(Step::End) | Err(_) => break,
        }
    }
});
