//! RFC 9111's rules for a shared cache, as pure functions: what may be stored, for how
//! long it is fresh, how old it is.

use http::header::{self, HeaderMap};
use http::{Method, StatusCode};
use std::time::Duration;

/// The `Cache-Control` directives the cache acts on.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Directives {
    pub no_store: bool,
    pub no_cache: bool,
    pub private: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
}

/// Every `Cache-Control` field of `headers`, directives case-insensitive; an unreadable
/// delta-seconds counts as 0 (RFC 9111, 1.2.2: stale), a repeated one as the first.
pub fn directives(headers: &HeaderMap) -> Directives {
    let mut d = Directives::default();
    for value in headers.get_all(header::CACHE_CONTROL) {
        let Ok(value) = value.to_str() else { continue };
        for part in value.split(',') {
            let (name, arg) = match part.split_once('=') {
                Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                None => (part.trim(), None),
            };
            let seconds = || arg.map_or(0, |a| a.parse::<u64>().unwrap_or(0));
            match name.to_ascii_lowercase().as_str() {
                "no-store" => d.no_store = true,
                // `no-cache="field"` only forbids those fields; taken as a whole no-cache.
                "no-cache" => d.no_cache = true,
                "private" => d.private = true,
                "public" => d.public = true,
                "must-revalidate" | "proxy-revalidate" => d.must_revalidate = true,
                "max-age" if d.max_age.is_none() => d.max_age = Some(seconds()),
                "s-maxage" if d.s_maxage.is_none() => d.s_maxage = Some(seconds()),
                _ => {}
            }
        }
    }
    d
}

/// Statuses a shared cache may store without explicit freshness (heuristically
/// cacheable, RFC 9110 15.1) and the gateway stores.
const STORABLE: [u16; 8] = [200, 203, 204, 300, 301, 308, 404, 410];

/// How a stored response ages and when it needs revalidation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    /// Seconds it is fresh from its origin (its age 0).
    pub lifetime: u64,
    /// No stale serving (`must-revalidate`, `proxy-revalidate`, `s-maxage`).
    pub must_revalidate: bool,
}

/// Whether the response to `method` with `request` headers may be stored, and its
/// freshness (`ttl` when it gives none); `Err` says why not.
pub fn storable(
    method: &Method,
    request: &HeaderMap,
    status: StatusCode,
    response: &HeaderMap,
    ttl: Duration,
    now: i64,
) -> Result<Freshness, &'static str> {
    if method != Method::GET {
        return Err("method");
    }
    if !STORABLE.contains(&status.as_u16()) {
        return Err("status");
    }
    let asked = directives(request);
    if asked.no_store {
        return Err("request no-store");
    }
    let d = directives(response);
    if d.no_store {
        return Err("no-store");
    }
    if d.private {
        return Err("private");
    }
    if response.contains_key(header::SET_COOKIE) {
        return Err("set-cookie");
    }
    if request.contains_key(header::AUTHORIZATION)
        && !(d.public || d.s_maxage.is_some() || d.must_revalidate)
    {
        return Err("authorization");
    }
    if vary_names(response).iter().any(|n| n == "*") {
        return Err("vary *");
    }
    let lifetime = if d.no_cache {
        0
    } else if let Some(s) = d.s_maxage {
        s
    } else if let Some(s) = d.max_age {
        s
    } else if let Some(expires) = response.get(header::EXPIRES) {
        // An invalid Expires is a time in the past (RFC 9111, 5.3).
        let expires = http_date(expires).unwrap_or(0);
        let date = response
            .get(header::DATE)
            .and_then(http_date)
            .unwrap_or(now);
        (expires - date).max(0) as u64
    } else {
        ttl.as_secs()
    };
    let validator =
        response.contains_key(header::ETAG) || response.contains_key(header::LAST_MODIFIED);
    if lifetime == 0 && !validator {
        return Err("no freshness");
    }
    Ok(Freshness {
        lifetime,
        must_revalidate: d.must_revalidate || d.s_maxage.is_some() || d.no_cache,
    })
}

/// The names a response varies on, lower-cased.
pub fn vary_names(response: &HeaderMap) -> Vec<String> {
    let mut names = Vec::new();
    for value in response.get_all(header::VARY) {
        for name in value.to_str().unwrap_or("*").split(',') {
            let name = name.trim().to_ascii_lowercase();
            if !name.is_empty() && !names.contains(&name) {
                names.push(name);
            }
        }
    }
    names
}

pub fn http_date(value: &http::HeaderValue) -> Option<i64> {
    let t = httpdate::parse_http_date(value.to_str().ok()?).ok()?;
    Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs() as i64)
}

