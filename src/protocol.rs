//! Messages between the supervisor, its workers and `gatewayctl`, and their encodings:
//! everything one process says to another is defined here.
//!
//! A worker is started as `gateway worker -c FILE` plus its [`WorkerArgs`]. Its stdin is
//! a socket pair with the supervisor, on which the supervisor sends [`ToWorker`]
//! messages (the ticket keys and the config first) and the worker answers with
//! [`FromWorker`] ones, one line each. The worker treats end-of-file as the supervisor's
//! death and drains.
//!
//! `gatewayctl` sends one [`Request`] line on the control socket and gets one JSON
//! [`Reply`] back.

use crate::tls::tickets::TicketKeys;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};

/// What the supervisor tells a worker on its command line.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct WorkerArgs {
    /// The worker's seat in its generation (0 to workers - 1): the listening sockets it
    /// accepts on are the seat's.
    #[arg(long)]
    pub seat: usize,
    #[arg(long)]
    pub generation: u64,
    /// Inherited listening sockets of every seat of the generation, seat after seat, one
    /// per listener in config order (a worker covers a seat whose worker is gone).
    #[arg(long, value_delimiter = ',')]
    pub fds: Vec<i32>,
    /// The inherited shared state table.
    #[arg(long)]
    pub table_fd: i32,
    /// The worker's own record in the table.
    #[arg(long)]
    pub record: usize,
    /// The table records of the upstreams and their servers (see `table::assignment`).
    #[arg(long, value_delimiter = ',')]
    pub records: Vec<usize>,
}

