//! A route's `rate_limit`, and `[redis]`, where global limits are counted.

use super::{file, Validator};
use std::time::Duration;

/// A route's rate limit: `rate` on average, `burst` more at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    /// The time one request is worth at the rate (GCRA's emission interval), in
    /// microseconds.
    pub interval_us: u64,
    pub burst: u32,
    pub key: RateKey,
    pub scope: RateScope,
}

impl RateLimit {
    /// How many requests may come at once: `burst` over the one the rate allows.
    pub fn quota(&self) -> u64 {
        u64::from(self.burst) + 1
    }
}

/// What a client is counted by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateKey {
    /// The client address (after `proxy_protocol` and `trusted_proxies`).
    ClientIp,
    /// A request header's value (requests without it are counted together).
    Header(http::HeaderName),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateScope {
    /// Shared by the workers of this gateway (the shared table).
    Gateway,
    /// Shared by every gateway on the same Redis.
    Global,
}

/// `[redis]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    pub url: String,
    /// rediss:// only: the CA to trust (PEM, read at load) instead of the system's.
    pub ca: Option<Vec<u8>>,
}

impl RedisConfig {
    /// The client for this configuration (checked at load, so it builds).
    pub fn client(&self) -> redis::RedisResult<redis::Client> {
        match &self.ca {
            Some(ca) => redis::Client::build_with_tls(
                self.url.as_str(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.clone()),
                },
            ),
            None => redis::Client::open(self.url.as_str()),
        }
    }
}

/// Routes with a rate limit that one gateway holds counts for (the shared table has a
/// region for each).
pub const MAX_LIMITED_ROUTES: usize = 64;

/// The slowest rate: one a day. The fastest: a million a second.
const SLOWEST: Duration = Duration::from_secs(86_400);

impl Validator<'_> {
    pub(super) fn rate_limit(
        &mut self,
        section: &toml::Spanned<file::RateLimitSection>,
        i: usize,
        redis: bool,
    ) -> Option<RateLimit> {
        let key = |k: &str| format!("route[{i}].rate_limit.{k}");
        let s = section.get_ref();
        let interval_us = match parse_rate(s.rate.get_ref()) {
            Ok(interval) => interval,
            Err(e) => {
                self.error(s.rate.span(), &key("rate"), e);
                return None;
            }
        };
        let burst = match &s.burst {
            None => 0,
            Some(b) => match u32::try_from(*b.get_ref()) {
                Ok(b) if b <= 1_000_000 => b,
                _ => {
                    self.error(b.span(), &key("burst"), "must be 0 to 1000000");
                    0
                }
            },
        };
        let rate_key = match s.key.as_ref().map(|k| (k, k.get_ref().as_str())) {
            None | Some((_, "client_ip")) => RateKey::ClientIp,
            Some((k, text)) => match text
                .strip_prefix("header:")
                .map(|name| http::HeaderName::from_bytes(name.as_bytes()))
            {
                Some(Ok(name)) => RateKey::Header(name),
                _ => {
                    self.error(
                        k.span(),
                        &key("key"),
                        format!("{text:?} is not \"client_ip\" or \"header:NAME\""),
                    );
                    RateKey::ClientIp
                }
            },
        };
        let scope = match s.scope.as_ref().map(|k| (k, k.get_ref().as_str())) {
            None | Some((_, "gateway")) => RateScope::Gateway,
            Some((k, "global")) => {
                if !redis {
                    self.error(k.span(), &key("scope"), "\"global\" needs a [redis] table");
                }
                RateScope::Global
            }
            Some((k, other)) => {
                self.error(
                    k.span(),
                    &key("scope"),
                    format!("{other:?} is not \"gateway\" or \"global\""),
                );
                RateScope::Gateway
            }
        };
        Some(RateLimit {
            interval_us,
            burst,
            key: rate_key,
            scope,
        })
    }

    pub(super) fn redis(
        &mut self,
        section: &file::RedisSection,
        base: &std::path::Path,
    ) -> RedisConfig {
        let url = section.url.get_ref();
        let tls = url.starts_with("rediss://");
        if !tls && !url.starts_with("redis://") {
            self.error(
                section.url.span(),
                "redis.url",
                "must start with redis:// or rediss://",
            );
        }
        let ca = section.ca.as_ref().and_then(|ca| {
            if !tls {
                self.error(ca.span(), "redis.ca", "only used with rediss://");
            }
            let path = base.join(ca.get_ref());
            match std::fs::read(&path) {
                Ok(pem) if pem.starts_with(b"-----BEGIN") => Some(pem),
                Ok(_) => {
                    self.error(
                        ca.span(),
                        "redis.ca",
                        format!("{} is not PEM", path.display()),
                    );
                    None
                }
                Err(e) => {
                    self.error(
                        ca.span(),
                        "redis.ca",
                        format!("cannot read {}: {e}", path.display()),
                    );
                    None
                }
            }
        });
        let config = RedisConfig {
            url: url.clone(),
            ca,
        };
        if let Err(e) = config.client() {
            self.error(section.url.span(), "redis.url", format!("{e}"));
        }
        config
    }
}

/// `N/s`, `N/m`, `N/h` or `N/d` (nginx's `Nr/s` too): microseconds per request.
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?} is not a rate like \"10/s\", \"5/m\" or \"100/h\"");
    let (count, per) = text.split_once('/').ok_or_else(bad)?;
    let count = count.trim().strip_suffix('r').unwrap_or(count.trim());
    let count: u64 = count.parse().map_err(|_| bad())?;
    let window = match per.trim() {
        "s" => Duration::from_secs(1),
        "m" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        "d" => SLOWEST,
        _ => return Err(bad()),
    };
    if count == 0 {
        return Err(format!("{text:?}: the rate must be above 0"));
    }
    let interval = window.as_micros() as u64 / count;
    if interval == 0 {
        return Err(format!("{text:?}: at most 1000000 a second"));
    }
    Ok(interval)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("10/s"), Ok(100_000));
        assert_eq!(parse_rate("10r/s"), Ok(100_000));
        assert_eq!(parse_rate("5/m"), Ok(12_000_000));
        assert_eq!(parse_rate("1/h"), Ok(3_600_000_000));
        assert_eq!(parse_rate("2/d"), Ok(43_200_000_000));
        for bad in ["10", "0/s", "10/x", "a/s", "-1/s", "2000000/s"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }
}
