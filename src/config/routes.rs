//! `[[route]]`: which requests go where (host and path prefix), and what is changed on
//! the way.

use super::access::AccessList;
use super::limits::{RateLimit, MAX_LIMITED_ROUTES};
use super::matching::RouteMatch;
use super::{file, Validator};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use toml::Spanned;

#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Lowercase; `*`, `*.suffix` or an exact name.
    pub host: String,
    pub path_prefix: String,
    pub action: RouteAction,
    /// Replaces `path_prefix` in the forwarded path.
    pub rewrite_prefix: Option<String>,
    /// Set on the request to the upstream (after the removals).
    pub request_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    pub remove_request_headers: Vec<http::HeaderName>,
    /// Set on the upstream's response to the client (after the removals).
    pub response_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    pub remove_response_headers: Vec<http::HeaderName>,
    /// Overrides `gateway.max_body_size` for this route.
    pub max_body_size: Option<u64>,
    /// `false`: this route's responses are never compressed.
    pub compression: bool,
    /// `path_regex`, `methods`, `headers`.
    pub matching: RouteMatch,
    /// `allow` and `deny`.
    pub access: AccessList,
    /// Answers for the gateway's own (and the upstream's) 502, 503 and 504.
    pub error_pages: Vec<(http::StatusCode, ErrorPage)>,
    pub rate_limit: Option<RateLimit>,
    /// Its upstream's responses are cached.
    pub cache: Option<super::RouteCache>,
    /// The listeners (indices into the config's) whose requests it takes; all: `None`.
    pub listeners: Option<Vec<usize>>,
}

impl RouteConfig {
    /// Whether the route takes requests that came in on listener `index`.
    pub fn on_listener(&self, index: usize) -> bool {
        self.listeners.as_ref().is_none_or(|l| l.contains(&index))
    }
}

/// A file answered in place of an error, read when the config is loaded.
#[derive(Debug, Clone)]
pub struct ErrorPage {
    pub body: bytes::Bytes,
    pub content_type: http::HeaderValue,
}

/// The statuses `error_pages` may replace.
const ERROR_PAGE_STATUSES: [u16; 3] = [502, 503, 504];
/// The largest error page: it is held in memory by every worker.
const MAX_ERROR_PAGE: u64 = 1 << 20;

/// What a route does with the requests it matches.
#[derive(Debug, Clone)]
pub enum RouteAction {
    /// Sends them to the upstream at this index of [`Config::upstreams`].
    Forward(usize),
    /// Answers them itself with a redirect.
    Redirect(Redirect),
    /// Serves them from a directory.
    Files(Files),
}

/// `root` and what goes with it.
#[derive(Debug, Clone)]
pub struct Files {
    /// The directory, with every symbolic link resolved: nothing outside it is served.
    pub root: PathBuf,
    /// What a directory serves.
    pub index: String,
    pub fallback: Fallback,
    pub cache_control: Option<http::HeaderValue>,
}

/// What a request for a file that does not exist gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    NotFound,
    /// The root's index (a single-page app's `index.html`).
    Index,
    /// Forwarded to the upstream at this index of [`super::Config::upstreams`].
    Upstream(usize),
}

/// `index` when not given.
pub const DEFAULT_INDEX: &str = "index.html";

