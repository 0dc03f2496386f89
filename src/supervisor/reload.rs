//! The reload transaction: validate, start the new generation on the same sockets, wait
//! until it serves, then drain the old one. Any failure before the switch leaves
//! everything as it was.

use super::admin::AdminListener;
use super::health::HealthChecks;
use super::workers::Backoff;
use super::{Event, Supervisor};
use crate::config;
use crate::protocol::{FromWorker, ToWorker};
use crate::table;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// How long new workers get to say they serve before a reload is called failed.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a reload waits for the old workers to confirm they stopped accepting.
const DRAIN_ACK_TIMEOUT: Duration = Duration::from_secs(2);

impl Supervisor {
    pub(super) async fn reload(
        &mut self,
        rx: &mut mpsc::UnboundedReceiver<Event>,
    ) -> Result<u64, String> {
        tracing::info!("reloading {}", self.config_path.display());
        let (mut config, text) =
            config::load_with_text(&self.config_path).map_err(|e| e.to_string())?;
        // The servers added and removed at run time stay, while their upstream does.
        // The new workers are told them as they start; a failed reload puts them back.
        let before = self.runtime.clone();
        self.app_servers.apply(&mut config);
        self.runtime.apply(&mut config);
        let switched = self.switch_to(config, text, rx).await;
        if switched.is_err() {
            self.runtime = before;
        }
        switched
    }

    async fn switch_to(
        &mut self,
        config: config::Config,
        text: String,
        rx: &mut mpsc::UnboundedReceiver<Event>,
    ) -> Result<u64, String> {
        for warning in &config.warnings {
            tracing::warn!("{warning}");
        }
        if config.gateway.control_socket != self.config.gateway.control_socket {
            tracing::warn!("gateway.control_socket changes only with a restart");
        }
        let sockets = self
            .sockets
            .for_config(&config)
            .map_err(|e| e.to_string())?;
        let admin = match config.admin {
            Some(addr) if self.admin.as_ref().map(|a| a.configured) != Some(addr) => Some(
                AdminListener::bind(addr, self.source())
                    .await
                    .map_err(|e| format!("admin listener {addr}: {e}"))?,
            ),
            _ => None,
        };
        let generation = self.generation + 1;
        let assigned = self
            .assignments
            .assign(generation, table::assignment::record_keys(&config))?;
        // A server new to a running gateway (a new DNS address, or one added to the file)
        // joins through slow_start, like one that comes back.
        let now = crate::sys::monotonic_ms();
        self.table.reset_fresh(&assigned);
        for &record in &assigned.fresh_servers {
            self.table.server(record).mark_rejoined(now);
        }
        let old = (
            std::mem::replace(&mut self.config, Arc::new(config)),
            std::mem::replace(&mut self.config_text, text),
            std::mem::replace(&mut self.sockets, sockets),
        );
        self.generation = generation;
        if let Err(e) = self.start_generation(rx).await {
            for w in self.workers.iter().filter(|w| w.generation == generation) {
                w.kill_now();
            }
            self.generation -= 1;
            (self.config, self.config_text, self.sockets) = old;
            self.assignments.retire(generation);
            return Err(e);
        }
        // Checks of servers that stay go on from the state they had.
        self.health = HealthChecks::start(
            &self.config,
            &assigned.records,
            self.table,
            &self.check_failures,
        );
        if admin.is_some() || self.config.admin.is_none() {
            self.admin = admin;
        }
        self.follow_acme();
        self.apps
            .send(crate::apps::Command::Configure(self.config.apps.clone()));
        let timeout = self.config.gateway.shutdown_timeout;
        let mut old = Vec::new();
        for w in self
            .workers
            .iter_mut()
            .filter(|w| w.generation < generation && !w.draining)
        {
            w.draining = true;
            w.send(&ToWorker::Drain).await;
            w.kill_after(timeout);
            old.push(w.pid);
        }
        // Answer only once no old worker accepts: a client that connects after the reply
        // gets the new configuration (and the new certificate).
        if !self
            .wait_for_each(rx, old, DRAIN_ACK_TIMEOUT, FromWorker::Draining)
            .await
        {
            tracing::warn!("old workers did not confirm they stopped accepting");
        }
        self.backoff = vec![Backoff::default(); self.config.gateway.workers];
        self.reloads += 1;
        self.retire_finished_generations();
        tracing::info!(
            generation,
            "reloaded: new workers serve, the old ones drain"
        );
        Ok(generation)
    }

    /// Starts one worker per seat at the current generation and waits until all serve.
    pub(super) async fn start_generation(
        &mut self,
        rx: &mut mpsc::UnboundedReceiver<Event>,
    ) -> Result<(), String> {
        let mut pending = Vec::new();
        for seat in 0..self.config.gateway.workers {
            let worker = self
                .spawn(seat)
                .map_err(|e| format!("cannot start a worker: {e}"))?;
            pending.push(worker.pid);
            self.workers.push(worker);
        }
        let starting = pending.clone();
        if self
            .wait_for_each(rx, pending, READY_TIMEOUT, FromWorker::Ready)
            .await
        {
            return Ok(());
        }
        let exited: Vec<u32> = starting
            .iter()
            .copied()
            .filter(|&pid| !self.workers.iter().any(|w| w.pid == pid))
            .collect();
        Err(if exited.is_empty() {
            format!("new workers did not serve within {READY_TIMEOUT:?}")
        } else {
            format!("new worker(s) {exited:?} exited before serving; see the log above")
        })
    }

    /// Waits until each of `pids` said `awaited` (or exited), up to `timeout`; true if
    /// all did. A new worker that exits meanwhile is forgotten at once; every other
    /// event is set aside for the event loop, which handles it after the reload.
    async fn wait_for_each(
        &mut self,
        rx: &mut mpsc::UnboundedReceiver<Event>,
        mut pids: Vec<u32>,
        timeout: Duration,
        awaited: FromWorker,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while !pids.is_empty() {
            let Ok(Some(event)) = tokio::time::timeout_at(deadline, rx.recv()).await else {
                return false;
            };
            match event {
                Event::Worker { pid, message } if message == awaited && pids.contains(&pid) => {
                    pids.retain(|&p| p != pid);
                    if let Some(w) = self.workers.iter_mut().find(|w| w.pid == pid) {
                        w.ready |= message == FromWorker::Ready;
                    }
                }
                Event::Exited { pid, status } if pids.contains(&pid) => {
                    pids.retain(|&p| p != pid);
                    if awaited == FromWorker::Ready {
                        // A new worker that died before serving: it is not restarted.
                        if let Some(i) = self.workers.iter().position(|w| w.pid == pid) {
                            let worker = self.workers.swap_remove(i);
                            self.table.release_worker(worker.record);
                        }
                        tracing::error!(pid, "a new worker exited before serving ({status})");
                        return false;
                    }
                    self.deferred.push(Event::Exited { pid, status });
                }
                other => self.deferred.push(other),
            }
        }
        true
    }
}
