//! Servers that change while the workers run: new DNS answers, `add-server` and
//! `remove-server`, app instances that become ready or leave. The running generation's workers are told the new servers and take
//! them in place (no new generation): the servers that stay keep their record, their
//! state and the workers' idle connections to them; a new one joins through slow start;
//! one that goes gets no new request and finishes what it has.

use super::health::HealthChecks;
use super::Supervisor;
use crate::config::{self, AddedServer, Answers, AppServers, RuntimeServers};
use crate::protocol::{Reply, ToWorker};
use crate::table;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// How often `remove-server --wait` looks whether the server still has requests.
const WAIT_POLL: Duration = Duration::from_millis(50);

impl Supervisor {
    /// Serves with the servers `answers`, `runtime` and `apps` make of the running
    /// config, in place. Nothing changes when they do not make a valid config.
    pub(super) async fn change_servers(
        &mut self,
        answers: Answers,
        runtime: RuntimeServers,
        apps: AppServers,
    ) -> Result<(), String> {
        let config = config::with_servers(
            &self.config_path,
            &self.config_text,
            &answers,
            &runtime,
            &apps,
        )
        .map_err(|e| e.to_string())?;
        let assigned = self
            .assignments
            .reassign(self.generation, table::assignment::record_keys(&config))?;
        // A server new to the gateway joins through slow_start, like one that comes back.
        self.table.reset_fresh(&assigned);
        let now = crate::sys::monotonic_ms();
        for &record in &assigned.fresh_servers {
            self.table.server(record).mark_rejoined(now);
        }
        let messages = [
            ToWorker::Dns(answers),
            ToWorker::Runtime(runtime.clone()),
            ToWorker::Apps(apps.clone()),
            ToWorker::Records(assigned.records.clone()),
        ];
        let generation = self.generation;
        for w in self
            .workers
            .iter_mut()
            .filter(|w| w.generation == generation)
        {
            for message in &messages {
                w.send(message).await;
            }
        }
        self.config = Arc::new(config);
        self.runtime = runtime;
        self.app_servers = apps;
        // Checks of servers that stay go on from the state they had.
        self.health = HealthChecks::start(
            &self.config,
            &assigned.records,
            self.table,
            &self.check_failures,
        );
        self.publish();
        Ok(())
    }

    /// `gatewayctl add-server`.
    pub(super) async fn add_server(&mut self, upstream: &str, server: AddedServer) -> Reply {
        let mut runtime = self.runtime.clone();
        if let Err(e) = runtime.add(&self.config, upstream, server) {
            return Reply::failed(e);
        }
        match self
            .change_servers(
                self.config.answers.clone(),
                runtime,
                self.app_servers.clone(),
            )
            .await
        {
            Ok(()) => {
                tracing::info!(upstream, server = %server.addr, "server added");
                self.ok()
            }
            Err(e) => Reply::failed(e),
        }
    }

    /// `gatewayctl remove-server`: answers on `reply` at once, or with `wait` once the
    /// server has nothing in flight any more (WebSockets included).
    pub(super) async fn remove_server(
        &mut self,
        upstream: &str,
        addr: SocketAddr,
        wait: bool,
        reply: oneshot::Sender<Reply>,
    ) {
        let mut runtime = self.runtime.clone();
        let record = self.server_record(upstream, addr);
        let removed = match runtime.remove(&self.config, upstream, addr) {
            _ if self.stopping => Err("the gateway is stopping".to_string()),
            Err(e) => Err(e),
            Ok(()) => {
                self.change_servers(
                    self.config.answers.clone(),
                    runtime,
                    self.app_servers.clone(),
                )
                .await
            }
        };
        if let Err(e) = removed {
            let _ = reply.send(Reply::failed(e));
            return;
        }
        tracing::info!(upstream, server = %addr, "server removed: it finishes what it has");
        let done = self.ok();
        let table = self.table;
        tokio::spawn(async move {
            if let (true, Some(record)) = (wait, record) {
                while table.server(record).in_flight() > 0 {
                    tokio::time::sleep(WAIT_POLL).await;
                }
            }
            let _ = reply.send(done);
        });
    }

    /// The ready instances of the apps changed: serve with them. The answer gives the
    /// table records of each instance that left, for its requests to be waited for.
    pub(super) async fn change_app_servers(&mut self, apps: AppServers) -> crate::apps::Left {
        let records = self.assignments.records(self.generation);
        let mut left = crate::apps::Left::new();
        for (upstream, _, records) in table::assignment::per_upstream(&self.config, &records) {
            for (server, &record) in upstream.servers.iter().zip(records) {
                let stays = apps.0.values().flatten().any(|&a| a == server.addr);
                if server.source == config::ServerSource::App && !server.unresolved && !stays {
                    left.entry(server.addr).or_default().push(record);
                }
            }
        }
        let (answers, runtime) = (self.config.answers.clone(), self.runtime.clone());
        if let Err(e) = self.change_servers(answers, runtime, apps).await {
            tracing::error!("the apps' instances are not used as servers: {e}");
        }
        left
    }

    /// The table record of `upstream`'s server at `addr` in the running generation.
    fn server_record(&self, upstream: &str, addr: SocketAddr) -> Option<usize> {
        let records = self.assignments.records(self.generation);
        table::assignment::per_upstream(&self.config, &records)
            .into_iter()
            .filter(|(u, _, _)| u.name == upstream)
            .flat_map(|(u, _, records)| u.servers.iter().zip(records))
            .find(|(s, _)| s.addr == addr && !s.unresolved)
            .map(|(_, &record)| record)
    }

    fn ok(&self) -> Reply {
        Reply {
            ok: true,
            generation: Some(self.generation),
            ..Reply::default()
        }
    }
}
