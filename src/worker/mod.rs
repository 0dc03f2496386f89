//! A worker: serves the data path on the listeners it is given, with one single-threaded
//! tokio runtime, until told to stop.

pub mod h2_flood;
pub mod http1;
pub mod process;
pub mod server;
pub mod websocket;

use crate::config::Config;
use crate::protocol::FromWorker;
use crate::proxy::Proxy;
use crate::tls::tickets::SharedTicketer;
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Set once this worker drains: every response from then on says `Connection: close`,
/// so keep-alive clients move to the new workers after their next request instead of
/// having an idle connection closed under a request they are sending.
pub static DRAINING: AtomicBool = AtomicBool::new(false);

/// Tells a running worker to accept on another seat's sockets, or to stop doing so.
#[derive(Debug, Clone, Copy)]
pub enum Cover {
    Start(usize),
    Stop(usize),
}

/// What a worker serves with.
pub struct Serving {
    /// Every seat's sockets (one per listener, in config order): another seat's are used
    /// only while the supervisor says to cover it.
    pub sockets: Vec<Vec<std::net::TcpListener>>,
    /// The worker's own seat.
    pub seat: usize,
    pub config: Arc<Config>,
    pub proxy: Arc<Proxy>,
    pub ticketer: Arc<SharedTicketer>,
}

/// Serves on the sockets of its seat until `shutdown` is cancelled, then lets in-flight
/// requests finish for up to `shutdown_timeout`. Tells the supervisor, through `say`,
/// `Ready` once the seat's listeners accept and `Draining` once none does any more (the
/// in-flight requests may still be finishing).
pub async fn run(
    serving: Serving,
    shutdown: CancellationToken,
    mut cover: mpsc::UnboundedReceiver<Cover>,
    say: mpsc::UnboundedSender<FromWorker>,
) -> std::io::Result<()> {
    let Serving {
        sockets,
        seat,
        config,
        proxy,
        ticketer,
    } = serving;
    let protocols = Arc::new(server::Protocols::new(&config.gateway.limits));
    let mut tls = Vec::new();
    for settings in &config.listeners {
        tls.push(if settings.tls.is_empty() {
            None
        } else {
            let tls = crate::tls::server_config(&settings.tls, ticketer.clone())
                .map_err(std::io::Error::other)?;
            Some(tokio_rustls::TlsAcceptor::from(tls))
        });
    }
    let fronts: Vec<server::Front> = tls
        .into_iter()
        .zip(&config.listeners)
        .enumerate()
        .map(|(listener, (tls, l))| server::Front {
            tls,
            proxy_protocol: l.proxy_protocol,
            listener,
        })
        .collect();
    let tasks = TaskTracker::new();
    let accepting = TaskTracker::new();
    // Sockets are registered with the runtime only while accepted on: a registered socket
    // of another seat would wake this worker for every connection to that seat.
    let accept_on = |seat: usize, stop: CancellationToken| -> std::io::Result<()> {
        for (socket, front) in sockets.get(seat).into_iter().flatten().zip(&fronts) {
            let listener = tokio::net::TcpListener::from_std(socket.try_clone()?)?;
            accepting.spawn(server::accept_loop(
                listener,
                front.clone(),
                proxy.clone(),
                protocols.clone(),
                tasks.clone(),
                stop.clone(),
                shutdown.clone(),
            ));
        }
        Ok(())
    };
    accept_on(seat, shutdown.clone())?;
    let _ = say.send(FromWorker::Ready);
    let mut covering: HashMap<usize, CancellationToken> = HashMap::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            command = cover.recv() => match command {
                Some(Cover::Start(other)) if other != seat && other < sockets.len() => {
                    if let std::collections::hash_map::Entry::Vacant(entry) = covering.entry(other) {
                        let stop = shutdown.child_token();
                        accept_on(other, stop.clone())?;
                        entry.insert(stop);
                        tracing::info!(seat, "covering seat {other} until its worker serves again");
                    }
                }
                Some(Cover::Stop(other)) => {
                    if let Some(stop) = covering.remove(&other) {
                        stop.cancel();
                        tracing::info!(seat, "no longer covering seat {other}");
                    }
                }
                Some(Cover::Start(other)) => tracing::warn!(seat, "cannot cover seat {other}"),
                None => shutdown.cancelled().await,
            }
        }
    }
    accepting.close();
    accepting.wait().await;
    let _ = say.send(FromWorker::Draining);
    tasks.close();
    // WebSockets still open near the end are told to go away (1001) rather than cut.
    let going_away = websocket::going_away_after(config.gateway.shutdown_timeout);
    tokio::spawn(async move {
        tokio::time::sleep(going_away).await;
        websocket::GOING_AWAY.cancel();
    });
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
