//! The supervisor: binds the listening sockets once, runs a generation of worker
//! processes on them, replaces workers that die, reloads as a transaction and stops
//! gracefully. The step-by-step lifecycle is in LIFECYCLE.md.

mod admin;
mod control;
mod health;
mod listeners;
pub mod status;

use crate::config::{self, Config};
use crate::protocol::{self, Reply, Request};
use crate::table::{self, Assignments, Table};
use crate::tls::tickets::TicketKeys;
use admin::AdminListener;
use health::{HealthChecks, LastFailures};
use listeners::Sockets;
use status::{Snapshot, StatusSource, WorkerView};
use std::io::Write;
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot, watch};

/// How long new workers get to say they serve before a reload is called failed.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a reload waits for the old workers to confirm they stopped accepting.
const DRAIN_ACK_TIMEOUT: Duration = Duration::from_secs(2);
/// A worker that ran this long before dying starts its slot's back-off afresh.
const STABLE_AFTER: Duration = Duration::from_secs(10);
const FIRST_RESTART_DELAY: Duration = Duration::from_millis(100);
const MAX_RESTART_DELAY: Duration = Duration::from_secs(10);

pub enum Event {
    Ready {
        pid: u32,
    },
    /// The worker stopped accepting (it may still finish requests).
    Draining {
        pid: u32,
    },
    Exited {
        pid: u32,
        status: std::process::ExitStatus,
    },
    Respawn {
        slot: usize,
        generation: u64,
    },
    Control(Request, oneshot::Sender<Reply>),
    Signal(Signal),
    /// Time for a new TLS ticket key.
    RotateTicketKeys,
}

#[derive(Debug, Clone, Copy)]
pub enum Signal {
    Reload,
    Stop,
    Reopen,
}

struct WorkerProc {
    pid: u32,
    slot: usize,
    /// Its counters' slot in the shared table.
    table_slot: usize,
    generation: u64,
    started: Instant,
    commands: tokio::net::unix::OwnedWriteHalf,
    kill: Option<oneshot::Sender<()>>,
    ready: bool,
    draining: bool,
}

impl WorkerProc {
    async fn send(&mut self, command: &str) {
        let _ = self
            .commands
            .write_all(format!("{command}\n").as_bytes())
            .await;
    }

    fn kill_now(&mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
    }

    fn kill_after(&mut self, delay: Duration) {
        if let Some(kill) = self.kill.take() {
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = kill.send(());
            });
        }
    }
}

#[derive(Default, Clone, Copy)]
struct Backoff {
    crashes: u32,
}

struct Supervisor {
    config_path: PathBuf,
    config: Arc<Config>,
    config_text: String,
    generation: u64,
    reloads: u64,
    restarts: u64,
    sockets: Sockets,
    workers: Vec<WorkerProc>,
    backoff: Vec<Backoff>,
    events: mpsc::UnboundedSender<Event>,
    stopping: bool,
    table: &'static Table,
    /// Which table slot each running generation's servers use.
    assignments: Assignments,
    health: HealthChecks,
    /// Why failing servers fail their checks, for `/status`.
    check_failures: LastFailures,
    admin: Option<AdminListener>,
    /// Where the control socket and the admin listener read the supervisor's state.
    view: watch::Sender<Arc<Snapshot>>,
    /// TLS session ticket keys, the same for every worker and kept across reloads.
    tickets: TicketKeys,
}

