//! The files stage: a route with `root` serves the file its path names, as nginx's
//! `root` and `try_files` do. Nothing outside the root is ever served: the path is
//! normalized before routing, then every segment is checked here (no segment starting
//! with `.`, no NUL, no `/` or `\` from an escape), and the file found is resolved with
//! every symbolic link and must still be under the root.

use super::compress::{acceptable, add_vary};
use crate::config::{Coding, Files};
use crate::wire::stack_text::StackText;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};
use std::fmt::Write as _;
use std::fs::{File, Metadata};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

/// A file answer: its status and head, and what of the file to send.
pub struct FileAnswer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// The part of the file to send (none for HEAD, 304, 416).
    pub body: Option<FilePart>,
}

/// Bytes `offset..offset + len` of an open file: read at their offset (never seeked), so
/// a writer can hand them to `sendfile` as they are.
pub struct FilePart {
    pub file: File,
    pub offset: u64,
    pub len: u64,
}

impl FilePart {
    /// `n` more bytes went out.
    pub fn advance(&mut self, n: u64) {
        let n = n.min(self.len);
        self.offset += n;
        self.len -= n;
    }
}

/// Why the stage has no file to answer with: the route's fallback decides what follows.
pub enum Miss {
    NotFound,
    /// Not GET or HEAD.
    MethodNotAllowed,
    /// A directory asked for without its trailing `/`: redirected to this.
    Directory(String),
}

/// The stage: the file for `head` under `files.root` (`dir`: the root opened, when it
/// could be), the path after `prefix`.
pub fn serve(
    head: &http::request::Parts,
    files: &Files,
    dir: Option<&File>,
    prefix: &str,
    codings: &[Coding],
) -> Result<FileAnswer, Miss> {
    if head.method != Method::GET && head.method != Method::HEAD {
        return Err(Miss::MethodNotAllowed);
    }
    let path = head.uri.path();
    let mut relative =
        relative_path(path.strip_prefix(prefix).unwrap_or(path)).ok_or(Miss::NotFound)?;
    let mut file = open(files, dir, &relative).ok_or(Miss::NotFound)?;
    let mut meta = file.metadata().map_err(|_| Miss::NotFound)?;
    if meta.is_dir() {
        if !path.ends_with('/') {
            let location = match head.uri.query() {
                Some(query) => format!("{path}/?{query}"),
                None => format!("{path}/"),
            };
            return Err(Miss::Directory(location));
        }
        relative.push(&files.index);
        file = open(files, dir, &relative).ok_or(Miss::NotFound)?;
        meta = file.metadata().map_err(|_| Miss::NotFound)?;
    }
    if !meta.is_file() {
        return Err(Miss::NotFound);
    }
    answer(head, files, dir, &relative, file, meta, codings).ok_or(Miss::NotFound)
}

/// The root's index, for `fallback = "index"` (a single-page app's entry point).
pub fn index(
    head: &http::request::Parts,
    files: &Files,
    dir: Option<&File>,
    codings: &[Coding],
) -> Option<FileAnswer> {
    let relative = PathBuf::from(&files.index);
    let file = open(files, dir, &relative)?;
    let meta = file.metadata().ok().filter(Metadata::is_file)?;
    answer(head, files, dir, &relative, file, meta, codings)
}

/// The path under the root that `relative` (a normalized path, escapes of reserved
/// characters left in) names, if it may be served: no segment starting with `.`, none
/// decoding to a separator or a NUL. The root itself is `.`.
fn relative_path(relative: &str) -> Option<PathBuf> {
    let mut path = PathBuf::from(".");
    for segment in relative.split('/').filter(|s| !s.is_empty()) {
        if !segment.contains('%') {
            // Nothing to decode (nearly every path): no copy of the segment.
            if segment.starts_with('.') || segment.contains(['\0', '\\']) {
                return None;
            }
            path.push(segment);
            continue;
        }
        let name = percent_decode(segment)?;
        if name.starts_with(b".") || name.iter().any(|&b| b == 0 || b == b'/' || b == b'\\') {
            return None;
        }
        path.push(std::ffi::OsString::from_vec(name));
    }
    Some(path)
}