impl Validator<'_> {
    /// The files of a route with `root`.
    fn files(
        &mut self,
        r: &file::RouteSection,
        root: &Spanned<String>,
        upstream: Option<usize>,
        base: &Path,
        key: &dyn Fn(&str) -> String,
    ) -> Files {
        let dir = base.join(root.get_ref());
        let root_path = match std::fs::canonicalize(&dir) {
            Ok(path) if path.is_dir() => path,
            Ok(_) => {
                self.error(
                    root.span(),
                    &key("root"),
                    format!("{} is not a directory", dir.display()),
                );
                dir
            }
            Err(e) => {
                self.error(
                    root.span(),
                    &key("root"),
                    format!("cannot read {}: {e}", dir.display()),
                );
                dir
            }
        };
        let index = match &r.index {
            None => DEFAULT_INDEX.to_string(),
            Some(i)
                if !i.get_ref().is_empty()
                    && !i.get_ref().contains('/')
                    && !i.get_ref().starts_with('.') =>
            {
                i.get_ref().clone()
            }
            Some(i) => {
                self.error(
                    i.span(),
                    &key("index"),
                    "must be a file name (no /, not starting with .)",
                );
                DEFAULT_INDEX.to_string()
            }
        };
        let fallback = match r.fallback.as_ref().map(|f| (f, f.get_ref().as_str())) {
            None | Some((_, "404")) => Fallback::NotFound,
            Some((_, "index")) => Fallback::Index,
            Some((f, "upstream")) => match upstream {
                Some(u) => Fallback::Upstream(u),
                None => {
                    if r.upstream.is_none() {
                        self.error(
                            f.span(),
                            &key("fallback"),
                            "fallback = \"upstream\" needs upstream",
                        );
                    }
                    Fallback::NotFound
                }
            },
            Some((f, other)) => {
                self.error(
                    f.span(),
                    &key("fallback"),
                    format!(
                        "unknown fallback {other:?} (expected \"upstream\", \"index\" or \"404\")"
                    ),
                );
                Fallback::NotFound
            }
        };
        if fallback != Fallback::Upstream(upstream.unwrap_or(usize::MAX)) {
            if let Some(u) = &r.upstream {
                self.error(
                    u.span(),
                    &key("upstream"),
                    "with root, only used with fallback = \"upstream\"",
                );
            }
        }
        let cache_control =
            r.cache_control
                .as_ref()
                .and_then(|c| match http::HeaderValue::from_str(c.get_ref()) {
                    Ok(v) => Some(v),
                    Err(_) => {
                        self.error(c.span(), &key("cache_control"), "not a header value");
                        None
                    }
                });
        Files {
            root: root_path,
            index,
            fallback,
            cache_control,
        }
    }
}

/// A route answered by the gateway itself.
#[derive(Debug, Clone)]
pub struct Redirect {
    /// `Location`, with `{host}` (the request's host without port) and `{uri}` (path and
    /// query) filled in per request.
    pub location: String,
    pub status: http::StatusCode,
}

