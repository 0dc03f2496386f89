//! Turns a config file into a validated runtime [`Config`], or into every error it has,
//! each naming the file, line, column and key.
//!
//! Everything is checked here, before anything binds: a config that loads is one the
//! gateway can run. One module per section, each with its keys' types, their defaults
//! as named constants, and their validation side by side (a new section is a new file):
//!
//! ```text
//! file.rs       the TOML schema (serde only, unknown keys refused)
//! gateway.rs    [gateway] and [admin]
//! listeners.rs  [[listener]] and its TLS certificates
//! routes.rs     [[route]], and its files (root)
//! matching.rs   what a route matches besides host and prefix: path_regex, methods, headers
//! access.rs     address lists: trusted_proxies, allow, deny
//! limits.rs     rate_limit and [redis]
//! compression.rs [compression]
//! upstreams.rs  [upstream.NAME] and its health_check
//! names.rs      server entries by name: lookups, answers, resolver (dns.rs asks DNS)
//! runtime.rs    servers added and removed at run time, laid over the file's
//! validate.rs   what every section checks: places, sizes, durations, headers, files
//! env.rs        ${VAR} substitution before parsing
//! ```

mod access;
mod acme;
mod apps;
mod cache;
mod compression;
mod dns;
mod env;
mod file;
mod gateway;
mod limits;
mod listeners;
mod matching;
mod names;
mod routes;
mod runtime;
mod upstreams;
mod validate;

pub use access::{AccessList, Cidr, CidrList};
pub use acme::{dns_name, AcmeConfig, AcmeStorage, Challenge, DEFAULT_DIRECTORY};
pub use apps::{AppConfig, AppServers, ReadyCheck, DEFAULT_STOP_TIMEOUT};
pub use cache::{CacheConfig, RouteCache};
pub use compression::{Coding, CompressionConfig, DEFAULT_ALGORITHMS};
pub use gateway::*;
pub use limits::{RateKey, RateLimit, RateScope, RedisConfig, MAX_LIMITED_ROUTES};
pub use listeners::{ListenerConfig, TlsFiles, TlsSource};
pub use matching::RouteMatch;
pub use names::{lookup, srv_key, Answers, Found, Lookup, Resolver};
pub use routes::{ErrorPage, Fallback, Files, Redirect, RouteAction, RouteConfig};
pub use runtime::{AddedServer, RuntimeChanges, RuntimeServers};
pub use upstreams::*;
pub use validate::{parse_duration, parse_size, MAX_DURATION};

use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// The validated configuration a gateway runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub gateway: GatewaySettings,
    pub admin: Option<SocketAddr>,
    /// Where the admin address is written (`FILE:LINE:COLUMN: admin.listen`).
    pub admin_at: String,
    pub listeners: Vec<ListenerConfig>,
    pub routes: Vec<RouteConfig>,
    pub upstreams: Vec<UpstreamConfig>,
    /// `[compression]`: none without the table.
    pub compression: Option<CompressionConfig>,
    /// `[redis]`: where global rate limits are counted.
    pub redis: Option<RedisConfig>,
    /// `[acme]`: where certificates for `acme` entries come from.
    pub acme: Option<AcmeConfig>,
    /// `[cache]`: where cached responses are kept.
    pub cache: Option<CacheConfig>,
    /// `[app.NAME]`: the apps whose instances the supervisor runs.
    pub apps: Vec<AppConfig>,
    /// What the server names resolved to when the file was read (an empty list for a
    /// name that did not resolve).
    pub answers: Answers,
    /// What is not wrong but worth saying (a name that does not resolve yet).
    pub warnings: Vec<String>,
}

impl Config {
    /// The files a reload reads: the config file and the certificates and keys it names.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.path.clone()];
        for listener in &self.listeners {
            for tls in &listener.tls {
                if let TlsSource::Files(tls) = tls {
                    files.push(tls.cert.clone());
                    files.push(tls.key.clone());
                }
            }
        }
        files
    }
}

/// One problem in a config file, located where the user can find it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

/// Every error found in one config file.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Reads, parses and validates the file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    load_with_text(path).map(|(config, _)| config)
}

/// Where the gateway of the config file `path` listens for `gatewayctl`, read from the
/// file even when the rest of it is invalid, so that a reload of a broken file reaches
/// the gateway (which says what is wrong and keeps serving). `None` when the file cannot
/// be read as TOML at all.
pub fn control_socket_of(path: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(path).ok()?;
    let text = env::substitute(&text, |name| std::env::var(name).ok()).ok()?;
    let table: toml::Table = text.parse().ok()?;
    let socket = table
        .get("gateway")
        .and_then(|g| g.get("control_socket"))
        .and_then(|s| s.as_str())
        .unwrap_or(DEFAULT_CONTROL_SOCKET);
    Some(config_dir(path).join(socket))
}

