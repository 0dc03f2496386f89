//! The access log: one line per request, written in one `write` once the response is done,
//! in nginx's combined format (with the gateway's fields appended) or as JSON.

use crate::config::{AccessLogFormat, AccessLogTarget};
use serde::Serialize;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// What one log line says about one request.
pub struct Entry<'a> {
    pub time: SystemTime,
    pub client: SocketAddr,
    pub method: &'a str,
    pub target: &'a str,
    pub version: http::Version,
    pub status: u16,
    pub bytes_sent: u64,
    pub referer: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub upstream: Option<&'a str>,
    pub upstream_time: Option<Duration>,
    pub upstream_status: Option<u16>,
    pub request_id: Option<&'a str>,
    /// The W3C trace the request belongs to (32 hex digits).
    pub trace_id: Option<&'a str>,
    pub request_time: Duration,
    /// Why the request failed or was cut short; `None` for a clean request.
    pub error: Option<&'a str>,
    /// Servers tried before `upstream` (or ending with it, when it failed too), each with
    /// why it was left.
    pub tries: &'a [(String, String)],
}

impl Entry<'_> {
    /// Every server tried, in order, comma-separated (nginx's `$upstream_addr`); only a
    /// request that was retried needs a new string for it.
    fn upstream_addr(&self) -> Option<std::borrow::Cow<'_, str>> {
        if self.tries.is_empty() {
            return self.upstream.map(std::borrow::Cow::Borrowed);
        }
        let mut names: Vec<&str> = self.tries.iter().map(|(name, _)| name.as_str()).collect();
        if let Some(last) = self.upstream {
            if names.last() != Some(&last) {
                names.push(last);
            }
        }
        Some(names.join(",").into())
    }
}

enum Sink {
    Off,
    Stdout,
    Stderr,
    File(File),
}

pub struct AccessLog {
    target: AccessLogTarget,
    format: AccessLogFormat,
    sink: Mutex<Sink>,
}

impl AccessLog {
    pub fn open(target: &AccessLogTarget, format: AccessLogFormat) -> std::io::Result<Self> {
        let sink = Self::open_sink(target)?;
        Ok(AccessLog {
            target: target.clone(),
            format,
            sink: Mutex::new(sink),
        })
    }

    fn open_sink(target: &AccessLogTarget) -> std::io::Result<Sink> {
        Ok(match target {
            AccessLogTarget::Off => Sink::Off,
            AccessLogTarget::Stdout => Sink::Stdout,
            AccessLogTarget::Stderr => Sink::Stderr,
            AccessLogTarget::File(path) => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                Sink::File(OpenOptions::new().create(true).append(true).open(path)?)
            }
        })
    }

    pub fn enabled(&self) -> bool {
        self.target != AccessLogTarget::Off
    }

    /// Opens the file again (after logrotate moved it).
    pub fn reopen(&self) -> std::io::Result<()> {
        let sink = Self::open_sink(&self.target)?;
        *self.sink.lock().unwrap_or_else(|p| p.into_inner()) = sink;
        Ok(())
    }

    pub fn write(&self, entry: &Entry<'_>) {
        if !self.enabled() {
            return;
        }
        let line = match self.format {
            AccessLogFormat::Combined => combined(entry),
            AccessLogFormat::Json => json(entry),
        };
        let mut sink = self.sink.lock().unwrap_or_else(|p| p.into_inner());
        let result = match &mut *sink {
            Sink::Off => Ok(()),
            Sink::Stdout => std::io::stdout().lock().write_all(line.as_bytes()),
            Sink::Stderr => std::io::stderr().lock().write_all(line.as_bytes()),
            Sink::File(f) => f.write_all(line.as_bytes()),
        };
        if let Err(e) = result {
            tracing::warn!("access log write failed: {e}");
        }
    }
}

fn version_str(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// nginx's `combined`, then `upstream=… upstream_time=… request_time=…` and, for a
/// failed request, `error="…"`.
fn combined(e: &Entry<'_>) -> String {
    let mut line = String::with_capacity(256);
    let time = chrono::DateTime::<chrono::Local>::from(e.time);
    let _ = write!(
        line,
        "{} - - [{}] \"{} {} {}\" {} {} \"{}\" \"{}\"",
        e.client.ip(),
        time.format("%d/%b/%Y:%H:%M:%S %z"),
        e.method,
        Escaped(e.target),
        version_str(e.version),
        e.status,
        e.bytes_sent,
        Escaped(e.referer.unwrap_or("-")),
        Escaped(e.user_agent.unwrap_or("-")),
    );
    let _ = write!(
        line,
        " upstream={}",
        e.upstream_addr().as_deref().unwrap_or("-")
    );
    match e.upstream_time {
        Some(t) => {
            let _ = write!(line, " upstream_time={:.3}", t.as_secs_f64());
        }
        None => line.push_str(" upstream_time=-"),
    }
    let _ = write!(line, " request_time={:.3}", e.request_time.as_secs_f64());
    match e.upstream_status {
        Some(status) => {
            let _ = write!(line, " upstream_status={status}");
        }
        None => line.push_str(" upstream_status=-"),
    }
    let _ = write!(line, " request_id={}", Escaped(e.request_id.unwrap_or("-")));
    if let Some(error) = e.error {
        let _ = write!(line, " error=\"{}\"", Escaped(error));
    }
    if !e.tries.is_empty() {
        line.push_str(" tries=\"");
        for (i, (server, why)) in e.tries.iter().enumerate() {
            let sep = if i == 0 { "" } else { "; " };
            let _ = write!(line, "{sep}{server}: {}", Escaped(why));
        }
        line.push('"');
    }
    line.push('\n');
    line
}

/// Quotes and backslashes escaped, control bytes as \xNN: a client cannot forge a line.
struct Escaped<'a>(&'a str);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for c in self.0.chars() {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                c if c.is_control() => write!(f, "\\x{:02X}", c as u32)?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

#[derive(Serialize)]
struct JsonLine<'a> {
    time: String,
    client: String,
    method: &'a str,
    uri: &'a str,
    protocol: &'static str,
    status: u16,
    bytes_sent: u64,
    referer: Option<&'a str>,
    user_agent: Option<&'a str>,
    request_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_id: Option<&'a str>,
    upstream: Option<&'a str>,
    upstream_addr: Option<std::borrow::Cow<'a, str>>,
    upstream_status: Option<u16>,
    upstream_time_ms: Option<f64>,
    total_time_ms: f64,
    error: Option<&'a str>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    tries: Vec<JsonTry<'a>>,
}

