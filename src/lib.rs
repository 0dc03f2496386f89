//! A reverse-proxy gateway.
//!
//! ```text
//! data path     client ─► listener (SO_REUSEPORT, TLS) ─► worker: our HTTP/1 engine
//!               (httparse, no buffer while idle) or hyper's HTTP/2 server
//!               ─► proxy stages: check ─► route ─► request rewrite ─► forward (balancer,
//!               connector: pooled keep-alive connection, our HTTP/1 client) ─► backend
//!               ◄─ response rewrite ◄─ response streamed back; access log at its end
//! control path  gatewayctl ─► control socket (Unix, 0600) ─► supervisor
//!               curl ─► admin listener (/healthz /readyz /status /metrics) ─► supervisor
//!               supervisor ─► workers: spawn with inherited sockets, ready, drain, respawn
//!               supervisor's ACME client ─► CA; certificates, challenges ─► workers
//!               supervisor's apps ─► app instances (start, ready, drain, restart) ─►
//!               their ready instances ─► workers, as servers
//! shared state  supervisor (health checks) ─► table ◄─► workers (health, in flight,
//!               counters; per upstream: round-robin position, retry budget), no locks
//! ```
//!
//! `config` validates everything before anything binds; `supervisor` owns the sockets,
//! the worker processes, the health checks and the admin listener; `worker` accepts and
//! runs the protocol engines; `proxy` is the request path's stages; `table` is the state
//! all processes share; `upstream` holds the servers, the balancing policies, the pools
//! and the connector; `tls` the rustls side, the shared ticket keys and what workers hold
//! of ACME; `acme` the supervisor's ACME client and its storage; `apps` the instances of
//! the apps the gateway runs.
//! `sys` is the one module with unsafe code.
#![deny(unsafe_code)]

pub mod access_log;
pub mod acme;
pub mod apps;
pub mod config;
pub mod import_nginx;
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