/// The folder relative paths in the config file `path` start from: its own.
fn config_dir(path: &Path) -> PathBuf {
    path.parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Like [`load`], and also returns the text that was validated, so the very same text can
/// be handed on (to workers) without reading the file again.
pub fn load_with_text(path: &Path) -> Result<(Config, String), ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            key: String::new(),
            message: format!("cannot read the file: {e}"),
        }])
    })?;
    let text = env::substitute(&text, |name| std::env::var(name).ok()).map_err(|problems| {
        ConfigErrors(
            problems
                .into_iter()
                .map(|(span, message)| {
                    let (line, column) = line_column(&text, span.start);
                    ConfigError {
                        file: path.to_path_buf(),
                        line,
                        column,
                        key: String::new(),
                        message,
                    }
                })
                .collect(),
        )
    })?;
    parse(path, &text).map(|config| (config, text))
}

/// Parses and validates `text` as the contents of `path` (relative paths in it are taken
/// from the directory of `path`).
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigErrors> {
    parse_with(path, text, Lookup::Live)
}

/// The running configuration: `text` with the server names as `answers` has them and
/// the servers changed at run time laid over them (what every process of a gateway
/// serves with).
pub fn with_servers(
    path: &Path,
    text: &str,
    answers: &Answers,
    runtime: &RuntimeServers,
    apps: &AppServers,
) -> Result<Config, ConfigErrors> {
    let mut config = parse_with(path, text, Lookup::Answers(answers))?;
    apps.apply(&mut config);
    runtime.clone().apply(&mut config);
    Ok(config)
}

/// Like [`parse`], with server names looked up as `lookup` says.
pub fn parse_with(path: &Path, text: &str, lookup: Lookup<'_>) -> Result<Config, ConfigErrors> {
    let mut v = Validator {
        file: path.to_path_buf(),
        text,
        errors: Vec::new(),
        lookup,
        resolver: Resolver::System,
        answers: Answers::new(),
        warnings: Vec::new(),
        app_names: Vec::new(),
    };
    let (raw, problems) = deserialize(text);
    for (span, message) in problems {
        let key = key_at(text, span.start);
        v.error(span, &key, message);
    }
    let Some(raw) = raw else {
        return Err(ConfigErrors(v.errors));
    };
    let base = config_dir(path);
    let structural = v.errors.len();
    let config = v.build(raw, &base);
    // The semantic errors come too, so one check names every error; but not one about a
    // key whose line was blanked, or about the entry holding it: it follows from the
    // blanking (`upstream = 5` blanked leaves a route without an upstream).
    let blanked: Vec<String> = v.errors[..structural]
        .iter()
        .map(|e| e.key.clone())
        .collect();
    let mut at = 0;
    v.errors.retain(|e| {
        at += 1;
        let follows = blanked
            .iter()
            .any(|k| *k == e.key || k.starts_with(&format!("{}.", e.key)));
        at <= structural || !follows
    });
    v.errors.sort_by_key(|e| (e.line, e.column));
    if v.errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(v.errors))
    }
}

struct Validator<'a> {
    file: PathBuf,
    text: &'a str,
    errors: Vec<ConfigError>,
    lookup: Lookup<'a>,
    /// The resolver `[gateway] resolver` names, for [`Lookup::Live`].
    resolver: Resolver,
    answers: Answers,
    warnings: Vec<String>,
    /// The names of the file's `[app.NAME]` sections, for `{ app = NAME }` servers.
    app_names: Vec<String>,
}

impl Validator<'_> {
    fn build(&mut self, raw: file::FileConfig, base: &Path) -> Config {
        let gateway = self.gateway(&raw.gateway, base);
        self.resolver = gateway.resolver;
        let admin = self.admin_addr(raw.admin.as_ref());
        let listeners = self.listeners(&raw.listeners, base);
        let admin_at = self.admin_at(admin, raw.admin.as_ref(), &listeners);
        let apps = self.apps(&raw.apps, base, &listeners);
        self.app_names = apps.iter().map(|a| a.name.clone()).collect();
        let upstreams = raw
            .upstreams
            .iter()
            .map(|(name, section)| self.upstream(name.get_ref(), section))
            .collect();
        let redis = raw.redis.as_ref().map(|r| self.redis(r, base));
        let cache = raw.cache.as_ref().map(|c| self.cache(c, base));
        let routes = self.routes(
            &raw.routes,
            &raw.upstreams,
            base,
            redis.is_some(),
            cache.is_some(),
            &listeners,
        );
        let compression = raw.compression.as_ref().map(|c| self.compression(c));
        let plain_listener = listeners.iter().any(|l| l.tls.is_empty());
        let acme = raw
            .acme
            .as_ref()
            .map(|a| self.acme(a, base, redis.is_some(), plain_listener));
        self.acme_entries(&raw.listeners, &listeners, acme.is_some());
        Config {
            path: self.file.clone(),
            gateway,
            admin,
            admin_at,
            listeners,
            routes,
            upstreams,
            compression,
            redis,
            acme,
            cache,
            apps,
            answers: std::mem::take(&mut self.answers),
            warnings: std::mem::take(&mut self.warnings),
        }
    }
}