#[derive(Serialize)]
struct JsonTry<'a> {
    server: &'a str,
    error: &'a str,
}

fn json(e: &Entry<'_>) -> String {
    let line = JsonLine {
        time: chrono::DateTime::<chrono::Utc>::from(e.time)
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        client: e.client.ip().to_string(),
        method: e.method,
        uri: e.target,
        protocol: version_str(e.version),
        status: e.status,
        bytes_sent: e.bytes_sent,
        referer: e.referer,
        user_agent: e.user_agent,
        request_id: e.request_id,
        trace_id: e.trace_id,
        upstream: e.upstream,
        upstream_addr: e.upstream_addr(),
        upstream_status: e.upstream_status,
        upstream_time_ms: e.upstream_time.map(|t| t.as_secs_f64() * 1000.0),
        total_time_ms: e.request_time.as_secs_f64() * 1000.0,
        error: e.error,
        tries: e
            .tries
            .iter()
            .map(|(server, error)| JsonTry { server, error })
            .collect(),
    };
    let mut s = serde_json::to_string(&line).unwrap_or_default();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry<'static> {
        Entry {
            time: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            client: "10.1.2.3:5555".parse().unwrap(),
            method: "GET",
            target: "/a\"b",
            version: http::Version::HTTP_11,
            status: 502,
            bytes_sent: 11,
            referer: None,
            user_agent: Some("curl/8.0"),
            upstream: Some("127.0.0.1:3001"),
            upstream_time: Some(Duration::from_millis(3)),
            upstream_status: Some(502),
            request_id: Some("req-1"),
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736"),
            request_time: Duration::from_millis(4),
            error: Some("upstream closed the connection"),
            tries: &[],
        }
    }

    #[test]
    fn combined_line_has_standard_fields_then_ours() {
        let line = combined(&entry());
        assert!(line.starts_with("10.1.2.3 - - ["), "{line}");
        assert!(
            line.contains(
                "\"GET /a\\\"b HTTP/1.1\" 502 11 \"-\" \"curl/8.0\" upstream=127.0.0.1:3001 upstream_time=0.003 request_time=0.004 upstream_status=502 request_id=req-1 error=\"upstream closed the connection\"\n"
            ),
            "{line}"
        );
    }

    #[test]
    fn json_line_parses() {
        let v: serde_json::Value = serde_json::from_str(&json(&entry())).unwrap();
        assert_eq!(v["status"], 502);
        assert_eq!(v["uri"], "/a\"b");
        assert_eq!(v["request_id"], "req-1");
        assert_eq!(v["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(v["upstream_status"], 502);
        assert_eq!(v["upstream_time_ms"], 3.0);
        assert_eq!(v["total_time_ms"], 4.0);
        assert_eq!(v["error"], "upstream closed the connection");
    }

    #[test]
    fn the_servers_tried_and_why_are_logged() {
        let tries = [
            ("127.0.0.1:3002".to_string(), "answered 503".to_string()),
            ("127.0.0.1:3003".to_string(), "connect refused".to_string()),
        ];
        let mut e = entry();
        e.tries = &tries;
        e.error = None;
        let line = combined(&e);
        assert!(
            line.contains(" upstream=127.0.0.1:3002,127.0.0.1:3003,127.0.0.1:3001 "),
            "{line}"
        );
        assert!(
            line.ends_with(
                " tries=\"127.0.0.1:3002: answered 503; 127.0.0.1:3003: connect refused\"\n"
            ),
            "{line}"
        );
        let v: serde_json::Value = serde_json::from_str(&json(&e)).unwrap();
        assert_eq!(
            v["upstream_addr"],
            "127.0.0.1:3002,127.0.0.1:3003,127.0.0.1:3001"
        );
        assert_eq!(v["tries"][0]["error"], "answered 503");
        assert_eq!(v["upstream"], "127.0.0.1:3001");
    }

    #[test]
    fn control_bytes_cannot_break_a_line() {
        let mut e = entry();
        e.target = "/x\ny";
        assert_eq!(combined(&e).matches('\n').count(), 1);
    }
}
