//! The supervisor's side of the apps it runs: waiting for their instances before the
//! workers serve, `gatewayctl restart`, and stopping them once the workers are gone.

use super::{Event, Supervisor};
use crate::apps::Command;
use crate::protocol::Reply;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Beyond the longest `ready.timeout`, how long start waits for the first instances.
const START_MARGIN: Duration = Duration::from_secs(2);

impl Supervisor {
    /// Waits until every instance of every app is ready (or has failed once), serving
    /// their servers meanwhile; other events wait for the event loop. At start this means
    /// the first requests find the app; after an upgrade, that the new gateway's own
    /// instances serve before its workers do. Says why when not all are ready.
    pub(super) async fn wait_for_apps(
        &mut self,
        rx: &mut mpsc::UnboundedReceiver<Event>,
    ) -> Result<(), String> {
        if self.config.apps.is_empty() {
            return Ok(());
        }
        let longest = self.config.apps.iter().map(|a| a.ready.timeout).max();
        let deadline = tokio::time::Instant::now() + longest.unwrap_or_default() + START_MARGIN;
        let (tx, mut started) = oneshot::channel();
        self.apps.send(Command::WhenStarted(tx));
        let not_ready = "the apps' instances are not all ready (see the log above)";
        loop {
            tokio::select! {
                all_ready = &mut started => {
                    return match all_ready {
                        Ok(true) => Ok(()),
                        _ => Err(not_ready.into()),
                    };
                }
                _ = tokio::time::sleep_until(deadline) => return Err(not_ready.into()),
                event = rx.recv() => match event {
                    Some(Event::AppServers(servers, told)) => {
                        let left = self.change_app_servers(servers).await;
                        let _ = told.send(left);
                    }
                    Some(other) => self.deferred.push(other),
                    None => return Err("the supervisor's events ended".into()),
                },
            }
        }
    }

    /// `gatewayctl restart APP`: answered once the rolling restart is over.
    pub(super) fn restart_app(&mut self, app: String, reply: oneshot::Sender<Reply>) {
        if self.stopping {
            let _ = reply.send(Reply::failed("the gateway is stopping"));
            return;
        }
        let (tx, done) = oneshot::channel();
        self.apps.send(Command::Restart(app, tx));
        let generation = self.generation;
        tokio::spawn(async move {
            let answer = match done.await {
                Ok(Ok(())) => Reply {
                    ok: true,
                    generation: Some(generation),
                    ..Reply::default()
                },
                Ok(Err(e)) => Reply::failed(e),
                Err(_) => Reply::failed("the apps are gone"),
            };
            let _ = reply.send(answer);
        });
    }

    /// Stops every instance once the workers are gone (they finished their requests),
    /// answering the apps' last changes of servers meanwhile.
    pub(super) async fn stop_apps(&mut self, rx: &mut mpsc::UnboundedReceiver<Event>) {
        let (tx, mut stopped) = oneshot::channel();
        self.apps.send(Command::Stop(tx));
        loop {
            tokio::select! {
                _ = &mut stopped => return,
                event = rx.recv() => match event {
                    Some(Event::AppServers(_, told)) => {
                        let _ = told.send(Default::default());
                    }
                    Some(_) => {}
                    None => return,
                },
            }
        }
    }
}
