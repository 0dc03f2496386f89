//! Messages between the supervisor, its workers and `gatewayctl`.
//!
//! Supervisor and worker talk over a socket pair that is the worker's stdin, one line per
//! message: the supervisor first sends `tickets KEY [PREVIOUS]` (the TLS ticket keys, hex),
//! `config LEN\n` and the config text, then `drain`, `reopen` or new `tickets`; the
//! worker says `ready` once it accepts connections and `draining` once it no longer
//! does. The worker treats end-of-file as the supervisor's death and drains.
//!
//! `gatewayctl` sends one line (`reload`, `status`, `stop`, `stop now`) on the control
//! socket and gets one JSON [`Reply`] back.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const READY: &str = "ready";
pub const DRAINING: &str = "draining";
pub const DRAIN: &str = "drain";
pub const REOPEN: &str = "reopen";
pub const CONFIG: &str = "config";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Reload,
    Status,
    Stop { now: bool },
}

impl Request {
    pub fn parse(line: &str) -> Option<Request> {
        match line.trim() {
            "reload" => Some(Request::Reload),
            "status" => Some(Request::Status),
            "stop" => Some(Request::Stop { now: false }),
            "stop now" => Some(Request::Stop { now: true }),
            _ => None,
        }
    }

    pub fn as_line(self) -> &'static str {
        match self {
            Request::Reload => "reload\n",
            Request::Status => "status\n",
            Request::Stop { now: false } => "stop\n",
            Request::Stop { now: true } => "stop now\n",
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
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub pid: u32,
    pub generation: u64,
    pub slot: usize,
    pub uptime_s: u64,
    pub rss_bytes: u64,
    /// Open client connections.
    pub active_connections: u64,
    pub requests_total: u64,
    /// `starting`, `serving` or `draining`.
    pub state: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpstreamStatus {
    pub policy: String,
    pub servers: Vec<ServerStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerStatus {
    pub address: String,
    /// `up`, `down`, or `backup` (a backup that is up).
    pub state: String,
    /// Why a server is down: `health_check` or `max_fails`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down_reason: Option<String>,
    /// Requests in flight on the server.
    pub active_connections: u64,
    pub requests_total: u64,
    pub failures_total: u64,
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
