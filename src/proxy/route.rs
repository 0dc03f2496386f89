//! The route stage: host and path prefix to the route that takes the request.
//!
//! Hosts are tried from the most to the least specific (exact name, then the longest
//! `*.suffix` that matches, then `*`); within the first host that has a route whose prefix
//! matches the path, the longest such prefix wins. No match is a 404.

use super::failure::Failure;
use crate::config::RouteConfig;
use http::header::{self, HeaderValue};
use std::collections::HashMap;

/// The routes of a configuration, and the router that picks among them.
pub struct RouteTable {
    router: Router,
    routes: Vec<RouteConfig>,
    /// Each route's `root`, opened once: files are opened beneath it.
    roots: Vec<Option<std::fs::File>>,
}

/// What routing found for a request.
pub struct Routed<'a> {
    pub route: &'a RouteConfig,
    /// Its root directory, opened (routes with `root`).
    pub root: Option<&'a std::fs::File>,
    /// The host the request named (Host, or `:authority` in HTTP/2), as sent.
    pub host: Option<HeaderValue>,
}

impl RouteTable {
    pub fn new(routes: &[RouteConfig]) -> Self {
        let roots = routes
            .iter()
            .map(|r| match &r.action {
                crate::config::RouteAction::Files(files) => std::fs::File::open(&files.root).ok(),
                _ => None,
            })
            .collect();
        RouteTable {
            router: Router::new(routes),
            routes: routes.to_vec(),
            roots,
        }
    }

    /// The stage: the route for the request's host and (normalized) path; none is a 404.
    pub fn route(&self, head: &http::request::Parts) -> Result<Routed<'_>, Failure> {
        let host = request_host(head);
        let name = host_without_port(
            host.as_ref()
                .and_then(|h| h.to_str().ok())
                .unwrap_or_default(),
        );
        let index = self
            .router
            .route(name, head.uri.path())
            .ok_or(Failure::NoRoute)?;
        Ok(Routed {
            route: &self.routes[index],
            root: self.roots[index].as_ref(),
            host,
        })
    }
}

/// The host a request names: HTTP/2 says it in `:authority` (the URI), HTTP/1 in Host.
fn request_host(head: &http::request::Parts) -> Option<HeaderValue> {
    head.headers.get(header::HOST).cloned().or_else(|| {
        let authority = head.uri.authority()?;
        HeaderValue::from_str(authority.as_str()).ok()
    })
}

#[derive(Default)]
struct PrefixTable {
    /// Longest prefix first.
    routes: Vec<(String, usize)>,
}

impl PrefixTable {
    fn add(&mut self, prefix: &str, upstream: usize) {
        self.routes.push((prefix.to_string(), upstream));
        self.routes.sort_by_key(|r| std::cmp::Reverse(r.0.len()));
    }

    fn find(&self, path: &str) -> Option<usize> {
        self.routes
            .iter()
            .find(|(prefix, _)| path.starts_with(prefix.as_str()))
            .map(|&(_, upstream)| upstream)
    }
}

#[derive(Default)]
struct Router {
    exact: HashMap<String, PrefixTable>,
    /// `(".example.com", table)`, longest suffix first.
    wildcard: Vec<(String, PrefixTable)>,
    any: PrefixTable,
}

impl Router {
    /// The router for `routes`; [`Router::route`] answers with an index into them.
    pub fn new(routes: &[RouteConfig]) -> Self {
        let mut router = Router::default();
        for (index, r) in routes.iter().enumerate() {
            if r.host == "*" {
                router.any.add(&r.path_prefix, index);
            } else if let Some(suffix) = r.host.strip_prefix('*') {
                match router.wildcard.iter_mut().find(|(s, _)| s == suffix) {
                    Some((_, table)) => table.add(&r.path_prefix, index),
                    None => {
                        let mut table = PrefixTable::default();
                        table.add(&r.path_prefix, index);
                        router.wildcard.push((suffix.to_string(), table));
                    }
                }
            } else {
                router
                    .exact
                    .entry(r.host.clone())
                    .or_default()
                    .add(&r.path_prefix, index);
            }
        }
        router
            .wildcard
            .sort_by_key(|w| std::cmp::Reverse(w.0.len()));
        router
    }