/// 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, column)
}

/// The file as its serde types and every structural error it has: a syntax error is
/// reported alone (what follows it cannot be read reliably), but after an unknown key or a
/// value of the wrong type the line is blanked and the file read again, so one `gateway
/// check` names them all; the file read with those lines blanked is returned too, for
/// the semantic checks. Blanking keeps every offset, so each error keeps its place.
fn deserialize(text: &str) -> (Option<file::FileConfig>, Vec<(Range<usize>, String)>) {
    if let Err(e) = text.parse::<toml::Table>() {
        let problem = (e.span().unwrap_or(0..0), e.message().trim().to_string());
        return (None, vec![problem]);
    }
    let mut text = text.to_string();
    let mut problems = Vec::new();
    let mut read = None;
    for _ in 0..64 {
        let e = match toml::from_str::<file::FileConfig>(&text) {
            Ok(raw) => {
                read = Some(raw);
                break;
            }
            Err(e) => e,
        };
        let message = e.message().trim().to_string();
        let Some(span) = e.span() else {
            problems.push((0..0, message));
            break;
        };
        // A required key missing where a blanked line held it is that line's error
        // again, not a new one.
        if !problems.is_empty() && message.starts_with("missing field") {
            break;
        }
        let start = text[..span.start].rfind('\n').map_or(0, |i| i + 1);
        let end = text[span.end..]
            .find('\n')
            .map_or(text.len(), |i| span.end + i);
        let mut blanked = text.clone();
        // A value of the wrong type becomes a placeholder of the right one, so a
        // required key is still there and the rest of the file can be read; else the
        // line is blanked.
        let line = &text[start..end];
        match placeholder(line, &message) {
            Some(kept) => blanked.replace_range(start..end, &kept),
            None => blanked.replace_range(start..end, &" ".repeat(end - start)),
        }
        problems.push((span.clone(), message));
        // Blanking must leave a readable file and make progress.
        if blanked == text || blanked.parse::<toml::Table>().is_err() {
            break;
        }
        text = blanked;
    }
    problems.sort_by_key(|(span, _)| span.start);
    (read, problems)
}

/// `key = value` with the value replaced by one of the type `message` expects, padded
/// to the line's length (offsets stay); `None` when the line is not a plain `key =
/// value` or the placeholder does not fit.
fn placeholder(line: &str, message: &str) -> Option<String> {
    let expected = message.split("expected ").nth(1)?;
    let value = if expected.starts_with("a string") {
        "\"\""
    } else if expected.starts_with('u') || expected.starts_with('i') {
        "0"
    } else if expected.starts_with("a boolean") {
        "false"
    } else {
        return None;
    };
    let (key, _) = line.split_once('=')?;
    if key.contains(['[', '{', '"', '\'']) || key.trim().is_empty() {
        return None;
    }
    let kept = format!("{}={value}", key.trim_end());
    let pad = line.len().checked_sub(kept.len())?;
    Some(kept + &" ".repeat(pad))
}

