//! The route stage: host, path, method and headers to the route that takes the request.
//!
//! Hosts are tried from the most to the least specific (exact name, then the longest
//! `*.suffix` that matches, then `*`). Within a host, `path_regex` routes are tried first
//! in file order, then prefix routes from the longest prefix (with `methods` or `headers`
//! before without); the first whose path, methods and headers match takes the request.
//! No match is a 404, or a 405 when only the method kept routes from matching.

use super::failure::Failure;
use crate::config::RouteConfig;
use http::header::{self, HeaderValue};
use std::collections::HashMap;

/// The routes of a configuration, and for each listener the router that picks among
/// the routes it takes.
pub struct RouteTable {
    routers: Vec<Router>,
    routes: Vec<RouteConfig>,
    /// Each route's `root`, opened once: files are opened beneath it.
    roots: Vec<Option<std::fs::File>>,
}

/// What routing found for a request.
pub struct Routed<'a> {
    pub route: &'a RouteConfig,
    /// Its place in the config's routes.
    pub index: usize,
    /// Its root directory, opened (routes with `root`).
    pub root: Option<&'a std::fs::File>,
    /// The host the request named (Host, or `:authority` in HTTP/2), as sent.
    pub host: Option<HeaderValue>,
}

impl RouteTable {
    pub fn new(routes: &[RouteConfig], listeners: usize) -> Self {
        let roots = routes
            .iter()
            .map(|r| match &r.action {
                crate::config::RouteAction::Files(files) => std::fs::File::open(&files.root).ok(),
                _ => None,
            })
            .collect();
        RouteTable {
            routers: (0..listeners.max(1))
                .map(|l| Router::new(routes, |r| r.on_listener(l)))
                .collect(),
            routes: routes.to_vec(),
            roots,
        }
    }

    /// The stage: the route for the request's host and (normalized) path among those of
    /// the listener it came in on; none is a 404.
    pub fn route(
        &self,
        head: &http::request::Parts,
        listener: usize,
    ) -> Result<Routed<'_>, Failure> {
        let host = request_host(head);
        let name = host_without_port(
            host.as_ref()
                .and_then(|h| h.to_str().ok())
                .unwrap_or_default(),
        );
        let router = self.routers.get(listener).unwrap_or(&self.routers[0]);
        let index = match router.route(&self.routes, name, head) {
            Found::Route(index) => index,
            Found::MethodNotAllowed(methods) => {
                return Err(Failure::MethodNotAllowed(allow_value(&methods)))
            }
            Found::None => return Err(Failure::NoRoute),
        };
        Ok(Routed {
            index,
            route: &self.routes[index],
            root: self.roots[index].as_ref(),
            host,
        })
    }
}

/// An `Allow` value: the methods, with `HEAD` wherever `GET` is (it is answered as GET).
fn allow_value(methods: &[http::Method]) -> HeaderValue {
    let mut names: Vec<&str> = methods.iter().map(http::Method::as_str).collect();
    if names.contains(&"GET") && !names.contains(&"HEAD") {
        names.push("HEAD");
    }
    HeaderValue::from_str(&names.join(", ")).unwrap_or(HeaderValue::from_static("GET"))
}

/// The host a request names: HTTP/2 says it in `:authority` (the URI), HTTP/1 in Host.
pub fn request_host(head: &http::request::Parts) -> Option<HeaderValue> {
    head.headers.get(header::HOST).cloned().or_else(|| {
        let authority = head.uri.authority()?;
        HeaderValue::from_str(authority.as_str()).ok()
    })
}

/// The routes of one host, in the order they are tried: `path_regex` routes in file
/// order, then prefix routes from the longest prefix, those with `methods` or `headers`
/// before those without, else in file order.
#[derive(Default)]
struct HostRoutes(Vec<usize>);

impl HostRoutes {
    fn add(&mut self, index: usize, routes: &[RouteConfig]) {
        self.0.push(index);
        // Stable: file order decides among equals.
        self.0.sort_by_key(|&i| {
            let r = &routes[i];
            match r.matching.path_regex {
                Some(_) => (0, 0, 0),
                None => (
                    1,
                    usize::MAX - r.path_prefix.len(),
                    usize::from(!r.matching.has_conditions()),
                ),
            }
        });
    }
}

/// What the router found.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    Route(usize),
    /// Routes match the path (and headers) but not the method: these methods would do.
    MethodNotAllowed(Vec<http::Method>),
    None,
}

#[derive(Default)]
struct Router {
    exact: HashMap<String, HostRoutes>,
    /// `(".example.com", routes)`, longest suffix first.
    wildcard: Vec<(String, HostRoutes)>,
    any: HostRoutes,
}

impl Router {
    /// The router for the `routes` that `takes`; [`Router::route`] answers with an index
    /// into them.
    pub fn new(routes: &[RouteConfig], takes: impl Fn(&RouteConfig) -> bool) -> Self {
        let mut router = Router::default();
        for (index, r) in routes.iter().enumerate().filter(|(_, r)| takes(r)) {
            if r.host == "*" {
                router.any.add(index, routes);
            } else if let Some(suffix) = r.host.strip_prefix('*') {
                match router.wildcard.iter_mut().find(|(s, _)| s == suffix) {
                    Some((_, table)) => table.add(index, routes),
                    None => {
                        let mut table = HostRoutes::default();
                        table.add(index, routes);
                        router.wildcard.push((suffix.to_string(), table));
                    }
                }
            } else {
                router
                    .exact
                    .entry(r.host.clone())
                    .or_default()
                    .add(index, routes);
            }
        }
        router
            .wildcard
            .sort_by_key(|w| std::cmp::Reverse(w.0.len()));
        router
    }

