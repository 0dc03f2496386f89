//! Cached responses on disk, one file per key (or per variant of a key), shared by every
//! worker and kept across reloads, restarts and upgrades:
//!
//! ```text
//! DIR/ab/abcdef…        SHA-256 of the key: "GWCACHE1", body length (u64 LE), head length
//!                       (u32 LE), the head (a JSON line of [`Meta`], then the header lines),
//!                       the body
//! DIR/ab/abcdef….fill   the same, being written by the one request that fills it; renamed
//!                       over the entry once complete, so no reader ever sees a partial one
//! DIR/ab/abcdef…        (for a key whose response has `Vary`) "GWVARY01" and the names it
//!                       varies on; each variant is an entry under the key plus the values
//! ```
//!
//! A fill's body length reads [`FILLING`] until it is complete; other requests for the key
//! stream from the `.fill` as it grows (request coalescing across workers). Its writer
//! holds an exclusive `flock` on it, which the kernel releases if the writer dies: a fill
//! nobody holds is taken over, and whoever streams from it stops (the entry never becomes
//! complete). A fill given up (a response not to store, an upstream error, too large) is
//! marked [`ABANDONED`] and unlinked.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

const MAGIC: &[u8; 8] = b"GWCACHE1";
const VARY_MAGIC: &[u8; 8] = b"GWVARY01";
const PRELUDE: u64 = 20;
/// The first read of an entry: its head, and the whole of a small body.
pub const FIRST_READ: usize = 8192;
/// The body length of a fill still being written.
pub const FILLING: u64 = u64::MAX;
/// The body length of a fill its writer gave up.
pub const ABANDONED: u64 = u64::MAX - 1;
/// A fill just created may not be locked yet by its writer: younger than this, it is
/// taken for alive.
const JUST_CREATED: Duration = Duration::from_secs(1);
/// The most a head may take (headers are bounded by the upstream's limits anyway).
const MAX_HEAD: u64 = 1 << 20;

/// What the cache knows of a stored response besides its headers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Meta {
    /// The key it was stored under (host, path and query), for purge by prefix.
    pub key: String,
    pub status: u16,
    /// When its response arrived, in seconds since the epoch.
    pub response_time: i64,
    /// Its age then (RFC 9111, 4.2.3).
    pub initial_age: i64,
    /// Seconds it is fresh from age 0.
    pub lifetime: u64,
    pub must_revalidate: bool,
    /// The request's values of the headers the response varies on.
    #[serde(default)]
    pub vary: Vec<(String, String)>,
}

impl Meta {
    /// Its age at `now`.
    pub fn age(&self, now: i64) -> i64 {
        self.initial_age + (now - self.response_time).max(0)
    }

    /// Seconds of freshness left at `now` (negative: stale for that long).
    pub fn ttl(&self, now: i64) -> i64 {
        self.lifetime as i64 - self.age(now)
    }
}

/// A complete entry, open.
pub struct Entry {
    pub file: File,
    pub meta: Meta,
    pub headers: HeaderMap,
    pub body_offset: u64,
    pub body_len: u64,
    /// When it was last marked used (its modification time).
    pub used: std::time::SystemTime,
    /// Its file's inode: another file at the same path is another entry.
    pub inode: u64,
    /// The body, when the first read of the file took it all.
    pub inline: Option<Bytes>,
}

/// What is on disk at a key's path. Returned once per lookup and taken apart at once:
/// boxing the entry would cost an allocation per hit.
#[allow(clippy::large_enum_variant)]
pub enum OnDisk {
    Entry(Entry),
    /// The key's responses vary on these request headers.
    Vary(Vec<String>),
    Nothing,
}

/// Where the entry of `key` lives under `dir`.
pub fn path_of(dir: &Path, key: &str) -> PathBuf {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    let mut hex = String::with_capacity(64);
    for b in digest.as_ref() {
        hex.push(HEX[usize::from(b >> 4)] as char);
        hex.push(HEX[usize::from(b & 15)] as char);
    }
    let mut path = dir.join(&hex[..2]);
    path.push(hex);
    path
}

pub fn fill_path(path: &Path) -> PathBuf {
    path.with_extension("fill")
}

