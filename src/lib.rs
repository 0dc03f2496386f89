//! A reverse-proxy gateway.
//!
//! ```text
//! data path     client ─► listener (SO_REUSEPORT, TLS) ─► worker: our HTTP/1 engine
//!               (httparse, no buffer while idle) or hyper's HTTP/2 server
//!               ─► request_check ─► router (host, path prefix) ─► upstream: balancer
//!               ─► pooled keep-alive connection (our HTTP/1 client, fixed-size reads)
//!               ─► backend
//!               ◄─ response streamed back, hop-by-hop headers stripped, access log
//! control path  gatewayctl ─► control socket (Unix, 0600) ─► supervisor
//!               curl ─► admin listener (/healthz /readyz /status /metrics) ─► supervisor
//!               supervisor ─► workers: spawn with inherited sockets, ready, drain, respawn
//! shared state  supervisor (health checks) ─► table ◄─► workers (health, in flight,
//!               counters, round-robin position), read without locks
//! ```
//!
//! `config` validates everything before anything binds; `supervisor` owns the sockets,
//! the worker processes, the health checks and the admin listener; `worker` is the data
//! path; `table` is the state all processes share; `upstream` holds the servers, the
//! balancing policies and the pools; `tls` the rustls side and the shared ticket keys.
//! `sys` is the one module with unsafe code.
#![deny(unsafe_code)]

pub mod access_log;
pub mod config;
pub mod net;
pub mod protocol;
pub mod proxy;
pub mod supervisor;
#[allow(unsafe_code)]
pub mod sys;
pub mod table;
pub mod tls;
pub mod upstream;
pub mod wire;
pub mod worker;

/// The version and the git commit the binary was built from (see build.rs).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("GATEWAY_GIT_COMMIT"),
    ")"
);