/// The dotted key the text at `offset` belongs to, as the semantic errors name keys
/// (`upstream.app.retries`, `route[1].extra`): from the table header above it and the key
/// on its line (and the key under the offset, inside an inline table).
fn key_at(text: &str, offset: usize) -> String {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    // On a table's own header line (an unknown table), the key is that table.
    let on_header = text[line_start..line_end].trim_start().starts_with('[');
    let mut table = String::new();
    let mut arrays: std::collections::BTreeMap<String, usize> = Default::default();
    let upto = if on_header { line_end } else { line_start };
    for line in text[..upto].lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix("[[").and_then(|l| l.split("]]").next()) {
            let name = name.trim().to_string();
            let n = arrays
                .entry(name.clone())
                .and_modify(|n| *n += 1)
                .or_insert(0);
            table = format!("{name}[{n}]");
        } else if let Some(name) = line.strip_prefix('[').and_then(|l| l.split(']').next()) {
            table = name.trim().to_string();
        }
    }
    if on_header {
        // A header that is not one (`[[listener]`, a syntax error) names its table as
        // written.
        let header = text[line_start..line_end].trim();
        let whole = (header.starts_with("[[") && header.ends_with("]]"))
            || (!header.starts_with("[[") && header.ends_with(']'));
        if !whole {
            return header
                .trim_matches(|c: char| c == '[' || c == ']' || c.is_whitespace())
                .to_string();
        }
        return table;
    }
    let line = &text[line_start..line_end];
    let word = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
            .collect()
    };
    let mut key = table;
    if let Some((name, _)) = line.split_once('=') {
        let name = name.trim();
        if !name.is_empty() && !name.starts_with('[') {
            if !key.is_empty() {
                key.push('.');
            }
            key.push_str(name);
        }
    }
    let under = word(&text[offset..]);
    if !under.is_empty() && !key.ends_with(&under) && line.contains('{') {
        key.push('.');
        key.push_str(&under);
    }
    key
}

#[cfg(test)]
mod tests {
    use super::upstreams::parse_status_range;
    use super::*;
    use std::net::ToSocketAddrs;
    use std::time::Duration;

    fn check(text: &str) -> Result<Config, Vec<String>> {
        parse(Path::new("conf/test.toml"), text)
            .map_err(|e| e.0.iter().map(|e| e.to_string()).collect())
    }

    #[test]
    fn acme_entries_and_their_table_are_checked_where_written() {
        let base = "[[route]]\nupstream = \"app\"\n[upstream.app]\nservers = [ { address = \"127.0.0.1:9\" } ]\n";
        let listener =
            |tls: &str| format!("[[listener]]\nlisten = \"127.0.0.1:0\"\ntls = [{tls}]\n");
        let ok = check(&format!(
            "{}[[listener]]\nlisten = \"127.0.0.1:0\"\n[acme]\nemail = \"ops@example.com\"\n{base}",
            listener("{ acme = [\"Example.com\", \"www.example.com\"] }")
        ))
        .unwrap();
        assert_eq!(
            ok.listeners[0].tls,
            [TlsSource::Acme(vec![
                "example.com".into(),
                "www.example.com".into()
            ])]
        );
        let acme = ok.acme.unwrap();
        assert_eq!(acme.email.as_deref(), Some("mailto:ops@example.com"));
        assert_eq!(acme.directory, DEFAULT_DIRECTORY);
        assert_eq!(acme.renew_before, Duration::from_secs(30 * 86400));
        assert_eq!(acme.storage, AcmeStorage::Dir(PathBuf::from("conf/acme")));

        let cases = [
            (
                listener("{ acme = [\"a.example\"] }"),
                "",
                "listener[0].tls[0].acme: needs an [acme] table",
            ),
            (
                listener("{ acme = [\"*.example.com\"] }"),
                "[acme]\n",
                "a wildcard needs the DNS-01",
            ),
            (
                listener("{ acme = [\"a.example\"] }, { acme = [\"a.example\"] }"),
                "[acme]\n",
                "tls[1].acme: a.example is in another acme entry",
            ),
            (
                listener("{ acme = [\"a.example\"], cert = \"x\" }"),
                "[acme]\n",
                "either cert and key, or acme",
            ),
            (
                listener("{ acme = [\"a.example\"] }"),
                "[acme]\nstorage = \"redis\"\n",
                "acme.storage: \"redis\" needs a [redis] table",
            ),
            (
                listener("{ acme = [\"a.example\"] }"),
                "[acme]\nchallenge = \"http-01\"\n",
                "acme.challenge: http-01 needs a plain",
            ),
            (
                listener("{ acme = [\"a.example\"] }"),
                "[acme]\ndirectory = \"http://ca\"\n",
                "acme.directory: must be an https:// URL",
            ),
        ];
        for (listener, acme, wanted) in cases {
            let errors = check(&format!("{listener}{acme}{base}")).unwrap_err();
            assert!(
                errors.iter().any(|e| e.contains(wanted)),
                "{wanted}: {errors:?}"
            );
        }
    }

