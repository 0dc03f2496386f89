//! A reverse-proxy gateway.
//!
//! ```text
//! data path     client ─► listener (SO_REUSEPORT) ─► worker: hyper server (HTTP/1.1)
//!               ─► request_check ─► router (host, path prefix) ─► upstream: balancer
//!               ─► pooled keep-alive connection ─► backend
//!               ◄─ response streamed back, hop-by-hop headers stripped, access log
//! control path  main: config check, bind, signals (the supervisor comes later)
//! ```
//!
//! `config` validates everything before anything binds; `worker` is the data path;
//! `upstream` holds the servers, their health, the balancing policies and the pools.
#![deny(unsafe_code)]

pub mod access_log;
pub mod config;
pub mod net;
pub mod protocol;
pub mod supervisor;
#[allow(unsafe_code)]
pub mod sys;
pub mod tls;
pub mod upstream;
pub mod worker;
