//! The request path as the router and the upstream both see it.
//!
//! A route's `path_prefix` only protects what is behind it if the path it is matched
//! against is the path the app will act on. Apps decode percent-escapes and resolve `.`
//! and `..` themselves, so `/public/../admin/x` or `/public/%2e%2e/admin/x` would match
//! a `/public/` route and then reach `/admin/x`. The path is therefore normalized once,
//! before routing, and the normalized path is what gets forwarded (RFC 3986 §6.2.2):
//!
//! - percent-escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded, the
//!   other escapes are kept (their hex digits in upper case);
//! - `.` and `..` segments are removed (RFC 3986 §5.2.4);
//!
//! and what cannot be made safe is refused with `400`: a `..` that climbs above the root,
//! an encoded `/` or `\` (`%2F`, `%5C`: the app might decode them into separators after
//! routing), a raw `\` (some servers treat it as `/`), a broken escape, and a dot segment
//! carrying `;` parameters (`/..;/`, which Java servlet containers resolve as `..`).

use std::borrow::Cow;

/// Why a path was refused; every one of them is a `400`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    AboveRoot,
    EncodedSeparator,
    Backslash,
    BadEscape,
    DotSegmentWithParameters,
}

impl PathError {
    pub fn reason(self) -> &'static str {
        match self {
            PathError::AboveRoot => "path climbs above the root with ..",
            PathError::EncodedSeparator => "encoded / or \\ (%2F, %5C) in the path",
            PathError::Backslash => "backslash in the path",
            PathError::BadEscape => "malformed percent-escape in the path",
            PathError::DotSegmentWithParameters => "dot segment with ; parameters in the path",
        }
    }
}

/// `uri` in origin form with `path` in place of its path (the query is kept).
pub fn with_path(uri: &http::Uri, path: &str) -> http::Uri {
    let target = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_string(),
    };
    // A normalized path is made of the bytes of a valid one (and upper-case hex digits).
    http::Uri::try_from(target).unwrap_or_else(|_| http::Uri::from_static("/"))
}

/// The normalized form of `path` (the path of an origin-form target, without its query),
/// borrowed when it is already normal, which is the common case.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    if path.contains('\\') {
        return Err(PathError::Backslash);
    }
    if !path.starts_with('/') {
        // `*` (OPTIONS) or an empty path of an absolute-form target: nothing to resolve.
        return Ok(Cow::Borrowed(if path.is_empty() { "/" } else { path }));
    }
    // Byte by byte: `contains("/.")` set up a substring search that cost ~500
    // instructions on every request.
    let bytes = path.as_bytes();
    if !bytes.contains(&b'%') && !bytes.windows(2).any(|pair| pair == b"/.") {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path)?;
    let resolved = remove_dot_segments(&decoded)?;
    if resolved == path {
        Ok(Cow::Borrowed(path))
    } else {
        Ok(Cow::Owned(resolved))
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn decode_unreserved(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            // Copy the run up to the next escape in one go (it is valid UTF-8 on its own:
            // '%' is ASCII, so it never falls inside a multi-byte character).
            let end = bytes[i..]
                .iter()
                .position(|&b| b == b'%')
                .map_or(bytes.len(), |n| i + n);
            out.push_str(&path[i..end]);
            i = end;
            continue;
        }
        let (Some(high), Some(low)) = (
            bytes.get(i + 1).copied().and_then(hex_value),
            bytes.get(i + 2).copied().and_then(hex_value),
        ) else {
            return Err(PathError::BadEscape);
        };
        let byte = high << 4 | low;
        if byte == b'/' || byte == b'\\' {
            return Err(PathError::EncodedSeparator);
        }
        if is_unreserved(byte) {
            out.push(byte as char);
        } else {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            out.push('%');
            out.push(HEX[usize::from(high)] as char);
            out.push(HEX[usize::from(low)] as char);
        }
        i += 3;
    }
    Ok(out)
}

