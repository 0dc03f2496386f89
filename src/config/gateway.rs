//! `[gateway]` and `[admin]`: the process-wide settings, with their defaults.

use super::access::CidrList;
use super::listeners::ListenerConfig;
use super::names::Resolver;
use super::validate::{parse_duration, parse_size};
use super::{file, Validator};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// What a slow reader may cost: response bytes read ahead of the client.
pub const DEFAULT_RESPONSE_BUFFER: usize = 64 * 1024;

/// How long a worker may show no progress before the supervisor replaces it.
pub const DEFAULT_WORKER_WATCHDOG: Duration = Duration::from_secs(5);

/// `[admin]` without `listen` serves on 127.0.0.1 at this port.
pub const DEFAULT_ADMIN_PORT: u16 = 9901;

/// `gateway.control_socket`, from the config file's directory.
pub const DEFAULT_CONTROL_SOCKET: &str = "run/gateway.sock";
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// A client has this long to send a whole request head (slowloris gets 408).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a client's body may be silent.
pub const DEFAULT_CLIENT_BODY_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_MAX_REQUEST_LINE: usize = 8 * 1024;
pub const DEFAULT_MAX_HEADER_BYTES: usize = 32 * 1024;
/// How often server names are looked up again.
pub const DEFAULT_RESOLVE_INTERVAL: Duration = Duration::from_secs(10);

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
    /// Peers whose X-Forwarded-For names the client.
    pub trusted_proxies: CidrList,
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

impl Validator<'_> {
    pub(super) fn gateway(&mut self, g: &file::GatewaySection, base: &Path) -> GatewaySettings {
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
        let max_request_line = size(
            &g.max_request_line,
            "gateway.max_request_line",
            DEFAULT_MAX_REQUEST_LINE,
        );
        let max_header_bytes = size(
            &g.max_header_bytes,
            "gateway.max_header_bytes",
            DEFAULT_MAX_HEADER_BYTES,
        );
        GatewaySettings {
            workers,
            control_socket: base.join(
                g.control_socket
                    .as_deref()
                    .unwrap_or(DEFAULT_CONTROL_SOCKET),
            ),
            shutdown_timeout: self.duration(
                &g.shutdown_timeout,
                "gateway.shutdown_timeout",
                DEFAULT_SHUTDOWN_TIMEOUT,
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
                    DEFAULT_RESOLVE_INTERVAL,
                );
                if interval < Duration::from_millis(100) {
                    let span = g.resolve_interval.as_ref().map_or(0..0, |v| v.span());
                    self.error(span, "gateway.resolve_interval", "must be at least 100ms");
                }
                interval
            },
            trusted_proxies: self.cidr_list(&g.trusted_proxies, "gateway.trusted_proxies"),
            access_log,
            access_log_format,
            limits: ClientLimits {
                header_read_timeout: self.timeout(
                    &g.header_read_timeout,
                    "gateway.header_read_timeout",
                    DEFAULT_HEADER_READ_TIMEOUT,
                ),
                client_body_timeout: self.timeout(
                    &g.client_body_timeout,
                    "gateway.client_body_timeout",
                    DEFAULT_CLIENT_BODY_TIMEOUT,
                ),
                max_request_line,
                max_header_bytes,
            },
        }
    }

    /// `[admin] listen`: loopback at [`DEFAULT_ADMIN_PORT`] when not given, no admin
    /// listener without the section.
    pub(super) fn admin_addr(&mut self, admin: Option<&file::AdminSection>) -> Option<SocketAddr> {
        admin.and_then(|a| match &a.listen {
            Some(listen) => self.socket_addr(listen, "admin.listen"),
            None => Some(SocketAddr::from(([127, 0, 0, 1], DEFAULT_ADMIN_PORT))),
        })
    }

    /// Checks the admin address against the listeners and says where it is written.
    pub(super) fn admin_at(
        &mut self,
        admin: Option<SocketAddr>,
        section: Option<&file::AdminSection>,
        listeners: &[ListenerConfig],
    ) -> String {
        if let (Some(addr), Some(listen)) = (admin, section.and_then(|a| a.listen.as_ref())) {
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
        match section.and_then(|a| a.listen.as_ref()) {
            Some(listen) => self.place(listen.span(), "admin.listen"),
            None => format!("{}: admin.listen (default)", self.file.display()),
        }
    }
}
