//! Integration tests: the real `gateway` binary, real backends, real clients.

mod cli;
mod common;
mod failures;
mod hardening;
mod lifecycle;
mod proxy;
mod shared_state;
mod smuggling;
mod streaming;
mod tls;
