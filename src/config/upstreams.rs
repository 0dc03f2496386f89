//! `[upstream.NAME]`: the servers an upstream balances over, how, and how it finds out
//! they fail; with `[upstream.NAME.health_check]`.

use super::names::{host_port, srv_key};
use super::{file, Validator};
use std::net::SocketAddr;
use std::time::Duration;
use toml::Spanned;

/// Idle connections a worker keeps per server.
pub const DEFAULT_KEEPALIVE: usize = 32;
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// Other servers tried after one that cannot be reached.
pub const DEFAULT_RETRIES: u32 = 1;
/// nginx's max_fails and fail_timeout (with 3 rather than 1: one reset is no verdict).
pub const DEFAULT_MAX_FAILS: u32 = 3;
pub const DEFAULT_FAIL_TIMEOUT: Duration = Duration::from_secs(10);
/// Below Node.js's 5 s keep-alive, so a connection the server is closing is not reused.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(4);
pub const DEFAULT_RETRY_BUDGET: f64 = 0.2;
pub const DEFAULT_SLOW_START: Duration = Duration::ZERO;
pub const DEFAULT_CHECK_PATH: &str = "/";
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(2);
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_FALL: u32 = 2;
pub const DEFAULT_RISE: u32 = 2;
pub const DEFAULT_EXPECT_STATUS: (u16, u16) = (200, 399);

/// The most idle connections a worker keeps per server: each is a socket and its buffer.
pub const MAX_KEEPALIVE: u64 = 10_000;

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
    pub sticky_cookie: Option<StickyCookie>,
    pub retry_on: RetryOn,
    /// Share of the requests of the last 10 s that may be retried (beyond `connect`).
    pub retry_budget: f64,
    /// Pooled upstream connections unused this long are not reused.
    pub idle_timeout: Duration,
    /// A server that comes back ramps up to its weight over this (zero: at once).
    pub slow_start: Duration,
}

/// `sticky_cookie`: the cookie's name and the attributes it is handed out with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StickyCookie {
    pub name: String,
    /// Sent over HTTPS only (what browsers need for `SameSite=None`).
    pub secure: bool,
    /// `Strict`, `Lax` or `None`, as written in `Set-Cookie`.
    pub same_site: Option<&'static str>,
    /// Without it the cookie lasts as long as the browser session.
    pub max_age: Option<Duration>,
}

impl StickyCookie {
    /// The `Set-Cookie` value that hands out `token`.
    pub fn set_cookie(&self, token: &str) -> String {
        let mut set = format!("{}={token}; Path=/; HttpOnly", self.name);
        if self.secure {
            set.push_str("; Secure");
        }
        if let Some(same_site) = self.same_site {
            set.push_str("; SameSite=");
            set.push_str(same_site);
        }
        if let Some(max_age) = self.max_age {
            set.push_str(&format!("; Max-Age={}", max_age.as_secs()));
        }
        set
    }
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

#[derive(Debug, Clone, PartialEq)]
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
    pub source: ServerSource,
}

/// Where a server comes from (`"source"` in /status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerSource {
    /// An address written in the file.
    File,
    /// An address a name in the file resolved to.
    Dns,
    /// `gatewayctl add-server`.
    Runtime,
    /// A ready instance of an app the gateway runs.
    App,
}

impl ServerSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ServerSource::File => "file",
            ServerSource::Dns => "dns",
            ServerSource::Runtime => "runtime",
            ServerSource::App => "app",
        }
    }
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

