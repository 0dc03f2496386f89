//! The checks every section uses: a place for each error, sizes, durations, timeouts,
//! counts, header tables, addresses and files, each with its bounds.

use super::names::resolve;
use super::Validator;
use super::{line_column, ConfigError};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

impl Validator<'_> {
    /// `FILE:LINE:COLUMN: KEY`, the way errors name a place.
    pub(super) fn place(&self, span: Range<usize>, key: &str) -> String {
        let (line, column) = line_column(self.text, span.start);
        format!("{}:{line}:{column}: {key}", self.file.display())
    }

    pub(super) fn error(&mut self, span: Range<usize>, key: &str, message: impl Into<String>) {
        let (line, column) = line_column(self.text, span.start);
        self.errors.push(ConfigError {
            file: self.file.clone(),
            line,
            column,
            key: key.to_string(),
            message: message.into(),
        });
    }

    pub(super) fn size(&mut self, value: &Option<Spanned<String>>, key: &str) -> Option<u64> {
        let value = value.as_ref()?;
        match parse_size(value.get_ref()) {
            Ok(n) => Some(n as u64),
            Err(e) => {
                self.error(value.span(), key, e);
                None
            }
        }
    }

    /// Header names and values of a route's header table or list.
    pub(super) fn header_names(
        &mut self,
        names: &Option<Spanned<Vec<String>>>,
        key: &str,
    ) -> Vec<http::HeaderName> {
        let mut out = Vec::new();
        let Some(names) = names else { return out };
        for name in names.get_ref() {
            match http::HeaderName::from_bytes(name.as_bytes()) {
                Ok(n) => out.push(n),
                Err(_) => self.error(names.span(), key, format!("{name:?} is not a header name")),
            }
        }
        out
    }

    pub(super) fn header_table(
        &mut self,
        table: &Option<Spanned<std::collections::BTreeMap<String, String>>>,
        key: &str,
    ) -> Vec<(http::HeaderName, http::HeaderValue)> {
        let mut out = Vec::new();
        let Some(table) = table else { return out };
        for (name, value) in table.get_ref() {
            let parsed = (
                http::HeaderName::from_bytes(name.as_bytes()),
                http::HeaderValue::from_str(value),
            );
            match parsed {
                (Ok(n), Ok(v)) => out.push((n, v)),
                (Err(_), _) => {
                    self.error(table.span(), key, format!("{name:?} is not a header name"))
                }
                (_, Err(_)) => self.error(
                    table.span(),
                    key,
                    format!("the value of {name:?} is not a header value"),
                ),
            }
        }
        out
    }

    pub(super) fn duration(
        &mut self,
        value: &Option<Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Duration {
        let Some(value) = value else { return default };
        match parse_duration(value.get_ref()) {
            Ok(d) => d,
            Err(msg) => {
                self.error(value.span(), key, msg);
                default
            }
        }
    }

    /// A duration that must not be zero: a zero timeout would fail everything at once
    /// (a head in two packets, every connect).
    pub(super) fn timeout(
        &mut self,
        value: &Option<Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Duration {
        let d = self.duration(value, key, default);
        if d.is_zero() {
            let span = value.as_ref().map_or(0..0, |v| v.span());
            self.error(span, key, "must be more than 0 (e.g. \"10s\")");
            return default;
        }
        d
    }

    pub(super) fn positive(
        &mut self,
        value: &Option<Spanned<i64>>,
        key: &str,
        default: u32,
    ) -> u32 {
        let Some(value) = value else { return default };
        match u32::try_from(*value.get_ref()) {
            Ok(n) if n > 0 => n,
            _ => {
                self.error(
                    value.span(),
                    key,
                    format!("must be a whole number from 1 to {}", u32::MAX),
                );
                default
            }
        }
    }

    pub(super) fn socket_addr(&mut self, value: &Spanned<String>, key: &str) -> Option<SocketAddr> {
        match resolve(value.get_ref()) {
            Ok(addr) => Some(addr),
            Err(msg) => {
                self.error(value.span(), key, msg);
                None
            }
        }
    }

    pub(super) fn readable_file(
        &mut self,
        value: &Spanned<String>,
        key: &str,
        base: &Path,
    ) -> Option<PathBuf> {
        let path = base.join(value.get_ref());
        match std::fs::File::open(&path) {
            Ok(_) => Some(path),
            Err(e) => {
                self.error(
                    value.span(),
                    key,
                    format!("cannot read {}: {e}", path.display()),
                );
                None
            }
        }
    }
}

/// A duration with a unit: "500ms", "10s", "2m", "1h".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() || !s.ends_with(|c: char| c.is_ascii_alphabetic()) {
        return Err(format!(
            "{s:?} is not a duration with a unit, like \"500ms\", \"10s\" or \"2m\""
        ));
    }
    let d = humantime::parse_duration(s).map_err(|e| {
        format!("{s:?} is not a duration ({e}); write e.g. \"500ms\", \"10s\" or \"2m\"")
    })?;
    if d > MAX_DURATION {
        return Err(format!("{s:?} is longer than the longest allowed, 30 days"));
    }
    Ok(d)
}

/// The longest duration any key takes: deadlines are the clock plus a duration, which
/// must not overflow (and nobody means a timeout of years).
pub const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);

/// A size: bytes, or with `k`, `m` or `g` (powers of 1024): `"512"`, `"64k"`, `"10m"`.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let (digits, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => (&s[..i], &s[i..]),
        None => (s, ""),
    };
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        _ => {
            return Err(format!(
                "{s:?} is not a size; write e.g. \"512\", \"64k\" or \"10m\""
            ))
        }
    };
    let n: usize = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a size; write e.g. \"512\", \"64k\" or \"10m\""))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}
