//! The PROXY protocol header (HAProxy's, versions 1 and 2) a load balancer in front of
//! a listener with `proxy_protocol = true` puts before each connection's first byte: it
//! names the client the balancer saw.
//!
//! Parsed from what has arrived so far without taking more than the header, so the bytes
//! after it (TLS or HTTP) are left for their reader.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The longest v1 header (with its CRLF), from the spec.
pub const V1_MAX: usize = 107;
/// v2's fixed part: signature, version and command, family, length.
const V2_FIXED: usize = 16;
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The largest v2 header taken (addresses and TLVs): more is refused, not read.
pub const V2_MAX: usize = V2_FIXED + 512;

#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed (at most this many in all).
    Incomplete,
    /// A header of `len` bytes naming the client, or `None` when it names no one (v1
    /// `UNKNOWN`, v2 `LOCAL` or a family other than TCP over IPv4 or IPv6): the
    /// connection's own peer stands.
    Header {
        len: usize,
        client: Option<SocketAddr>,
    },
    Invalid(&'static str),
}

/// Parses the start of a connection.
pub fn parse(buf: &[u8]) -> Parsed {
    let v2_prefix = buf.len().min(V2_SIGNATURE.len());
    if buf[..v2_prefix] == V2_SIGNATURE[..v2_prefix] && !buf.is_empty() {
        return parse_v2(buf);
    }
    let v1_prefix = buf.len().min(6);
    if buf[..v1_prefix] == b"PROXY "[..v1_prefix] {
        return parse_v1(buf);
    }
    Parsed::Invalid("the connection does not start with a PROXY protocol header")
}

fn parse_v1(buf: &[u8]) -> Parsed {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Parsed::Invalid("PROXY v1 header longer than 107 bytes")
        } else {
            Parsed::Incomplete
        };
    };
    let len = end + 2;
    if len > V1_MAX {
        return Parsed::Invalid("PROXY v1 header longer than 107 bytes");
    }
    let Ok(line) = std::str::from_utf8(&buf[..end]) else {
        return Parsed::Invalid("PROXY v1 header is not text");
    };
    let fields: Vec<&str> = line.split(' ').collect();
    match fields.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Parsed::Header { len, client: None },
        ["PROXY", family @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let (Ok(src), Ok(_dst)) = (src.parse::<IpAddr>(), dst.parse::<IpAddr>()) else {
                return Parsed::Invalid("PROXY v1 addresses are not IP addresses");
            };
            if src.is_ipv4() != (*family == "TCP4") {
                return Parsed::Invalid("PROXY v1 address does not match its family");
            }
            let (Some(sport), Some(_)) = (port(sport), port(dport)) else {
                return Parsed::Invalid("PROXY v1 ports are not ports");
            };
            Parsed::Header {
                len,
                client: Some(SocketAddr::new(src, sport)),
            }
        }
        _ => Parsed::Invalid("PROXY v1 header is malformed"),
    }
}