impl WorkerArgs {
    /// The command-line arguments that [`WorkerArgs`] parses back.
    pub fn to_args(&self) -> Vec<String> {
        let join = |v: &[_]| {
            v.iter()
                .map(|x: &usize| x.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        let fds: Vec<String> = self.fds.iter().map(i32::to_string).collect();
        let mut args = vec![
            "--seat".to_string(),
            self.seat.to_string(),
            "--generation".into(),
            self.generation.to_string(),
            "--fds".into(),
            fds.join(","),
            "--table-fd".into(),
            self.table_fd.to_string(),
            "--record".into(),
            self.record.to_string(),
        ];
        if !self.records.is_empty() {
            args.push("--records".into());
            args.push(join(&self.records));
        }
        args
    }

    /// The inherited sockets of `seat`, one per listener, given `listeners` per seat.
    pub fn seat_fds(&self, seat: usize, listeners: usize) -> &[i32] {
        self.fds
            .get(seat * listeners..(seat + 1) * listeners)
            .unwrap_or(&[])
    }
}

/// From the supervisor to a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToWorker {
    /// TLS session ticket keys: sent before the config, and again when they rotate.
    Tickets(TicketKeys),
    /// What the supervisor's lookups of the config's server names found: a worker lists
    /// the same servers, without asking DNS itself. Sent just before the config.
    Dns(crate::config::Answers),
    /// The configuration to run with (the text the supervisor validated, so an edit of
    /// the file meanwhile changes nothing). Sent once, after the first ticket keys.
    Config(String),
    /// The ACME certificates and open challenges: sent before the config, and again
    /// whenever they change, numbered; a serving worker answers
    /// [`FromWorker::AcmeHeld`] with the number once it serves with them.
    Acme(u64, crate::tls::acme::AcmeState),
    /// Stop accepting, finish what is in flight, exit.
    Drain,
    /// Reopen the access log (logrotate).
    Reopen,
    /// The servers added and removed at run time: sent before the config, and again
    /// before [`ToWorker::Records`] when they change.
    Runtime(crate::config::RuntimeServers),
    /// The ready instances of the apps the gateway runs: sent before the config, and
    /// again before [`ToWorker::Records`] when they change.
    Apps(crate::config::AppServers),
    /// The upstreams' servers changed (DNS answers or run-time changes sent just before):
    /// serve with them, in place, with these table records.
    Records(Vec<usize>),
    /// Accept on the sockets of this seat as well: its worker is gone and its
    /// replacement does not serve yet.
    Cover(usize),
    /// Stop accepting on this seat's sockets: its own worker serves again.
    Uncover(usize),
}

impl ToWorker {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            ToWorker::Tickets(keys) => format!("tickets {}\n", keys.to_words()).into_bytes(),
            ToWorker::Dns(answers) => {
                let mut out = format!("dns {}\n", answers.len());
                for (name, addrs) in answers {
                    // `-`: the name resolved to nothing.
                    let addrs: Vec<String> = addrs.iter().map(ToString::to_string).collect();
                    let addrs = if addrs.is_empty() {
                        "-".to_string()
                    } else {
                        addrs.join(",")
                    };
                    out.push_str(&format!("{name} {addrs}\n"));
                }
                out.into_bytes()
            }
            ToWorker::Config(text) => {
                let mut out = format!("config {}\n", text.len()).into_bytes();
                out.extend_from_slice(text.as_bytes());
                out
            }
            ToWorker::Runtime(runtime) => {
                let json = serde_json::to_string(runtime).unwrap_or_default();
                format!("runtime {json}\n").into_bytes()
            }
            ToWorker::Apps(apps) => {
                let json = serde_json::to_string(apps).unwrap_or_default();
                format!("apps {json}\n").into_bytes()
            }
            ToWorker::Acme(serial, state) => {
                let json = serde_json::to_string(state).unwrap_or_default();
                format!("acme {serial} {json}\n").into_bytes()
            }
            ToWorker::Records(records) => {
                let list: Vec<String> = records.iter().map(ToString::to_string).collect();
                format!("records {}\n", list.join(",")).into_bytes()
            }
            ToWorker::Drain => b"drain\n".to_vec(),
            ToWorker::Reopen => b"reopen\n".to_vec(),
            ToWorker::Cover(seat) => format!("cover {seat}\n").into_bytes(),
            ToWorker::Uncover(seat) => format!("uncover {seat}\n").into_bytes(),
        }
    }

    /// The next message, `None` at end of stream; an unreadable message is an error.
    pub async fn read<R: AsyncBufRead + Unpin>(
        reader: &mut R,
    ) -> std::io::Result<Option<ToWorker>> {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 {
            return Ok(None);
        }
        let bad = || {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "unreadable message from the supervisor: {:?}",
                    line.trim_end()
                ),
            )
        };
        let mut words = line.split_whitespace();
        let message = match (words.next(), words.next(), words.next()) {
            (Some("tickets"), Some(current), previous) => {
                ToWorker::Tickets(TicketKeys::from_words(current, previous).ok_or_else(bad)?)
            }
            (Some("config"), Some(len), None) => {
                let len: usize = len.parse().map_err(|_| bad())?;
                let mut text = vec![0; len];
                reader.read_exact(&mut text).await?;
                ToWorker::Config(String::from_utf8(text).map_err(|_| bad())?)
            }
            (Some("dns"), Some(count), None) => {
                let count: usize = count.parse().map_err(|_| bad())?;
                let mut answers = crate::config::Answers::new();
                for _ in 0..count {
                    let mut entry = String::new();
                    reader.read_line(&mut entry).await?;
                    let (name, addrs) = entry.trim_end().split_once(' ').ok_or_else(bad)?;
                    let addrs = addrs
                        .split(',')
                        .filter(|a| *a != "-")
                        .map(|a| a.parse().map_err(|_| bad()))
                        .collect::<Result<Vec<_>, _>>()?;
                    answers.insert(name.to_string(), addrs);
                }
                ToWorker::Dns(answers)
            }
            (Some("runtime"), Some(_), _) => {
                let json = line.trim_end().strip_prefix("runtime ").ok_or_else(bad)?;
                ToWorker::Runtime(serde_json::from_str(json).map_err(|_| bad())?)
            }
            (Some("apps"), Some(_), _) => {
                let json = line.trim_end().strip_prefix("apps ").ok_or_else(bad)?;
                ToWorker::Apps(serde_json::from_str(json).map_err(|_| bad())?)
            }
            (Some("acme"), Some(serial), Some(_)) => {
                let serial = serial.parse().map_err(|_| bad())?;
                let json = line.trim_end().split_once(' ').ok_or_else(bad)?.1;
                let json = json.split_once(' ').ok_or_else(bad)?.1;
                ToWorker::Acme(serial, serde_json::from_str(json).map_err(|_| bad())?)
            }
            (Some("records"), list, None) => ToWorker::Records(
                list.unwrap_or_default()
                    .split(',')
                    .filter(|r| !r.is_empty())
                    .map(|r| r.parse().map_err(|_| bad()))
                    .collect::<Result<_, _>>()?,
            ),
            (Some("drain"), None, None) => ToWorker::Drain,
            (Some("reopen"), None, None) => ToWorker::Reopen,
            (Some("cover"), Some(seat), None) => ToWorker::Cover(seat.parse().map_err(|_| bad())?),
            (Some("uncover"), Some(seat), None) => {
                ToWorker::Uncover(seat.parse().map_err(|_| bad())?)
            }
            _ => return Err(bad()),
        };
        Ok(Some(message))
    }
}