/// Opens `relative` under the root, never outside it: by the kernel (openat2 beneath the
/// root's descriptor) where it can, else by resolving every symbolic link and checking
/// the result is still under the root.
fn open(files: &Files, dir: Option<&File>, relative: &Path) -> Option<File> {
    match dir.map(|dir| crate::sys::open_beneath(dir, relative)) {
        Some(Ok(file)) => Some(file),
        // ENOSYS: a kernel before 5.6; EPERM: a seccomp filter (some container runtimes)
        // that does not know openat2.
        Some(Err(e)) if !matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)) => None,
        _ => File::open(within(&files.root, &files.root.join(relative))?).ok(),
    }
}

/// `path` with every symbolic link resolved, if that is still under `root` (itself
/// resolved when the config was read).
fn within(root: &Path, path: &Path) -> Option<PathBuf> {
    std::fs::canonicalize(path)
        .ok()
        .filter(|real| real.starts_with(root))
}

fn percent_decode(segment: &str) -> Option<Vec<u8>> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// The answer for the file at `found`: a precompressed sibling when the client accepts
/// one, conditional requests, one range.
fn answer(
    head: &http::request::Parts,
    files: &Files,
    dir: Option<&File>,
    relative: &Path,
    file: File,
    meta: Metadata,
    codings: &[Coding],
) -> Option<FileAnswer> {
    // A kept map (the HTTP/1 writer gives it back): a new one cost two allocations.
    let mut headers = crate::wire::response_map(8);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(relative)),
    );
    // A precompressed sibling (`app.js.br`) the client accepts is sent instead.
    let accept = head.headers.get(header::ACCEPT_ENCODING);
    let sibling = acceptable(accept, codings).into_iter().find_map(|coding| {
        let mut name = relative.as_os_str().to_owned();
        name.push(".");
        name.push(coding.extension());
        let file = open(files, dir, Path::new(&name))?;
        let meta = file.metadata().ok().filter(Metadata::is_file)?;
        Some((coding, file, meta))
    });
    let (file, meta) = match sibling {
        Some((coding, file, meta)) => {
            headers.insert(
                header::CONTENT_ENCODING,
                HeaderValue::from_static(coding.token()),
            );
            add_vary(&mut headers);
            (file, meta)
        }
        None => (file, meta),
    };
    let len = meta.len();
    let modified = meta.modified().unwrap_or(UNIX_EPOCH);
    let seconds = modified
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Both written on the stack: `format!` and `fmt_http_date` each allocated a string
    // that `HeaderValue` then copied.
    let mut tag = StackText::<36>::new();
    write!(tag, "\"{seconds:x}-{len:x}\"").ok()?;
    let etag = std::str::from_utf8(&tag).ok()?;
    headers.insert(header::ETAG, HeaderValue::from_bytes(&tag).ok()?);
    let mut date = StackText::<32>::new();
    write!(date, "{}", httpdate::HttpDate::from(modified)).ok()?;
    headers.insert(header::LAST_MODIFIED, HeaderValue::from_bytes(&date).ok()?);
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Some(cache_control) = &files.cache_control {
        headers.insert(header::CACHE_CONTROL, cache_control.clone());
    }
    if not_modified(&head.headers, etag, seconds) {
        return Some(FileAnswer {
            status: StatusCode::NOT_MODIFIED,
            headers,
            body: None,
        });
    }
    let (status, start, count) = match range(&head.headers, etag, len) {
        Range::Whole => (StatusCode::OK, 0, len),
        Range::Part(start, end) => {
            let content_range = format!("bytes {start}-{end}/{len}");
            headers.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&content_range).ok()?,
            );
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        Range::Unsatisfiable => {
            let content_range = format!("bytes */{len}");
            headers.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&content_range).ok()?,
            );
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
            return Some(FileAnswer {
                status: StatusCode::RANGE_NOT_SATISFIABLE,
                headers,
                body: None,
            });
        }
    };
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    let body = (head.method != Method::HEAD).then_some(FilePart {
        file,
        offset: start,
        len: count,
    });
    Some(FileAnswer {
        status,
        headers,
        body,
    })
}

