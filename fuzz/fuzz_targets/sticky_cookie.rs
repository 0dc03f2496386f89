//! The Cookie header as the sticky cookie and `hash_key = "cookie:NAME"` read it, on
//! arbitrary bytes: never panics, and what it finds is a part of the header.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = http::HeaderValue::from_bytes(data) else {
        return;
    };
    let mut headers = http::HeaderMap::new();
    headers.insert(http::header::COOKIE, value);
    if let Some(found) = gateway::upstream::affinity::cookie(&headers, "gw") {
        let text = std::str::from_utf8(data).expect("a cookie is read from text");
        assert!(text.contains(found));
    }
});