/// `gateway -c FILE`: runs until stopped.
pub fn run(config_path: PathBuf, config: Config, config_text: String) -> ExitCode {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!("open file limit: {n}"),
        Err(e) => tracing::warn!("cannot raise the open file limit: {e}"),
    }
    let sockets = match Sockets::default().for_config(&config) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(1);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let table: &'static Table = match Table::create() {
        Ok(t) => Box::leak(Box::new(t)),
        Err(e) => {
            tracing::error!("cannot create the shared state table: {e}");
            return ExitCode::from(1);
        }
    };
    let tickets = match TicketKeys::new() {
        Ok(keys) => keys,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(1);
        }
    };
    let mut assignments = Assignments::default();
    if let Err(e) = assignments.assign(1, table::server_keys(&config)) {
        tracing::error!("{e}");
        return ExitCode::from(1);
    }
    runtime.block_on(async move {
        let control_path = config.gateway.control_socket.clone();
        let control = match control::bind(&control_path) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("control socket {}: {e}", control_path.display());
                return ExitCode::from(1);
            }
        };
        let _cleanup = control::Cleanup(control_path);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let config = Arc::new(config);
        let (view, view_rx) = watch::channel(Arc::new(Snapshot {
            generation: 1,
            reloads: 0,
            restarts: 0,
            config: config.clone(),
            server_slots: assignments.slots(1),
            workers: Vec::new(),
        }));
        let check_failures = LastFailures::default();
        let source = StatusSource {
            view: view_rx,
            table,
            check_failures: check_failures.clone(),
        };
        let admin = match config.admin {
            None => None,
            Some(addr) => match AdminListener::bind(addr, source.clone()).await {
                Ok(admin) => Some(admin),
                Err(e) => {
                    tracing::error!("admin listener {addr}: {e}");
                    return ExitCode::from(1);
                }
            },
        };
        tokio::spawn(control::serve(control, tx.clone(), source));
        tokio::spawn(forward_signals(tx.clone()));
        tokio::spawn(rotate_ticket_keys(tx.clone()));
        let mut supervisor = Supervisor {
            backoff: vec![Backoff::default(); config.gateway.workers],
            health: HealthChecks::start(&config, &assignments.slots(1), table, &check_failures),
            check_failures,
            config_path,
            config,
            config_text,
            generation: 1,
            reloads: 0,
            restarts: 0,
            sockets,
            workers: Vec::new(),
            events: tx,
            stopping: false,
            table,
            assignments,
            admin,
            view,
            tickets,
        };
        if let Err(e) = supervisor.start_generation(&mut rx).await {
            tracing::error!("workers did not start: {e}");
            supervisor.kill_all();
            return ExitCode::from(1);
        }
        supervisor.publish();
        tracing::info!(
            generation = supervisor.generation,
            health_checks = supervisor.health.count(),
            "{} workers serving",
            supervisor.config.gateway.workers
        );
        while let Some(event) = rx.recv().await {
            supervisor.handle(event, &mut rx).await;
            supervisor.publish();
            if supervisor.stopping && supervisor.workers.is_empty() {
                break;
            }
        }
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}

impl Supervisor {
    async fn handle(&mut self, event: Event, rx: &mut mpsc::UnboundedReceiver<Event>) {
        match event {
            Event::Ready { pid } => {
                if let Some(w) = self.workers.iter_mut().find(|w| w.pid == pid) {
                    w.ready = true;
                }
            }
            // Outside a reload nobody waits for this.
            Event::Draining { .. } => {}
            Event::Exited { pid, status } => self.on_exit(pid, status),
            Event::Respawn { slot, generation } => self.respawn(slot, generation),
            Event::Control(request, reply) => {
                let answer = self.control(request, rx).await;
                let _ = reply.send(answer);
            }
            Event::Signal(Signal::Reload) => {
                self.control(Request::Reload, rx).await;
            }
            Event::Signal(Signal::Stop) => {
                let now = self.stopping;
                if now {
                    tracing::warn!("second stop signal: stopping now");
                }
                self.control(Request::Stop { now }, rx).await;
            }
            Event::Signal(Signal::Reopen) => {
                for w in &mut self.workers {
                    w.send(protocol::REOPEN).await;
                }
            }
            Event::RotateTicketKeys => match self.tickets.rotate() {
                Ok(()) => {
                    let line = self.tickets.to_line();
                    for w in &mut self.workers {
                        w.send(&line).await;
                    }
                    tracing::info!("TLS ticket key rotated");
                }
                Err(e) => tracing::error!("TLS ticket key not rotated: {e}"),
            },
        }
    }

    async fn control(
        &mut self,
        request: Request,
        rx: &mut mpsc::UnboundedReceiver<Event>,
    ) -> Reply {
        match request {
            // The control socket answers this itself from the published snapshot.
            Request::Status => Reply::failed("status is answered by the control socket"),
            Request::Stop { now } => {
                self.stop(now).await;
                Reply {
                    ok: true,
                    ..Reply::default()
                }
            }
            Request::Reload if self.stopping => Reply::failed("the gateway is stopping"),
            Request::Reload => match self.reload(rx).await {
                Ok(generation) => Reply {
                    ok: true,
                    generation: Some(generation),
                    ..Reply::default()
                },
                Err(e) => {
                    tracing::error!("reload failed, the running generation keeps serving: {e}");
                    Reply::failed(e)
                }
            },
        }
    }