    /// `host` without port; matched without regard to case.
    pub fn route(&self, host: &str, path: &str) -> Option<usize> {
        let lower;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = host.to_ascii_lowercase();
            lower.as_str()
        } else {
            host
        };
        let host = host.strip_suffix('.').unwrap_or(host);
        if let Some(upstream) = self.exact.get(host).and_then(|t| t.find(path)) {
            return Some(upstream);
        }
        for (suffix, table) in &self.wildcard {
            if host.len() > suffix.len() && host.ends_with(suffix.as_str()) {
                if let Some(upstream) = table.find(path) {
                    return Some(upstream);
                }
            }
        }
        self.any.find(path)
    }
}

/// The host part of a Host header value (`name`, `name:port`, `[v6]:port`).
pub fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .split_once(']')
            .map_or(host, |(v6, _)| &host[..v6.len() + 1]);
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Routes as (host, prefix, upstream); `route` answers with the upstream.
    struct Routes(Router, Vec<usize>);

    impl Routes {
        fn route(&self, host: &str, path: &str) -> Option<usize> {
            self.0.route(host, path).map(|i| self.1[i])
        }
    }

    fn router(routes: &[(&str, &str, usize)]) -> Routes {
        let configs: Vec<RouteConfig> = routes
            .iter()
            .map(|&(host, prefix, _)| RouteConfig {
                host: host.into(),
                path_prefix: prefix.into(),
                action: crate::config::RouteAction::Forward(0),
                rewrite_prefix: None,
                request_headers: Vec::new(),
                remove_request_headers: Vec::new(),
                response_headers: Vec::new(),
                remove_response_headers: Vec::new(),
                max_body_size: None,
                compression: true,
            })
            .collect();
        let upstreams = routes.iter().map(|r| r.2).collect();
        Routes(Router::new(&configs), upstreams)
    }

    #[test]
    fn exact_then_wildcard_then_any() {
        let r = router(&[
            ("*", "/", 0),
            ("api.example.com", "/", 1),
            ("*.example.com", "/", 2),
            ("*.eu.example.com", "/", 3),
        ]);
        assert_eq!(r.route("api.example.com", "/x"), Some(1));
        assert_eq!(r.route("API.Example.com", "/x"), Some(1));
        assert_eq!(r.route("www.example.com", "/x"), Some(2));
        assert_eq!(r.route("a.eu.example.com", "/x"), Some(3));
        assert_eq!(
            r.route("example.com", "/x"),
            Some(0),
            "*.example.com does not match the bare domain"
        );
        assert_eq!(r.route("other.org", "/"), Some(0));
    }

    #[test]
    fn longest_prefix_wins_and_no_match_is_none() {
        let r = router(&[
            ("a.com", "/", 0),
            ("a.com", "/api", 1),
            ("a.com", "/api/v2", 2),
            ("b.com", "/static", 3),
        ]);
        assert_eq!(r.route("a.com", "/"), Some(0));
        assert_eq!(r.route("a.com", "/api/x"), Some(1));
        assert_eq!(r.route("a.com", "/api/v2/x"), Some(2));
        assert_eq!(r.route("b.com", "/static/x.css"), Some(3));
        assert_eq!(r.route("b.com", "/"), None);
        assert_eq!(r.route("c.com", "/"), None);
    }

    #[test]
    fn a_host_without_a_matching_prefix_falls_through_to_less_specific_hosts() {
        let r = router(&[("a.com", "/admin", 1), ("*", "/", 0)]);
        assert_eq!(r.route("a.com", "/admin/x"), Some(1));
        assert_eq!(r.route("a.com", "/home"), Some(0));
    }

    #[test]
    fn ports_are_stripped() {
        assert_eq!(host_without_port("a.com:8080"), "a.com");
        assert_eq!(host_without_port("a.com"), "a.com");
        assert_eq!(host_without_port("[::1]:80"), "[::1]");
        assert_eq!(host_without_port("[::1]"), "[::1]");
    }
}
