//! The supervisor: binds the listening sockets once, runs a generation of worker
//! processes on them, replaces workers that die, reloads as a transaction and stops
//! gracefully. The step-by-step lifecycle is in LIFECYCLE.md.

mod control;
mod listeners;

use crate::config::{self, Config};
use crate::protocol::{self, Reply, Request, ServerStatus, Status, UpstreamStatus, WorkerStatus};
use listeners::Sockets;
use std::io::Write;
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};

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
    config: Config,
    config_text: String,
    generation: u64,
    reloads: u64,
    sockets: Sockets,
    workers: Vec<WorkerProc>,
    backoff: Vec<Backoff>,
    events: mpsc::UnboundedSender<Event>,
    stopping: bool,
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
        tokio::spawn(control::serve(control, tx.clone()));
        tokio::spawn(forward_signals(tx.clone()));
        let mut supervisor = Supervisor {
            backoff: vec![Backoff::default(); config.gateway.workers],
            config_path,
            config,
            config_text,
            generation: 1,
            reloads: 0,
            sockets,
            workers: Vec::new(),
            events: tx,
            stopping: false,
        };
        if let Err(e) = supervisor.start_generation(&mut rx).await {
            tracing::error!("workers did not start: {e}");
            supervisor.kill_all();
            return ExitCode::from(1);
        }
        tracing::info!(
            generation = supervisor.generation,
            "{} workers serving",
            supervisor.config.gateway.workers
        );
        while let Some(event) = rx.recv().await {
            supervisor.handle(event, &mut rx).await;
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
        }
    }

    async fn control(
        &mut self,
        request: Request,
        rx: &mut mpsc::UnboundedReceiver<Event>,
    ) -> Reply {
        match request {
            Request::Status => Reply {
                ok: true,
                generation: Some(self.generation),
                status: Some(self.status()),
                ..Reply::default()
            },
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
        let old = (
            std::mem::replace(&mut self.config, config),
            std::mem::replace(&mut self.config_text, text),
            std::mem::replace(&mut self.sockets, sockets),
        );
        self.generation += 1;
        if let Err(e) = self.start_generation(rx).await {
            let failed = self.generation;
            for w in self.workers.iter_mut().filter(|w| w.generation == failed) {
                w.kill_now();
            }
            self.generation -= 1;
            (self.config, self.config_text, self.sockets) = old;
            return Err(e);
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
                    self.workers.retain(|w| w.pid != pid);
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

        let mut ours = ours;
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

    fn status(&self) -> Status {
        let workers = self
            .workers
            .iter()
            .map(|w| WorkerStatus {
                pid: w.pid,
                generation: w.generation,
                slot: w.slot,
                uptime_s: w.started.elapsed().as_secs(),
                rss_bytes: rss_bytes(w.pid),
                state: if w.draining {
                    "draining"
                } else if w.ready {
                    "serving"
                } else {
                    "starting"
                }
                .into(),
            })
            .collect();
        let upstreams = self
            .config
            .upstreams
            .iter()
            .map(|u| {
                let servers = u
                    .servers
                    .iter()
                    .map(|s| ServerStatus {
                        address: s.name.clone(),
                        weight: s.weight,
                        backup: s.backup,
                    })
                    .collect();
                (
                    u.name.clone(),
                    UpstreamStatus {
                        policy: u.policy.as_str().into(),
                        servers,
                    },
                )
            })
            .collect();
        Status {
            generation: self.generation,
            reloads: self.reloads,
            workers,
            upstreams,
        }
    }
}

/// 100 ms, 200 ms, 400 ms, … up to 10 s.
fn restart_delay(crashes: u32) -> Duration {
    let factor = 1u32 << crashes.saturating_sub(1).min(16);
    (FIRST_RESTART_DELAY * factor).min(MAX_RESTART_DELAY)
}

fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
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