    /// `host` without port, matched without regard to case; the path normalized.
    pub fn route(&self, routes: &[RouteConfig], host: &str, head: &http::request::Parts) -> Found {
        let lower;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = host.to_ascii_lowercase();
            lower.as_str()
        } else {
            host
        };
        let host = host.strip_suffix('.').unwrap_or(host);
        let path = head.uri.path();
        let mut allowed = Vec::new();
        let tables = self
            .exact
            .get(host)
            .into_iter()
            .chain(self.wildcard.iter().filter_map(|(suffix, table)| {
                (host.len() > suffix.len() && host.ends_with(suffix.as_str())).then_some(table)
            }))
            .chain(std::iter::once(&self.any));
        for table in tables {
            for &index in &table.0 {
                let r = &routes[index];
                let path_matches = match &r.matching.path_regex {
                    Some(re) => re.is_match(path),
                    None => path.starts_with(r.path_prefix.as_str()),
                };
                if !path_matches || !r.matching.headers_match(head) {
                    continue;
                }
                if r.matching.method_matches(&head.method) {
                    return Found::Route(index);
                }
                for m in &r.matching.methods {
                    if !allowed.contains(m) {
                        allowed.push(m.clone());
                    }
                }
            }
        }
        if allowed.is_empty() {
            Found::None
        } else {
            Found::MethodNotAllowed(allowed)
        }
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

    fn config(host: &str, path: &str) -> RouteConfig {
        let mut matching = crate::config::RouteMatch::default();
        let path_prefix = match path.strip_prefix('~') {
            Some(pattern) => {
                matching.path_regex = Some(regex::Regex::new(pattern).unwrap());
                "/".to_string()
            }
            None => path.to_string(),
        };
        RouteConfig {
            host: host.into(),
            path_prefix,
            action: crate::config::RouteAction::Forward(0),
            rewrite_prefix: None,
            request_headers: Vec::new(),
            remove_request_headers: Vec::new(),
            response_headers: Vec::new(),
            remove_response_headers: Vec::new(),
            max_body_size: None,
            compression: true,
            matching,
            access: Default::default(),
            error_pages: Vec::new(),
            rate_limit: None,
            cache: None,
            listeners: None,
        }
    }

    /// Routes as (host, prefix or `~regex`, upstream); `route` answers with the upstream.
    struct Routes(Router, Vec<RouteConfig>, Vec<usize>);

    impl Routes {
        fn new(configs: Vec<RouteConfig>, upstreams: Vec<usize>) -> Self {
            Routes(Router::new(&configs, |_| true), configs, upstreams)
        }

        fn found(&self, method: &str, host: &str, path: &str, headers: &[(&str, &str)]) -> Found {
            let mut b = http::Request::builder().method(method).uri(path);
            for (n, v) in headers {
                b = b.header(*n, *v);
            }
            let head = b.body(()).unwrap().into_parts().0;
            match self.0.route(&self.1, host, &head) {
                Found::Route(i) => Found::Route(self.2[i]),
                other => other,
            }
        }

        fn route(&self, host: &str, path: &str) -> Option<usize> {
            match self.found("GET", host, path, &[]) {
                Found::Route(u) => Some(u),
                _ => None,
            }
        }
    }

    fn router(routes: &[(&str, &str, usize)]) -> Routes {
        Routes::new(
            routes.iter().map(|&(h, p, _)| config(h, p)).collect(),
            routes.iter().map(|r| r.2).collect(),
        )
    }

    #[test]
    fn regex_routes_come_first_in_file_order() {
        let r = router(&[
            ("*", "/api/v2", 0),
            ("*", "~^/api/v[0-9]+/", 1),
            ("*", "~\\.php$", 2),
            ("*", "/", 3),
        ]);
        assert_eq!(r.route("a", "/api/v2/x"), Some(1));
        assert_eq!(r.route("a", "/api/v2"), Some(0));
        assert_eq!(r.route("a", "/x.php"), Some(2));
        assert_eq!(r.route("a", "/api/v1/x.php"), Some(1));
        assert_eq!(r.route("a", "/other"), Some(3));
    }

    #[test]
    fn methods_and_headers_pick_among_routes_on_one_prefix() {
        let mut get_only = config("*", "/api");
        get_only.matching.methods = vec![http::Method::GET];
        let mut canary = config("*", "/api");
        canary.matching.headers = vec![(
            http::HeaderName::from_static("x-canary"),
            HeaderValue::from_static("1"),
        )];
        let plain = config("*", "/api");
        let mut post_only = config("*", "/form");
        post_only.matching.methods = vec![http::Method::POST, http::Method::PUT];
        let r = Routes::new(vec![plain, get_only, canary, post_only], vec![0, 1, 2, 3]);
        assert_eq!(r.found("GET", "a", "/api/x", &[]), Found::Route(1));
        assert_eq!(r.found("HEAD", "a", "/api/x", &[]), Found::Route(1));
        assert_eq!(r.found("POST", "a", "/api/x", &[]), Found::Route(0));
        assert_eq!(
            r.found("POST", "a", "/api/x", &[("x-canary", "1")]),
            Found::Route(2)
        );
        assert_eq!(
            r.found("GET", "a", "/api/x", &[("x-canary", "1")]),
            Found::Route(1)
        );
        assert_eq!(
            r.found("GET", "a", "/form", &[]),
            Found::MethodNotAllowed(vec![http::Method::POST, http::Method::PUT])
        );
        assert_eq!(r.found("PUT", "a", "/form", &[]), Found::Route(3));
        assert_eq!(r.found("GET", "a", "/nothing", &[]), Found::None);
        assert_eq!(allow_value(&[http::Method::GET]), "GET, HEAD");
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