    /// Validate, start the new generation on the same sockets, wait until it serves, then
    /// drain the old one. Any failure before the switch leaves everything as it was.
    async fn reload(&mut self, rx: &mut mpsc::UnboundedReceiver<Event>) -> Result<u64, String> {
        tracing::info!("reloading {}", self.config_path.display());
        let (config, text) =
            config::load_with_text(&self.config_path).map_err(|e| e.to_string())?;
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
            .assign(generation, table::server_keys(&config))?;
        for &slot in &assigned.fresh {
            self.table.reset_server(slot);
        }
        let old = (
            std::mem::replace(&mut self.config, Arc::new(config)),
            std::mem::replace(&mut self.config_text, text),
            std::mem::replace(&mut self.sockets, sockets),
        );
        self.generation = generation;
        if let Err(e) = self.start_generation(rx).await {
            for w in self
                .workers
                .iter_mut()
                .filter(|w| w.generation == generation)
            {
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
            &assigned.slots,
            self.table,
            &self.check_failures,
        );
        if admin.is_some() || self.config.admin.is_none() {
            self.admin = admin;
        }
        let (generation, timeout) = (self.generation, self.config.gateway.shutdown_timeout);
        let mut old = Vec::new();
        for w in self
            .workers
            .iter_mut()
            .filter(|w| w.generation < generation && !w.draining)
        {
            w.draining = true;
            w.send(protocol::DRAIN).await;
            w.kill_after(timeout);
            old.push(w.pid);
        }
        // Answer only once no old worker accepts: a client that connects after the reply
        // gets the new configuration (and the new certificate).
        self.wait_until_not_accepting(old, rx).await;
        self.backoff = vec![Backoff::default(); self.config.gateway.workers];
        self.reloads += 1;
        self.retire_finished_generations();
        tracing::info!(
            generation,
            "reloaded: new workers serve, the old ones drain"
        );
        Ok(generation)
    }

    /// Starts one worker per slot at the current generation and waits until all serve.
    /// Events about other workers that arrive meanwhile are handled afterwards.
    async fn start_generation(
        &mut self,
        rx: &mut mpsc::UnboundedReceiver<Event>,
    ) -> Result<(), String> {
        let mut pending = Vec::new();
        for slot in 0..self.config.gateway.workers {
            let worker = self
                .spawn(slot)
                .map_err(|e| format!("cannot start a worker: {e}"))?;
            pending.push(worker.pid);
            self.workers.push(worker);
        }
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        let mut deferred = Vec::new();
        let result = loop {
            if pending.is_empty() {
                break Ok(());
            }
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Err(_) => {
                    break Err(format!(
                        "new workers did not serve within {READY_TIMEOUT:?}"
                    ))
                }
                Ok(None) => break Err("supervisor channel closed".into()),
                Ok(Some(Event::Ready { pid })) if pending.contains(&pid) => {
                    pending.retain(|&p| p != pid);
                    if let Some(w) = self.workers.iter_mut().find(|w| w.pid == pid) {
                        w.ready = true;
                    }
                }
                Ok(Some(Event::Exited { pid, status })) if pending.contains(&pid) => {
                    if let Some(w) = self.workers.iter().position(|w| w.pid == pid) {
                        self.table
                            .release_worker(self.workers.swap_remove(w).table_slot);
                    }
                    break Err(format!(
                        "a new worker exited before serving ({status}); see its log above"
                    ));
                }
                Ok(Some(other)) => deferred.push(other),
            }
        };
        for event in deferred {
            let _ = self.events.send(event);
        }
        result
    }

