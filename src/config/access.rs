//! Address lists: `[gateway] trusted_proxies` and a route's `allow` and `deny`, each a
//! list of CIDR blocks or single addresses, IPv4 and IPv6.

use super::Validator;
use std::net::IpAddr;
use toml::Spanned;

/// An address block: `10.0.0.0/8`, `2001:db8::/32`, or one address (`/32`, `/128`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// With the host bits cleared.
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `ADDRESS` or `ADDRESS/PREFIX`; host bits set past the prefix are an error, as a
    /// typo there (`10.1.2.3/8`) would let in more than was meant.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (address, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let address: IpAddr = address
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or CIDR block"))?;
        let address = address.to_canonical();
        let bits = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            // Plain digits, no sign or leading zero.
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= bits && (p == "0" || !p.starts_with(['0', '+'])) => n,
                _ => return Err(format!("{text:?}: the prefix length must be 0 to {bits}")),
            },
        };
        let cidr = Cidr {
            network: mask(address, prefix),
            prefix,
        };
        if cidr.network != address {
            return Err(format!(
                "{text:?} has bits set past /{prefix} (the block is {}/{prefix})",
                cidr.network
            ));
        }
        Ok(cidr)
    }

    /// Whether `ip` is in the block; an IPv4-mapped IPv6 address counts as its IPv4 one.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.network.is_ipv4() && mask(ip, self.prefix) == self.network
    }
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let keep = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((u32::from(v4) & keep).into())
        }
        IpAddr::V6(v6) => {
            let keep = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((u128::from(v6) & keep).into())
        }
    }
}

/// A list of blocks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CidrList(Vec<Cidr>);

impl CidrList {
    pub fn new(blocks: Vec<Cidr>) -> Self {
        CidrList(blocks)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A route's `allow` and `deny`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessList {
    /// Empty: everyone not denied.
    pub allow: CidrList,
    pub deny: CidrList,
}

impl AccessList {
    /// `deny` wins; with an `allow` list, only the addresses in it are let in.
    pub fn lets_in(&self, ip: IpAddr) -> bool {
        !self.deny.contains(ip) && (self.allow.is_empty() || self.allow.contains(ip))
    }
}

impl Validator<'_> {
    /// A list of CIDR blocks at `key`; each bad entry is an error naming it.
    pub(super) fn cidr_list(&mut self, list: &Option<Spanned<Vec<String>>>, key: &str) -> CidrList {
        let Some(list) = list else {
            return CidrList::default();
        };
        let mut blocks = Vec::new();
        for entry in list.get_ref() {
            match Cidr::parse(entry) {
                Ok(c) => blocks.push(c),
                Err(e) => self.error(list.span(), key, e),
            }
        }
        CidrList(blocks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn blocks_and_single_addresses() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains(ip("10.255.1.2")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(c.contains(ip("::ffff:10.1.2.3")), "IPv4-mapped IPv6");
        let one = Cidr::parse("127.0.0.1").unwrap();
        assert!(one.contains(ip("127.0.0.1")));
        assert!(!one.contains(ip("127.0.0.2")));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")));
        assert!(!v6.contains(ip("2001:db9::1")));
        assert!(!v6.contains(ip("10.0.0.1")));
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all.contains(ip("203.0.113.9")));
        assert!(
            !all.contains(ip("::1")),
            "an IPv4 block holds no IPv6 address"
        );
        assert!(Cidr::parse("::/0").unwrap().contains(ip("::1")));
    }

    #[test]
    fn bad_blocks_are_refused() {
        for bad in [
            "10.1.2.3/8",
            "10.0.0.0/33",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0.0/ 8",
            "::/129",
            "example.com",
            "",
            "10.0.0.0/08",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn deny_wins_and_allow_limits() {
        let list = |allow: &[&str], deny: &[&str]| AccessList {
            allow: CidrList(allow.iter().map(|c| Cidr::parse(c).unwrap()).collect()),
            deny: CidrList(deny.iter().map(|c| Cidr::parse(c).unwrap()).collect()),
        };
        let a = list(&["192.168.0.0/16", "127.0.0.1"], &["192.168.1.13"]);
        assert!(a.lets_in(ip("192.168.1.12")));
        assert!(!a.lets_in(ip("192.168.1.13")));
        assert!(a.lets_in(ip("127.0.0.1")));
        assert!(!a.lets_in(ip("10.0.0.1")));
        let d = list(&[], &["10.0.0.0/8"]);
        assert!(!d.lets_in(ip("10.2.3.4")));
        assert!(d.lets_in(ip("11.2.3.4")));
    }

    /// Property: an address is in a block exactly when its first `prefix` bits equal the
    /// block's, for random addresses and prefixes of both families.
    #[test]
    fn contains_agrees_with_a_bitwise_comparison() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20_000 {
            let a = (u128::from(next()) << 64) | u128::from(next());
            let b = if next() % 2 == 0 {
                a ^ (1u128 << (next() % 128))
            } else {
                (u128::from(next()) << 64) | u128::from(next())
            };
            let prefix = (next() % 129) as u8;
            let net = std::net::Ipv6Addr::from(a);
            if net.to_ipv4_mapped().is_some() {
                continue;
            }
            let block = Cidr {
                network: mask(IpAddr::V6(net), prefix),
                prefix,
            };
            let same = prefix == 0 || (a ^ b) >> (128 - u32::from(prefix)) == 0;
            let other = std::net::Ipv6Addr::from(b);
            if other.to_ipv4_mapped().is_some() {
                continue;
            }
            assert_eq!(
                block.contains(IpAddr::V6(other)),
                same,
                "{net}/{prefix} {other}"
            );
            let (a4, b4, p4) = (a as u32, b as u32, prefix % 33);
            let block = Cidr {
                network: mask(IpAddr::V4(a4.into()), p4),
                prefix: p4,
            };
            let same = p4 == 0 || (a4 ^ b4) >> (32 - u32::from(p4)) == 0;
            assert_eq!(block.contains(IpAddr::V4(b4.into())), same);
        }
    }
}
