//! Turns a config file into a validated runtime [`Config`], or into every error it has,
//! each naming the file, line, column and key.
//!
//! Everything is checked here, before anything binds: a config that loads is one the
//! gateway can run.

mod dns;
mod env;
mod file;

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// What a slow reader may cost: response bytes read ahead of the client.
pub const DEFAULT_RESPONSE_BUFFER: usize = 64 * 1024;

/// How long a worker may show no progress before the supervisor replaces it.
pub const DEFAULT_WORKER_WATCHDOG: Duration = Duration::from_secs(5);

/// `[admin]` without `listen` serves on 127.0.0.1 at this port.
pub const DEFAULT_ADMIN_PORT: u16 = 9901;

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
                files.push(tls.cert.clone());
                files.push(tls.key.clone());
            }
        }
        files
    }
}

#[derive(Debug, Clone)]
pub struct GatewaySettings {
    pub workers: usize,
    pub control_socket: PathBuf,
    pub shutdown_timeout: Duration,
    /// Kill and replace a worker whose heartbeat stopped this long ago; `None` is off.
    pub worker_watchdog: Option<Duration>,
    pub access_log: AccessLogTarget,
    pub access_log_format: AccessLogFormat,
    pub limits: ClientLimits,
    /// Bytes of a response read from the upstream ahead of the client: what a slow
    /// reader costs at most.
    pub response_buffer: usize,
    /// Larger request bodies get 413; `None` is no limit.
    pub max_body_size: Option<u64>,
    /// Reload when the file or a certificate changes.
    pub watch: bool,
    pub resolver: Resolver,
    /// How often the supervisor looks server names up again.
    pub resolve_interval: Duration,
}

/// What the gateway tolerates from a client before it answers with an error or hangs up.
#[derive(Debug, Clone)]
pub struct ClientLimits {
    pub header_read_timeout: Duration,
    pub client_body_timeout: Duration,
    pub max_request_line: usize,
    pub max_header_bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    Off,
    Stdout,
    Stderr,
    File(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLogFormat {
    Combined,
    Json,
}

#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub addr: SocketAddr,
    pub tls: Vec<TlsFiles>,
    /// Where the address is written, `FILE:LINE:COLUMN: listener[N].listen`, for a
    /// failure to listen on it that only start can find.
    pub at: String,
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Lowercase; `*`, `*.suffix` or an exact name.
    pub host: String,
    pub path_prefix: String,
    pub action: RouteAction,
    /// Replaces `path_prefix` in the forwarded path.
    pub rewrite_prefix: Option<String>,
    /// Set on the request to the upstream (after the removals).
    pub request_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    pub remove_request_headers: Vec<http::HeaderName>,
    /// Set on the upstream's response to the client (after the removals).
    pub response_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    pub remove_response_headers: Vec<http::HeaderName>,
    /// Overrides `gateway.max_body_size` for this route.
    pub max_body_size: Option<u64>,
}

/// What a route does with the requests it matches.
#[derive(Debug, Clone)]
pub enum RouteAction {
    /// Sends them to the upstream at this index of [`Config::upstreams`].
    Forward(usize),
    /// Answers them itself with a redirect.
    Redirect(Redirect),
}

/// A route answered by the gateway itself.
#[derive(Debug, Clone)]
pub struct Redirect {
    /// `Location`, with `{host}` (the request's host without port) and `{uri}` (path and
    /// query) filled in per request.
    pub location: String,
    pub status: http::StatusCode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    RoundRobin,
    IpHash,
    LeastConn,
    LeastTime,
    Hash,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::RoundRobin => "round_robin",
            Policy::IpHash => "ip_hash",
            Policy::LeastConn => "least_conn",
            Policy::LeastTime => "least_time",
            Policy::Hash => "hash",
        }
    }
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    pub policy: Policy,
    pub servers: Vec<ServerConfig>,
    pub keepalive: usize,
    pub connect_timeout: Duration,
    /// From the end of the request to the response head, and between response reads.
    pub read_timeout: Duration,
    /// Each write of the request to the server (a slow upload is the client's pace).
    pub send_timeout: Duration,
    pub retries: u32,
    pub max_fails: u32,
    pub fail_timeout: Duration,
    pub health_check: Option<HealthCheckConfig>,
    /// What `policy = "hash"` hashes.
    pub hash_key: Option<HashKey>,
    /// The cookie that pins a client to its server (any policy).
    pub sticky_cookie: Option<String>,
    pub retry_on: RetryOn,
    /// Share of the requests of the last 10 s that may be retried (beyond `connect`).
    pub retry_budget: f64,
    /// Pooled upstream connections unused this long are not reused.
    pub idle_timeout: Duration,
    /// A server that comes back ramps up to its weight over this (zero: at once).
    pub slow_start: Duration,
}