impl Validator<'_> {
    /// The `[[route]]` sections; `upstreams` are the names routes may send to, in the
    /// order of [`super::Config::upstreams`].
    pub(super) fn routes(
        &mut self,
        raw: &[Spanned<file::RouteSection>],
        upstreams: &BTreeMap<Spanned<String>, Spanned<file::UpstreamSection>>,
        base: &Path,
        redis: bool,
        cache: bool,
        listeners: &[super::ListenerConfig],
    ) -> Vec<RouteConfig> {
        let mut routes = Vec::new();
        if raw.is_empty() {
            self.error(0..0, "route", "at least one [[route]] is needed");
        }
        for (i, r) in raw.iter().enumerate() {
            let r = r.get_ref();
            let host = match &r.host {
                None => "*".to_string(),
                Some(h) => {
                    let host = h.get_ref().to_ascii_lowercase();
                    if !valid_route_host(&host) {
                        self.error(
                            h.span(),
                            &format!("route[{i}].host"),
                            format!("{host:?} is not \"*\", \"*.domain\" or a host name"),
                        );
                    }
                    host
                }
            };
            let path_prefix = match &r.path_prefix {
                None => "/".to_string(),
                Some(p) => {
                    if !p.get_ref().starts_with('/') {
                        self.error(
                            p.span(),
                            &format!("route[{i}].path_prefix"),
                            "must start with \"/\"",
                        );
                    }
                    p.get_ref().clone()
                }
            };
            let span = raw[i].span();
            let key = |k: &str| format!("route[{i}].{k}");
            let matching = self.route_match(r, i);
            let on = r.listener.as_ref().map(|names| {
                if names.get_ref().is_empty() {
                    self.error(
                        names.span(),
                        &key("listener"),
                        "name at least one listener (without the key: every listener)",
                    );
                }
                let mut on = Vec::new();
                for name in names.get_ref() {
                    match listeners.iter().position(|l| l.name.as_ref() == Some(name)) {
                        Some(index) => on.push(index),
                        None => self.error(
                            names.span(),
                            &key("listener"),
                            format!("no listener is called {name:?} (give a [[listener]] name = {name:?})"),
                        ),
                    }
                }
                on
            });
            let share_listeners = |o: &RouteConfig| match (&o.listeners, &on) {
                (Some(a), Some(b)) => a.iter().any(|l| b.contains(l)),
                _ => true,
            };
            let pattern = |m: &RouteMatch| m.path_regex.as_ref().map(|re| re.as_str().to_string());
            if routes.iter().any(|o: &RouteConfig| {
                share_listeners(o)
                    && o.host == host
                    && o.path_prefix == path_prefix
                    && pattern(&o.matching) == pattern(&matching)
                    && o.matching.methods == matching.methods
                    && o.matching.headers == matching.headers
            }) {
                let path = match &matching.path_regex {
                    Some(re) => format!("path_regex {:?}", re.as_str()),
                    None => format!("path_prefix {path_prefix:?}"),
                };
                self.error(
                    span.clone(),
                    &format!("route[{i}]"),
                    format!(
                        "another route already has host {host:?}, {path} and the same methods and headers (on a listener they share)"
                    ),
                );
            }
            let upstream = match &r.upstream {
                Some(name) => {
                    let found = upstreams.keys().position(|k| k.get_ref() == name.get_ref());
                    if found.is_none() {
                        let name = name.get_ref();
                        self.error(
                            r.upstream.as_ref().expect("some").span(),
                            &key("upstream"),
                            format!("upstream {name:?} is not defined (add [upstream.{name}])"),
                        );
                    }
                    found
                }
                None => None,
            };
            let redirect = r.redirect.as_ref().map(|location| {
                let status = match &r.redirect_status {
                    None => http::StatusCode::FOUND,
                    Some(s) if [301, 302, 307, 308].contains(s.get_ref()) => {
                        http::StatusCode::from_u16(*s.get_ref()).expect("a redirect status")
                    }
                    Some(s) => {
                        self.error(
                            s.span(),
                            &key("redirect_status"),
                            "must be 301, 302, 307 or 308",
                        );
                        http::StatusCode::FOUND
                    }
                };
                Redirect {
                    location: location.get_ref().clone(),
                    status,
                }
            });
            let files = r
                .root
                .as_ref()
                .map(|root| self.files(r, root, upstream, base, &key));
            match (&r.upstream, &r.redirect) {
                (Some(_), Some(redirect)) => self.error(
                    redirect.span(),
                    &key("redirect"),
                    "a route has an upstream or a redirect, not both",
                ),
                (None, None) if r.root.is_none() => self.error(
                    span.clone(),
                    &key("upstream"),
                    "required (or a redirect, or root)",
                ),
                _ => {}
            }
            if let (Some(_), Some(redirect)) = (&r.root, &r.redirect) {
                self.error(
                    redirect.span(),
                    &key("redirect"),
                    "a route serves files (root) or redirects, not both",
                );
            }
            if r.root.is_none() {
                for (given, name) in [
                    (r.index.as_ref().map(|v| v.span()), "index"),
                    (r.fallback.as_ref().map(|v| v.span()), "fallback"),
                    (r.cache_control.as_ref().map(|v| v.span()), "cache_control"),
                ] {
                    if let Some(span) = given {
                        self.error(span, &key(name), "only used with root");
                    }
                }
            }
            if r.redirect.is_none() {
                if let Some(s) = &r.redirect_status {
                    self.error(s.span(), &key("redirect_status"), "only used with redirect");
                }
            }
            let rewrite_prefix = r.rewrite_prefix.as_ref().map(|p| {
                if !p.get_ref().starts_with('/') {
                    self.error(p.span(), &key("rewrite_prefix"), "must start with \"/\"");
                }
                if r.path_regex.is_some() {
                    self.error(
                        p.span(),
                        &key("rewrite_prefix"),
                        "only used with path_prefix",
                    );
                }
                p.get_ref().clone()
            });
            let access = AccessList {
                allow: self.cidr_list(&r.allow, &key("allow")),
                deny: self.cidr_list(&r.deny, &key("deny")),
            };
            let error_pages = self.error_pages(&r.error_pages, base, &key("error_pages"));
            let rate_limit = r
                .rate_limit
                .as_ref()
                .and_then(|l| self.rate_limit(l, i, redis));
            if rate_limit.is_some()
                && routes.iter().filter(|o| o.rate_limit.is_some()).count() == MAX_LIMITED_ROUTES
            {
                self.error(
                    r.rate_limit.as_ref().expect("some").span(),
                    &key("rate_limit"),
                    format!("at most {MAX_LIMITED_ROUTES} routes may have a rate limit"),
                );
            }
            let route_cache = r.cache.as_ref().map(|c| {
                if !cache {
                    self.error(c.span(), &key("cache"), "needs a [cache] table");
                }
                if r.upstream.is_none() {
                    self.error(c.span(), &key("cache"), "only for a route with an upstream");
                }
                if routes.iter().filter(|o| o.cache.is_some()).count()
                    == crate::table::CACHED_ROUTES
                {
                    let message = format!(
                        "at most {} routes may have a cache",
                        crate::table::CACHED_ROUTES
                    );
                    self.error(c.span(), &key("cache"), message);
                }
                self.route_cache(c.get_ref(), &key("cache"))
            });
            let route = RouteConfig {
                cache: route_cache,
                request_headers: self.header_table(&r.request_headers, &key("request_headers")),
                remove_request_headers: self
                    .header_names(&r.remove_request_headers, &key("remove_request_headers")),
                response_headers: self.header_table(&r.response_headers, &key("response_headers")),
                remove_response_headers: self
                    .header_names(&r.remove_response_headers, &key("remove_response_headers")),
                max_body_size: self.size(&r.max_body_size, &key("max_body_size")),
                host,
                path_prefix,
                // Without any, an error is reported above and the config not used.
                action: match (redirect, files) {
                    (Some(redirect), _) => RouteAction::Redirect(redirect),
                    (None, Some(files)) => RouteAction::Files(files),
                    (None, None) => RouteAction::Forward(upstream.unwrap_or_default()),
                },
                compression: r.compression.unwrap_or(true),
                rewrite_prefix,
                matching,
                access,
                error_pages,
                rate_limit,
                listeners: on,
            };
            routes.push(route);
        }
        self.warn_shadowed(raw, &routes);
        routes
    }

    /// Warns about prefix routes an earlier-tried regex route seems to take every request
    /// of: a regex without `methods` or `headers`, on the same host, that matches every
    /// probe path under the prefix. "Seems": a regex cannot be compared with a prefix in
    /// general, so this is a warning, never an error.
    fn warn_shadowed(&mut self, raw: &[Spanned<file::RouteSection>], routes: &[RouteConfig]) {
        for (j, later) in routes.iter().enumerate() {
            if later.matching.path_regex.is_some() {
                continue;
            }
            let p = later.path_prefix.as_str();
            let probes = [
                p.to_string(),
                format!("{p}a"),
                format!("{p}index.html"),
                format!("{p}Z9/_-.~x/y.json"),
            ];
            let shadow = routes.iter().enumerate().find(|(_, r)| {
                r.host == later.host
                    && !r.matching.has_conditions()
                    && r.matching
                        .path_regex
                        .as_ref()
                        .is_some_and(|re| probes.iter().all(|probe| re.is_match(probe)))
            });
            if let Some((i, r)) = shadow {
                let at = self.place(raw[j].span(), &format!("route[{j}]"));
                let pattern = r.matching.path_regex.as_ref().map_or("", |re| re.as_str());
                self.warnings.push(format!(
                    "{at}: path_prefix {p:?} may never match: route[{i}]'s path_regex {pattern:?} \
                     is tried first and takes every path under it"
                ));
            }
        }
    }
}