thread_local! {
    /// The types of the extensions last served, per thread.
    static TYPES: std::cell::RefCell<Vec<(Box<str>, &'static str)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Extensions whose types a thread keeps; past that, the table is asked.
const KEPT_TYPES: usize = 16;

/// The type of a file by its extension, as `mime_guess` has it (the table's own text, no
/// parse into a `Mime`). Its case-insensitive search of about 1,000 extensions cost
/// ~1,100 instructions a file; a site serves few extensions, and a thread keeps the
/// types of the first `KEPT_TYPES` it meets.
fn content_type(path: &Path) -> &'static str {
    let Some(ext) = path.extension().and_then(|e| e.to_str()) else {
        return "application/octet-stream";
    };
    TYPES.with(|types| {
        let mut types = types.borrow_mut();
        if let Some((_, kind)) = types.iter().find(|(known, _)| **known == *ext) {
            return *kind;
        }
        let kind = mime_guess::from_ext(ext)
            .first_raw()
            .unwrap_or("application/octet-stream");
        if types.len() < KEPT_TYPES {
            types.push((ext.into(), kind));
        }
        kind
    })
}

/// `If-None-Match` (weak comparison, `*`), else `If-Modified-Since`.
fn not_modified(request: &HeaderMap, etag: &str, modified: u64) -> bool {
    if let Some(tags) = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    {
        let ours = etag.trim_start_matches("W/");
        return tags
            .split(',')
            .map(|t| t.trim().trim_start_matches("W/"))
            .any(|t| t == "*" || t == ours);
    }
    request
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| httpdate::parse_http_date(v.to_str().ok()?).ok())
        .and_then(|since| since.duration_since(UNIX_EPOCH).ok())
        .is_some_and(|since| modified <= since.as_secs())
}

#[derive(Debug, PartialEq, Eq)]
enum Range {
    Whole,
    /// First and last byte, inclusive.
    Part(u64, u64),
    Unsatisfiable,
}

