//! What names the client, on arbitrary bytes: a PROXY protocol header (never claims more
//! bytes than it was given, and a prefix never disagrees with the whole), and an
//! X-Forwarded-For value from a trusted peer (the answer is the peer or an address the
//! header wrote, and an untrusted peer always keeps its own).
#![no_main]

use gateway::config::{Cidr, CidrList};
use gateway::wire::proxy_protocol::{parse, Parsed};
use libfuzzer_sys::fuzz_target;
use std::net::IpAddr;

fuzz_target!(|data: &[u8]| {
    let whole = parse(data);
    if let Parsed::Header { len, .. } = whole {
        assert!(len <= data.len());
        assert_eq!(parse(&data[..len]), whole);
    }

    let Ok(value) = http::HeaderValue::from_bytes(data) else {
        return;
    };
    let mut headers = http::HeaderMap::new();
    headers.insert("x-forwarded-for", value);
    let trusted = CidrList::new(vec![Cidr::parse("10.0.0.0/8").unwrap()]);
    let peer: IpAddr = "10.1.1.1".parse().unwrap();
    let client = gateway::proxy::client::address(peer, &headers, &trusted);
    let text = String::from_utf8_lossy(data);
    let written = text.split(',').any(|entry| {
        let entry = entry.trim();
        entry.parse::<IpAddr>().ok().map(|ip| ip.to_canonical()) == Some(client)
            || entry.parse::<std::net::SocketAddr>().ok().map(|s| s.ip().to_canonical()) == Some(client)
    });
    assert!(client == peer || written, "{text:?} gave {client}");
    let outsider: IpAddr = "198.51.100.1".parse().unwrap();
    assert_eq!(gateway::proxy::client::address(outsider, &headers, &trusted), outsider);
});
