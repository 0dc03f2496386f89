//! A worker: serves the data path on the listeners it is given, with one single-threaded
//! tokio runtime, until told to stop.

pub mod body;
pub mod forward;
pub mod path;
pub mod process;
pub mod request_check;
pub mod router;
pub mod server;

use crate::config::Config;
use crate::tls::tickets::SharedTicketer;
use forward::Proxy;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

/// Set once this worker drains: every response from then on says `Connection: close`,
/// so keep-alive clients move to the new workers after their next request instead of
/// having an idle connection closed under a request they are sending.
pub static DRAINING: AtomicBool = AtomicBool::new(false);

/// Serves until `shutdown` turns true, then lets in-flight requests finish for up to
/// `shutdown_timeout`. `ready` runs once every listener accepts, `closed` once none does
/// any more (the in-flight requests may still be finishing).
pub async fn run(
    listeners: Vec<std::net::TcpListener>,
    config: Arc<Config>,
    proxy: Arc<Proxy>,
    ticketer: Arc<SharedTicketer>,
    shutdown: watch::Receiver<bool>,
    ready: impl FnOnce(),
    closed: impl FnOnce(),
) -> std::io::Result<()> {
    let protocols = Arc::new(server::Protocols::new(&config.gateway.limits));
    let tasks = TaskTracker::new();
    let mut accepting = Vec::new();
    for (listener, settings) in listeners.into_iter().zip(&config.listeners) {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let tls = if settings.tls.is_empty() {
            None
        } else {
            let tls = crate::tls::server_config(&settings.tls, ticketer.clone())
                .map_err(std::io::Error::other)?;
            Some(tokio_rustls::TlsAcceptor::from(tls))
        };
        accepting.push(tokio::spawn(server::accept_loop(
            listener,
            tls,
            proxy.clone(),
            protocols.clone(),
            tasks.clone(),
            shutdown.clone(),
        )));
    }
    ready();
    for task in accepting {
        let _ = task.await;
    }
    closed();
    tasks.close();
    if tokio::time::timeout(config.gateway.shutdown_timeout, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "{} connections still open after shutdown_timeout; closing them",
            tasks.len()
        );
    }
    Ok(())
}
