//! The rate limit stage: a route's `rate_limit`, counted in the shared table so every
//! worker of the gateway shares one count per client key (see `table::rate`), or with
//! `scope = "global"` in Redis for every gateway (`global`), falling back to the table.

mod global;

use super::failure::Failure;
use super::ConnInfo;
use crate::config::{RateKey, RateLimit, RateScope, RedisConfig, RouteConfig};
use crate::table::rate::{RateRegion, Verdict};
use crate::table::WorkerShare;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use std::hash::Hasher;

/// The limited routes of a configuration, each with its region of the table.
pub struct Limits {
    /// By route index.
    routes: Vec<Option<RouteLimit>>,
    share: WorkerShare,
    hash_key: (u64, u64),
    /// Redis, when a route counts there.
    global: Option<global::Global>,
}

struct RouteLimit {
    region: &'static RateRegion,
    limit: RateLimit,
    /// Mixed into every key's hash: counts a region kept from another configuration's
    /// route are never read as this route's.
    route_id: u64,
}

/// What the count said of a request, for its `RateLimit-*` headers.
pub struct Counted {
    quota: u64,
    verdict: Verdict,
}

impl Limits {
    pub fn new(routes: &[RouteConfig], share: WorkerShare, redis: Option<&RedisConfig>) -> Self {
        let hash_key = share.rate_hash_key();
        let mut limited: Vec<Option<RouteLimit>> = routes.iter().map(|_| None).collect();
        for (index, region) in regions(routes) {
            let r = &routes[index];
            limited[index] = r.rate_limit.clone().map(|limit| RouteLimit {
                region: share.rate_region(region),
                limit,
                route_id: route_id(r),
            });
        }
        let routes = limited;
        let counts_globally = routes
            .iter()
            .flatten()
            .any(|r: &RouteLimit| r.limit.scope == RateScope::Global);
        let global = redis
            .filter(|_| counts_globally)
            .and_then(|r| global::Global::new(r, share.redis_down()));
        Limits {
            routes,
            share,
            hash_key,
            global,
        }
    }

    /// Counts the request against route `index`'s limit: `None` for a route without
    /// one, a `429` failure for a client over it.
    pub async fn check(
        &self,
        index: usize,
        conn: &ConnInfo,
        headers: &HeaderMap,
    ) -> Result<Option<Counted>, (Counted, Failure)> {
        let Some(route) = self.routes.get(index).and_then(Option::as_ref) else {
            return Ok(None);
        };
        let (interval, burst) = (route.limit.interval_us, u64::from(route.limit.burst));
        let mut verdict = None;
        if let (RateScope::Global, Some(global)) = (route.limit.scope, &self.global) {
            // Every gateway must name the key alike: an unkeyed hash.
            #[allow(deprecated)]
            let hash = route.key_hash(std::hash::SipHasher::new(), conn, headers);
            verdict = global.take(hash, interval, burst).await;
        }
        let verdict = match verdict {
            Some(v) => {
                if !v.allowed {
                    // Counted for /metrics where the table's refusals are.
                    route
                        .region
                        .refused
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                v
            }
            None => {
                #[allow(deprecated)] // SipHash with our own key: std has no other keyed hasher.
                let hasher = std::hash::SipHasher::new_with_keys(self.hash_key.0, self.hash_key.1);
                let hash = route.key_hash(hasher, conn, headers);
                route
                    .region
                    .take(hash, self.share.rate_clock(), interval, burst)
            }
        };
        let counted = Counted {
            quota: route.limit.quota(),
            verdict,
        };
        if verdict.allowed {
            Ok(Some(counted))
        } else {
            let retry_after = seconds_up(verdict.retry_after_us);
            Err((counted, Failure::RateLimited { retry_after }))
        }
    }

    /// Refusals of the limited routes, in the order of the config's routes (for /metrics).
    pub fn refused(
        routes: &[RouteConfig],
        region: impl Fn(usize) -> &'static RateRegion,
    ) -> Vec<(usize, u64)> {
        regions(routes)
            .map(|(index, n)| {
                let refused = region(n).refused.load(std::sync::atomic::Ordering::Relaxed);
                (index, refused)
            })
            .collect()
    }
}

/// Each limited route's index and its region of the table: the how-manyth route with a
/// limit it is.
fn regions(routes: &[RouteConfig]) -> impl Iterator<Item = (usize, usize)> + '_ {
    routes
        .iter()
        .enumerate()
        .filter(|(_, r)| r.rate_limit.is_some())
        .enumerate()
        .map(|(region, (index, _))| (index, region))
}

impl RouteLimit {
    /// The client's key for this route through `hasher`: the route, then what the client
    /// is counted by (its address, or a header's value; requests without the header
    /// share one count). Written straight into the hasher: no copy per request.
    fn key_hash(&self, mut hasher: impl Hasher, conn: &ConnInfo, headers: &HeaderMap) -> u64 {
        hasher.write_u64(self.route_id);
        match &self.limit.key {
            RateKey::ClientIp => match conn.client.ip().to_canonical() {
                std::net::IpAddr::V4(v4) => hasher.write(&v4.octets()),
                std::net::IpAddr::V6(v6) => hasher.write(&v6.octets()),
            },
            RateKey::Header(name) => {
                hasher.write_u8(0xff);
                if let Some(value) = headers.get(name) {
                    hasher.write(value.as_bytes());
                }
            }
        }
        hasher.finish()
    }
}

impl Counted {
    /// `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` (seconds until the
    /// quota is whole again), as the IETF draft and most APIs write them.
    pub fn add_headers(&self, headers: &mut HeaderMap) {
        let mut digits = itoa::Buffer::new();
        for (name, value) in [
            (&RATELIMIT_LIMIT, self.quota),
            (&RATELIMIT_REMAINING, self.verdict.remaining),
            (&RATELIMIT_RESET, seconds_up(self.verdict.reset_us)),
        ] {
            let value = HeaderValue::from_str(digits.format(value)).expect("digits");
            headers.insert(name.clone(), value);
        }
    }
}

static RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
static RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
static RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// Whole seconds, rounded up, at least 1 when not zero.
fn seconds_up(us: u64) -> u64 {
    us.div_ceil(1_000_000)
}

/// A route's identity across configurations: its host, path and conditions.
fn route_id(r: &RouteConfig) -> u64 {
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new();
    h.write(r.host.as_bytes());
    h.write_u8(0);
    h.write(r.path_prefix.as_bytes());
    h.write_u8(0);
    if let Some(re) = &r.matching.path_regex {
        h.write(re.as_str().as_bytes());
    }
    for m in &r.matching.methods {
        h.write(m.as_str().as_bytes());
    }
    for (n, v) in &r.matching.headers {
        h.write(n.as_str().as_bytes());
        h.write(v.as_bytes());
    }
    h.finish()
}
