//! The TOML schema as users write it: serde types only, no validation.
//!
//! Values that validation may reject are kept `Spanned` so an error can point at the
//! file, line and column where the user wrote them.

use serde::Deserialize;
use std::collections::BTreeMap;
use toml::Spanned;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub gateway: GatewaySection,
    pub admin: Option<AdminSection>,
    #[serde(default, rename = "listener")]
    pub listeners: Vec<Spanned<ListenerSection>>,
    #[serde(default, rename = "route")]
    pub routes: Vec<Spanned<RouteSection>>,
    #[serde(default, rename = "upstream")]
    pub upstreams: BTreeMap<Spanned<String>, Spanned<UpstreamSection>>,
    pub compression: Option<CompressionSection>,
    pub redis: Option<RedisSection>,
    pub acme: Option<AcmeSection>,
    pub cache: Option<CacheSection>,
    #[serde(default, rename = "app")]
    pub apps: BTreeMap<Spanned<String>, Spanned<AppSection>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSection {
    pub command: Spanned<Vec<String>>,
    pub dir: Option<Spanned<String>>,
    /// A number, or `"auto"`: the CPU count.
    pub instances: Option<Spanned<Workers>>,
    pub env: Option<Spanned<BTreeMap<String, String>>>,
    pub port: Spanned<i64>,
    pub ready: Option<ReadySection>,
    pub stop_timeout: Option<Spanned<String>>,
    pub max_memory: Option<Spanned<String>>,
    pub log: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadySection {
    pub path: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSection {
    pub dir: Option<Spanned<String>>,
    pub max_size: Option<Spanned<String>>,
    pub max_object_size: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteCacheSection {
    pub ttl: Option<Spanned<String>>,
    pub stale_if_error: Option<Spanned<String>>,
    pub stale_while_revalidate: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySection {
    pub workers: Option<Spanned<Workers>>,
    pub control_socket: Option<String>,
    pub shutdown_timeout: Option<Spanned<String>>,
    /// A worker that shows no progress this long is killed and replaced ("off" disables).
    pub worker_watchdog: Option<Spanned<String>>,
    pub access_log: Option<String>,
    pub access_log_format: Option<Spanned<String>>,
    /// Time a client has to send a complete request head; also how long an idle
    /// keep-alive connection is kept, since the clock starts when a response ends.
    pub header_read_timeout: Option<Spanned<String>>,
    /// Longest pause allowed between two pieces of a request body.
    pub client_body_timeout: Option<Spanned<String>>,
    /// Longest request target (path and query) in bytes; longer gets 414.
    pub max_request_line: Option<Spanned<usize>>,
    /// Largest sum of header names and values in bytes; larger gets 431.
    pub max_header_bytes: Option<Spanned<usize>>,
    /// How much of an upstream's response is read ahead of a slow client ("64k").
    pub response_buffer: Option<Spanned<String>>,
    /// Larger request bodies get 413 ("10m"); routes may set their own.
    pub max_body_size: Option<Spanned<String>>,
    /// Reload by itself when the file or a certificate it names changes.
    #[serde(default)]
    pub watch: bool,
    /// "system", or the IP:PORT of a DNS server for server names.
    pub resolver: Option<Spanned<String>>,
    /// How often server names are looked up again ("10s").
    pub resolve_interval: Option<Spanned<String>>,
    /// Peers whose X-Forwarded-For names the client (CIDR or single addresses).
    pub trusted_proxies: Option<Spanned<Vec<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Workers {
    Count(i64),
    Word(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    /// Defaults to 127.0.0.1:9901.
    pub listen: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSection {
    /// What routes' `listener` lists call it.
    pub name: Option<Spanned<String>>,
    pub listen: Spanned<String>,
    /// Every request gets 308 to `https://{host}{uri}` (ACME challenges excepted).
    pub redirect_https: Option<Spanned<bool>>,
    #[serde(default)]
    pub tls: Vec<Spanned<TlsEntry>>,
    /// Connections start with a PROXY protocol header.
    #[serde(default)]
    pub proxy_protocol: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsEntry {
    pub cert: Option<Spanned<String>>,
    pub key: Option<Spanned<String>>,
    /// Names the gateway gets a certificate for itself, from `[acme]`'s directory.
    pub acme: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeSection {
    pub email: Option<Spanned<String>>,
    pub directory: Option<Spanned<String>>,
    pub directory_ca: Option<Spanned<String>>,
    pub storage: Option<Spanned<String>>,
    pub renew_before: Option<Spanned<String>>,
    pub challenge: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    /// The listeners (by name) whose requests the route takes; all without it.
    pub listener: Option<Spanned<Vec<String>>>,
    pub host: Option<Spanned<String>>,
    pub path_prefix: Option<Spanned<String>>,
    /// Where requests go; not with `redirect`.
    pub upstream: Option<Spanned<String>>,
    /// Answered by the gateway: a `Location` template with `{host}` and `{uri}`.
    pub redirect: Option<Spanned<String>>,
    pub redirect_status: Option<Spanned<u16>>,
    /// Replaces the matched prefix before forwarding.
    pub rewrite_prefix: Option<Spanned<String>>,
    pub request_headers: Option<Spanned<BTreeMap<String, String>>>,
    pub remove_request_headers: Option<Spanned<Vec<String>>>,
    pub response_headers: Option<Spanned<BTreeMap<String, String>>>,
    pub remove_response_headers: Option<Spanned<Vec<String>>>,
    pub max_body_size: Option<Spanned<String>>,
    /// Serve files from this directory.
    pub root: Option<Spanned<String>>,
    pub index: Option<Spanned<String>>,
    /// No such file: "upstream", "index" or (default) 404.
    pub fallback: Option<Spanned<String>>,
    pub cache_control: Option<Spanned<String>>,
    /// `false`: never compress this route's responses.
    pub compression: Option<bool>,
    /// Cache the upstream's responses (needs `[cache]`).
    pub cache: Option<Spanned<RouteCacheSection>>,
    /// Instead of `path_prefix`: a regular expression the whole path is matched with.
    pub path_regex: Option<Spanned<String>>,
    /// Only these methods match.
    pub methods: Option<Spanned<Vec<String>>>,
    /// Only requests with these header values match.
    pub headers: Option<Spanned<BTreeMap<String, String>>>,
    /// Client addresses let in (CIDR or single addresses); `deny` wins.
    pub allow: Option<Spanned<Vec<String>>>,
    pub deny: Option<Spanned<Vec<String>>>,
    /// Status (as a string key, "502") to a file answered instead.
    pub error_pages: Option<Spanned<BTreeMap<String, String>>>,
    pub rate_limit: Option<Spanned<RateLimitSection>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSection {
    /// "10/s", "5/m", "100/h".
    pub rate: Spanned<String>,
    pub burst: Option<Spanned<i64>>,
    /// "client_ip" (the default) or "header:NAME".
    pub key: Option<Spanned<String>>,
    /// "gateway" (the default) or "global".
    pub scope: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSection {
    pub url: Spanned<String>,
    /// With rediss://: the CA (PEM) that signed Redis's certificate, when it is not one
    /// the system trusts.
    pub ca: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompressionSection {
    pub algorithms: Option<Spanned<Vec<String>>>,
    pub min_length: Option<Spanned<String>>,
    pub types: Option<Spanned<Vec<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    pub policy: Option<Spanned<String>>,
    pub servers: Spanned<Vec<Spanned<ServerEntry>>>,
    pub keepalive: Option<Spanned<i64>>,
    pub connect_timeout: Option<Spanned<String>>,
    pub read_timeout: Option<Spanned<String>>,
    /// Each write of a request to the server must be taken within this.
    pub send_timeout: Option<Spanned<String>>,
    pub retries: Option<u32>,
    pub max_fails: Option<u32>,
    pub fail_timeout: Option<Spanned<String>>,
    pub health_check: Option<Spanned<HealthCheckSection>>,
    /// `policy = "hash"`: "uri", "header:NAME" or "cookie:NAME".
    pub hash_key: Option<Spanned<String>>,
    /// Pins a client to its server with this cookie, whatever the policy.
    pub sticky_cookie: Option<Spanned<StickyCookieEntry>>,
    /// Failures besides "connect" that send an idempotent request to another server.
    pub retry_on: Option<Spanned<Vec<Spanned<String>>>>,
    /// Retries at most this share of the upstream's requests of the last 10 s.
    pub retry_budget: Option<Spanned<f64>>,
    /// Pooled upstream connections unused this long are closed.
    pub idle_timeout: Option<Spanned<String>>,
    /// A server that comes back ramps up to its weight over this.
    pub slow_start: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerEntry {
    /// `host:port`; or `srv`, an SRV name whose records give targets, ports and weights.
    pub address: Option<Spanned<String>>,
    pub srv: Option<Spanned<String>>,
    /// Every ready instance of the app of this name.
    pub app: Option<Spanned<String>>,
    pub weight: Option<Spanned<i64>>,
    #[serde(default)]
    pub backup: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSection {
    pub path: Option<Spanned<String>>,
    pub interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub fall: Option<Spanned<i64>>,
    pub rise: Option<Spanned<i64>>,
    pub expect_status: Option<Spanned<String>>,
}

/// `sticky_cookie = "NAME"`, or a table with the cookie's attributes.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum StickyCookieEntry {
    Name(String),
    Table(StickyCookieTable),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StickyCookieTable {
    pub name: String,
    #[serde(default)]
    pub secure: bool,
    pub same_site: Option<String>,
    pub max_age: Option<String>,
}
