//! An app's log: its instances' stdout and stderr, line by line, each line prefixed with
//! the time, the app, the instance, its pid and the stream, appended to the app's `log`
//! (reopened on `SIGUSR1`, like the access log) or written to the gateway's stderr.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncReadExt};

/// A line longer than this is written in pieces: an instance that prints without
/// newlines cannot grow the supervisor's memory.
const MAX_LINE: usize = 16 * 1024;

pub struct AppLog {
    /// The path (none: the gateway's stderr) and the file open at it.
    target: Mutex<(Option<PathBuf>, Option<std::fs::File>)>,
}

impl AppLog {
    pub fn open(path: Option<PathBuf>) -> Arc<AppLog> {
        let log = AppLog {
            target: Mutex::new((path, None)),
        };
        log.reopen();
        Arc::new(log)
    }

    /// Writes to `path` from now on (a reload changed `log`), the running instances'
    /// lines included.
    pub fn retarget(&self, path: Option<PathBuf>) {
        let mut target = self.target.lock().unwrap_or_else(|p| p.into_inner());
        if target.0 != path {
            *target = (path, None);
            drop(target);
            self.reopen();
        }
    }

    /// Opens the file again (after logrotate moved it). On failure the lines go to the
    /// gateway's stderr until the next reopen.
    pub fn reopen(&self) {
        let mut target = self.target.lock().unwrap_or_else(|p| p.into_inner());
        let Some(path) = target.0.clone() else { return };
        let opened = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path);
        target.1 = match opened {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::error!("app log {}: {e}", path.display());
                None
            }
        };
    }

    fn write(&self, prefix: &str, line: &[u8]) {
        let mut out = Vec::with_capacity(prefix.len() + line.len() + 32);
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
        let _ = write!(out, "{now} {prefix}: ");
        out.extend_from_slice(line);
        out.push(b'\n');
        let mut target = self.target.lock().unwrap_or_else(|p| p.into_inner());
        let written = match target.1.as_mut() {
            Some(f) => f.write_all(&out),
            None => std::io::stderr().write_all(&out),
        };
        if let Err(e) = written {
            tracing::warn!("app log: {e}");
        }
    }
}

/// Copies `stream` into `log` line by line until the instance closes it. `prefix` names
/// the instance and the stream (`web#1 4242 out`).
pub async fn copy_lines(mut stream: impl AsyncRead + Unpin, log: Arc<AppLog>, prefix: String) {
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        let mut start = 0;
        while let Some(nl) = pending[start..].iter().position(|&b| b == b'\n') {
            let line = &pending[start..start + nl];
            write_pieces(&log, &prefix, line.strip_suffix(b"\r").unwrap_or(line));
            start += nl + 1;
        }
        pending.drain(..start);
        if pending.len() >= MAX_LINE {
            let whole = pending.len() - pending.len() % MAX_LINE;
            write_pieces(&log, &prefix, &pending[..whole]);
            pending.drain(..whole);
        }
    }
    if !pending.is_empty() {
        write_pieces(&log, &prefix, &pending);
    }
}

fn write_pieces(log: &AppLog, prefix: &str, line: &[u8]) {
    for piece in line.chunks(MAX_LINE) {
        log.write(prefix, piece);
    }
    if line.is_empty() {
        log.write(prefix, line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_prefixed_and_long_ones_split() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        let log = AppLog::open(Some(path.clone()));
        let long = "x".repeat(MAX_LINE + 10);
        let input = format!("one\r\ntwo\n{long}\nlast without newline");
        copy_lines(input.as_bytes(), log.clone(), "web#0 1 out".into()).await;
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(lines[0].ends_with(" web#0 1 out: one"), "{}", lines[0]);
        assert!(lines[1].ends_with(": two"));
        assert!(lines[2].ends_with(&"x".repeat(MAX_LINE)));
        assert!(lines[3].ends_with(": xxxxxxxxxx"));
        assert!(lines[4].ends_with(": last without newline"));
        // Reopened after a rotation: the lines go to the new file.
        std::fs::rename(&path, dir.path().join("app.log.1")).unwrap();
        log.reopen();
        copy_lines(&b"after\n"[..], log.clone(), "web#0 1 err".into()).await;
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .ends_with("web#0 1 err: after\n"));
        // A reload names another file: the same instances' lines go there.
        let other = dir.path().join("other.log");
        log.retarget(Some(other.clone()));
        copy_lines(&b"moved\n"[..], log, "web#0 1 out".into()).await;
        assert!(std::fs::read_to_string(&other)
            .unwrap()
            .ends_with("out: moved\n"));
    }
}