/// A port as v1 writes it: 0 to 65535, digits only, no leading zero.
fn port(text: &str) -> Option<u16> {
    if text.is_empty() || (text.len() > 1 && text.starts_with('0')) {
        return None;
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn parse_v2(buf: &[u8]) -> Parsed {
    if buf.len() < V2_FIXED {
        return Parsed::Incomplete;
    }
    let version_command = buf[12];
    if version_command >> 4 != 2 {
        return Parsed::Invalid("PROXY v2 header with another version");
    }
    let family = buf[13];
    let body = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let len = V2_FIXED + body;
    if len > V2_MAX {
        return Parsed::Invalid("PROXY v2 header too long");
    }
    if buf.len() < len {
        return Parsed::Incomplete;
    }
    let addresses = &buf[V2_FIXED..len];
    match version_command & 0x0f {
        // LOCAL: the balancer's own connection (a health check): the peer stands.
        0 => Parsed::Header { len, client: None },
        1 => match family {
            // TCP over IPv4: source, destination, source port, destination port.
            0x11 if addresses.len() >= 12 => {
                let ip = Ipv4Addr::new(addresses[0], addresses[1], addresses[2], addresses[3]);
                let port = u16::from_be_bytes([addresses[8], addresses[9]]);
                Parsed::Header {
                    len,
                    client: Some(SocketAddr::new(ip.into(), port)),
                }
            }
            0x21 if addresses.len() >= 36 => {
                let octets: [u8; 16] = addresses[..16].try_into().expect("16 bytes");
                let port = u16::from_be_bytes([addresses[32], addresses[33]]);
                Parsed::Header {
                    len,
                    client: Some(SocketAddr::new(Ipv6Addr::from(octets).into(), port)),
                }
            }
            0x11 | 0x21 => Parsed::Invalid("PROXY v2 addresses shorter than their family"),
            // UDP, unix sockets, unspecified: no client address to take.
            _ => Parsed::Header { len, client: None },
        },
        _ => Parsed::Invalid("PROXY v2 header with an unknown command"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, addresses: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&(addresses.len() as u16).to_be_bytes());
        h.extend_from_slice(addresses);
        h
    }

    #[test]
    fn version_1() {
        let h = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 443\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            parse(h),
            Parsed::Header {
                len: 43,
                client: Some("203.0.113.7:51234".parse().unwrap())
            }
        );
        let h = b"PROXY TCP6 2001:db8::7 2001:db8::1 51234 443\r\n";
        assert!(
            matches!(parse(h), Parsed::Header { client: Some(a), .. } if a.ip() == "2001:db8::7".parse::<IpAddr>().unwrap())
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n"),
            Parsed::Header {
                len: 15,
                client: None
            }
        );
        assert_eq!(parse(b"PROXY TCP4 203.0"), Parsed::Incomplete);
        assert_eq!(parse(b"PRO"), Parsed::Incomplete);
        for bad in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"PROXY TCP4 203.0.113.7 10.0.0.1 51234\r\n",
            b"PROXY TCP4 2001:db8::7 10.0.0.1 1 2\r\n",
            b"PROXY TCP4 203.0.113.7 10.0.0.1 65536 443\r\n",
            b"PROXY TCP4 203.0.113.7 10.0.0.1 0080 443\r\n",
            b"PROXY TCP4 203.0.113.7 10.0.0.1 +80 443\r\n",
            b"PROXY TCP4  203.0.113.7 10.0.0.1 80 443\r\n",
            b"PROXY TCP5 203.0.113.7 10.0.0.1 80 443\r\n",
        ] {
            assert!(
                matches!(parse(bad), Parsed::Invalid(_)),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = format!("PROXY TCP4 {}", "1".repeat(120));
        assert!(matches!(parse(long.as_bytes()), Parsed::Invalid(_)));
    }

    #[test]
    fn version_2() {
        let mut addresses = vec![203, 0, 113, 7, 10, 0, 0, 1];
        addresses.extend_from_slice(&51234u16.to_be_bytes());
        addresses.extend_from_slice(&443u16.to_be_bytes());
        let mut h = v2(1, 0x11, &addresses);
        let len = h.len();
        h.extend_from_slice(b"\x16\x03\x01");
        assert_eq!(
            parse(&h),
            Parsed::Header {
                len,
                client: Some("203.0.113.7:51234".parse().unwrap())
            }
        );
        assert_eq!(parse(&h[..len - 1]), Parsed::Incomplete);
        assert_eq!(parse(&h[..5]), Parsed::Incomplete);
        assert_eq!(
            parse(&v2(0, 0, &[])),
            Parsed::Header {
                len: 16,
                client: None
            }
        );
        // TLVs after the addresses are skipped with them.
        let mut with_tlv = addresses.clone();
        with_tlv.extend_from_slice(&[0x04, 0, 1, 0]);
        assert!(matches!(
            parse(&v2(1, 0x11, &with_tlv)),
            Parsed::Header { len: 32, .. }
        ));
        assert!(matches!(
            parse(&v2(1, 0x11, &addresses[..8])),
            Parsed::Invalid(_)
        ));
        assert!(matches!(
            parse(&v2(2, 0x11, &addresses)),
            Parsed::Invalid(_)
        ));
        let mut too_long = v2(1, 0x11, &[]);
        too_long[14..16].copy_from_slice(&1000u16.to_be_bytes());
        assert!(matches!(parse(&too_long), Parsed::Invalid(_)));
    }

    /// Property: on any bytes the parser answers without panicking, never claims more
    /// than it was given, and an answer on a prefix is Incomplete or the same answer.
    #[test]
    fn any_bytes_get_an_answer_within_what_was_given() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let starts: [&[u8]; 3] = [
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
            &V2_SIGNATURE[..],
            b"PROXY ",
        ];
        for _ in 0..50_000 {
            let mut buf = starts[(next() % 3) as usize].to_vec();
            for _ in 0..(next() % 40) {
                let at = (next() as usize) % (buf.len() + 1);
                buf.insert(at, (next() % 256) as u8);
            }
            buf.truncate((next() as usize) % (buf.len() + 1));
            let whole = parse(&buf);
            if let Parsed::Header { len, .. } = whole {
                assert!(len <= buf.len());
            }
            let cut = (next() as usize) % (buf.len() + 1);
            match parse(&buf[..cut]) {
                Parsed::Incomplete => {}
                Parsed::Header { len, .. } => assert!(len <= cut && whole == parse(&buf[..cut])),
                Parsed::Invalid(_) => assert!(matches!(whole, Parsed::Invalid(_))),
            }
        }
    }
}