/// The request property `policy = "hash"` hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// The path with its query.
    Uri,
    /// A header, lower-case.
    Header(http::HeaderName),
    Cookie(String),
}

/// Which failures send a request to another server. Connect failures always do (up to
/// `retries`); the others only for idempotent requests whose body was not streamed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryOn {
    /// The connection closed before any response byte.
    pub reset: bool,
    /// No response head within `read_timeout`.
    pub timeout: bool,
    pub http_502: bool,
    pub http_503: bool,
    pub http_504: bool,
}

impl RetryOn {
    /// Whether an answer with `status` is retried.
    pub fn status(&self, status: u16) -> bool {
        match status {
            502 => self.http_502,
            503 => self.http_503,
            504 => self.http_504,
            _ => false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The address as the user wrote it, or for a server found by name its address
    /// (`10.0.0.5:3000`), for logs and status.
    pub name: String,
    /// For a server found by name, the entry as written (`app:3000`).
    pub entry: Option<String>,
    /// A name that resolves to nothing (yet): never up, `addr` is a placeholder.
    pub unresolved: bool,
    pub addr: SocketAddr,
    pub weight: u32,
    pub backup: bool,
}

#[derive(Debug, Clone)]
pub struct HealthCheckConfig {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub fall: u32,
    pub rise: u32,
    pub expect_status: (u16, u16),
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
    };
    let raw: file::FileConfig = match deserialize(text) {
        Ok(raw) => raw,
        Err(problems) => {
            for (span, message) in problems {
                let key = key_at(text, span.start);
                v.error(span, &key, message);
            }
            return Err(ConfigErrors(v.errors));
        }
    };
    let base = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let config = v.build(raw, &base);
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
}

/// What each server entry by name resolved to: `"app:3000"` -> its addresses, and
/// `"srv:_http._tcp.app"` -> its targets' addresses with the records' ports and weights.
pub type Answers = std::collections::BTreeMap<String, Vec<Found>>;

/// One address a name resolved to; an SRV record also gives its weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Found {
    pub addr: SocketAddr,
    pub weight: Option<u32>,
}

impl Found {
    pub fn addr(addr: SocketAddr) -> Found {
        Found { addr, weight: None }
    }
}

/// `10.0.0.5:3000`, or with an SRV weight `10.0.0.5:3000/5` (the supervisor-worker
/// encoding, and the log's).
impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.weight {
            Some(w) => write!(f, "{}/{w}", self.addr),
            None => write!(f, "{}", self.addr),
        }
    }
}

impl std::str::FromStr for Found {
    type Err = String;
    fn from_str(s: &str) -> Result<Found, String> {
        let (addr, weight) = match s.rsplit_once('/') {
            Some((addr, w)) => (
                addr,
                Some(w.parse().map_err(|_| format!("bad weight in {s:?}"))?),
            ),
            None => (s, None),
        };
        let addr = addr.parse().map_err(|_| format!("bad address in {s:?}"))?;
        Ok(Found { addr, weight })
    }
}

/// The answers key of an SRV entry.
pub fn srv_key(name: &str) -> String {
    format!("srv:{name}")
}

/// How server names are turned into addresses while a file is read.
#[derive(Clone, Copy)]
pub enum Lookup<'a> {
    /// Ask the resolver the file configures (the supervisor).
    Live,
    /// Take what the supervisor found (a worker: every process lists the same servers,
    /// and names are looked up once per gateway).
    Answers(&'a Answers),
}

/// `[gateway] resolver`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Resolver {
    /// The system's (getaddrinfo: /etc/hosts, /etc/resolv.conf).
    #[default]
    System,
    /// A DNS server at this address, asked directly.
    Server(SocketAddr),
}

