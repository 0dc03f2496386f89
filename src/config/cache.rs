//! `[cache]`, where cached responses are kept, and a route's `cache`: for how long a
//! response without freshness of its own is fresh, and how stale ones may serve.

use super::{file, Validator};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `[cache]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    pub dir: PathBuf,
    /// Least recently used entries go once the entries take more.
    pub max_size: u64,
    /// Larger responses pass through and are not stored.
    pub max_object_size: u64,
}

/// A route's `cache`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteCache {
    /// Freshness of a response that gives none (no max-age, s-maxage or Expires).
    pub ttl: Duration,
    /// A stale entry serves when the upstream fails, for this long after it went stale.
    pub stale_if_error: Duration,
    /// A stale entry serves while one background request refreshes it.
    pub stale_while_revalidate: Duration,
}

impl Validator<'_> {
    pub(super) fn cache(&mut self, section: &file::CacheSection, base: &Path) -> CacheConfig {
        let dir = match &section.dir {
            Some(d) if !d.get_ref().trim().is_empty() => base.join(d.get_ref()),
            Some(d) => {
                self.error(d.span(), "cache.dir", "a directory");
                base.join("cache")
            }
            None => base.join("cache"),
        };
        let max_size = self
            .size(&section.max_size, "cache.max_size")
            .unwrap_or(1 << 30);
        let max_object_size = self
            .size(&section.max_object_size, "cache.max_object_size")
            .unwrap_or(64 << 20);
        if max_object_size > max_size {
            let span = section.max_object_size.as_ref().map_or(0..0, |s| s.span());
            self.error(span, "cache.max_object_size", "larger than max_size");
        }
        CacheConfig {
            dir,
            max_size,
            max_object_size,
        }
    }

    pub(super) fn route_cache(&mut self, c: &file::RouteCacheSection, key: &str) -> RouteCache {
        RouteCache {
            ttl: self.duration(&c.ttl, &format!("{key}.ttl"), Duration::ZERO),
            stale_if_error: self.duration(
                &c.stale_if_error,
                &format!("{key}.stale_if_error"),
                Duration::ZERO,
            ),
            stale_while_revalidate: self.duration(
                &c.stale_while_revalidate,
                &format!("{key}.stale_while_revalidate"),
                Duration::ZERO,
            ),
        }
    }
}