/// Reads what is at `path`: an entry whose body is complete, a Vary marker, or nothing
/// usable.
pub fn read(path: &Path) -> OnDisk {
    let Ok(file) = File::open(path) else {
        return OnDisk::Nothing;
    };
    let mut first = vec![0u8; FIRST_READ];
    let Ok(n) = file.read_at(&mut first, 0) else {
        return OnDisk::Nothing;
    };
    first.truncate(n);
    if first.starts_with(VARY_MAGIC) {
        let names = String::from_utf8_lossy(&first[8..]);
        return OnDisk::Vary(names.lines().map(str::to_string).collect());
    }
    match read_head(&file, &first) {
        Some((meta, headers, body_len, head_len)) if body_len < ABANDONED => {
            let body_offset = PRELUDE + head_len;
            let Ok(stat) = file.metadata() else {
                return OnDisk::Nothing;
            };
            if stat.len() != body_offset + body_len {
                return OnDisk::Nothing;
            }
            let end = body_offset + body_len;
            let inline = (end <= first.len() as u64)
                .then(|| Bytes::copy_from_slice(&first[body_offset as usize..end as usize]));
            OnDisk::Entry(Entry {
                file,
                meta,
                headers,
                body_offset,
                body_len,
                used: stat.modified().unwrap_or(std::time::UNIX_EPOCH),
                inode: std::os::unix::fs::MetadataExt::ino(&stat),
                inline,
            })
        }
        _ => OnDisk::Nothing,
    }
}

/// The prelude and head: (meta, headers, body length, head length). `first` is what was
/// read from the start already.
fn read_head(file: &File, first: &[u8]) -> Option<(Meta, HeaderMap, u64, u64)> {
    if first.len() < PRELUDE as usize || &first[..8] != MAGIC {
        return None;
    }
    let body_len = u64::from_le_bytes(first[8..16].try_into().ok()?);
    let head_len = u32::from_le_bytes(first[16..20].try_into().ok()?) as u64;
    if head_len == 0 || head_len > MAX_HEAD {
        return None;
    }
    let end = (PRELUDE + head_len) as usize;
    let head = if end <= first.len() {
        first[PRELUDE as usize..end].to_vec()
    } else {
        let mut head = vec![0; head_len as usize];
        file.read_exact_at(&mut head, PRELUDE).ok()?;
        head
    };
    let (meta, headers) = decode_head(&head)?;
    Some((meta, headers, body_len, head_len))
}

fn encode_head(meta: &Meta, headers: &HeaderMap) -> Vec<u8> {
    let mut out = serde_json::to_vec(meta).unwrap_or_default();
    out.push(b'\n');
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn decode_head(head: &[u8]) -> Option<(Meta, HeaderMap)> {
    let newline = head.iter().position(|&b| b == b'\n')?;
    let meta: Meta = serde_json::from_slice(&head[..newline]).ok()?;
    let mut headers = HeaderMap::new();
    for line in head[newline + 1..].split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        let colon = line.iter().position(|&b| b == b':')?;
        let name = HeaderName::from_bytes(&line[..colon]).ok()?;
        let value = HeaderValue::from_bytes(line[colon + 1..].trim_ascii_start()).ok()?;
        headers.append(name, value);
    }
    Some((meta, headers))
}

/// Writes `bytes` as `path` whole: a file beside it, renamed over it.
fn replace_whole(path: &Path, bytes: &[u8]) -> io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let staged = path.with_extension(format!("new{}", fastrand::u32(..)));
    let result = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&staged)
        .and_then(|mut f| f.write_all(bytes))
        .and_then(|()| std::fs::rename(&staged, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&staged);
    }
    result
}

/// Marks `path` as the place of a key whose responses vary on `names`.
pub fn write_vary(path: &Path, names: &[String]) -> io::Result<()> {
    let mut bytes = VARY_MAGIC.to_vec();
    bytes.extend_from_slice(names.join("\n").as_bytes());
    replace_whole(path, &bytes)
}

