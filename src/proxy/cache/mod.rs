//! The cache stage: a route with `cache` answers from the shared cache on disk when it
//! can, and stores what its upstream answers when RFC 9111 lets a shared cache.
//!
//! ```text
//! lookup ─► fresh entry ─────────────────────────────► Hit (sendfile from the entry)
//!        ─► stale, within stale_while_revalidate ────► Hit, and one background refresh
//!        ─► another request fills the key ───────────► Hit streamed from its fill
//!        ─► stale or missing, this request fills ────► forward (conditional when stale)
//!              304 ─► entry refreshed, served; 5xx/error within stale_if_error ─► stale
//!              storable ─► the body is written to the fill as it goes to the client
//! ```
//!
//! - `rules.rs`: what may be stored, freshness and age (RFC 9111);
//! - `entry.rs`: the files, fills and the requests that stream from a fill.

pub mod entry;
pub mod rules;

use crate::config::{CacheConfig, RouteCache};
use entry::{Entry, Filler, Meta, OnDisk, Tail};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a request waits for the head of a response another request is fetching for
/// the same key, before it goes upstream itself (nginx's proxy_cache_lock_timeout).
const COLLAPSE_WAIT: Duration = Duration::from_secs(5);

/// A worker's view of the cache: where the entries are.
pub struct Cache {
    dir: PathBuf,
    max_object_size: u64,
    /// Small entries this worker answered from lately, head parsed and body read: a hit
    /// on one costs a `stat` of its file (which says it is still the same file) instead
    /// of reading and parsing it again.
    hot: std::sync::Mutex<std::collections::HashMap<PathBuf, Hot>>,
    /// Bytes of entries completed, in the shared table (see `supervisor::cache`).
    written: &'static std::sync::atomic::AtomicU64,
}

/// A small entry held in memory, and which file it was read from.
struct Hot {
    inode: u64,
    modified: std::time::SystemTime,
    size: u64,
    meta: Meta,
    headers: HeaderMap,
    body: bytes::Bytes,
}

/// The most entries a worker holds in memory (each at most [`entry::FIRST_READ`]).
const HOT_ENTRIES: usize = 256;

/// Each route's cache counts (routes without `cache`: none), the n-th cached route
/// counting in the table's n-th slot.
pub fn slots(
    routes: &[crate::config::RouteConfig],
    slot: impl Fn(usize) -> &'static Counts,
) -> Vec<Option<&'static Counts>> {
    let mut n = 0;
    routes
        .iter()
        .map(|r| {
            r.cache.map(|_| {
                n += 1;
                slot(n - 1)
            })
        })
        .collect()
}

pub type Counts = [std::sync::atomic::AtomicU64; crate::table::CACHE_OUTCOMES.len()];

/// Which of [`crate::table::CACHE_OUTCOMES`] a `Cache-Status` says.
pub fn outcome(cache_status: &str) -> usize {
    let is = |word| {
        crate::table::CACHE_OUTCOMES
            .iter()
            .position(|o| *o == word)
            .unwrap_or(0)
    };
    if cache_status.contains("collapsed") {
        is("collapsed")
    } else if cache_status.contains("stale-") {
        is("stale")
    } else if cache_status.starts_with("gateway; hit") {
        is("hit")
    } else if cache_status.contains("fwd-status=304") {
        is("revalidated")
    } else if cache_status.contains("fwd=method") {
        is("bypass")
    } else {
        is("miss")
    }
}

use crate::sys::unix_seconds as now;

/// A response from the cache.
pub struct Hit {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: HitBody,
    /// `Cache-Status`.
    pub cache_status: String,
}

pub enum HitBody {
    /// A small entry's body, read with its head.
    Inline(bytes::Bytes),
    /// A complete entry's body.
    Stored(crate::proxy::files::FilePart),
    /// Streamed from a fill as another request writes it.
    Tail(Box<Tail>),
    None,
}

/// What a request that goes upstream carries for the cache.
pub struct Pending {
    settings: RouteCache,
    key: String,
    /// Where its entry goes (the variant's place when the key varies).
    path: PathBuf,
    /// The key's own place (a Vary marker there when the response varies).
    base: PathBuf,
    filler: Option<Filler>,
    /// The stale entry being revalidated.
    stale: Option<Entry>,
    request_time: i64,
    /// `Cache-Status` so far (`gateway; fwd=miss`...).
    pub status: String,
    /// The request's method and headers, as the client sent them (Vary, Authorization).
    method: Method,
    request: HeaderMap,
    dir: PathBuf,
}

