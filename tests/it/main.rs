//! Integration tests: the real `gateway` binary, real backends, real clients.

mod access;
mod acme;
mod apps;
mod balancing;
mod cache;
mod cli;
mod common;
mod deploy;
mod differential;
mod dns;
mod failures;
mod files;
mod hardening;
mod http1;
mod import_nginx;
mod lifecycle;
mod proxy;
mod redis_limits;
mod routes;
mod runtime_control;
mod shared_state;
mod smuggling;
mod status_page;
mod streaming;
mod tls;
mod upstream_http1;