impl Validator<'_> {
    pub(super) fn upstream(
        &mut self,
        name: &str,
        section: &Spanned<file::UpstreamSection>,
    ) -> UpstreamConfig {
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
            let entry_span = s.span();
            let s = s.get_ref();
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
            let (written, span) = match (&s.address, &s.srv, &s.app) {
                (Some(address), None, None) => (address.get_ref().clone(), address.span()),
                (None, Some(srv), None) => (srv_key(srv.get_ref()), srv.span()),
                (None, None, Some(app)) => {
                    if !self.app_names.contains(app.get_ref()) {
                        self.error(
                            app.span(),
                            &key(&format!("servers[{i}].app")),
                            format!("no app {:?} (an [app.NAME] section)", app.get_ref()),
                        );
                    }
                    servers.push(super::apps::placeholder(app.get_ref(), weight, s.backup));
                    continue;
                }
                (None, None, None) => {
                    self.error(
                        entry_span,
                        &key(&format!("servers[{i}].address")),
                        "required (or srv, or app)",
                    );
                    continue;
                }
                _ => {
                    self.error(
                        entry_span,
                        &key(&format!("servers[{i}]")),
                        "a server has one of address, srv or app",
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
                    source: ServerSource::Dns,
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
                    source: if literal {
                        ServerSource::File
                    } else {
                        ServerSource::Dns
                    },
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
        let sticky_cookie = u
            .sticky_cookie
            .as_ref()
            .and_then(|c| self.sticky_cookie(c, &key("sticky_cookie")));
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
            None => DEFAULT_RETRY_BUDGET,
            Some(b) if (0.0..=1.0).contains(b.get_ref()) => *b.get_ref(),
            Some(b) => {
                self.error(b.span(), &key("retry_budget"), "must be from 0 to 1");
                DEFAULT_RETRY_BUDGET
            }
        };
        UpstreamConfig {
            name: name.to_string(),
            policy,
            servers,
            keepalive: match &u.keepalive {
                None => DEFAULT_KEEPALIVE,
                Some(k) if (0..=MAX_KEEPALIVE as i64).contains(k.get_ref()) => {
                    *k.get_ref() as usize
                }
                Some(k) => {
                    self.error(
                        k.span(),
                        &key("keepalive"),
                        format!("must be from 0 to {MAX_KEEPALIVE}"),
                    );
                    DEFAULT_KEEPALIVE
                }
            },
            connect_timeout: self.timeout(
                &u.connect_timeout,
                &key("connect_timeout"),
                DEFAULT_CONNECT_TIMEOUT,
            ),
            read_timeout: self.timeout(&u.read_timeout, &key("read_timeout"), DEFAULT_READ_TIMEOUT),
            send_timeout: self.timeout(&u.send_timeout, &key("send_timeout"), DEFAULT_SEND_TIMEOUT),
            retries: u.retries.unwrap_or(DEFAULT_RETRIES),
            max_fails: u.max_fails.unwrap_or(DEFAULT_MAX_FAILS),
            fail_timeout: self.duration(
                &u.fail_timeout,
                &key("fail_timeout"),
                DEFAULT_FAIL_TIMEOUT,
            ),
            health_check,
            hash_key,
            sticky_cookie,
            retry_on,
            retry_budget,
            idle_timeout: self.duration(
                &u.idle_timeout,
                &key("idle_timeout"),
                DEFAULT_IDLE_TIMEOUT,
            ),
            slow_start: self.duration(&u.slow_start, &key("slow_start"), DEFAULT_SLOW_START),
        }
    }

    fn sticky_cookie(
        &mut self,
        entry: &Spanned<file::StickyCookieEntry>,
        key: &str,
    ) -> Option<StickyCookie> {
        let span = entry.span();
        let table = match entry.get_ref() {
            file::StickyCookieEntry::Name(name) => file::StickyCookieTable {
                name: name.clone(),
                secure: false,
                same_site: None,
                max_age: None,
            },
            file::StickyCookieEntry::Table(t) => t.clone(),
        };
        if !is_cookie_name(&table.name) {
            self.error(
                span,
                key,
                "must be a cookie name (letters, digits and !#$%&'*+-.^_`|~)",
            );
            return None;
        }
        let same_site = match table.same_site.as_deref().map(str::to_ascii_lowercase) {
            None => None,
            Some(s) if s == "strict" => Some("Strict"),
            Some(s) if s == "lax" => Some("Lax"),
            Some(s) if s == "none" => Some("None"),
            Some(_) => {
                self.error(
                    span,
                    &format!("{key}.same_site"),
                    "must be \"Strict\", \"Lax\" or \"None\"",
                );
                return None;
            }
        };
        if same_site == Some("None") && !table.secure {
            self.error(
                span,
                &format!("{key}.same_site"),
                "\"None\" needs secure = true (browsers drop the cookie otherwise)",
            );
            return None;
        }
        let max_age = match &table.max_age {
            None => None,
            Some(text) => match super::parse_duration(text) {
                Ok(d) if d.as_secs() > 0 => Some(d),
                Ok(_) => {
                    self.error(span, &format!("{key}.max_age"), "must be at least 1s");
                    return None;
                }
                Err(e) => {
                    self.error(span, &format!("{key}.max_age"), e);
                    return None;
                }
            },
        };
        Some(StickyCookie {
            name: table.name,
            secure: table.secure,
            same_site,
            max_age,
        })
    }

    pub(super) fn health_check(
        &mut self,
        name: &str,
        h: &Spanned<file::HealthCheckSection>,
    ) -> HealthCheckConfig {
        let key = |k: &str| format!("upstream.{name}.health_check.{k}");
        let h = h.get_ref();
        let path = match &h.path {
            None => DEFAULT_CHECK_PATH.to_string(),
            Some(p) if p.get_ref().starts_with('/') => p.get_ref().clone(),
            Some(p) => {
                self.error(p.span(), &key("path"), "must start with \"/\"");
                DEFAULT_CHECK_PATH.to_string()
            }
        };
        let expect_status = match &h.expect_status {
            None => DEFAULT_EXPECT_STATUS,
            Some(s) => match parse_status_range(s.get_ref()) {
                Some(range) => range,
                None => {
                    self.error(
                        s.span(),
                        &key("expect_status"),
                        "must be a status or a range like \"200-399\"",
                    );
                    DEFAULT_EXPECT_STATUS
                }
            },
        };
        HealthCheckConfig {
            path,
            interval: self.timeout(&h.interval, &key("interval"), DEFAULT_CHECK_INTERVAL),
            timeout: self.timeout(&h.timeout, &key("timeout"), DEFAULT_CHECK_TIMEOUT),
            fall: self.positive(&h.fall, &key("fall"), DEFAULT_FALL),
            rise: self.positive(&h.rise, &key("rise"), DEFAULT_RISE),
            expect_status,
        }
    }
}

pub(super) fn parse_status_range(s: &str) -> Option<(u16, u16)> {
    let (lo, hi) = s.split_once('-').unwrap_or((s, s));
    let lo: u16 = lo.trim().parse().ok()?;
    let hi: u16 = hi.trim().parse().ok()?;
    ((100..=599).contains(&lo) && (lo..=599).contains(&hi)).then_some((lo, hi))
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