    /// Every number and duration has bounds `check` enforces: what it accepts starts
    /// (a huge keepalive made every worker panic; a zero head timeout dropped every head
    /// in two packets; a huge duration overflows a deadline).
    #[test]
    fn numbers_and_durations_out_of_bounds_are_errors_that_name_their_key() {
        let cases = [
            (
                "[gateway]\nheader_read_timeout = \"0s\"\n",
                "gateway.header_read_timeout: must be more than 0",
            ),
            (
                "[gateway]\nclient_body_timeout = \"0ms\"\n",
                "gateway.client_body_timeout: must be more than 0",
            ),
            (
                "[gateway]\nshutdown_timeout = \"999999999999999h\"\n",
                "gateway.shutdown_timeout: \"999999999999999h\" is longer than",
            ),
            (
                "[gateway]\nresolve_interval = \"31d\"\n",
                "gateway.resolve_interval: \"31d\" is longer than",
            ),
        ];
        for (extra, expected) in cases {
            let errs = check(&format!("{extra}{MINIMAL}")).unwrap_err();
            assert!(
                errs.iter().any(|e| e.contains(expected)),
                "{extra}: {errs:?}"
            );
        }
        let upstream_cases = [
            (
                "keepalive = 9223372036854775807",
                "upstream.app.keepalive: must be from 0 to 10000",
            ),
            (
                "keepalive = -1",
                "upstream.app.keepalive: must be from 0 to 10000",
            ),
            (
                "connect_timeout = \"0s\"",
                "upstream.app.connect_timeout: must be more than 0",
            ),
            (
                "read_timeout = \"0s\"",
                "upstream.app.read_timeout: must be more than 0",
            ),
            (
                "send_timeout = \"0s\"",
                "upstream.app.send_timeout: must be more than 0",
            ),
            (
                "idle_timeout = \"100000d\"",
                "upstream.app.idle_timeout: \"100000d\" is longer than",
            ),
        ];
        for (extra, expected) in upstream_cases {
            let errs = check(&format!("{MINIMAL}{extra}\n")).unwrap_err();
            assert!(
                errs.iter().any(|e| e.contains(expected)),
                "{extra}: {errs:?}"
            );
        }
        let c = check(&format!(
            "{MINIMAL}keepalive = 10000\nread_timeout = \"30d\"\n"
        ))
        .unwrap();
        assert_eq!(c.upstreams[0].keepalive, 10000);
    }

    #[test]
    fn an_unknown_table_is_named_as_itself() {
        let errs = check(&format!("{MINIMAL}[bogus]\nx = 1\n")).unwrap_err();
        assert!(
            errs[0].contains(": bogus: unknown field `bogus`"),
            "{errs:?}"
        );
    }

    #[test]
    fn a_non_loopback_admin_listener_is_a_warning() {
        let c = check(&format!("[admin]\nlisten = \"0.0.0.0:9901\"\n{MINIMAL}")).unwrap();
        assert!(
            c.warnings.iter().any(|w| w.contains(
                "conf/test.toml:2:10: admin.listen: 0.0.0.0:9901 is not a loopback address"
            )),
            "{:?}",
            c.warnings
        );
        let c = check(&format!("[admin]\nlisten = \"127.0.0.1:9901\"\n{MINIMAL}")).unwrap();
        assert!(c.warnings.is_empty());
    }