/// From a worker to the supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FromWorker {
    /// It accepts connections on its seat.
    Ready,
    /// It no longer accepts (it may still finish requests).
    Draining,
    /// It serves with the ACME state of this number.
    AcmeHeld(u64),
}

impl FromWorker {
    pub fn encode(self) -> Vec<u8> {
        match self {
            FromWorker::Ready => b"ready\n".to_vec(),
            FromWorker::Draining => b"draining\n".to_vec(),
            FromWorker::AcmeHeld(serial) => format!("acme-held {serial}\n").into_bytes(),
        }
    }

    pub fn parse(line: &str) -> Option<FromWorker> {
        match line.trim_end().split_once(' ') {
            None if line.trim_end() == "ready" => Some(FromWorker::Ready),
            None if line.trim_end() == "draining" => Some(FromWorker::Draining),
            Some(("acme-held", serial)) => serial.parse().ok().map(FromWorker::AcmeHeld),
            _ => None,
        }
    }
}

/// What `gatewayctl` asks on the control socket: one line, one JSON [`Reply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Reload,
    /// Replace the running gateway by the binary on disk now.
    Upgrade,
    Status,
    Stop {
        now: bool,
    },
    /// Drain, enable or re-weight the servers of `upstream` that `server` names.
    Server {
        upstream: String,
        server: String,
        change: ServerChange,
    },
    /// Add a server to an upstream, without a new generation.
    AddServer {
        upstream: String,
        server: crate::config::AddedServer,
    },
    /// Remove the cached response of a URL, or with `prefix` every one under it.
    Purge {
        url: String,
        prefix: bool,
    },
    /// Take a server out of an upstream, without a new generation; with `wait`, answer
    /// once nothing is in flight on it any more.
    RemoveServer {
        upstream: String,
        addr: std::net::SocketAddr,
        wait: bool,
    },
    /// Restart an app's instances one at a time; answered once all were replaced.
    Restart {
        app: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerChange {
    Drain,
    Enable,
    Weight(u32),
}

impl Request {
    pub fn parse(line: &str) -> Option<Request> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let server = |upstream: &str, server: &str, change| Request::Server {
            upstream: upstream.to_string(),
            server: server.to_string(),
            change,
        };
        match words[..] {
            ["reload"] => Some(Request::Reload),
            ["upgrade"] => Some(Request::Upgrade),
            ["status"] => Some(Request::Status),
            ["stop"] => Some(Request::Stop { now: false }),
            ["stop", "now"] => Some(Request::Stop { now: true }),
            ["drain", u, s] => Some(server(u, s, ServerChange::Drain)),
            ["enable", u, s] => Some(server(u, s, ServerChange::Enable)),
            ["weight", u, s, n] => Some(server(u, s, ServerChange::Weight(n.parse().ok()?))),
            ["add-server", u, a, n, backup @ ("backup" | "primary")] => Some(Request::AddServer {
                upstream: u.to_string(),
                server: crate::config::AddedServer {
                    addr: a.parse().ok()?,
                    weight: n.parse().ok()?,
                    backup: backup == "backup",
                },
            }),
            ["purge", url] => Some(Request::Purge {
                url: url.to_string(),
                prefix: false,
            }),
            ["purge-prefix", url] => Some(Request::Purge {
                url: url.to_string(),
                prefix: true,
            }),
            ["restart", app] => Some(Request::Restart {
                app: app.to_string(),
            }),
            ["remove-server", u, a, wait @ ("wait" | "now")] => Some(Request::RemoveServer {
                upstream: u.to_string(),
                addr: a.parse().ok()?,
                wait: wait == "wait",
            }),
            _ => None,
        }
    }

    pub fn as_line(&self) -> String {
        match self {
            Request::Reload => "reload\n".into(),
            Request::Upgrade => "upgrade\n".into(),
            Request::Status => "status\n".into(),
            Request::Stop { now: false } => "stop\n".into(),
            Request::Stop { now: true } => "stop now\n".into(),
            Request::Server {
                upstream,
                server,
                change,
            } => match change {
                ServerChange::Drain => format!("drain {upstream} {server}\n"),
                ServerChange::Enable => format!("enable {upstream} {server}\n"),
                ServerChange::Weight(n) => format!("weight {upstream} {server} {n}\n"),
            },
            Request::AddServer { upstream, server } => format!(
                "add-server {upstream} {} {} {}\n",
                server.addr,
                server.weight,
                if server.backup { "backup" } else { "primary" }
            ),
            Request::Restart { app } => format!("restart {app}\n"),
            Request::Purge { url, prefix: false } => format!("purge {url}\n"),
            Request::Purge { url, prefix: true } => format!("purge-prefix {url}\n"),
            Request::RemoveServer {
                upstream,
                addr,
                wait,
            } => format!(
                "remove-server {upstream} {addr} {}\n",
                if *wait { "wait" } else { "now" }
            ),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// After an upgrade: the new gateway's version and its supervisor's pid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgraded_to: Option<String>,
    /// After a purge: how many cached responses went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purged: Option<usize>,
}

impl Reply {
    pub fn failed(error: impl Into<String>) -> Reply {
        Reply {
            ok: false,
            error: Some(error.into()),
            ..Reply::default()
        }
    }
}

/// What `gatewayctl status` and the admin `/status` show; counts are totals across all
/// workers, read from the shared table.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Status {
    pub generation: u64,
    pub reloads: u64,
    /// Workers replaced after they died.
    pub restarts: u64,
    pub workers: Vec<WorkerStatus>,
    pub upstreams: BTreeMap<String, UpstreamStatus>,
    /// The listeners' certificates: from files, and obtained by ACME.
    #[serde(default)]
    pub certificates: Vec<CertificateStatus>,
    /// The apps the gateway runs, by name.
    #[serde(default)]
    pub apps: BTreeMap<String, AppStatus>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AppStatus {
    pub instances: Vec<AppInstanceStatus>,
}

/// One instance of an app (a process; during a restart an `INSTANCE` number has two).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppInstanceStatus {
    /// Its `INSTANCE` number.
    pub instance: usize,
    /// For a stopped one, its last process's.
    pub pid: u32,
    pub port: u16,
    /// `starting`, `ready`, `draining` or `stopped`.
    pub state: String,
    pub uptime_s: u64,
    /// Processes started for this `INSTANCE` number after its first.
    pub restarts: u64,
    pub rss_bytes: u64,
}

/// One certificate of the listeners. Times are seconds since the epoch.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CertificateStatus {
    /// The names it serves (an ACME entry's names, or the certificate's own).
    pub names: Vec<String>,
    /// `acme`, or `file` (then `file` is its path).
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<i64>,
    /// `None` for an ACME entry still waiting for its first certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_s: Option<i64>,
    /// ACME: when it will be renewed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_renewal: Option<i64>,
    /// ACME: why the last order failed, until one succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub pid: u32,
    pub generation: u64,
    /// Its seat in the generation.
    pub seat: usize,
    pub uptime_s: u64,
    pub rss_bytes: u64,
    /// Open client connections.
    pub active_connections: u64,
    pub requests_total: u64,
    pub state: WorkerState,
}