/// An entry's head replaced (a `304` refreshed it): the body copied into a new file by the
/// kernel, renamed over the old one.
pub fn rewrite_head(
    entry: &Entry,
    path: &Path,
    meta: &Meta,
    headers: &HeaderMap,
) -> io::Result<()> {
    let staged = path.with_extension(format!("new{}", fastrand::u32(..)));
    let head = encode_head(meta, headers);
    let result = (|| {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&staged)?;
        let mut prelude = MAGIC.to_vec();
        prelude.extend_from_slice(&entry.body_len.to_le_bytes());
        prelude.extend_from_slice(&(head.len() as u32).to_le_bytes());
        prelude.extend_from_slice(&head);
        file.write_all_at(&prelude, 0)?;
        let mut copied = 0;
        let mut chunk = vec![0u8; 64 * 1024];
        while copied < entry.body_len {
            let want = (entry.body_len - copied).min(chunk.len() as u64) as usize;
            let n = entry
                .file
                .read_at(&mut chunk[..want], entry.body_offset + copied)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            file.write_all_at(&chunk[..n], prelude.len() as u64 + copied)?;
            copied += n as u64;
        }
        std::fs::rename(&staged, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&staged);
    }
    result
}

/// The one writer of a key's entry.
pub struct Filler {
    file: File,
    fill: PathBuf,
    path: PathBuf,
    body_offset: u64,
    written: u64,
    max: u64,
    done: bool,
    /// Where the bytes of a completed entry are added up.
    counted: Option<&'static std::sync::atomic::AtomicU64>,
}