    const MINIMAL: &str = r#"
[[listener]]
listen = "127.0.0.1:8080"

[[route]]
upstream = "app"

[upstream.app]
servers = [ { address = "127.0.0.1:3001" } ]
"#;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = check(MINIMAL).unwrap();
        assert_eq!(c.routes[0].host, "*");
        assert_eq!(c.routes[0].path_prefix, "/");
        let u = &c.upstreams[0];
        assert_eq!(u.policy, Policy::RoundRobin);
        assert_eq!((u.keepalive, u.retries, u.max_fails), (32, 1, 3));
        assert_eq!(u.connect_timeout, Duration::from_secs(3));
        assert_eq!(c.gateway.control_socket, Path::new("conf/run/gateway.sock"));
        assert_eq!(
            c.gateway.limits.header_read_timeout,
            Duration::from_secs(10)
        );
    }

    #[test]
    fn unknown_key_names_line_column_and_key() {
        let text = MINIMAL.replace("[[route]]\n", "[[route]]\nbogus = 1\n");
        let errs = check(&text).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert!(errs[0].starts_with("conf/test.toml:6:1: "), "{errs:?}");
        assert!(errs[0].contains("bogus"), "{errs:?}");
    }

    #[test]
    fn every_semantic_error_is_reported_with_its_place() {
        let text = r#"
[gateway]
shutdown_timeout = "10"

[[listener]]
listen = "nowhere"

[[route]]
upstream = "missing"

[upstream.app]
policy = "random"
servers = []
read_timeout = "5 parsecs"
"#;
        let errs = check(text).unwrap_err();
        let expect = [
            ("conf/test.toml:3:20: gateway.shutdown_timeout:", "unit"),
            ("conf/test.toml:6:10: listener[0].listen:", "host:port"),
            (
                "conf/test.toml:9:12: route[0].upstream:",
                "\"missing\" is not defined",
            ),
            (
                "conf/test.toml:12:10: upstream.app.policy:",
                "unknown policy",
            ),
            (
                "conf/test.toml:13:11: upstream.app.servers:",
                "at least one server",
            ),
            (
                "conf/test.toml:14:16: upstream.app.read_timeout:",
                "not a duration",
            ),
        ];
        for (prefix, words) in expect {
            assert!(
                errs.iter()
                    .any(|e| e.starts_with(prefix) && e.contains(words)),
                "no error {prefix} .. {words} in {errs:#?}"
            );
        }
        assert_eq!(errs.len(), expect.len(), "{errs:#?}");
    }

    #[test]
    fn route_redirects_rewrites_headers_and_body_limits_are_checked() {
        let base = "[gateway]\nmax_body_size = \"10m\"\n[[listener]]\nlisten = \"127.0.0.1:8080\"\n[upstream.app]\nservers = [ { address = \"127.0.0.1:3001\" } ]\n";
        let c = check(&format!(
            "{base}[[route]]\nhost = \"old.com\"\nredirect = \"https://{{host}}{{uri}}\"\nredirect_status = 301\n[[route]]\nupstream = \"app\"\nrewrite_prefix = \"/\"\nrequest_headers = {{ \"X-Env\" = \"prod\" }}\nremove_response_headers = [\"X-Powered-By\"]\nmax_body_size = \"1k\"\n"
        ))
        .unwrap();
        assert_eq!(c.gateway.max_body_size, Some(10 << 20));
        let RouteAction::Redirect(redirect) = &c.routes[0].action else {
            panic!("a redirect");
        };
        assert_eq!(redirect.status.as_u16(), 301);
        assert_eq!(c.routes[1].rewrite_prefix.as_deref(), Some("/"));
        assert_eq!(c.routes[1].request_headers[0].0, "x-env");
        assert_eq!(c.routes[1].max_body_size, Some(1024));

        let errs = check(&format!(
            "{base}[[route]]\nhost = \"a.com\"\n[[route]]\nupstream = \"app\"\nredirect = \"/x\"\n[[route]]\nhost = \"b.com\"\nredirect = \"/y\"\nredirect_status = 200\nrequest_headers = {{ \"bad header\" = \"1\" }}\nmax_body_size = \"lots\"\n"
        ))
        .unwrap_err();
        for key in [
            "route[0].upstream: required (or a redirect, or root)",
            "route[1].redirect: a route has an upstream or a redirect, not both",
            "route[2].redirect_status: must be 301, 302, 307 or 308",
            "route[2].request_headers: \"bad header\" is not a header name",
            "route[2].max_body_size:",
        ] {
            assert!(errs.iter().any(|e| e.contains(key)), "{key} in {errs:#?}");
        }
    }

    proptest::proptest! {
        /// Fuzz pass (`PROPTEST_CASES=1000000 cargo test --release --lib fuzz`): any text,
        /// and any mangling of a valid file, is refused or accepted without a panic, and
        /// every error has a place in the file.
        #[test]
        fn fuzz_config_text(noise in "\\PC{0,200}", at in 0usize..400, cut in 0usize..40) {
            let _ = parse(Path::new("t.toml"), &noise);
            let mut text = MINIMAL.to_string();
            let at = text.char_indices().map(|(i, _)| i).nth(at % text.chars().count()).unwrap_or(0);
            let end = text[at..].char_indices().map(|(i, _)| at + i).nth(cut).unwrap_or(text.len());
            text.replace_range(at..end, &noise);
            if let Err(errors) = parse(Path::new("t.toml"), &text) {
                for e in errors.0 {
                    proptest::prop_assert!(e.line >= 1, "{e}");
                }
            }
        }
    }

    #[test]
    fn a_name_is_every_address_it_resolves_to() {
        let c = check(&MINIMAL.replace("127.0.0.1:3001", "localhost:3001")).unwrap();
        let servers = &c.upstreams[0].servers;
        let expected: std::collections::BTreeSet<SocketAddr> =
            "localhost:3001".to_socket_addrs().unwrap().collect();
        assert_eq!(servers.len(), expected.len());
        for s in servers {
            assert!(expected.contains(&s.addr));
            assert_eq!(s.name, s.addr.to_string());
            assert_eq!(s.entry.as_deref(), Some("localhost:3001"));
        }
        let literal = &check(MINIMAL).unwrap().upstreams[0].servers[0];
        assert_eq!(
            (literal.name.as_str(), literal.entry.as_deref()),
            ("127.0.0.1:3001", None)
        );
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_all_reported_at_once() {
        let text = "[gateway]\nbogus = 1\n[[listener]]\nlisten = \"127.0.0.1:8080\"\n[[route]]\nupstream = \"app\"\nextra = true\n[upstream.app]\nservers = [ { address = \"127.0.0.1:3001\" } ]\nkeepalive = \"lots\"\n";
        let errs = check(text).unwrap_err();
        assert_eq!(errs.len(), 3, "{errs:#?}");
        assert!(
            errs[0].starts_with("conf/test.toml:2:1: gateway.bogus: "),
            "{errs:#?}"
        );
        assert!(
            errs[1].starts_with("conf/test.toml:7:1: route[0].extra: "),
            "{errs:#?}"
        );
        assert!(
            errs[2].starts_with("conf/test.toml:10:13: upstream.app.keepalive: "),
            "{errs:#?}"
        );
        let inline = check(&MINIMAL.replace("\" }", "\", wieght = 2 }")).unwrap_err();
        assert!(
            inline[0].contains(".servers.wieght: unknown field"),
            "{inline:#?}"
        );
        // A syntax error stands alone.
        let errs = check("[gateway\nbogus = 1\n").unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:#?}");
        // A required key of the wrong type is one error, not two.
        let errs = check(&MINIMAL.replace("upstream = \"app\"", "upstream = 5")).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:#?}");
        // A syntax error in a table header names the table as written.
        let errs =
            check("[gateway]\nworkers = 1\n\n[[listener]\nlisten = \"127.0.0.1:1\"\n").unwrap_err();
        assert!(
            errs[0].contains(":4:12: listener: unclosed array table"),
            "{errs:#?}"
        );
    }

    #[test]
    fn a_sticky_cookie_takes_its_attributes_and_refuses_what_browsers_drop() {
        let c = check(&format!(
            "{MINIMAL}sticky_cookie = {{ name = \"gw\", secure = true, same_site = \"None\", max_age = \"2m\" }}\n"
        ))
        .unwrap();
        let cookie = c.upstreams[0].sticky_cookie.as_ref().unwrap();
        assert_eq!(
            cookie.set_cookie("t"),
            "gw=t; Path=/; HttpOnly; Secure; SameSite=None; Max-Age=120"
        );
        for (bad, expected) in [
            (
                "{ name = \"gw\", same_site = \"None\" }",
                "sticky_cookie.same_site: \"None\" needs secure = true",
            ),
            (
                "{ name = \"gw\", same_site = \"sometimes\" }",
                "sticky_cookie.same_site: must be",
            ),
            (
                "{ name = \"gw\", max_age = \"forever\" }",
                "sticky_cookie.max_age:",
            ),
            ("{ name = \"a b\" }", "sticky_cookie: must be a cookie name"),
        ] {
            let errs = check(&format!("{MINIMAL}sticky_cookie = {bad}\n")).unwrap_err();
            assert!(
                errs.iter().any(|e| e.contains(expected)),
                "{bad}: {errs:#?}"
            );
        }
    }

    #[test]
    fn structural_and_semantic_errors_are_reported_together() {
        // An unknown key, a wrong type, an unknown policy and an undefined upstream: all
        // four at once, in file order.
        let text = "[gateway]\nbogus = 1\n[[listener]]\nlisten = \"127.0.0.1:8080\"\n[[route]]\nupstream = \"nope\"\n\
                    [upstream.app]\npolicy = \"fastest\"\nretries = \"3\"\nservers = [{ address = \"127.0.0.1:1\" }]\n";
        let errs = check(text).unwrap_err();
        let keys: Vec<&str> = errs
            .iter()
            .map(|e| e.split(": ").nth(1).unwrap_or_default())
            .collect();
        assert_eq!(
            keys,
            [
                "gateway.bogus",
                "route[0].upstream",
                "upstream.app.policy",
                "upstream.app.retries"
            ],
            "{errs:#?}"
        );
        // A required key of the wrong type stands in with a placeholder: the rest of the
        // file is still checked.
        let text = text.replace("listen = \"127.0.0.1:8080\"", "listen = 5");
        let errs = check(&text).unwrap_err();
        assert_eq!(errs.len(), 5, "{errs:#?}");
        assert!(
            errs[1].contains("listener[0].listen: invalid type"),
            "{errs:#?}"
        );
    }

    #[test]
    fn balancing_and_retry_keys_are_read_and_checked() {
        let c = check(&format!(
            "{MINIMAL}policy = \"hash\"\nhash_key = \"cookie:session\"\nsticky_cookie = \"gw_route\"\nretry_on = [\"connect\", \"reset\", \"http_503\"]\nretry_budget = 0.5\nidle_timeout = \"2s\"\nslow_start = \"30s\"\n"
        ))
        .unwrap();
        let u = &c.upstreams[0];
        assert_eq!(u.policy, Policy::Hash);
        assert_eq!(u.hash_key, Some(HashKey::Cookie("session".into())));
        assert_eq!(
            u.sticky_cookie
                .as_ref()
                .map(|c| c.set_cookie("t"))
                .as_deref(),
            Some("gw_route=t; Path=/; HttpOnly")
        );
        assert!(u.retry_on.reset && u.retry_on.http_503 && !u.retry_on.timeout);
        assert_eq!(
            (u.retry_budget, u.idle_timeout),
            (0.5, Duration::from_secs(2))
        );
        let d = &check(MINIMAL).unwrap().upstreams[0];
        assert_eq!(d.retry_on, RetryOn::default(), "connect only");
        assert_eq!(
            (d.retry_budget, d.idle_timeout),
            (0.2, Duration::from_secs(4))
        );

        let errs = check(&format!(
            "{MINIMAL}policy = \"hash\"\nhash_key = \"body\"\nsticky_cookie = \"a b\"\nretry_on = [\"http_500\"]\nretry_budget = 2.0\n"
        ))
        .unwrap_err();
        for key in [
            "upstream.app.hash_key:",
            "upstream.app.sticky_cookie:",
            "upstream.app.retry_on[0]: unknown failure \"http_500\"",
            "upstream.app.retry_budget: must be from 0 to 1",
        ] {
            assert!(errs.iter().any(|e| e.contains(key)), "{key} in {errs:#?}");
        }
        let errs = check(&format!("{MINIMAL}policy = \"hash\"\n")).unwrap_err();
        assert!(errs[0].contains("needs hash_key"), "{errs:?}");
        let errs = check(&format!("{MINIMAL}hash_key = \"uri\"\n")).unwrap_err();
        assert!(
            errs[0].contains("only used with policy = \"hash\""),
            "{errs:?}"
        );
    }

    #[test]
    fn admin_listens_on_loopback_by_default_and_not_on_a_listener() {
        assert_eq!(check(MINIMAL).unwrap().admin, None);
        let c = check(&format!("[admin]\n{MINIMAL}")).unwrap();
        assert_eq!(c.admin, Some("127.0.0.1:9901".parse().unwrap()));
        let errs = check(&format!("[admin]\nlisten = \"127.0.0.1:8080\"\n{MINIMAL}")).unwrap_err();
        assert_eq!(
            errs,
            ["conf/test.toml:2:10: admin.listen: 127.0.0.1:8080 is already used by a listener"]
        );
    }

    #[test]
    fn two_listeners_on_port_zero_do_not_collide() {
        let text = MINIMAL.replace(
            "listen = \"127.0.0.1:8080\"",
            "listen = \"127.0.0.1:0\"\n[[listener]]\nlisten = \"127.0.0.1:0\"",
        );
        assert_eq!(check(&text).unwrap().listeners.len(), 2);
    }

    #[test]
    fn duplicate_upstream_is_an_error() {
        let text =
            format!("{MINIMAL}\n[upstream.app]\nservers = [ {{ address = \"127.0.0.1:1\" }} ]\n");
        let errs = check(&text).unwrap_err();
        assert!(
            errs[0].contains("conf/test.toml:11:") && errs[0].contains("duplicate"),
            "{errs:?}"
        );
    }

    #[test]
    fn sizes_take_powers_of_1024() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("64k"), Ok(65536));
        assert_eq!(parse_size("10M"), Ok(10 << 20));
        assert!(parse_size("10 mb").is_err());
        assert!(parse_size("k").is_err());
    }

    #[test]
    fn durations_need_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn status_ranges() {
        assert_eq!(parse_status_range("200-399"), Some((200, 399)));
        assert_eq!(parse_status_range("204"), Some((204, 204)));
        assert_eq!(parse_status_range("399-200"), None);
        assert_eq!(parse_status_range("abc"), None);
    }

    #[test]
    fn weight_and_backup() {
        let text = MINIMAL.replace(
            r#"{ address = "127.0.0.1:3001" }"#,
            r#"{ address = "127.0.0.1:3001", weight = 3 }, { address = "localhost:3002", backup = true }"#,
        );
        let c = check(&text).unwrap();
        let s = &c.upstreams[0].servers;
        assert_eq!((s[0].weight, s[0].backup), (3, false));
        assert_eq!((s[1].weight, s[1].backup), (1, true));
        assert_eq!(s[1].entry.as_deref(), Some("localhost:3002"));
        assert_eq!(s[1].name, s[1].addr.to_string());
    }
}