/// Declares an enum that /status writes as snake_case words, and `Display` to match.
macro_rules! status_words {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $word:literal,)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vdoc])* $variant,)*
        }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $word,)*
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                // `pad`, so that table columns line up.
                f.pad(self.as_str())
            }
        }
    };
}

status_words!(
    /// Where a worker is in its life.
    WorkerState {
        Starting = "starting",
        Serving = "serving",
        Draining = "draining",
    }
);

status_words!(
    /// Whether a server takes requests.
    ServerState {
        Up = "up",
        Down = "down",
        /// A backup that is up: it serves while no primary does.
        Backup = "backup",
        /// Taken out of rotation by `gatewayctl drain`.
        Draining = "draining",
    }
);

status_words!(
    /// Why a server is down.
    DownReason {
        /// Its name resolves to no address.
        Unresolved = "unresolved",
        HealthCheck = "health_check",
        MaxFails = "max_fails",
    }
);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpstreamStatus {
    pub policy: String,
    pub servers: Vec<ServerStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerStatus {
    pub address: String,
    /// For a server found by name: the entry as the file writes it (`app:3000`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub state: ServerState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down_reason: Option<DownReason>,
    /// Where the server comes from: the file, a name in it (DNS), or `add-server`.
    pub source: crate::config::ServerSource,
    /// Requests in flight on the server.
    pub active_connections: u64,
    pub requests_total: u64,
    pub failures_total: u64,
    /// The peak-EWMA of the time to the response head (what least_time weighs), in ms;
    /// 0 before the first answer.
    #[serde(default)]
    pub latency_ms: f64,
    /// The upper bound of the histogram bucket that holds the 99th percentile of the time
    /// to the response head, in ms (`None` before any answer; 10000 means slower than
    /// that).
    #[serde(default)]
    pub p99_ms: Option<f64>,
    pub weight: u32,
    pub backup: bool,
    /// Active health check results, when the upstream has a health check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_checks: Option<HealthCheckCounts>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HealthCheckCounts {
    pub passed: u64,
    pub failed: u64,
    /// Why the last check failed, while the server fails them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Worker {
        #[command(flatten)]
        args: WorkerArgs,
    }

    #[test]
    fn worker_args_parse_back_as_they_were_built() {
        let args = WorkerArgs {
            seat: 1,
            generation: 7,
            fds: vec![3, 4, 5, 6],
            table_fd: 9,
            record: 12,
            records: vec![0, 5, 2],
        };
        let argv = std::iter::once("worker".to_string()).chain(args.to_args());
        assert_eq!(Worker::parse_from(argv).args, args);
        assert_eq!(args.seat_fds(1, 2), [5, 6]);
        assert_eq!(args.seat_fds(2, 2), [] as [i32; 0]);
    }

    #[tokio::test]
    async fn worker_messages_read_back_as_they_were_encoded() {
        let keys = TicketKeys::new().unwrap();
        let mut rotated = keys.clone();
        rotated.rotate().unwrap();
        let sent = [
            ToWorker::Tickets(keys),
            ToWorker::Dns(
                [(
                    "app:3000".to_string(),
                    vec![
                        "10.0.0.1:3000".parse().unwrap(),
                        "[::1]:3000".parse().unwrap(),
                    ],
                )]
                .into(),
            ),
            ToWorker::Dns(Default::default()),
            ToWorker::Config("[gateway]\nworkers = 1\n".into()),
            ToWorker::Acme(
                7,
                crate::tls::acme::AcmeState {
                    certs: [(
                        "a.example.com".to_string(),
                        crate::tls::acme::PemPair {
                            chain: "-----BEGIN CERTIFICATE-----\nAAA=\n-----END CERTIFICATE-----\n"
                                .into(),
                            key: "k\n".into(),
                        },
                    )]
                    .into(),
                    http: [("token".to_string(), "token.thumb".to_string())].into(),
                    tls_alpn: Default::default(),
                },
            ),
            ToWorker::Tickets(rotated),
            ToWorker::Cover(3),
            ToWorker::Uncover(3),
            ToWorker::Reopen,
            ToWorker::Drain,
        ];
        let bytes: Vec<u8> = sent.iter().flat_map(ToWorker::encode).collect();
        let mut reader = tokio::io::BufReader::new(&bytes[..]);
        for message in &sent {
            let got = ToWorker::read(&mut reader).await.unwrap().unwrap();
            assert_eq!(&got, message);
        }
        assert!(ToWorker::read(&mut reader).await.unwrap().is_none());
        let mut garbage = tokio::io::BufReader::new(&b"cover x\n"[..]);
        assert!(ToWorker::read(&mut garbage).await.is_err());
        for m in [
            FromWorker::Ready,
            FromWorker::Draining,
            FromWorker::AcmeHeld(9),
        ] {
            assert_eq!(
                FromWorker::parse(std::str::from_utf8(&m.encode()).unwrap()),
                Some(m)
            );
        }
    }
}