/// RFC 3986 §5.2.4 on an absolute path, except that a `..` with nothing left to remove
/// is an error instead of being dropped: such a request was written to escape.
fn remove_dot_segments(path: &str) -> Result<String, PathError> {
    let mut kept: Vec<&str> = Vec::new();
    let mut segments = path[1..].split('/').peekable();
    let mut ends_in_directory = false;
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        match segment {
            "." => ends_in_directory = last,
            ".." => {
                kept.pop().ok_or(PathError::AboveRoot)?;
                ends_in_directory = last;
            }
            s if s.starts_with(".;") || s.starts_with("..;") => {
                return Err(PathError::DotSegmentWithParameters)
            }
            s => kept.push(s),
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &kept {
        out.push('/');
        out.push_str(segment);
    }
    if ends_in_directory || out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(path: &str) -> Result<String, PathError> {
        normalize(path).map(Cow::into_owned)
    }

    #[test]
    fn normal_paths_are_borrowed_unchanged() {
        for p in ["/", "/a/b", "/a/b/", "/a.b/c..d/.e", "/a//b", "*", "/%20x"] {
            assert!(
                matches!(normalize(p), Ok(Cow::Borrowed(q)) if q == p),
                "{p}"
            );
        }
        assert_eq!(n(""), Ok("/".into()));
    }

    #[test]
    fn dot_segments_are_resolved_as_rfc_3986_says() {
        assert_eq!(n("/a/b/c/./../../g"), Ok("/a/g".into()));
        assert_eq!(n("/mid/content=5/../6"), Ok("/mid/6".into()));
        assert_eq!(n("/a/."), Ok("/a/".into()));
        assert_eq!(n("/a/.."), Ok("/".into()));
        assert_eq!(n("/a/b/.."), Ok("/a/".into()));
        assert_eq!(n("/."), Ok("/".into()));
        assert_eq!(n("/./a"), Ok("/a".into()));
        // An empty segment is a segment: `..` takes it, not `public`.
        assert_eq!(n("/public//../admin/x"), Ok("/public/admin/x".into()));
    }

    #[test]
    fn the_bypasses_that_were_reported_stay_inside_or_are_refused() {
        assert_eq!(n("/public/../admin/x"), Ok("/admin/x".into()));
        assert_eq!(n("/public/%2e%2e/admin/x"), Ok("/admin/x".into()));
        assert_eq!(n("/public/%2E%2e/admin/x"), Ok("/admin/x".into()));
        assert_eq!(n("/public/.%2e/admin/x"), Ok("/admin/x".into()));
        assert_eq!(n("/public/..%2fadmin/x"), Err(PathError::EncodedSeparator));
        assert_eq!(n("/public/..%5cadmin/x"), Err(PathError::EncodedSeparator));
        assert_eq!(n("/public/..\\admin/x"), Err(PathError::Backslash));
        assert_eq!(
            n("/public/..;/admin/x"),
            Err(PathError::DotSegmentWithParameters)
        );
    }

    #[test]
    fn climbing_above_the_root_is_refused() {
        assert_eq!(n("/.."), Err(PathError::AboveRoot));
        assert_eq!(n("/a/../.."), Err(PathError::AboveRoot));
        assert_eq!(n("/%2e%2e/etc/passwd"), Err(PathError::AboveRoot));
    }

    #[test]
    fn escapes_of_unreserved_characters_are_decoded_and_others_kept() {
        assert_eq!(n("/%41%7e%2D"), Ok("/A~-".into()));
        assert_eq!(n("/a%20b%3f"), Ok("/a%20b%3F".into()));
        assert_eq!(n("/%25%2e"), Ok("/%25.".into()), "%25 is not decoded twice");
        assert_eq!(n("/%"), Err(PathError::BadEscape));
        assert_eq!(n("/%4"), Err(PathError::BadEscape));
        assert_eq!(n("/%zz"), Err(PathError::BadEscape));
    }
}

/// The fuzzing oracle (property tests below, `fuzz/` with cargo-fuzz): panics if
/// `normalize` accepts `path` and returns something that is not normal, not stable, or
/// that an app could resolve to a place outside the route prefix it matched.
#[doc(hidden)]
pub fn check_normalized(path: &str) {
    let Ok(normal) = normalize(path) else {
        return;
    };
    if !path.starts_with('/') {
        // `*` and the empty path; http::Uri gives nothing else.
        assert!(normal == path || (path.is_empty() && normal == "/"));
        return;
    }
    assert!(!normal.contains('\\'), "{path:?} -> {normal:?}");
    let upper = normal.to_ascii_uppercase();
    assert!(
        !upper.contains("%2F") && !upper.contains("%5C"),
        "{path:?} -> {normal:?}"
    );
    assert!(
        normal.split('/').all(|s| s != "." && s != ".."),
        "{path:?} -> {normal:?}"
    );
    assert!(
        matches!(normalize(&normal), Ok(Cow::Borrowed(_))),
        "not idempotent: {path:?} -> {normal:?}"
    );
    // What matched a route is what the app acts on.
    for prefix in ["/public/", "/a/"] {
        if normal.starts_with(prefix) {
            let app = app_view(&normal);
            assert!(
                app.starts_with(prefix),
                "{path:?} -> {normal:?} -> app {app:?}"
            );
        }
    }
}

/// What an app that decodes every escape and resolves dot segments (clamping at the
/// root, as many do) makes of a path.
fn app_view(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut decoded = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let escape = (bytes[i] == b'%')
            .then(|| Some(hex_value(*bytes.get(i + 1)?)? << 4 | hex_value(*bytes.get(i + 2)?)?))
            .flatten();
        match escape {
            Some(b) => {
                decoded.push(b);
                i += 3;
            }
            None => {
                decoded.push(bytes[i]);
                i += 1;
            }
        }
    }
    let decoded = String::from_utf8_lossy(&decoded).replace('\\', "/");
    let mut kept: Vec<&str> = Vec::new();
    for segment in decoded.split('/').skip(1) {
        match segment {
            "." => {}
            ".." => {
                kept.pop();
            }
            s => kept.push(s),
        }
    }
    format!("/{}", kept.join("/"))
}

/// Random paths built from the pieces bypasses are made of. `cargo test` runs a short
/// pass; `PROPTEST_CASES=1000000 cargo test --release --lib fuzz` a long one.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn piece() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "/", "/", "/", ".", "..", "%2e", "%2E", "%2f", "%2F", "%5c", "%5C", "%", "%4", "%25",
            "%41", "%7e", "\\", ";", "a", "public", "admin", "~", "%20", "é", "?",
        ])
    }

    proptest! {
        #[test]
        fn normalized_paths_stay_where_they_were_routed(
            pieces in prop::collection::vec(piece(), 0..24)
        ) {
            check_normalized(&format!("/{}", pieces.concat()));
        }

        #[test]
        fn any_string_is_answered_without_panicking(path in "\\PC{0,64}") {
            check_normalized(&path);
        }
    }
}