    /// Waits for `draining` (or the exit) of each of `pids`, up to DRAIN_ACK_TIMEOUT.
    /// Other events that arrive meanwhile are handled afterwards.
    async fn wait_until_not_accepting(
        &mut self,
        mut pids: Vec<u32>,
        rx: &mut mpsc::UnboundedReceiver<Event>,
    ) {
        let deadline = tokio::time::Instant::now() + DRAIN_ACK_TIMEOUT;
        let mut deferred = Vec::new();
        while !pids.is_empty() {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Err(_) | Ok(None) => {
                    tracing::warn!(?pids, "old workers did not confirm they stopped accepting");
                    break;
                }
                Ok(Some(Event::Draining { pid })) => pids.retain(|&p| p != pid),
                Ok(Some(event)) => {
                    if let Event::Exited { pid, .. } = event {
                        pids.retain(|&p| p != pid);
                    }
                    deferred.push(event);
                }
            }
        }
        for event in deferred {
            let _ = self.events.send(event);
        }
    }

    fn spawn(&mut self, slot: usize) -> std::io::Result<WorkerProc> {
        let table_slot = (0..table::WORKER_SLOTS)
            .find(|&t| !self.workers.iter().any(|w| w.table_slot == t))
            .ok_or_else(|| {
                std::io::Error::other(format!(
                    "more than {} worker processes at once",
                    table::WORKER_SLOTS
                ))
            })?;
        self.table.release_worker(table_slot);
        let server_slots: Vec<String> = self
            .assignments
            .slots(self.generation)
            .iter()
            .map(usize::to_string)
            .collect();
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        let sockets = self.sockets.for_slot(slot);
        let mut fds = Vec::new();
        for socket in &sockets {
            fds.push(crate::sys::inheritable(socket)?.to_string());
        }
        let spawned = {
            let mut command = tokio::process::Command::new(std::env::current_exe()?);
            command
                .arg("worker")
                .arg("-c")
                .arg(&self.config_path)
                .arg("--slot")
                .arg(slot.to_string())
                .arg("--generation")
                .arg(self.generation.to_string())
                .arg("--fds")
                .arg(fds.join(","))
                .arg("--table-fd")
                .arg(self.table.fd().to_string())
                .arg("--table-slot")
                .arg(table_slot.to_string());
            if !server_slots.is_empty() {
                command.arg("--server-slots").arg(server_slots.join(","));
            }
            command
                .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
                .stdout(Stdio::inherit())
                .stderr(Stdio::inherit());
            command.spawn()
        };
        // Only the worker just started may hold its slot's sockets.
        for socket in &sockets {
            socket2::SockRef::from(*socket).set_cloexec(true)?;
        }
        let mut child = spawned?;
        let pid = child.id().unwrap_or(0);
        let counters = self.table.worker(table_slot);
        counters.pid.store(pid, Relaxed);
        counters.generation.store(self.generation, Relaxed);

        let mut ours = ours;
        ours.write_all(format!("{}\n", self.tickets.to_line()).as_bytes())?;
        ours.write_all(format!("{} {}\n", protocol::CONFIG, self.config_text.len()).as_bytes())?;
        ours.write_all(self.config_text.as_bytes())?;
        ours.set_nonblocking(true)?;
        let (read, commands) = tokio::net::UnixStream::from_std(ours)?.into_split();

        let (kill_tx, mut kill_rx) = oneshot::channel::<()>();
        let events = self.events.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(read).lines();
            let mut channel_open = true;
            let mut kill_armed = true;
            loop {
                tokio::select! {
                    line = lines.next_line(), if channel_open => match line {
                        Ok(Some(line)) if line == protocol::READY => {
                            let _ = events.send(Event::Ready { pid });
                        }
                        Ok(Some(line)) if line == protocol::DRAINING => {
                            let _ = events.send(Event::Draining { pid });
                        }
                        Ok(Some(_)) => {}
                        Ok(None) | Err(_) => channel_open = false,
                    },
                    killed = &mut kill_rx, if kill_armed => {
                        kill_armed = false;
                        if killed.is_ok() {
                            tracing::warn!(pid, "worker did not finish within shutdown_timeout: killing it");
                            let _ = child.start_kill();
                        }
                    }
                    status = child.wait() => {
                        if let Ok(status) = status {
                            let _ = events.send(Event::Exited { pid, status });
                        }
                        return;
                    }
                }
            }
        });
        tracing::info!(pid, slot, generation = self.generation, "worker started");
        Ok(WorkerProc {
            pid,
            slot,
            table_slot,
            generation: self.generation,
            started: Instant::now(),
            commands,
            kill: Some(kill_tx),
            ready: false,
            draining: false,
        })
    }

    fn on_exit(&mut self, pid: u32, status: std::process::ExitStatus) {
        let Some(index) = self.workers.iter().position(|w| w.pid == pid) else {
            return;
        };
        let worker = self.workers.swap_remove(index);
        self.table.release_worker(worker.table_slot);
        self.retire_finished_generations();
        if worker.draining || self.stopping {
            tracing::info!(
                pid,
                generation = worker.generation,
                "worker finished draining ({status})"
            );
            return;
        }
        if worker.generation != self.generation {
            return;
        }
        self.restarts += 1;
        let backoff = &mut self.backoff[worker.slot];
        if worker.started.elapsed() >= STABLE_AFTER {
            backoff.crashes = 0;
        }
        backoff.crashes += 1;
        let delay = restart_delay(backoff.crashes);
        tracing::error!(
            pid,
            slot = worker.slot,
            "worker exited unexpectedly ({status}) after {:.1}s; restarting in {delay:?} ({} crash(es) in a row)",
            worker.started.elapsed().as_secs_f64(),
            backoff.crashes
        );
        self.schedule_respawn(worker.slot, delay);
    }

    fn schedule_respawn(&self, slot: usize, delay: Duration) {
        let (events, generation) = (self.events.clone(), self.generation);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = events.send(Event::Respawn { slot, generation });
        });
    }

    fn respawn(&mut self, slot: usize, generation: u64) {
        let occupied = self
            .workers
            .iter()
            .any(|w| w.slot == slot && w.generation == self.generation && !w.draining);
        if self.stopping
            || generation != self.generation
            || occupied
            || slot >= self.config.gateway.workers
        {
            return;
        }
        match self.spawn(slot) {
            Ok(worker) => self.workers.push(worker),
            Err(e) => {
                let backoff = &mut self.backoff[slot];
                backoff.crashes += 1;
                let delay = restart_delay(backoff.crashes);
                tracing::error!(
                    slot,
                    "cannot start a worker: {e}; trying again in {delay:?}"
                );
                self.schedule_respawn(slot, delay);
            }
        }
    }

    async fn stop(&mut self, now: bool) {
        self.stopping = true;
        if now {
            self.kill_all();
            return;
        }
        tracing::info!("stopping: workers finish their requests");
        let timeout = self.config.gateway.shutdown_timeout;
        for w in &mut self.workers {
            if !w.draining {
                w.draining = true;
                w.send(protocol::DRAIN).await;
            }
            w.kill_after(timeout);
        }
    }

    fn kill_all(&mut self) {
        for w in &mut self.workers {
            w.kill_now();
        }
    }

    /// Generations with no worker left free their server slots (the current one stays).
    fn retire_finished_generations(&mut self) {
        for generation in self.assignments.generations() {
            if generation != self.generation
                && !self.workers.iter().any(|w| w.generation == generation)
            {
                self.assignments.retire(generation);
            }
        }
    }

    fn source(&self) -> StatusSource {
        StatusSource {
            view: self.view.subscribe(),
            table: self.table,
            check_failures: self.check_failures.clone(),
        }
    }

    /// Publishes the supervisor's state for the control socket and the admin listener.
    fn publish(&self) {
        let workers = self
            .workers
            .iter()
            .map(|w| WorkerView {
                pid: w.pid,
                generation: w.generation,
                slot: w.slot,
                table_slot: w.table_slot,
                started: w.started,
                state: if w.draining {
                    "draining"
                } else if w.ready {
                    status::SERVING
                } else {
                    "starting"
                },
            })
            .collect();
        self.view.send_replace(Arc::new(Snapshot {
            generation: self.generation,
            reloads: self.reloads,
            restarts: self.restarts,
            config: self.config.clone(),
            server_slots: self.assignments.slots(self.generation),
            workers,
        }));
    }
}