impl Filler {
    /// The right to fill `path`, or `None` while another request fills it. A fill whose
    /// writer died (no lock on it) is taken over.
    pub fn begin(path: &Path, max: u64) -> io::Result<Option<Filler>> {
        let fill = fill_path(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        for _ in 0..2 {
            match std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&fill)
            {
                Ok(file) => {
                    file.try_lock().map_err(io::Error::from)?;
                    return Ok(Some(Filler {
                        file,
                        fill,
                        path: path.to_path_buf(),
                        body_offset: 0,
                        written: 0,
                        max,
                        done: false,
                        counted: None,
                    }));
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    if !writer_gone(&fill) {
                        return Ok(None);
                    }
                    let _ = std::fs::remove_file(&fill);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// The most it stores.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The complete entry goes to `path` instead (a variant of the key).
    pub fn retarget(&mut self, path: &Path) {
        if let Some(parent) = path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        self.path = path.to_path_buf();
    }

    /// The head: from now on waiting requests can answer.
    pub fn head(&mut self, meta: &Meta, headers: &HeaderMap) -> io::Result<()> {
        let head = encode_head(meta, headers);
        let mut prelude = MAGIC.to_vec();
        prelude.extend_from_slice(&FILLING.to_le_bytes());
        prelude.extend_from_slice(&(head.len() as u32).to_le_bytes());
        prelude.extend_from_slice(&head);
        self.file.write_all_at(&prelude, 0)?;
        self.body_offset = prelude.len() as u64;
        Ok(())
    }

    /// More of the body; `false` once it is larger than the cache takes (the fill is
    /// given up).
    pub fn write(&mut self, data: &[u8]) -> bool {
        if self.written + data.len() as u64 > self.max {
            return false;
        }
        match self
            .file
            .write_all_at(data, self.body_offset + self.written)
        {
            Ok(()) => {
                self.written += data.len() as u64;
                true
            }
            Err(e) => {
                tracing::warn!("cache: {}: {e}", self.fill.display());
                false
            }
        }
    }

    /// The body is complete: the entry takes its place (whole, or not at all).
    pub fn finish(mut self) -> io::Result<u64> {
        self.file.write_all_at(&self.written.to_le_bytes(), 8)?;
        std::fs::rename(&self.fill, &self.path)?;
        self.done = true;
        let size = self.body_offset + self.written;
        if let Some(counted) = self.counted {
            counted.fetch_add(size, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(size)
    }

    /// Adds the entry's size to `counter` once it is complete.
    pub fn count_into(mut self, counter: &'static std::sync::atomic::AtomicU64) -> Filler {
        self.counted = Some(counter);
        self
    }
}

impl Drop for Filler {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.file.write_all_at(&ABANDONED.to_le_bytes(), 8);
            let _ = std::fs::remove_file(&self.fill);
        }
    }
}

/// Whether the fill at `fill` has lost its writer: nobody holds its lock, and it is not
/// brand new.
fn writer_gone(fill: &Path) -> bool {
    let Ok(file) = File::open(fill) else {
        return false;
    };
    let young = file
        .metadata()
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_none_or(|age| age < JUST_CREATED);
    !young && file.try_lock_shared().is_ok()
}

/// Whether the writer of the open fill `file` has gone without finishing: nobody holds
/// its lock, and its length still says it is being filled (a writer that just finished
/// wrote the length before letting go).
fn abandoned_by_writer(file: &File) -> bool {
    if file.try_lock_shared().is_err() {
        return false;
    }
    let _ = file.unlock();
    let mut len = [0u8; 8];
    file.read_exact_at(&mut len, 8).is_err() || u64::from_le_bytes(len) == FILLING
}

/// A request reading a fill another request writes.
pub struct Tail {
    file: File,
    offset: u64,
    body_offset: u64,
    /// When it last grew (or started).
    grew: tokio::time::Instant,
    /// How long it may stand still.
    patience: Duration,
    tick: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    /// The next wait while the fill stands still.
    wait: Duration,
    /// Read into, reused: a waiting request allocates nothing while nothing comes.
    buffer: Vec<u8>,
}

/// How often a waiting request looks at the fill again: soon after it last grew, then
/// less and less often (up to [`SLOWEST_TICK`]) while it stands still, so that a hundred
/// requests waiting on a slow upstream cost little.
const TICK: Duration = Duration::from_millis(2);
const SLOWEST_TICK: Duration = Duration::from_millis(50);

impl Tail {
    /// Waits for the fill at `path` to have its head, for `patience` at most: `None` when
    /// it is given up, gone, or too slow (the request then goes upstream itself).
    pub async fn head(path: &Path, patience: Duration) -> Option<(Tail, Meta, HeaderMap)> {
        let fill = fill_path(path);
        let file = File::open(&fill).ok()?;
        let deadline = tokio::time::Instant::now() + patience;
        let mut tick = TICK;
        loop {
            let mut first = vec![0u8; 4096];
            let n = file.read_at(&mut first, 0).ok()?;
            first.truncate(n);
            if let Some((meta, headers, body_len, head_len)) = read_head(&file, &first) {
                if body_len == ABANDONED {
                    return None;
                }
                let body_offset = PRELUDE + head_len;
                let tail = Tail {
                    file,
                    offset: body_offset,
                    body_offset,
                    grew: tokio::time::Instant::now(),
                    patience,
                    tick: None,
                    wait: TICK,
                    buffer: Vec::new(),
                };
                return Some((tail, meta, headers));
            }
            if tokio::time::Instant::now() >= deadline || abandoned_by_writer(&file) {
                return None;
            }
            tokio::time::sleep(tick).await;
            tick = (tick * 2).min(SLOWEST_TICK);
        }
    }

    /// The next piece of the body; `None` at its end.
    pub fn poll_chunk(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<io::Result<Bytes>>> {
        use std::task::Poll;
        loop {
            self.buffer.resize(64 * 1024, 0);
            let n = match self.file.read_at(&mut self.buffer, self.offset) {
                Ok(n) => n,
                Err(e) => return Poll::Ready(Some(Err(e))),
            };
            if n > 0 {
                self.offset += n as u64;
                self.grew = tokio::time::Instant::now();
                self.wait = TICK;
                return Poll::Ready(Some(Ok(Bytes::copy_from_slice(&self.buffer[..n]))));
            }
            let mut len = [0u8; 8];
            if let Err(e) = self.file.read_exact_at(&mut len, 8) {
                return Poll::Ready(Some(Err(e)));
            }
            match u64::from_le_bytes(len) {
                ABANDONED => {
                    return Poll::Ready(Some(Err(io::Error::other(
                        "the request filling the cache gave up",
                    ))))
                }
                FILLING => {}
                len if self.offset >= self.body_offset + len => return Poll::Ready(None),
                // Complete, but more was written than read: read again.
                _ => continue,
            }
            if abandoned_by_writer(&self.file) {
                return Poll::Ready(Some(Err(io::Error::other(
                    "the request filling the cache is gone",
                ))));
            }
            if self.grew.elapsed() > self.patience {
                return Poll::Ready(Some(Err(io::Error::other(
                    "the response filling the cache stopped coming",
                ))));
            }
            let wait = self.wait;
            self.wait = (wait * 2).min(SLOWEST_TICK);
            let tick = self
                .tick
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(wait)));
            tick.as_mut().reset(tokio::time::Instant::now() + wait);
            if tick.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

use std::future::Future;

/// A complete entry or Vary marker on disk (fills and half-written files are not listed).
pub struct Listed {
    pub path: PathBuf,
    pub size: u64,
    pub used: std::time::SystemTime,
}

/// Every entry and marker under `dir`.
pub fn list(dir: &Path) -> Vec<Listed> {
    let mut out = Vec::new();
    let Ok(subdirs) = std::fs::read_dir(dir) else {
        return out;
    };
    for sub in subdirs.flatten() {
        let Ok(files) = std::fs::read_dir(sub.path()) else {
            continue;
        };
        for file in files.flatten() {
            let name = file.file_name();
            if name.len() != 64 {
                continue; // a fill, or a file being renamed into place
            }
            if let Ok(meta) = file.metadata() {
                out.push(Listed {
                    path: file.path(),
                    size: meta.len(),
                    used: meta.modified().unwrap_or(std::time::UNIX_EPOCH),
                });
            }
        }
    }
    out
}

/// Removes the entry of `key` (with every variant when it varies), or with `prefix` every
/// entry whose key starts with it; how many went.
pub fn purge(dir: &Path, key: &str, prefix: bool) -> usize {
    let mut removed = 0;
    let base = path_of(dir, key);
    let varies = matches!(read(&base), OnDisk::Vary(_));
    if !prefix && !varies {
        return usize::from(std::fs::remove_file(&base).is_ok());
    }
    for listed in list(dir) {
        let matches = match read(&listed.path) {
            OnDisk::Entry(e) if prefix => e.meta.key.starts_with(key),
            OnDisk::Entry(e) => e.meta.key == key,
            // A marker has no key of its own: the exact one is known; with a prefix,
            // its variants go and it is left to point at nothing.
            OnDisk::Vary(_) => listed.path == base,
            OnDisk::Nothing => false,
        };
        if matches && std::fs::remove_file(&listed.path).is_ok() {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Meta {
        Meta {
            key: "example.com/a?b".into(),
            status: 200,
            response_time: 100,
            initial_age: 3,
            lifetime: 60,
            must_revalidate: false,
            vary: Vec::new(),
        }
    }

    #[test]
    fn an_entry_is_read_back_only_once_complete_and_a_given_up_fill_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_of(dir.path(), "example.com/a?b");
        let mut headers = HeaderMap::new();
        headers.insert("content-type", "text/plain".parse().unwrap());
        headers.append("x-many", "1".parse().unwrap());
        headers.append("x-many", "2".parse().unwrap());

        let mut fill = Filler::begin(&path, 1 << 20).unwrap().unwrap();
        assert!(
            Filler::begin(&path, 1 << 20).unwrap().is_none(),
            "one filler"
        );
        fill.head(&meta(), &headers).unwrap();
        assert!(fill.write(b"hello "));
        assert!(matches!(read(&path), OnDisk::Nothing), "not complete yet");
        assert!(fill.write(b"world"));
        fill.finish().unwrap();
        let OnDisk::Entry(entry) = read(&path) else {
            panic!("no entry")
        };
        assert_eq!(entry.meta, meta());
        assert_eq!(entry.headers, headers);
        assert_eq!(entry.body_len, 11);
        let mut body = vec![0; 11];
        entry
            .file
            .read_exact_at(&mut body, entry.body_offset)
            .unwrap();
        assert_eq!(body, b"hello world");
        assert_eq!(entry.meta.age(110), 13);
        assert_eq!(entry.meta.ttl(110), 47);

        let other = path_of(dir.path(), "example.com/other");
        let mut fill = Filler::begin(&other, 4).unwrap().unwrap();
        fill.head(&meta(), &headers).unwrap();
        assert!(!fill.write(b"too long"), "over max_object_size");
        drop(fill);
        assert!(!fill_path(&other).exists());
        assert!(matches!(read(&other), OnDisk::Nothing));

        write_vary(&other, &["accept-language".into()]).unwrap();
        assert!(matches!(read(&other), OnDisk::Vary(v) if v == ["accept-language"]));
    }
}