/// The age of a response when it arrived (RFC 9111, 4.2.3): its `Age`, plus the time it
/// took, or how old its `Date` says it is, whichever is more.
pub fn initial_age(response: &HeaderMap, request_time: i64, response_time: i64) -> i64 {
    let age = response
        .get(header::AGE)
        .and_then(|v| v.to_str().ok()?.trim().parse::<i64>().ok())
        .unwrap_or(0)
        .max(0);
    let date = response.get(header::DATE).and_then(http_date);
    let apparent = date.map_or(0, |d| (response_time - d).max(0));
    let corrected = age + (response_time - request_time).max(0);
    apparent.max(corrected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn decide(
        req: &[(&str, &str)],
        status: u16,
        resp: &[(&str, &str)],
    ) -> Result<u64, &'static str> {
        storable(
            &Method::GET,
            &headers(req),
            StatusCode::from_u16(status).unwrap(),
            &headers(resp),
            Duration::from_secs(10),
            1_000_000,
        )
        .map(|f| f.lifetime)
    }

    #[test]
    fn what_a_shared_cache_stores_and_for_how_long() {
        assert_eq!(
            decide(&[], 200, &[]),
            Ok(10),
            "ttl when the response says nothing"
        );
        assert_eq!(decide(&[], 200, &[("cache-control", "max-age=60")]), Ok(60));
        assert_eq!(
            decide(&[], 200, &[("cache-control", "max-age=60, s-maxage=5")]),
            Ok(5),
            "s-maxage first in a shared cache"
        );
        assert_eq!(
            decide(&[], 404, &[("cache-control", "MAX-AGE=\"7\"")]),
            Ok(7)
        );
        assert_eq!(
            decide(
                &[],
                200,
                &[
                    ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
                    ("expires", "Sun, 06 Nov 1994 08:50:37 GMT")
                ]
            ),
            Ok(60)
        );
        assert_eq!(decide(&[], 200, &[("expires", "0")]), Err("no freshness"));
        assert_eq!(
            decide(&[], 500, &[("cache-control", "max-age=60")]),
            Err("status")
        );
        assert_eq!(decide(&[], 206, &[]), Err("status"));
        assert_eq!(
            decide(&[], 200, &[("cache-control", "no-store")]),
            Err("no-store")
        );
        assert_eq!(
            decide(&[], 200, &[("cache-control", "private, max-age=9")]),
            Err("private")
        );
        assert_eq!(
            decide(&[], 200, &[("set-cookie", "a=1")]),
            Err("set-cookie")
        );
        assert_eq!(
            decide(&[("cache-control", "no-store")], 200, &[]),
            Err("request no-store")
        );
        assert_eq!(
            decide(&[("authorization", "Basic x")], 200, &[]),
            Err("authorization")
        );
        assert_eq!(
            decide(
                &[("authorization", "Basic x")],
                200,
                &[("cache-control", "public, max-age=3")]
            ),
            Ok(3)
        );
        assert_eq!(
            decide(&[], 200, &[("vary", "Accept-Encoding, *")]),
            Err("vary *")
        );
        assert_eq!(
            decide(
                &[],
                200,
                &[("cache-control", "no-cache"), ("etag", "\"a\"")]
            ),
            Ok(0)
        );
        assert_eq!(
            decide(&[], 200, &[("cache-control", "no-cache")]),
            Err("no freshness")
        );
        let post = storable(
            &Method::POST,
            &HeaderMap::new(),
            StatusCode::OK,
            &HeaderMap::new(),
            Duration::from_secs(9),
            0,
        );
        assert_eq!(post, Err("method"));
    }

    #[test]
    fn age_counts_the_upstreams_age_and_the_trip() {
        let h = headers(&[("age", "5"), ("date", "Sun, 06 Nov 1994 08:49:37 GMT")]);
        let date = 784111777;
        assert_eq!(initial_age(&h, date, date + 2), 7);
        assert_eq!(
            initial_age(&h, date + 19, date + 20),
            20,
            "the Date says older"
        );
        assert_eq!(initial_age(&HeaderMap::new(), 100, 100), 0);
    }

    proptest! {
        /// Any Cache-Control text: no panic.
        #[test]
        fn fuzz_cache_control(raw in "[ -~]{0,120}") {
            if let Ok(value) = http::HeaderValue::from_str(&raw) {
                let mut h = HeaderMap::new();
                h.insert(header::CACHE_CONTROL, value);
                let _ = directives(&h);
                let _ = storable(&Method::GET, &HeaderMap::new(), StatusCode::OK, &h, Duration::from_secs(1), 0);
            }
        }
    }
}