/// 100 ms, 200 ms, 400 ms, … up to 10 s.
fn restart_delay(crashes: u32) -> Duration {
    let factor = 1u32 << crashes.saturating_sub(1).min(16);
    (FIRST_RESTART_DELAY * factor).min(MAX_RESTART_DELAY)
}

async fn rotate_ticket_keys(events: mpsc::UnboundedSender<Event>) {
    let period = crate::tls::tickets::ROTATION;
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        ticks.tick().await;
        if events.send(Event::RotateTicketKeys).is_err() {
            return;
        }
    }
}

async fn forward_signals(events: mpsc::UnboundedSender<Event>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup), Ok(mut usr1)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
        signal(SignalKind::user_defined1()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    loop {
        let signal = tokio::select! {
            _ = term.recv() => Signal::Stop,
            _ = int.recv() => Signal::Stop,
            _ = hup.recv() => Signal::Reload,
            _ = usr1.recv() => Signal::Reopen,
        };
        if events.send(Event::Signal(signal)).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_delay_grows_and_is_capped() {
        assert_eq!(restart_delay(1), Duration::from_millis(100));
        assert_eq!(restart_delay(2), Duration::from_millis(200));
        assert_eq!(restart_delay(4), Duration::from_millis(800));
        assert_eq!(restart_delay(10), MAX_RESTART_DELAY);
        assert_eq!(restart_delay(1000), MAX_RESTART_DELAY);
    }
}
