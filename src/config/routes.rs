//! `[[route]]`: which requests go where (host and path prefix), and what is changed on
//! the way.

use super::{file, Validator};
use std::collections::BTreeMap;
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
}

/// What a route does with the requests it matches.
#[derive(Debug, Clone)]
pub enum RouteAction {
    /// Sends them to the upstream at this index of [`Config::upstreams`].
    Forward(usize),
    /// Answers them itself with a redirect.
    Redirect(Redirect),
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
            if routes
                .iter()
                .any(|o: &RouteConfig| o.host == host && o.path_prefix == path_prefix)
            {
                self.error(
                    span.clone(),
                    &format!("route[{i}]"),
                    format!(
                        "another route already has host {host:?} and path_prefix {path_prefix:?}"
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
            match (&r.upstream, &r.redirect) {
                (Some(_), Some(redirect)) => self.error(
                    redirect.span(),
                    &key("redirect"),
                    "a route has an upstream or a redirect, not both",
                ),
                (None, None) => {
                    self.error(span.clone(), &key("upstream"), "required (or a redirect)")
                }
                _ => {}
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
                p.get_ref().clone()
            });
            let route = RouteConfig {
                request_headers: self.header_table(&r.request_headers, &key("request_headers")),
                remove_request_headers: self
                    .header_names(&r.remove_request_headers, &key("remove_request_headers")),
                response_headers: self.header_table(&r.response_headers, &key("response_headers")),
                remove_response_headers: self
                    .header_names(&r.remove_response_headers, &key("remove_response_headers")),
                max_body_size: self.size(&r.max_body_size, &key("max_body_size")),
                host,
                path_prefix,
                // Without either, an error is reported above and the config not used.
                action: match redirect {
                    Some(redirect) => RouteAction::Redirect(redirect),
                    None => RouteAction::Forward(upstream.unwrap_or_default()),
                },
                rewrite_prefix,
            };
            routes.push(route);
        }

        routes
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
