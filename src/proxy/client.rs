//! The client address stage: who the client is, before anything uses the address.
//!
//! The TCP peer, unless the peer is a trusted proxy (`trusted_proxies`): then the
//! right-most address of `X-Forwarded-For` that is not itself a trusted proxy, as nginx's
//! `real_ip_recursive on` does. Walking from the right matters: everything left of the
//! first untrusted address was written by whoever that was, and may be made up.

use crate::config::CidrList;
use http::HeaderMap;
use std::net::{IpAddr, SocketAddr};

/// The client address for a request from `peer`.
pub fn address(peer: IpAddr, headers: &HeaderMap, trusted: &CidrList) -> IpAddr {
    if trusted.is_empty() || !trusted.contains(peer) {
        return peer;
    }
    let mut client = peer;
    // Repeated headers read as one list, in order.
    let values: Vec<&[u8]> = headers
        .get_all(&super::request_rewrite::X_FORWARDED_FOR)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    for value in values.iter().rev() {
        for entry in value.rsplit(|&b| b == b',') {
            let Some(ip) = parse_entry(entry) else {
                // Not an address: what is left of it cannot be trusted either.
                return client;
            };
            client = ip;
            if !trusted.contains(ip) {
                return client;
            }
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, with or without a port (`[v6]:port`).
fn parse_entry(entry: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(entry).ok()?.trim();
    text.parse::<IpAddr>()
        .or_else(|_| text.parse::<SocketAddr>().map(|s| s.ip()))
        .ok()
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Cidr;

    fn trusted(list: &[&str]) -> CidrList {
        CidrList::new(list.iter().map(|c| Cidr::parse(c).unwrap()).collect())
    }

    fn with_xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_a_trusted_peer_names_the_client() {
        let t = trusted(&["10.0.0.0/8"]);
        let h = with_xff(&["203.0.113.7"]);
        assert_eq!(address(ip("10.1.1.1"), &h, &t), ip("203.0.113.7"));
        assert_eq!(address(ip("198.51.100.1"), &h, &t), ip("198.51.100.1"));
        assert_eq!(
            address(ip("10.1.1.1"), &HeaderMap::new(), &t),
            ip("10.1.1.1")
        );
        assert_eq!(
            address(ip("10.1.1.1"), &h, &CidrList::default()),
            ip("10.1.1.1")
        );
    }

    #[test]
    fn the_right_most_untrusted_address_wins() {
        let t = trusted(&["10.0.0.0/8", "2001:db8::/32"]);
        // A client that wrote its own X-Forwarded-For: its made-up entry is left of it.
        let h = with_xff(&["1.1.1.1, 203.0.113.7", "10.0.0.2"]);
        assert_eq!(address(ip("10.0.0.3"), &h, &t), ip("203.0.113.7"));
        let h = with_xff(&["[2001:db9::5]:443, 2001:db8::1"]);
        assert_eq!(address(ip("10.0.0.3"), &h, &t), ip("2001:db9::5"));
        // Every entry trusted: the left-most.
        let h = with_xff(&["10.0.0.9, 10.0.0.8"]);
        assert_eq!(address(ip("10.0.0.3"), &h, &t), ip("10.0.0.9"));
        // Garbage stops the walk at the last good address.
        let h = with_xff(&["203.0.113.7, unknown, 10.0.0.8"]);
        assert_eq!(address(ip("10.0.0.3"), &h, &t), ip("10.0.0.8"));
        let h = with_xff(&["203.0.113.7:8080"]);
        assert_eq!(address(ip("10.0.0.3"), &h, &t), ip("203.0.113.7"));
    }

    /// Property: whatever the header says, the answer is the peer or an address written in
    /// the header, and an untrusted peer always gets its own address.
    #[test]
    fn any_header_gives_the_peer_or_one_of_its_addresses() {
        let t = trusted(&["10.0.0.0/8"]);
        let pieces = [
            "10.0.0.1",
            "203.0.113.7",
            " ",
            ",",
            ":",
            "[",
            "]",
            "::1",
            "1.2.3",
            "x",
            "8080",
            "::ffff:10.0.0.1",
            "\t",
            "2001:db8::1",
        ];
        let mut seed = 12345u64;
        for _ in 0..20_000 {
            let mut value = String::new();
            for _ in 0..(seed % 7) {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                value.push_str(pieces[(seed >> 33) as usize % pieces.len()]);
            }
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            let Ok(v) = value.parse() else { continue };
            let mut h = HeaderMap::new();
            h.insert("x-forwarded-for", v);
            let got = address(ip("10.9.9.9"), &h, &t);
            let written: Vec<IpAddr> = value
                .split(',')
                .filter_map(|e| parse_entry(e.as_bytes()))
                .collect();
            assert!(
                got == ip("10.9.9.9") || written.contains(&got),
                "{value:?} gave {got}"
            );
            assert_eq!(address(ip("198.51.100.1"), &h, &t), ip("198.51.100.1"));
        }
    }
}
