//! What a route matches besides its host and path prefix: `path_regex`, `methods` and
//! `headers`.

use super::{file, Validator};
use http::{HeaderName, HeaderValue, Method};

/// A route's conditions on the request (all must hold).
#[derive(Debug, Clone, Default)]
pub struct RouteMatch {
    /// Matched against the whole (normalized) path, instead of the prefix.
    pub path_regex: Option<regex::Regex>,
    /// Empty: every method.
    pub methods: Vec<Method>,
    /// Each header must be present with this value (one of its values, if repeated).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// The most states a compiled `path_regex` may take: a pattern beyond it is refused at
/// load rather than slowing every request (`regex` is linear in the path, with a constant
/// that grows with the pattern).
const REGEX_SIZE_LIMIT: usize = 1 << 20;

impl RouteMatch {
    /// `GET` takes `HEAD` too, as in nginx's `limit_except`.
    pub fn method_matches(&self, method: &Method) -> bool {
        self.methods.is_empty()
            || self.methods.contains(method)
            || (method == Method::HEAD && self.methods.contains(&Method::GET))
    }

    pub fn headers_match(&self, head: &http::request::Parts) -> bool {
        self.headers
            .iter()
            .all(|(name, value)| head.headers.get_all(name).iter().any(|v| v == value))
    }

    /// A route with `methods` or `headers` wins over one without on the same prefix.
    pub fn has_conditions(&self) -> bool {
        !self.methods.is_empty() || !self.headers.is_empty()
    }
}

impl Validator<'_> {
    pub(super) fn route_match(&mut self, r: &file::RouteSection, i: usize) -> RouteMatch {
        let key = |k: &str| format!("route[{i}].{k}");
        let path_regex = r.path_regex.as_ref().and_then(|p| {
            if r.path_prefix.is_some() {
                self.error(
                    p.span(),
                    &key("path_regex"),
                    "a route has path_prefix or path_regex, not both",
                );
            }
            match regex::RegexBuilder::new(p.get_ref())
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
            {
                Ok(re) => {
                    if !can_match_a_path(p.get_ref()) {
                        let at = self.place(p.span(), &key("path_regex"));
                        self.warnings.push(format!(
                            "{at}: {:?} can never match: every path starts with \"/\"",
                            p.get_ref()
                        ));
                    }
                    Some(re)
                }
                Err(e) => {
                    self.error(
                        p.span(),
                        &key("path_regex"),
                        format!("not a valid regular expression: {e}"),
                    );
                    None
                }
            }
        });
        let mut methods = Vec::new();
        if let Some(list) = &r.methods {
            if list.get_ref().is_empty() {
                self.error(
                    list.span(),
                    &key("methods"),
                    "an empty list matches no request",
                );
            }
            for m in list.get_ref() {
                let upper = m.to_ascii_uppercase();
                match Method::from_bytes(upper.as_bytes()) {
                    Ok(method) if !methods.contains(&method) => methods.push(method),
                    Ok(_) => {}
                    Err(_) => self.error(
                        list.span(),
                        &key("methods"),
                        format!("{m:?} is not a method"),
                    ),
                }
            }
        }
        let headers = self.header_table(&r.headers, &key("headers"));
        RouteMatch {
            path_regex,
            methods,
            headers,
        }
    }
}

/// A pattern anchored at the start with a first character other than `/` cannot match
/// a path (every path the router sees starts with `/`).
fn can_match_a_path(pattern: &str) -> bool {
    let Some(rest) = pattern.strip_prefix('^') else {
        return true;
    };
    !matches!(rest.chars().next(), Some(c) if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '~')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchored_patterns_that_skip_the_slash_cannot_match() {
        assert!(!can_match_a_path("^api/"));
        assert!(can_match_a_path("^/api/"));
        assert!(can_match_a_path("\\.php$"));
        assert!(can_match_a_path("^(/a|/b)"));
        assert!(can_match_a_path("^.*"));
    }

    /// Whether the request's method and headers match (the path is the router's).
    fn holds(m: &RouteMatch, head: &http::request::Parts) -> bool {
        m.headers_match(head) && m.method_matches(&head.method)
    }

    #[test]
    fn conditions() {
        let m = RouteMatch {
            path_regex: None,
            methods: vec![Method::GET],
            headers: vec![(
                HeaderName::from_static("x-canary"),
                HeaderValue::from_static("1"),
            )],
        };
        let req = |method: &str, canary: Option<&str>| {
            let mut b = http::Request::builder().method(method).uri("/");
            if let Some(c) = canary {
                b = b.header("x-canary", "0").header("x-canary", c);
            }
            b.body(()).unwrap().into_parts().0
        };
        assert!(holds(&m, &req("GET", Some("1"))));
        assert!(!holds(&m, &req("POST", Some("1"))));
        assert!(holds(&m, &req("HEAD", Some("1"))), "GET takes HEAD");
        assert!(!holds(&m, &req("GET", None)));
        assert!(!holds(&m, &req("GET", Some("2"))));
        assert!(m.has_conditions());
        assert!(!RouteMatch::default().has_conditions());
    }
}