pub enum Lookup {
    Hit(Hit),
    /// A stale entry served now, and the request that refreshes it in the background.
    Stale(Hit, Box<Pending>),
    Forward(Box<Pending>),
}

/// The key: host (without port: the same site on every listener), normalized path and
/// query.
fn key_of(head: &http::request::Parts) -> String {
    let host = head
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| head.headers.get(header::HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or_default();
    let host = crate::proxy::route::host_without_port(host);
    let path_and_query = head.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut key = String::with_capacity(host.len() + path_and_query.len());
    key.extend(host.chars().map(|c| c.to_ascii_lowercase()));
    key.push_str(path_and_query);
    key
}

/// The variant key: the key and the request's values of the headers a response varies on.
fn variant_key(key: &str, names: &[String], request: &HeaderMap) -> String {
    variant_of(key, names, |name| request_value(request, name))
}

/// A request header's values, as one.
fn request_value(request: &HeaderMap, name: &str) -> String {
    let values: Vec<&str> = (request.get_all(name).iter())
        .filter_map(|v| v.to_str().ok())
        .collect();
    values.join(",")
}

/// `key`, then `name:value` for each of `names`, a line each.
fn variant_of(key: &str, names: &[String], value_of: impl Fn(&str) -> String) -> String {
    let mut out = key.to_string();
    for name in names {
        out.push('\n');
        out.push_str(name);
        out.push(':');
        out.push_str(&value_of(name));
    }
    out
}

/// Request headers a fill does not pass on: it wants the whole response to store (a
/// conditional of its own is added when it revalidates).
const NOT_FOR_A_FILL: [header::HeaderName; 6] = [
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
    header::IF_RANGE,
    header::RANGE,
];

impl Cache {
    pub fn new(config: &CacheConfig, written: &'static std::sync::atomic::AtomicU64) -> Cache {
        Cache {
            dir: config.dir.clone(),
            max_object_size: config.max_object_size,
            hot: Default::default(),
            written,
        }
    }

    /// The right to fill `path`, its size counted when complete.
    fn begin_fill(&self, path: &Path) -> std::io::Result<Option<Filler>> {
        let filler = Filler::begin(path, self.max_object_size)?;
        Ok(filler.map(|f| f.count_into(self.written)))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The stage's entry point, for a request on a route with `settings`.
    pub async fn lookup(&self, head: &http::request::Parts, settings: RouteCache) -> Lookup {
        let now = now();
        let key = key_of(head);
        let base = entry::path_of(&self.dir, &key);
        // Made only when the request goes upstream: a hit copies nothing of the request.
        let pending = |path: PathBuf, status: &str| Pending {
            settings,
            key: key.clone(),
            path,
            base: base.clone(),
            filler: None,
            stale: None,
            request_time: now,
            status: status.to_string(),
            method: head.method.clone(),
            request: head.headers.clone(),
            dir: self.dir.clone(),
        };
        if head.method != Method::GET && head.method != Method::HEAD {
            return Lookup::Forward(Box::new(pending(base.clone(), "gateway; fwd=method")));
        }
        let head_only = head.method == Method::HEAD;
        let plain = !head.headers.contains_key(header::AUTHORIZATION);
        if plain {
            if let Some(hit) = self.hot_hit(&base, now, head_only) {
                return Lookup::Hit(hit);
            }
        }
        let (path, found) = match entry::read(&base) {
            OnDisk::Vary(names) => {
                let path = entry::path_of(&self.dir, &variant_key(&key, &names, &head.headers));
                match entry::read(&path) {
                    OnDisk::Entry(e) => (path, Some(e)),
                    _ => (path, None),
                }
            }
            OnDisk::Entry(e) => (base.clone(), Some(e)),
            OnDisk::Nothing => (base.clone(), None),
        };
        // A request with credentials gets a stored answer only if it was stored for
        // anyone (RFC 9111, 3.5).
        let found = found.filter(|e| {
            !head.headers.contains_key(header::AUTHORIZATION) || {
                let d = rules::directives(&e.headers);
                d.public || d.s_maxage.is_some() || d.must_revalidate
            }
        });
        let mut forward = pending(path, "gateway; fwd=miss");
        if let Some(found) = found {
            let ttl = found.meta.ttl(now);
            if ttl > 0 {
                if !touch(&found) && plain && forward.path == base {
                    self.keep_hot(&base, &found);
                }
                return Lookup::Hit(hit(
                    found,
                    now,
                    head_only,
                    format!("gateway; hit; ttl={ttl}"),
                ));
            }
            let stale_for = -ttl;
            let revalidating = !found.meta.must_revalidate
                && stale_for <= settings.stale_while_revalidate.as_secs() as i64;
            if revalidating {
                let status = format!("gateway; hit; ttl={ttl}; detail=stale-while-revalidate");
                // One refresh in the background (by whoever takes the fill); this request
                // is answered with the stale entry now.
                let refresh = (self.begin_fill(&forward.path).ok().flatten())
                    .and_then(|filler| Some((filler, clone_entry(&found)?)));
                if let Some((filler, copy)) = refresh {
                    let served = hit(copy, now, head_only, status);
                    forward.filler = Some(filler);
                    forward.stale = Some(found);
                    forward.status = "gateway; fwd=stale".into();
                    return Lookup::Stale(served, Box::new(forward));
                }
                return Lookup::Hit(hit(found, now, head_only, status));
            }
            forward.stale = Some(found);
            forward.status = "gateway; fwd=stale".into();
        }
        match self.begin_fill(&forward.path) {
            Ok(Some(filler)) => forward.filler = Some(filler),
            Ok(None) => {
                // Another request fetches this key: stream from it.
                if let Some((tail, meta, headers)) = Tail::head(&forward.path, COLLAPSE_WAIT).await
                {
                    if same_variant(&meta, &headers, &head.headers) {
                        let status = "gateway; fwd=miss; collapsed".to_string();
                        return Lookup::Hit(collapsed(tail, meta, headers, now, head_only, status));
                    }
                }
            }
            Err(e) => tracing::warn!("cache: {}: {e}", self.dir.display()),
        }
        Lookup::Forward(Box::new(forward))
    }
}

/// A second handle on an entry (`None` when the process is out of descriptors).
fn clone_entry(e: &Entry) -> Option<Entry> {
    Some(Entry {
        file: e.file.try_clone().ok()?,
        meta: e.meta.clone(),
        headers: e.headers.clone(),
        body_offset: e.body_offset,
        body_len: e.body_len,
        used: e.used,
        inode: e.inode,
        inline: e.inline.clone(),
    })
}

impl Cache {
    /// A fresh hit on an entry held in memory whose file is still the one read.
    fn hot_hit(&self, path: &Path, now: i64, head_only: bool) -> Option<Hit> {
        use std::os::unix::fs::MetadataExt;
        let stat = std::fs::metadata(path).ok()?;
        let hot = self.hot.lock().unwrap_or_else(|p| p.into_inner());
        let h = hot.get(path)?;
        let same = h.inode == stat.ino()
            && h.size == stat.len()
            && stat.modified().is_ok_and(|m| m == h.modified);
        let ttl = h.meta.ttl(now);
        // Due to be marked used again: the disk path does that.
        let used_lately = h.modified.elapsed().is_ok_and(|age| age <= TOUCH_EVERY);
        if !same || ttl <= 0 || !used_lately {
            return None;
        }
        Some(Hit {
            status: StatusCode::from_u16(h.meta.status).unwrap_or(StatusCode::OK),
            headers: with_age(h.headers.clone(), &h.meta, now),
            body: if head_only || h.body.is_empty() {
                HitBody::None
            } else {
                HitBody::Inline(h.body.clone())
            },
            cache_status: format!("gateway; hit; ttl={ttl}"),
        })
    }

    /// Holds a small entry just read in memory.
    fn keep_hot(&self, path: &Path, e: &Entry) {
        let Some(body) = &e.inline else { return };
        let mut hot = self.hot.lock().unwrap_or_else(|p| p.into_inner());
        if hot.len() >= HOT_ENTRIES {
            hot.clear();
        }
        hot.insert(
            path.to_path_buf(),
            Hot {
                inode: e.inode,
                modified: e.used,
                size: e.body_offset + e.body_len,
                meta: e.meta.clone(),
                headers: e.headers.clone(),
                body: body.clone(),
            },
        );
    }
}

/// How often a hit marks its entry used (eviction takes the least recently used).
const TOUCH_EVERY: Duration = Duration::from_secs(60);

/// Marks the entry used, at most every [`TOUCH_EVERY`]; whether it did.
fn touch(e: &Entry) -> bool {
    let old = e.used.elapsed().is_ok_and(|age| age > TOUCH_EVERY);
    if old {
        let _ = e.file.set_modified(std::time::SystemTime::now());
    }
    old
}

/// Whether a fill's response fits this request's variant: it does not vary, or varies
/// on headers this request has the same values of.
fn same_variant(meta: &Meta, headers: &HeaderMap, request: &HeaderMap) -> bool {
    let names = rules::vary_names(headers);
    names.is_empty() || variant_key(&meta.key, &names, request) == meta_variant(meta, &names)
}

fn meta_variant(meta: &Meta, names: &[String]) -> String {
    variant_of(&meta.key, names, |name| {
        (meta.vary.iter())
            .find(|(n, _)| n == name)
            .map_or(String::new(), |(_, v)| v.clone())
    })
}

fn with_age(mut headers: HeaderMap, meta: &Meta, now: i64) -> HeaderMap {
    headers.insert(header::AGE, HeaderValue::from(meta.age(now).max(0)));
    headers
}

fn hit(e: Entry, now: i64, head_only: bool, cache_status: String) -> Hit {
    let body = if head_only || e.body_len == 0 {
        HitBody::None
    } else if let Some(bytes) = e.inline {
        HitBody::Inline(bytes)
    } else {
        HitBody::Stored(crate::proxy::files::FilePart {
            file: e.file,
            offset: e.body_offset,
            len: e.body_len,
        })
    };
    Hit {
        status: StatusCode::from_u16(e.meta.status).unwrap_or(StatusCode::OK),
        headers: with_age(e.headers, &e.meta, now),
        body,
        cache_status,
    }
}

fn collapsed(
    tail: Tail,
    meta: Meta,
    headers: HeaderMap,
    now: i64,
    head_only: bool,
    cache_status: String,
) -> Hit {
    Hit {
        status: StatusCode::from_u16(meta.status).unwrap_or(StatusCode::OK),
        headers: with_age(headers, &meta, now),
        body: if head_only {
            HitBody::None
        } else {
            HitBody::Tail(Box::new(tail))
        },
        cache_status,
    }
}

/// A client's own conditional request answered from the entry, as nginx does: `304` when
/// its `If-None-Match` names the entry's ETag (weak comparison), or, without one, when
/// its `If-Modified-Since` is not older than the entry's `Last-Modified`.
pub fn conditional(hit: &mut Hit, request: &HeaderMap) {
    if hit.status != StatusCode::OK {
        return;
    }
    let weak = |tag: &str| tag.trim().trim_start_matches("W/").to_string();
    let not_modified = match request.get(header::IF_NONE_MATCH) {
        Some(asked) => {
            let etag = hit.headers.get(header::ETAG).and_then(|e| e.to_str().ok());
            match (asked.to_str(), etag) {
                (Ok(asked), Some(etag)) => asked
                    .split(',')
                    .any(|t| t.trim() == "*" || weak(t) == weak(etag)),
                _ => false,
            }
        }
        None => {
            let since = request
                .get(header::IF_MODIFIED_SINCE)
                .and_then(rules::http_date);
            let modified = hit
                .headers
                .get(header::LAST_MODIFIED)
                .and_then(rules::http_date);
            matches!((since, modified), (Some(since), Some(modified)) if modified <= since)
        }
    };
    if not_modified {
        hit.status = StatusCode::NOT_MODIFIED;
        hit.body = HitBody::None;
    }
}

/// What follows the upstream's answer.
pub enum After {
    /// Serve this from the cache instead (a refreshed or a stale entry).
    Serve(Hit),
    /// Pass the upstream's response on; with a filler, its body is stored as it goes.
    Pass(Option<Box<Filler>>),
}

impl Pending {
    /// The upstream request of a fill: no conditionals or range of the client's; the
    /// stale entry's validators instead.
    pub fn prepare(&self, head: &mut http::request::Parts) {
        if self.filler.is_none() {
            return;
        }
        for name in NOT_FOR_A_FILL {
            head.headers.remove(name);
        }
        if let Some(stale) = &self.stale {
            if let Some(etag) = stale.headers.get(header::ETAG) {
                head.headers.insert(header::IF_NONE_MATCH, etag.clone());
            }
            if let Some(modified) = stale.headers.get(header::LAST_MODIFIED) {
                head.headers
                    .insert(header::IF_MODIFIED_SINCE, modified.clone());
            }
        }
    }

    /// The stale entry, when the upstream failed (`status`: its 5xx, or none for a
    /// connect error or timeout) and `stale_if_error` allows it.
    pub fn stale_if_error(&mut self, status: Option<StatusCode>) -> Option<Hit> {
        let now = now();
        let stale = self.stale.as_ref()?;
        let stale_for = -stale.meta.ttl(now);
        if stale.meta.must_revalidate || stale_for > self.settings.stale_if_error.as_secs() as i64 {
            return None;
        }
        let stale = self.stale.take()?;
        let fwd_status = status.map_or(String::new(), |s| format!("; fwd-status={}", s.as_u16()));
        let cache_status = format!(
            "gateway; fwd=stale{fwd_status}; ttl={}; detail=stale-if-error",
            -stale_for
        );
        Some(hit(stale, now, self.method == Method::HEAD, cache_status))
    }

    /// The upstream answered with `status` and `headers` (as it sent them: what is
    /// stored has no hop-by-hop fields).
    pub fn answered(&mut self, status: StatusCode, headers: &HeaderMap) -> After {
        let mut headers = headers.clone();
        crate::proxy::hop_by_hop::strip_hop_by_hop(&mut headers);
        let headers = &headers;
        let now = now();
        if status == StatusCode::NOT_MODIFIED && self.stale.is_some() {
            if let Some(hit) = self.refresh(headers, now) {
                return After::Serve(hit);
            }
        }
        if status.is_server_error() {
            if let Some(hit) = self.stale_if_error(Some(status)) {
                return After::Serve(hit);
            }
        }
        let Some(mut filler) = self.filler.take() else {
            return After::Pass(None);
        };
        let storable = rules::storable(
            &self.method,
            &self.request,
            status,
            headers,
            self.settings.ttl,
            now,
        );
        let freshness = match storable {
            Ok(f) => f,
            Err(why) => {
                self.status
                    .push_str(&format!("; detail={}", why.replace(' ', "-")));
                return After::Pass(None);
            }
        };
        let too_large = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .is_some_and(|n| n > filler.max());
        if too_large {
            self.status.push_str("; detail=too-large");
            return After::Pass(None);
        }
        let names = rules::vary_names(headers);
        let mut vary = Vec::new();
        if !names.is_empty() {
            let variant = variant_key(&self.key, &names, &self.request);
            self.path = entry::path_of(&self.dir, &variant);
            if let Err(e) = entry::write_vary(&self.base, &names) {
                tracing::warn!("cache: {}: {e}", self.base.display());
                return After::Pass(None);
            }
            filler.retarget(&self.path);
            for name in &names {
                vary.push((name.clone(), request_value(&self.request, name)));
            }
        }
        let meta = Meta {
            key: self.key.clone(),
            status: status.as_u16(),
            response_time: now,
            initial_age: rules::initial_age(headers, self.request_time, now),
            lifetime: freshness.lifetime,
            must_revalidate: freshness.must_revalidate,
            vary,
        };
        if let Err(e) = filler.head(&meta, headers) {
            tracing::warn!("cache: {e}");
            return After::Pass(None);
        }
        if self.stale.is_some() {
            self.status = format!("gateway; fwd=stale; fwd-status={}; stored", status.as_u16());
        } else {
            self.status.push_str("; stored");
        }
        After::Pass(Some(Box::new(filler)))
    }

    /// A `304` for the stale entry: its headers updated, fresh again, and served.
    fn refresh(&mut self, fresh: &HeaderMap, now: i64) -> Option<Hit> {
        let stale = self.stale.take()?;
        let mut headers = stale.headers.clone();
        for name in fresh.keys() {
            if name == header::CONTENT_LENGTH {
                continue;
            }
            headers.remove(name);
            for value in fresh.get_all(name) {
                headers.append(name.clone(), value.clone());
            }
        }
        let status = StatusCode::from_u16(stale.meta.status).unwrap_or(StatusCode::OK);
        let freshness = rules::storable(
            &Method::GET,
            &self.request,
            status,
            &headers,
            self.settings.ttl,
            now,
        )
        .ok()?;
        let meta = Meta {
            response_time: now,
            initial_age: rules::initial_age(fresh, self.request_time, now),
            lifetime: freshness.lifetime,
            must_revalidate: freshness.must_revalidate,
            ..stale.meta.clone()
        };
        if let Err(e) = entry::rewrite_head(&stale, &self.path, &meta, &headers) {
            tracing::warn!("cache: {}: {e}", self.path.display());
        }
        self.filler = None;
        let refreshed = Entry {
            meta,
            headers,
            ..stale
        };
        let cache_status = format!(
            "gateway; fwd=stale; fwd-status=304; ttl={}",
            refreshed.meta.ttl(now)
        );
        Some(hit(
            refreshed,
            now,
            self.method == Method::HEAD,
            cache_status,
        ))
    }
}