/// One byte range of a file of `len` bytes; several ranges, or an `If-Range` that does
/// not match, get the whole file.
fn range(request: &HeaderMap, etag: &str, len: u64) -> Range {
    let Some(spec) = request.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Range::Whole;
    };
    if let Some(if_range) = request.get(header::IF_RANGE) {
        if if_range.as_bytes() != etag.as_bytes() {
            return Range::Whole;
        }
    }
    let Some(spec) = spec.trim().strip_prefix("bytes=") else {
        return Range::Whole;
    };
    if spec.contains(',') {
        return Range::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Range::Whole;
    };
    let parse = |s: &str| s.trim().parse::<u64>().ok();
    match (first.trim().is_empty(), parse(first), parse(last)) {
        // The last N bytes.
        (true, _, Some(n)) if n > 0 && len > 0 => Range::Part(len.saturating_sub(n), len - 1),
        (true, _, _) => Range::Unsatisfiable,
        (false, Some(start), _) if start >= len => Range::Unsatisfiable,
        (false, Some(start), None) if last.trim().is_empty() => Range::Part(start, len - 1),
        (false, Some(start), Some(end)) if end >= start => Range::Part(start, end.min(len - 1)),
        _ => Range::Whole,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranged(spec: &str, len: u64) -> Range {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_str(spec).unwrap());
        range(&h, "\"e\"", len)
    }

    #[test]
    fn one_range_is_served_and_others_are_whole_or_unsatisfiable() {
        assert_eq!(ranged("bytes=0-9", 100), Range::Part(0, 9));
        assert_eq!(ranged("bytes=90-", 100), Range::Part(90, 99));
        assert_eq!(ranged("bytes=-10", 100), Range::Part(90, 99));
        assert_eq!(ranged("bytes=-1000", 100), Range::Part(0, 99));
        assert_eq!(ranged("bytes=50-1000", 100), Range::Part(50, 99));
        assert_eq!(ranged("bytes=100-", 100), Range::Unsatisfiable);
        assert_eq!(ranged("bytes=-0", 100), Range::Unsatisfiable);
        assert_eq!(ranged("bytes=0-1,5-6", 100), Range::Whole);
        assert_eq!(ranged("items=0-1", 100), Range::Whole);
        assert_eq!(ranged("bytes=9-3", 100), Range::Whole);
    }

    #[test]
    fn a_kept_type_is_the_tables_own() {
        for name in ["a.js", "b.JS", "c.css", "d.unknown-kind", "e", "f.js"] {
            let table = mime_guess::from_path(name)
                .first_raw()
                .unwrap_or("application/octet-stream");
            assert_eq!(content_type(Path::new(name)), table, "{name}");
            assert_eq!(content_type(Path::new(name)), table, "{name}, kept");
        }
        // Past the kept ones, the table still answers.
        for i in 0..KEPT_TYPES + 4 {
            content_type(Path::new(&format!("x.e{i}")));
        }
        assert_eq!(content_type(Path::new("late.png")), "image/png");
    }

    /// What `relative` opens under `root`, by the kernel (`dir`) or by resolving links.
    fn found(files: &Files, dir: Option<&File>, relative: &str) -> bool {
        relative_path(relative)
            .and_then(|r| open(files, dir, &r))
            .is_some()
    }

    fn files_at(root: &Path) -> Files {
        Files {
            root: std::fs::canonicalize(root).unwrap(),
            index: "index.html".into(),
            fallback: crate::config::Fallback::NotFound,
            cache_control: None,
        }
    }

    #[test]
    fn nothing_outside_the_root_is_found() {
        let dir = std::env::temp_dir().join(format!("gw-files-{}", std::process::id()));
        let root = dir.join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/a.txt"), "a").unwrap();
        std::fs::write(root.join(".secret"), "s").unwrap();
        std::fs::write(dir.join("outside.txt"), "o").unwrap();
        std::os::unix::fs::symlink(dir.join("outside.txt"), root.join("link.txt")).unwrap();
        std::os::unix::fs::symlink("../outside.txt", root.join("relative-link.txt")).unwrap();
        std::os::unix::fs::symlink(root.join("sub/a.txt"), root.join("inside.txt")).unwrap();
        std::os::unix::fs::symlink("sub/a.txt", root.join("relative-inside.txt")).unwrap();
        let files = files_at(&root);
        let opened = File::open(&files.root).unwrap();
        // Both ways: the kernel's (openat2) and resolving every link.
        for dir_handle in [Some(&opened), None] {
            assert!(found(&files, dir_handle, "/sub/a.txt"));
            assert!(
                found(&files, dir_handle, "/sub/a%2Etxt"),
                "an escape of an ordinary byte"
            );
            assert!(
                found(&files, dir_handle, "/relative-inside.txt"),
                "a link that stays inside"
            );
            for refused in [
                "/link.txt",
                "/relative-link.txt",
                "/.secret",
                "/sub/../../outside.txt",
                "/..%2foutside.txt",
                "/%2e%2e/outside.txt",
                "/sub%00/a.txt",
                "/nope.txt",
                "/sub/a.txt%5C",
                "/sub\\a.txt",
                "/sub/a.txt\0",
            ] {
                assert!(!found(&files, dir_handle, refused), "{refused}");
            }
        }
        // An absolute link into the root resolves outside the descriptor's view for the
        // kernel (it starts from /): refused there, allowed by the resolving check.
        if crate::sys::open_beneath(&opened, Path::new(".")).is_ok() {
            assert!(!found(&files, Some(&opened), "/inside.txt"));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    proptest::proptest! {
        /// Whatever the path, what it names stays under the root: no `..` or separator
        /// survives into the relative path, and what opens is a file of the root.
        #[test]
        fn whatever_the_path_what_is_found_is_under_the_root(
            segments in proptest::collection::vec("[a-z.%2fF5cC0/\\\\]{0,6}", 0..5)
        ) {
            let root = std::env::temp_dir().join("gw-prop-root");
            let _ = std::fs::create_dir_all(root.join("d"));
            let _ = std::fs::write(root.join("d/f"), "x");
            let _ = std::fs::write(std::env::temp_dir().join("gw-prop-outside"), "outside");
            let path = format!("/{}", segments.join("/"));
            if let Some(relative) = relative_path(&path) {
                proptest::prop_assert!(
                    relative.components().all(|c| matches!(c, std::path::Component::Normal(_) | std::path::Component::CurDir)),
                    "{} -> {}", path, relative.display()
                );
                let files = files_at(&root);
                let dir = File::open(&files.root).unwrap();
                if let Some(mut file) = open(&files, Some(&dir), &relative) {
                    let mut text = String::new();
                    let _ = std::io::Read::read_to_string(&mut file, &mut text);
                    proptest::prop_assert!(text != "outside", "{}", path);
                }
            }
        }
    }
}
