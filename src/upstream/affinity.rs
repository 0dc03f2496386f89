//! What a request says about where it should go: the value of a hashing policy's key and
//! of the sticky cookie. Both come from client headers, so both are read defensively:
//! anything malformed is simply no key.

use crate::config::HashKey;
use http::{header, HeaderMap, Uri};

/// The value of cookie `name` in the request's `Cookie` headers (RFC 6265 §5.4: pairs
/// separated by `;`), the first one if it appears more than once.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (n, value) = pair.split_once('=')?;
            (n.trim() == name).then(|| value.trim().trim_matches('"'))
        })
}

/// The bytes `policy = "hash"` hashes for this request, `None` when the request lacks the
/// key (it is then balanced round robin).
pub fn hash_key<'a>(key: &HashKey, uri: &'a Uri, headers: &'a HeaderMap) -> Option<&'a [u8]> {
    match key {
        HashKey::Uri => Some(uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes()),
        HashKey::Header(name) => headers.get(name).map(|v| v.as_bytes()),
        HashKey::Cookie(name) => cookie(headers, name).map(str::as_bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    fn headers(cookies: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for c in cookies {
            h.append(header::COOKIE, HeaderValue::from_str(c).unwrap());
        }
        h
    }

    #[test]
    fn cookies_are_found_among_others_and_across_headers() {
        let h = headers(&["a=1; gw_route=abc ;b=2", "later=x"]);
        assert_eq!(cookie(&h, "gw_route"), Some("abc"));
        assert_eq!(cookie(&h, "later"), Some("x"));
        assert_eq!(cookie(&h, "gw"), None, "a prefix is not the name");
        assert_eq!(cookie(&headers(&["gw=\"q\""]), "gw"), Some("q"));
        assert_eq!(cookie(&headers(&["gw"]), "gw"), None);
        assert_eq!(cookie(&headers(&["x=1; gw=; y"]), "gw"), Some(""));
    }

    #[test]
    fn hash_keys_come_from_the_uri_a_header_or_a_cookie() {
        let uri: Uri = "/a/b?c=d".parse().unwrap();
        let mut h = headers(&["user=42"]);
        h.insert("x-user-id", HeaderValue::from_static("7"));
        assert_eq!(hash_key(&HashKey::Uri, &uri, &h), Some(&b"/a/b?c=d"[..]));
        let header = HashKey::Header(http::HeaderName::from_static("x-user-id"));
        assert_eq!(hash_key(&header, &uri, &h), Some(&b"7"[..]));
        let cookie_key = HashKey::Cookie("user".into());
        assert_eq!(hash_key(&cookie_key, &uri, &h), Some(&b"42"[..]));
        assert_eq!(hash_key(&cookie_key, &uri, &HeaderMap::new()), None);
    }

    proptest! {
        /// Fuzz pass (`PROPTEST_CASES=1000000 cargo test --release --lib fuzz`): any
        /// Cookie header, however hostile, is read without a panic, and a cookie put in
        /// among arbitrary others is found.
        #[test]
        fn fuzz_cookie_headers(raw in proptest::collection::vec(any::<u8>(), 0..300),
                               before in "[ -~]{0,40}", value in "[A-Za-z0-9]{0,30}") {
            if let Ok(v) = HeaderValue::from_bytes(&raw) {
                let mut h = HeaderMap::new();
                h.insert(header::COOKIE, v);
                let _ = cookie(&h, "gw");
            }
            let line = format!("{}; gw={value}", before.replace('w', ""));
            if let Ok(v) = HeaderValue::from_str(&line) {
                let mut h = HeaderMap::new();
                h.insert(header::COOKIE, v);
                prop_assert_eq!(cookie(&h, "gw"), Some(value.as_str()));
            }
        }
    }
}