impl Validator<'_> {
    /// `FILE:LINE:COLUMN: KEY`, the way errors name a place.
    fn place(&self, span: Range<usize>, key: &str) -> String {
        let (line, column) = line_column(self.text, span.start);
        format!("{}:{line}:{column}: {key}", self.file.display())
    }

    fn error(&mut self, span: Range<usize>, key: &str, message: impl Into<String>) {
        let (line, column) = line_column(self.text, span.start);
        self.errors.push(ConfigError {
            file: self.file.clone(),
            line,
            column,
            key: key.to_string(),
            message: message.into(),
        });
    }

    fn size(&mut self, value: &Option<Spanned<String>>, key: &str) -> Option<u64> {
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
    fn header_names(
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

    fn header_table(
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

    fn duration(
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
    fn timeout(
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

    fn positive(&mut self, value: &Option<Spanned<i64>>, key: &str, default: u32) -> u32 {
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

    /// The addresses of server entry `written`, recorded in the answers when it is a name.
    /// A name that does not resolve is no error (the app may not be up yet): it gives no
    /// address, a warning, and an empty answer, which later lookups fill in.
    fn addresses(&mut self, written: &str) -> Result<Vec<Found>, String> {
        if let Ok(addr) = written.parse::<SocketAddr>() {
            return Ok(vec![Found::addr(addr)]);
        }
        if written.strip_prefix("srv:").is_none() {
            host_port(written)?;
        }
        let addrs = match self.lookup {
            Lookup::Answers(answers) => answers
                .get(written)
                .cloned()
                .ok_or_else(|| format!("{written:?} was not resolved by the supervisor"))?,
            Lookup::Live => lookup(self.resolver, written).unwrap_or_else(|e| {
                self.warnings.push(format!(
                    "{e}: its upstream gets no server from it until it resolves"
                ));
                Vec::new()
            }),
        };
        self.answers.insert(written.to_string(), addrs.clone());
        Ok(addrs)
    }

    fn socket_addr(&mut self, value: &Spanned<String>, key: &str) -> Option<SocketAddr> {
        match resolve(value.get_ref()) {
            Ok(addr) => Some(addr),
            Err(msg) => {
                self.error(value.span(), key, msg);
                None
            }
        }
    }

    fn build(&mut self, raw: file::FileConfig, base: &Path) -> Config {
        let gateway = self.gateway(&raw.gateway, base);
        self.resolver = gateway.resolver;
        let admin = raw.admin.as_ref().and_then(|a| match &a.listen {
            Some(listen) => self.socket_addr(listen, "admin.listen"),
            None => Some(SocketAddr::from(([127, 0, 0, 1], DEFAULT_ADMIN_PORT))),
        });

        let mut listeners = Vec::new();
        if raw.listeners.is_empty() {
            self.error(0..0, "listener", "at least one [[listener]] is needed");
        }
        for (i, l) in raw.listeners.iter().enumerate() {
            let l = l.get_ref();
            let key = format!("listener[{i}].listen");
            let addr = self.socket_addr(&l.listen, &key);
            let mut tls = Vec::new();
            for (j, entry) in l.tls.iter().enumerate() {
                let entry = entry.get_ref();
                let cert =
                    self.readable_file(&entry.cert, &format!("listener[{i}].tls[{j}].cert"), base);
                let key =
                    self.readable_file(&entry.key, &format!("listener[{i}].tls[{j}].key"), base);
                if let (Some(cert), Some(key)) = (cert, key) {
                    let files = TlsFiles { cert, key };
                    match crate::tls::load_certified_key(&files) {
                        Ok(_) => tls.push(files),
                        Err(e) => {
                            self.error(l.tls[j].span(), &format!("listener[{i}].tls[{j}]"), e)
                        }
                    }
                }
            }
            if let Some(addr) = addr {
                // Port 0 asks the kernel for a free port: two of those never collide.
                if addr.port() != 0
                    && listeners
                        .iter()
                        .any(|other: &ListenerConfig| other.addr == addr)
                {
                    self.error(
                        l.listen.span(),
                        &key,
                        format!("{addr} is already used by another listener"),
                    );
                }
                let at = self.place(l.listen.span(), &key);
                listeners.push(ListenerConfig { addr, tls, at });
            }
        }

        if let (Some(addr), Some(listen)) =
            (admin, raw.admin.as_ref().and_then(|a| a.listen.as_ref()))
        {
            if addr.port() != 0 && listeners.iter().any(|l| l.addr == addr) {
                self.error(
                    listen.span(),
                    "admin.listen",
                    format!("{addr} is already used by a listener"),
                );
            }
            if !addr.ip().is_loopback() {
                let at = self.place(listen.span(), "admin.listen");
                self.warnings.push(format!(
                    "{at}: {addr} is not a loopback address: /status, /metrics and the live \
                     page are open to whoever reaches it"
                ));
            }
        }
        let admin_at = match raw.admin.as_ref().and_then(|a| a.listen.as_ref()) {
            Some(listen) => self.place(listen.span(), "admin.listen"),
            None => format!("{}: admin.listen (default)", self.file.display()),
        };

        let mut upstreams = Vec::new();
        for (name, section) in &raw.upstreams {
            upstreams.push(self.upstream(name.get_ref(), section));
        }

        let mut routes = Vec::new();
        if raw.routes.is_empty() {
            self.error(0..0, "route", "at least one [[route]] is needed");
        }
        for (i, r) in raw.routes.iter().enumerate() {
            let r = r.get_ref();
            let host = match &r.host {
                None => "*".to_string(),
                Some(h) => {
                    let host = h.get_ref().to_ascii_lowercase();
                    if !valid_route_host(&host) {
                        self.error(
                            h.span(),
                            &format!("route[{i}].host"),
                            format!("{host:?} is not \"*\", \"*.domain\" or a host name"),
                        );
                    }
                    host
                }
            };
            let path_prefix = match &r.path_prefix {
                None => "/".to_string(),
                Some(p) => {
                    if !p.get_ref().starts_with('/') {
                        self.error(
                            p.span(),
                            &format!("route[{i}].path_prefix"),
                            "must start with \"/\"",
                        );
                    }
                    p.get_ref().clone()
                }
            };
            let span = raw.routes[i].span();
            let key = |k: &str| format!("route[{i}].{k}");
            if routes
                .iter()
                .any(|o: &RouteConfig| o.host == host && o.path_prefix == path_prefix)
            {
                self.error(
                    span.clone(),
                    &format!("route[{i}]"),
                    format!(
                        "another route already has host {host:?} and path_prefix {path_prefix:?}"
                    ),
                );
            }
            let upstream = match &r.upstream {
                Some(name) => {
                    let found = raw
                        .upstreams
                        .keys()
                        .position(|k| k.get_ref() == name.get_ref());
                    if found.is_none() {
                        let name = name.get_ref();
                        self.error(
                            r.upstream.as_ref().expect("some").span(),
                            &key("upstream"),
                            format!("upstream {name:?} is not defined (add [upstream.{name}])"),
                        );
                    }
                    found
                }
                None => None,
            };
            let redirect = r.redirect.as_ref().map(|location| {
                let status = match &r.redirect_status {
                    None => http::StatusCode::FOUND,
                    Some(s) if [301, 302, 307, 308].contains(s.get_ref()) => {
                        http::StatusCode::from_u16(*s.get_ref()).expect("a redirect status")
                    }
                    Some(s) => {
                        self.error(
                            s.span(),
                            &key("redirect_status"),
                            "must be 301, 302, 307 or 308",
                        );
                        http::StatusCode::FOUND
                    }
                };
                Redirect {
                    location: location.get_ref().clone(),
                    status,
                }
            });
            match (&r.upstream, &r.redirect) {
                (Some(_), Some(redirect)) => self.error(
                    redirect.span(),
                    &key("redirect"),
                    "a route has an upstream or a redirect, not both",
                ),
                (None, None) => {
                    self.error(span.clone(), &key("upstream"), "required (or a redirect)")
                }
                _ => {}
            }
            if r.redirect.is_none() {
                if let Some(s) = &r.redirect_status {
                    self.error(s.span(), &key("redirect_status"), "only used with redirect");
                }
            }
            let rewrite_prefix = r.rewrite_prefix.as_ref().map(|p| {
                if !p.get_ref().starts_with('/') {
                    self.error(p.span(), &key("rewrite_prefix"), "must start with \"/\"");
                }
                p.get_ref().clone()
            });
            let route = RouteConfig {
                request_headers: self.header_table(&r.request_headers, &key("request_headers")),
                remove_request_headers: self
                    .header_names(&r.remove_request_headers, &key("remove_request_headers")),
                response_headers: self.header_table(&r.response_headers, &key("response_headers")),
                remove_response_headers: self
                    .header_names(&r.remove_response_headers, &key("remove_response_headers")),
                max_body_size: self.size(&r.max_body_size, &key("max_body_size")),
                host,
                path_prefix,
                // Without either, an error is reported above and the config not used.
                action: match redirect {
                    Some(redirect) => RouteAction::Redirect(redirect),
                    None => RouteAction::Forward(upstream.unwrap_or_default()),
                },
                rewrite_prefix,
            };
            routes.push(route);
        }

        Config {
            path: self.file.clone(),
            gateway,
            admin,
            admin_at,
            listeners,
            routes,
            upstreams,
            answers: std::mem::take(&mut self.answers),
            warnings: std::mem::take(&mut self.warnings),
        }
    }

    fn readable_file(
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

    fn gateway(&mut self, g: &file::GatewaySection, base: &Path) -> GatewaySettings {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let workers = match &g.workers {
            None => cpus,
            Some(w) => match w.get_ref() {
                file::Workers::Count(n) if (1..=1024).contains(n) => *n as usize,
                file::Workers::Word(s) if s == "auto" => cpus,
                _ => {
                    self.error(
                        w.span(),
                        "gateway.workers",
                        "must be \"auto\" or a number from 1 to 1024",
                    );
                    1
                }
            },
        };
        let access_log = match g.access_log.as_deref() {
            None | Some("off") => AccessLogTarget::Off,
            Some("stdout") => AccessLogTarget::Stdout,
            Some("stderr") => AccessLogTarget::Stderr,
            Some(path) => AccessLogTarget::File(base.join(path)),
        };
        let access_log_format = match &g.access_log_format {
            None => AccessLogFormat::Combined,
            Some(f) => match f.get_ref().as_str() {
                "combined" => AccessLogFormat::Combined,
                "json" => AccessLogFormat::Json,
                other => {
                    self.error(
                        f.span(),
                        "gateway.access_log_format",
                        format!("unknown format {other:?} (expected \"combined\" or \"json\")"),
                    );
                    AccessLogFormat::Combined
                }
            },
        };
        let mut size = |value: &Option<Spanned<usize>>, key: &str, default: usize| match value {
            None => default,
            Some(v) if (256..=1 << 20).contains(v.get_ref()) => *v.get_ref(),
            Some(v) => {
                self.error(
                    v.span(),
                    key,
                    "must be a number of bytes from 256 to 1048576",
                );
                default
            }
        };
        let max_request_line = size(&g.max_request_line, "gateway.max_request_line", 8 * 1024);
        let max_header_bytes = size(&g.max_header_bytes, "gateway.max_header_bytes", 32 * 1024);
        GatewaySettings {
            workers,
            control_socket: base.join(g.control_socket.as_deref().unwrap_or("run/gateway.sock")),
            shutdown_timeout: self.duration(
                &g.shutdown_timeout,
                "gateway.shutdown_timeout",
                Duration::from_secs(10),
            ),
            worker_watchdog: match &g.worker_watchdog {
                Some(w) if w.get_ref() == "off" => None,
                Some(w) => match parse_duration(w.get_ref()) {
                    Ok(d) if d >= Duration::from_secs(1) => Some(d),
                    Ok(_) => {
                        self.error(
                            w.span(),
                            "gateway.worker_watchdog",
                            "must be at least 1s (or \"off\")",
                        );
                        None
                    }
                    Err(e) => {
                        self.error(w.span(), "gateway.worker_watchdog", e);
                        None
                    }
                },
                None => Some(DEFAULT_WORKER_WATCHDOG),
            },
            response_buffer: match &g.response_buffer {
                None => DEFAULT_RESPONSE_BUFFER,
                Some(v) => match parse_size(v.get_ref()) {
                    Ok(n) if (8 * 1024..=16 << 20).contains(&n) => n,
                    Ok(_) => {
                        self.error(
                            v.span(),
                            "gateway.response_buffer",
                            "must be from 8k to 16m",
                        );
                        DEFAULT_RESPONSE_BUFFER
                    }
                    Err(e) => {
                        self.error(v.span(), "gateway.response_buffer", e);
                        DEFAULT_RESPONSE_BUFFER
                    }
                },
            },
            max_body_size: self.size(&g.max_body_size, "gateway.max_body_size"),
            watch: g.watch,
            resolver: match &g.resolver {
                None => Resolver::System,
                Some(r) if r.get_ref() == "system" => Resolver::System,
                Some(r) => match r.get_ref().parse::<SocketAddr>() {
                    Ok(addr) => Resolver::Server(addr),
                    Err(_) => {
                        self.error(
                            r.span(),
                            "gateway.resolver",
                            "must be \"system\" or the IP:PORT of a DNS server",
                        );
                        Resolver::System
                    }
                },
            },
            resolve_interval: {
                let interval = self.duration(
                    &g.resolve_interval,
                    "gateway.resolve_interval",
                    Duration::from_secs(10),
                );
                if interval < Duration::from_millis(100) {
                    let span = g.resolve_interval.as_ref().map_or(0..0, |v| v.span());
                    self.error(span, "gateway.resolve_interval", "must be at least 100ms");
                }
                interval
            },
            access_log,
            access_log_format,
            limits: ClientLimits {
                header_read_timeout: self.timeout(
                    &g.header_read_timeout,
                    "gateway.header_read_timeout",
                    Duration::from_secs(10),
                ),
                client_body_timeout: self.timeout(
                    &g.client_body_timeout,
                    "gateway.client_body_timeout",
                    Duration::from_secs(60),
                ),
                max_request_line,
                max_header_bytes,
            },
        }
    }

    fn upstream(&mut self, name: &str, section: &Spanned<file::UpstreamSection>) -> UpstreamConfig {
        let u = section.get_ref();
        let key = |k: &str| format!("upstream.{name}.{k}");
        let policy = match &u.policy {
            None => Policy::RoundRobin,
            Some(p) => match p.get_ref().as_str() {
                "round_robin" => Policy::RoundRobin,
                "ip_hash" => Policy::IpHash,
                "least_conn" => Policy::LeastConn,
                "least_time" => Policy::LeastTime,
                "hash" => Policy::Hash,
                other => {
                    self.error(
                        p.span(),
                        &key("policy"),
                        format!("unknown policy {other:?} (expected round_robin, ip_hash, least_conn, least_time or hash)"),
                    );
                    Policy::RoundRobin
                }
            },
        };
        let mut servers = Vec::new();
        if u.servers.get_ref().is_empty() {
            self.error(
                u.servers.span(),
                &key("servers"),
                "needs at least one server",
            );
        }
        for (i, s) in u.servers.get_ref().iter().enumerate() {
            let s = s.get_ref();
            let (written, span) = match (&s.address, &s.srv) {
                (Some(address), None) => (address.get_ref().clone(), address.span()),
                (None, Some(srv)) => (srv_key(srv.get_ref()), srv.span()),
                (Some(address), Some(_)) => {
                    self.error(
                        address.span(),
                        &key(&format!("servers[{i}]")),
                        "a server has an address or an srv name, not both",
                    );
                    continue;
                }
                (None, None) => {
                    self.error(
                        u.servers.span(),
                        &key(&format!("servers[{i}].address")),
                        "required (or srv)",
                    );
                    continue;
                }
            };
            let written = &written;
            let shown = written.strip_prefix("srv:").unwrap_or(written).to_string();
            let addrs = match self.addresses(written) {
                Ok(addrs) => addrs,
                Err(msg) => {
                    self.error(span, &key(&format!("servers[{i}].address")), msg);
                    Vec::new()
                }
            };
            let weight = match &s.weight {
                None => 1,
                Some(w) => match u32::try_from(*w.get_ref()) {
                    Ok(n) if (1..=1000).contains(&n) => n,
                    _ => {
                        self.error(
                            w.span(),
                            &key(&format!("servers[{i}].weight")),
                            "must be from 1 to 1000",
                        );
                        1
                    }
                },
            };
            // A name is every address it resolves to, each a server of its own; while it
            // resolves to none, one server that is never up stands for it.
            let literal = written.parse::<SocketAddr>().is_ok();
            if addrs.is_empty() && !literal {
                let port = host_port(written).map_or(0, |(_, port)| port);
                servers.push(ServerConfig {
                    name: shown.clone(),
                    entry: Some(shown.clone()),
                    addr: SocketAddr::from(([0, 0, 0, 0], port)),
                    weight,
                    backup: s.backup,
                    unresolved: true,
                });
            }
            for found in addrs {
                servers.push(ServerConfig {
                    name: if literal {
                        written.clone()
                    } else {
                        found.addr.to_string()
                    },
                    entry: (!literal).then(|| shown.clone()),
                    addr: found.addr,
                    // An SRV record's weight (0 is the lightest it can say).
                    weight: found.weight.map_or(weight, |w| w.clamp(1, 1000)),
                    backup: s.backup,
                    unresolved: false,
                });
            }
        }
        if !servers.is_empty() && servers.iter().all(|s| s.backup) {
            self.error(
                u.servers.span(),
                &key("servers"),
                "every server is a backup: at least one must be a primary",
            );
        }
        let health_check = u.health_check.as_ref().map(|h| self.health_check(name, h));
        let hash_key = match &u.hash_key {
            None => {
                if policy == Policy::Hash {
                    self.error(
                        section.span(),
                        &key("hash_key"),
                        "policy = \"hash\" needs hash_key (\"uri\", \"header:NAME\" or \"cookie:NAME\")",
                    );
                }
                None
            }
            Some(k) => {
                if policy != Policy::Hash {
                    self.error(
                        k.span(),
                        &key("hash_key"),
                        "only used with policy = \"hash\"",
                    );
                }
                let parsed = parse_hash_key(k.get_ref());
                if parsed.is_none() {
                    self.error(
                        k.span(),
                        &key("hash_key"),
                        "must be \"uri\", \"header:NAME\" or \"cookie:NAME\"",
                    );
                }
                parsed
            }
        };
        let sticky_cookie = u.sticky_cookie.as_ref().and_then(|c| {
            let name = c.get_ref();
            if is_cookie_name(name) {
                Some(name.clone())
            } else {
                self.error(
                    c.span(),
                    &key("sticky_cookie"),
                    "must be a cookie name (letters, digits and !#$%&'*+-.^_`|~)",
                );
                None
            }
        });
        let mut retry_on = RetryOn::default();
        for (i, what) in u.retry_on.iter().flat_map(|l| l.get_ref()).enumerate() {
            match what.get_ref().as_str() {
                "connect" => {}
                "reset" => retry_on.reset = true,
                "timeout" => retry_on.timeout = true,
                "http_502" => retry_on.http_502 = true,
                "http_503" => retry_on.http_503 = true,
                "http_504" => retry_on.http_504 = true,
                other => self.error(
                    what.span(),
                    &key(&format!("retry_on[{i}]")),
                    format!("unknown failure {other:?} (expected connect, reset, timeout, http_502, http_503 or http_504)"),
                ),
            }
        }
        let retry_budget = match &u.retry_budget {
            None => 0.2,
            Some(b) if (0.0..=1.0).contains(b.get_ref()) => *b.get_ref(),
            Some(b) => {
                self.error(b.span(), &key("retry_budget"), "must be from 0 to 1");
                0.2
            }
        };
        UpstreamConfig {
            name: name.to_string(),
            policy,
            servers,
            keepalive: match &u.keepalive {
                None => 32,
                Some(k) if (0..=MAX_KEEPALIVE as i64).contains(k.get_ref()) => {
                    *k.get_ref() as usize
                }
                Some(k) => {
                    self.error(
                        k.span(),
                        &key("keepalive"),
                        format!("must be from 0 to {MAX_KEEPALIVE}"),
                    );
                    32
                }
            },
            connect_timeout: self.timeout(
                &u.connect_timeout,
                &key("connect_timeout"),
                Duration::from_secs(3),
            ),
            read_timeout: self.timeout(
                &u.read_timeout,
                &key("read_timeout"),
                Duration::from_secs(60),
            ),
            send_timeout: self.timeout(
                &u.send_timeout,
                &key("send_timeout"),
                Duration::from_secs(60),
            ),
            retries: u.retries.unwrap_or(1),
            max_fails: u.max_fails.unwrap_or(3),
            fail_timeout: self.duration(
                &u.fail_timeout,
                &key("fail_timeout"),
                Duration::from_secs(10),
            ),
            health_check,
            hash_key,
            sticky_cookie,
            retry_on,
            retry_budget,
            idle_timeout: self.duration(
                &u.idle_timeout,
                &key("idle_timeout"),
                Duration::from_secs(4),
            ),
            slow_start: self.duration(&u.slow_start, &key("slow_start"), Duration::ZERO),
        }
    }

    fn health_check(
        &mut self,
        name: &str,
        h: &Spanned<file::HealthCheckSection>,
    ) -> HealthCheckConfig {
        let key = |k: &str| format!("upstream.{name}.health_check.{k}");
        let h = h.get_ref();
        let path = match &h.path {
            None => "/".to_string(),
            Some(p) if p.get_ref().starts_with('/') => p.get_ref().clone(),
            Some(p) => {
                self.error(p.span(), &key("path"), "must start with \"/\"");
                "/".to_string()
            }
        };
        let expect_status = match &h.expect_status {
            None => (200, 399),
            Some(s) => match parse_status_range(s.get_ref()) {
                Some(range) => range,
                None => {
                    self.error(
                        s.span(),
                        &key("expect_status"),
                        "must be a status or a range like \"200-399\"",
                    );
                    (200, 399)
                }
            },
        };
        HealthCheckConfig {
            path,
            interval: self.timeout(&h.interval, &key("interval"), Duration::from_secs(2)),
            timeout: self.timeout(&h.timeout, &key("timeout"), Duration::from_secs(1)),
            fall: self.positive(&h.fall, &key("fall"), 2),
            rise: self.positive(&h.rise, &key("rise"), 2),
            expect_status,
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

/// The most idle connections a worker keeps per server: each is a socket and its buffer.
pub const MAX_KEEPALIVE: u64 = 10_000;

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

/// `host:port`, resolved now so a name that does not resolve is a config error.
/// `host:port` split, or why it is not that.
pub(crate) fn host_port(s: &str) -> Result<(&str, u16), String> {
    let bad = || format!("{s:?} is not an address of the form host:port");
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let port = port.parse::<u16>().map_err(|_| bad())?;
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host, port))
}

fn resolve(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let (host, _) = host_port(s)?;
    match s.to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| format!("{host:?} resolves to no address")),
        Err(e) => Err(format!("cannot resolve {host:?}: {e}")),
    }
}

/// Every address of answers key `written` (`host:port`, or `srv:NAME`) according to
/// `resolver`.
pub fn lookup(resolver: Resolver, written: &str) -> Result<Vec<Found>, String> {
    if let Some(name) = written.strip_prefix("srv:") {
        return dns::resolve_srv(resolver, name);
    }
    let addrs = match resolver {
        Resolver::System => resolve_all(written),
        Resolver::Server(server) => dns::resolve(server, written),
    }?;
    Ok(addrs.into_iter().map(Found::addr).collect())
}

/// Every address `s` (`host:port`) stands for, in a stable order (sorted: the resolver may
/// answer in any order, and every process must list the servers alike).
fn resolve_all(s: &str) -> Result<Vec<SocketAddr>, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(vec![addr]);
    }
    host_port(s)?;
    let mut addrs: Vec<SocketAddr> = s
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {s:?}: {e}"))?
        .collect();
    addrs.sort();
    addrs.dedup();
    Ok(addrs)
}

fn valid_route_host(host: &str) -> bool {
    let name = host.strip_prefix("*.").unwrap_or(host);
    host == "*"
        || (!name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_'))
}

fn parse_status_range(s: &str) -> Option<(u16, u16)> {
    let (lo, hi) = s.split_once('-').unwrap_or((s, s));
    let lo: u16 = lo.trim().parse().ok()?;
    let hi: u16 = hi.trim().parse().ok()?;
    ((100..=599).contains(&lo) && (lo..=599).contains(&hi)).then_some((lo, hi))
}

/// The file as its serde types, or every structural error it has: a syntax error is
/// reported alone (what follows it cannot be read reliably), but after an unknown key or a
/// value of the wrong type the line is blanked and the file read again, so one `gateway
/// check` names them all. Blanking keeps every offset, so each error keeps its place.
fn deserialize(text: &str) -> Result<file::FileConfig, Vec<(Range<usize>, String)>> {
    if let Err(e) = text.parse::<toml::Table>() {
        return Err(vec![(
            e.span().unwrap_or(0..0),
            e.message().trim().to_string(),
        )]);
    }
    let mut text = text.to_string();
    let mut problems = Vec::new();
    for _ in 0..64 {
        let e = match toml::from_str::<file::FileConfig>(&text) {
            Ok(raw) if problems.is_empty() => return Ok(raw),
            Ok(_) => break,
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
        problems.push((span.clone(), message));
        let start = text[..span.start].rfind('\n').map_or(0, |i| i + 1);
        let end = text[span.end..]
            .find('\n')
            .map_or(text.len(), |i| span.end + i);
        let mut blanked = text.clone();
        blanked.replace_range(start..end, &" ".repeat(end - start));
        // Blanking must leave a readable file and make progress.
        if blanked == text || blanked.parse::<toml::Table>().is_err() {
            break;
        }
        text = blanked;
    }
    problems.sort_by_key(|(span, _)| span.start);
    Err(problems)
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

fn parse_hash_key(text: &str) -> Option<HashKey> {
    if text == "uri" {
        return Some(HashKey::Uri);
    }
    if let Some(name) = text.strip_prefix("header:") {
        return http::HeaderName::from_bytes(name.as_bytes())
            .ok()
            .map(HashKey::Header);
    }
    let name = text.strip_prefix("cookie:")?;
    is_cookie_name(name).then(|| HashKey::Cookie(name.to_string()))
}

/// A cookie name is an RFC 9110 token.
fn is_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<Config, Vec<String>> {
        parse(Path::new("conf/test.toml"), text)
            .map_err(|e| e.0.iter().map(|e| e.to_string()).collect())
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
            "route[0].upstream: required (or a redirect)",
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
        assert_eq!(u.sticky_cookie.as_deref(), Some("gw_route"));
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