impl Validator<'_> {
    /// `error_pages`: each status one of 502, 503, 504, each file read now (relative to
    /// the config file) so a missing one is an error here and not at the first outage.
    fn error_pages(
        &mut self,
        table: &Option<Spanned<BTreeMap<String, String>>>,
        base: &Path,
        key: &str,
    ) -> Vec<(http::StatusCode, ErrorPage)> {
        let mut pages = Vec::new();
        let Some(table) = table else { return pages };
        for (status, file) in table.get_ref() {
            let code = match status.parse::<u16>() {
                Ok(code) if ERROR_PAGE_STATUSES.contains(&code) => code,
                _ => {
                    self.error(
                        table.span(),
                        key,
                        format!("{status:?}: only 502, 503 and 504 have error pages"),
                    );
                    continue;
                }
            };
            let path = base.join(file);
            let read = std::fs::metadata(&path).and_then(|meta| {
                if meta.len() > MAX_ERROR_PAGE {
                    return Err(std::io::Error::other("larger than 1 MiB"));
                }
                std::fs::read(&path)
            });
            match read {
                Ok(body) => pages.push((
                    http::StatusCode::from_u16(code).expect("a status"),
                    ErrorPage {
                        body: body.into(),
                        content_type: http::HeaderValue::from_static(
                            mime_guess::from_path(&path)
                                .first_raw()
                                .unwrap_or("application/octet-stream"),
                        ),
                    },
                )),
                Err(e) => self.error(
                    table.span(),
                    key,
                    format!("{status}: cannot read {}: {e}", path.display()),
                ),
            }
        }
        pages
    }
}

fn valid_route_host(host: &str) -> bool {
    let name = host.strip_prefix("*.").unwrap_or(host);
    host == "*"
        || (!name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_'))
}
