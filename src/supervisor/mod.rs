//! The supervisor: binds the listening sockets once, runs a generation of worker
//! processes on them, replaces workers that die or stop making progress, reloads as a
//! transaction and stops gracefully. The step-by-step lifecycle is in LIFECYCLE.md.
//!
//! - `mod.rs` (here): start-up, the event loop and what each event does;
//! - `workers.rs`: starting a worker, its exit, restart back-off, the watchdog, and
//!   covering a seat whose worker is gone;
//! - `reload.rs`: the reload transaction;
//! - `listeners.rs`, `control.rs`, `admin.rs`, `health.rs`, `status.rs`: the sockets, the
//!   control socket, the admin listener, active health checks, and what status shows.

mod admin;
mod apps;
mod cache;
mod control;
mod file_watch;
mod health;
mod history;
mod listeners;
mod notify;
mod reload;
mod servers;
pub mod status;
mod upgrade;
mod workers;

use crate::config::Config;
use crate::protocol::{FromWorker, Reply, Request, ToWorker, WorkerState};
use crate::table::{self, Assignments, Table};
use crate::tls::tickets::TicketKeys;
use admin::AdminListener;
use health::{HealthChecks, LastFailures};
use listeners::Sockets;
use status::{Snapshot, StatusSource, WorkerView};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use workers::{Backoff, WorkerProc};

/// How often the watchdog looks at the workers' heartbeats.
const WATCHDOG_TICK: Duration = Duration::from_millis(500);

pub enum Event {
    /// A worker said something on its channel.
    Worker {
        pid: u32,
        message: FromWorker,
    },
    Exited {
        pid: u32,
        status: std::process::ExitStatus,
    },
    /// A crashed worker's back-off is over.
    Respawn {
        seat: usize,
        generation: u64,
    },
    Control(Request, oneshot::Sender<Reply>),
    Signal(Signal),
    /// Time for a new TLS ticket key.
    RotateTicketKeys,
    /// Time to check that every worker makes progress.
    WatchdogTick,
    /// The server names resolve to other addresses now.
    Dns(crate::config::Answers),
    /// The new supervisor of an upgrade serves (its version), or why it does not.
    Upgraded(Result<String, String>),
    /// The supervisor this one replaced has exited: its records are free.
    PredecessorGone,
    /// The ACME client changed its certificates or challenges: tell every worker, then
    /// answer.
    Acme(crate::tls::acme::AcmeState, oneshot::Sender<()>),
    /// The apps' ready instances changed: serve with them, then answer.
    AppServers(
        crate::config::AppServers,
        oneshot::Sender<crate::apps::Left>,
    ),
}

#[derive(Debug, Clone, Copy)]
pub enum Signal {
    Reload,
    Stop,
    Reopen,
    Upgrade,
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
    /// Crash back-off of each seat of the current generation.
    backoff: Vec<Backoff>,
    /// Seats of the current generation whose worker is gone, and the pid of the worker
    /// that accepts on their sockets meanwhile.
    covered: BTreeMap<usize, u32>,
    /// The watchdog judges silence only over time the supervisor itself was running
    /// (a stopped process group resumes with every heartbeat old): monotonic ms.
    watching_since: u64,
    last_watchdog_tick: u64,
    events: mpsc::UnboundedSender<Event>,
    /// Events that arrived while a reload waited for others; handled right after it.
    deferred: Vec<Event>,
    stopping: bool,
    table: &'static Table,
    /// Which table records each running generation's servers use.
    assignments: Assignments,
    /// Servers added and removed at run time, laid over the file's at every reload.
    runtime: crate::config::RuntimeServers,
    health: HealthChecks,
    /// Why failing servers fail their checks, for `/status`.
    check_failures: LastFailures,
    /// Table records of the servers a `max_fails` period had out at the last tick.
    passive_down: std::collections::BTreeSet<usize>,
    admin: Option<AdminListener>,
    /// Where the control socket and the admin listener read the supervisor's state.
    view: watch::Sender<Arc<Snapshot>>,
    /// TLS session ticket keys, the same for every worker and kept across reloads.
    tickets: TicketKeys,
    /// The ACME client, when the config has `acme` entries.
    acme: Option<crate::acme::Manager>,
    /// What the workers have of ACME (sent to each new one), and its number.
    acme_state: crate::tls::acme::AcmeState,
    acme_serial: u64,
    /// The ACME client waits for these workers to serve with the state of this number.
    acme_waiting: Option<(u64, Vec<u32>, oneshot::Sender<()>)>,
    acme_board: crate::acme::Board,
    /// What the cache's entries take on disk, as last counted.
    cache_bytes: cache::Stored,
    /// The instances of the apps the gateway runs, and those ready (servers).
    apps: crate::apps::Apps,
    app_servers: crate::config::AppServers,
    apps_board: crate::apps::Board,
    /// The upstreams' last minutes, for the live page.
    history: history::History,
    /// This program's path as it was at start: what `upgrade` runs (the binary there now).
    program: PathBuf,
    /// The control socket's accept loop and descriptor, while this supervisor serves it.
    control_task: Option<tokio::task::JoinHandle<()>>,
    control_fd: Option<std::os::fd::RawFd>,
    /// Removes the control socket file at exit, unless an upgrade handed it over.
    cleanup: Option<control::Cleanup>,
    /// An upgrade waiting for its new supervisor to serve.
    upgrade: Option<upgrade::Pending>,
    /// The upgrade that took over: kept open until this process exits.
    handed_over: Option<upgrade::Pending>,
    /// Worker records the replaced supervisor's workers still use.
    foreign_workers: Vec<usize>,
    /// The supervisor this one replaced (`upgrade`) has not exited yet.
    predecessor_running: bool,
}

/// `gateway -c FILE`: runs until stopped.
pub fn run(config_path: PathBuf, config: Config, config_text: String) -> ExitCode {
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let handover = match upgrade::inherited() {
        None => None,
        Some(Ok(handover)) => Some(handover),
        Some(Err(e)) => {
            tracing::error!("{e}");
            return ExitCode::from(1);
        }
    };
    let program = match std::env::current_exe() {
        Ok(path) => path,
        Err(e) => {
            tracing::error!("cannot find this program's path: {e}");
            return ExitCode::from(1);
        }
    };
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!("open file limit: {n}"),
        Err(e) => tracing::warn!("cannot raise the open file limit: {e}"),
    }
    let inherited = match &handover {
        None => Ok(Sockets::default()),
        Some(h) => Sockets::adopt(&h.listeners),
    };
    let sockets = match inherited.and_then(|old| old.for_config(&config)) {
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
    let table = match &handover {
        None => Table::create().map_err(|e| format!("cannot create the shared state table: {e}")),
        Some(h) => Table::adopt(h.table_fd)
            .map_err(|e| format!("cannot read the running gateway's state table: {e}")),
    };
    let table: &'static Table = match table {
        Ok(t) => Box::leak(Box::new(t)),
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(1);
        }
    };
    let tickets = match upgrade::inherited_tickets(handover.as_ref().and_then(|h| h.tickets_fd)) {
        Ok(keys) => keys,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(1);
        }
    };
    let mut assignments = Assignments::default();
    if let Some(h) = &handover {
        assignments.seed(upgrade::PREDECESSOR, h.records.clone());
    }
    // The servers the replaced supervisor had added and removed at run time go on.
    let mut runtime_servers = handover
        .as_ref()
        .map(|h| h.runtime.clone())
        .unwrap_or_default();
    let mut config = config;
    runtime_servers.apply(&mut config);
    // Counted on from the replaced supervisor's, so `/status` does not start over.
    let (generation, reloads, restarts) = handover
        .as_ref()
        .map_or((1, 0, 0), |h| (h.generation + 1, h.reloads, h.restarts));
    match assignments.assign(generation, table::assignment::record_keys(&config)) {
        Ok(assigned) if handover.is_some() => {
            table.reset_fresh(&assigned);
        }
        Ok(_) => {}
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(1);
        }
    }
    runtime.block_on(async move {
        let control_path = config.gateway.control_socket.clone();
        let control = match &handover {
            None => control::bind(&control_path),
            Some(h) => crate::sys::adopt_unix_listener(h.control_fd)
                .and_then(tokio::net::UnixListener::from_std),
        };
        let control = match control {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("control socket {}: {e}", control_path.display());
                return ExitCode::from(1);
            }
        };
        let control_fd = std::os::fd::AsRawFd::as_raw_fd(&control);
        // A new supervisor of an upgrade owns the file only once it serves.
        let cleanup = handover
            .is_none()
            .then(|| control::Cleanup(control_path.clone()));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let config = Arc::new(config);
        let (view, view_rx) = watch::channel(Arc::new(Snapshot {
            generation,
            reloads,
            restarts,
            config: config.clone(),
            records: assignments.records(generation),
            workers: Vec::new(),
        }));
        let check_failures = LastFailures::default();
        let acme_board = crate::acme::Board::default();
        let cache_bytes = cache::Stored::default();
        let apps_board = crate::apps::Board::default();
        let history = history::History::default();
        let source = StatusSource {
            view: view_rx,
            table,
            check_failures: check_failures.clone(),
            acme: acme_board.clone(),
            cache_bytes: cache_bytes.clone(),
            apps: apps_board.clone(),
            history: history.clone(),
        };
        // The admin listener handed over serves on if the file still has its address
        // (else it is closed here, and the new address bound).
        let inherited_admin = handover
            .as_ref()
            .and_then(|h| h.admin)
            .map(|(configured, fd)| (configured, crate::sys::adopt_listener(fd)))
            .filter(|(configured, _)| Some(*configured) == config.admin)
            .map(|(configured, adopted)| {
                adopted
                    .and_then(tokio::net::TcpListener::from_std)
                    .and_then(|l| AdminListener::serve(configured, l, source.clone()))
            });
        let admin = match (config.admin, inherited_admin) {
            (_, Some(Ok(admin))) => Some(admin),
            (_, Some(Err(e))) => {
                tracing::error!("the admin listener handed over: {e}");
                return ExitCode::from(1);
            }
            (None, None) => None,
            (Some(addr), None) => match AdminListener::bind(addr, source.clone()).await {
                Ok(admin) => Some(admin),
                Err(e) => {
                    tracing::error!("{}: cannot listen on {addr}: {e}", config.admin_at);
                    return ExitCode::from(1);
                }
            },
        };
        let control_task = tokio::spawn(control::serve(control, tx.clone(), source));
        tokio::spawn(forward_signals(tx.clone()));
        tokio::spawn(file_watch::run(view.subscribe(), tx.clone()));
        tokio::spawn(resolve_again(view.subscribe(), tx.clone()));
        tokio::spawn(history::keep(view.subscribe(), table, history.clone()));
        tokio::spawn(cache::keep_in_size(
            view.subscribe(),
            table.cache_written(),
            cache_bytes.clone(),
        ));
        tokio::spawn(every(crate::tls::tickets::ROTATION, tx.clone(), || {
            Event::RotateTicketKeys
        }));
        tokio::spawn(every(WATCHDOG_TICK, tx.clone(), || Event::WatchdogTick));
        let now = crate::sys::monotonic_ms();
        let events = tx.clone();
        let publish: crate::apps::Publish = Box::new(move |servers, told| {
            let _ = events.send(Event::AppServers(servers, told));
        });
        let apps =
            crate::apps::Apps::start(config.apps.clone(), apps_board.clone(), table, publish);
        let mut supervisor = Supervisor {
            backoff: vec![Backoff::default(); config.gateway.workers],
            covered: BTreeMap::new(),
            passive_down: Default::default(),
            watching_since: now,
            last_watchdog_tick: now,
            health: HealthChecks::start(
                &config,
                &assignments.records(generation),
                table,
                &check_failures,
            ),
            check_failures,
            config_path,
            config,
            config_text,
            generation,
            reloads,
            restarts,
            sockets,
            workers: Vec::new(),
            events: tx,
            deferred: Vec::new(),
            stopping: false,
            table,
            assignments,
            runtime: runtime_servers,
            admin,
            view,
            tickets,
            acme: None,
            acme_state: Default::default(),
            acme_serial: 0,
            acme_waiting: None,
            acme_board,
            cache_bytes,
            apps,
            app_servers: Default::default(),
            apps_board,
            history,
            program,
            control_task: Some(control_task),
            control_fd: Some(control_fd),
            cleanup,
            upgrade: None,
            handed_over: None,
            foreign_workers: handover
                .as_ref()
                .map(|h| h.workers.clone())
                .unwrap_or_default(),
            predecessor_running: handover.is_some(),
        };
        // The workers serve once the apps' instances can take requests. After an
        // upgrade, a new supervisor whose instances are not ready is refused (the old
        // one keeps serving); at a first start the workers serve anyway while the
        // instances keep trying.
        if let Err(e) = supervisor.wait_for_apps(&mut rx).await {
            if handover.is_some() {
                tracing::error!("upgrade: {e}");
                supervisor.apps.send(crate::apps::Command::Kill);
                return ExitCode::from(1);
            }
            tracing::warn!("{e}: the workers serve anyway");
        }
        if let Err(e) = supervisor.start_generation(&mut rx).await {
            tracing::error!("workers did not start: {e}");
            supervisor.kill_all();
            return ExitCode::from(1);
        }
        supervisor.redeliver_deferred();
        // Once the workers serve: the CA's validation must find them.
        supervisor.follow_acme();
        supervisor.publish();
        tracing::info!(
            generation = supervisor.generation,
            health_checks = supervisor.health.count(),
            "{} workers serving",
            supervisor.config.gateway.workers
        );
        if let Some(h) = &handover {
            if let Err(e) = supervisor.take_over(h.channel_fd, control_path) {
                tracing::error!("upgrade: cannot tell the running gateway: {e}");
                supervisor.kill_all();
                return ExitCode::from(1);
            }
            notify::notify(&format!("MAINPID={}\nREADY=1", std::process::id()));
        } else {
            notify::notify("READY=1");
        }
        while let Some(event) = rx.recv().await {
            supervisor.handle(event, &mut rx).await;
            supervisor.redeliver_deferred();
            supervisor.arrange_cover().await;
            supervisor.publish();
            if supervisor.stopping && supervisor.workers.is_empty() {
                break;
            }
        }
        supervisor.stop_apps(&mut rx).await;
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}

impl Supervisor {
    async fn handle(&mut self, event: Event, rx: &mut mpsc::UnboundedReceiver<Event>) {
        match event {
            Event::Worker {
                pid,
                message: FromWorker::Ready,
            } => {
                if let Some(w) = self.workers.iter_mut().find(|w| w.pid == pid) {
                    w.ready = true;
                }
            }
            // Outside a reload nobody waits for this.
            Event::Worker {
                message: FromWorker::Draining,
                ..
            } => {}
            Event::Worker {
                pid,
                message: FromWorker::AcmeHeld(serial),
            } => self.acme_held(pid, serial),
            Event::Exited { pid, status } => self.on_exit(pid, status),
            Event::Respawn { seat, generation } => self.respawn(seat, generation),
            Event::Control(Request::Upgrade, reply) => self.start_upgrade(Some(reply)),
            Event::Control(Request::Restart { app }, reply) => self.restart_app(app, reply),
            Event::AppServers(servers, told) => {
                let left = self.change_app_servers(servers).await;
                let _ = told.send(left);
            }
            Event::Signal(Signal::Upgrade) => self.start_upgrade(None),
            Event::Upgraded(outcome) => self.on_upgraded(outcome).await,
            Event::PredecessorGone => {
                tracing::info!("upgrade: the replaced gateway has exited");
                self.foreign_workers.clear();
                self.predecessor_running = false;
                self.assignments.retire(upgrade::PREDECESSOR);
            }
            Event::Control(
                Request::RemoveServer {
                    upstream,
                    addr,
                    wait,
                },
                reply,
            ) => self.remove_server(&upstream, addr, wait, reply).await,
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
                self.tell_all(&ToWorker::Reopen).await;
                self.apps.send(crate::apps::Command::Reopen);
            }
            Event::RotateTicketKeys => match self.tickets.rotate() {
                Ok(()) => {
                    self.tell_all(&ToWorker::Tickets(self.tickets.clone()))
                        .await;
                    tracing::info!("TLS ticket key rotated");
                }
                Err(e) => tracing::error!("TLS ticket key not rotated: {e}"),
            },
            Event::WatchdogTick => {
                self.check_progress();
                let records = self.assignments.records(self.generation);
                health::log_passive_returns(
                    &self.config,
                    &records,
                    self.table,
                    &mut self.passive_down,
                );
                let table = self.table;
                self.assignments
                    .release_leaving(|record| table.server(record).in_flight() == 0);
            }
            Event::Dns(answers) if answers != self.config.answers && !self.stopping => {
                for (name, addrs) in &answers {
                    if self.config.answers.get(name) != Some(addrs) {
                        let addrs: Vec<String> = addrs.iter().map(ToString::to_string).collect();
                        tracing::info!(
                            "{name} resolves to {} now: its servers change in place",
                            addrs.join(", ")
                        );
                    }
                }
                let (runtime, apps) = (self.runtime.clone(), self.app_servers.clone());
                if let Err(e) = self.change_servers(answers, runtime, apps).await {
                    tracing::error!("the new DNS answers are not used: {e}");
                }
            }
            Event::Dns(_) => {}
            Event::Acme(state, told) => {
                self.acme_state = state;
                self.acme_serial += 1;
                let serial = self.acme_serial;
                self.tell_all(&ToWorker::Acme(serial, self.acme_state.clone()))
                    .await;
                // An older change is not waited for any more: this one replaces it.
                if let Some((_, _, older)) = self.acme_waiting.take() {
                    let _ = older.send(());
                }
                let pids = self.workers.iter().map(|w| w.pid).collect();
                self.acme_waiting = Some((serial, pids, told));
                self.acme_held(0, serial);
            }
        }
    }

    /// Worker `pid` serves with ACME state `serial` (or has exited: `serial` 0 then is
    /// the current one); the client is answered once every worker does.
    fn acme_held(&mut self, pid: u32, serial: u64) {
        let Some((waited, pids, _)) = &mut self.acme_waiting else {
            return;
        };
        if *waited == serial || serial == 0 {
            pids.retain(|&p| p != pid);
        }
        if pids.is_empty() {
            if let Some((_, _, told)) = self.acme_waiting.take() {
                let _ = told.send(());
            }
        }
    }

    /// Starts the ACME client for the current config, or leaves it running when its plan
    /// is the same (an order in progress goes on), or stops it.
    fn follow_acme(&mut self) {
        let plan = crate::acme::Plan::of(&self.config);
        if self.acme.as_ref().map(|m| &m.plan) == plan.as_ref() {
            return;
        }
        self.acme = None;
        match plan {
            None => {
                self.acme_board
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clear();
            }
            Some(plan) => {
                let events = self.events.clone();
                let tell: crate::acme::Tell = Box::new(move |state, told| {
                    let _ = events.send(Event::Acme(state, told));
                });
                self.acme = Some(crate::acme::Manager::start(
                    plan,
                    self.acme_board.clone(),
                    &self.acme_state,
                    tell,
                ));
            }
        }
    }

    async fn control(
        &mut self,
        request: Request,
        rx: &mut mpsc::UnboundedReceiver<Event>,
    ) -> Reply {
        match request {
            // The control socket answers this itself from the published snapshot.
            Request::Status | Request::Server { .. } | Request::Purge { .. } => {
                Reply::failed("answered by the control socket")
            }
            Request::Upgrade => Reply::failed("answered by start_upgrade"),
            Request::Restart { .. } => Reply::failed("answered by restart_app"),
            Request::RemoveServer { .. } => Reply::failed("answered by remove_server"),
            Request::AddServer { .. } if self.stopping => Reply::failed("the gateway is stopping"),
            Request::AddServer { upstream, server } => self.add_server(&upstream, server).await,
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

    async fn stop(&mut self, now: bool) {
        self.stopping = true;
        if now {
            self.kill_all();
            self.apps.send(crate::apps::Command::Kill);
            return;
        }
        tracing::info!("stopping: workers finish their requests");
        let timeout = self.config.gateway.shutdown_timeout;
        for w in &mut self.workers {
            if !w.draining {
                w.draining = true;
                w.send(&ToWorker::Drain).await;
            }
            w.kill_after(timeout);
        }
    }

    async fn tell_all(&mut self, message: &ToWorker) {
        for w in &mut self.workers {
            w.send(message).await;
        }
    }

    /// Hands the events a reload set aside back to the event loop, in their order.
    fn redeliver_deferred(&mut self) {
        for event in self.deferred.drain(..) {
            let _ = self.events.send(event);
        }
    }

    fn source(&self) -> StatusSource {
        StatusSource {
            view: self.view.subscribe(),
            table: self.table,
            check_failures: self.check_failures.clone(),
            acme: self.acme_board.clone(),
            cache_bytes: self.cache_bytes.clone(),
            apps: self.apps_board.clone(),
            history: self.history.clone(),
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
                seat: w.seat,
                record: w.record,
                started: w.started,
                state: if w.draining {
                    WorkerState::Draining
                } else if w.ready {
                    WorkerState::Serving
                } else {
                    WorkerState::Starting
                },
            })
            .collect();
        self.view.send_replace(Arc::new(Snapshot {
            generation: self.generation,
            reloads: self.reloads,
            restarts: self.restarts,
            config: self.config.clone(),
            records: self.assignments.records(self.generation),
            workers,
        }));
    }
}

/// Sends `event()` every `period`, until the supervisor is gone.
async fn every(period: Duration, events: mpsc::UnboundedSender<Event>, event: fn() -> Event) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if events.send(event()).is_err() {
            return;
        }
    }
}

/// Looks the running config's server names up again every `resolve_interval` (once for
/// the gateway, in the supervisor), and says so when an answer changed. A name that does
/// not resolve now keeps its last known addresses.
async fn resolve_again(view: watch::Receiver<Arc<Snapshot>>, events: mpsc::UnboundedSender<Event>) {
    let mut failing = std::collections::BTreeSet::new();
    loop {
        let config = view.borrow().config.clone();
        tokio::time::sleep(config.gateway.resolve_interval).await;
        if config.answers.is_empty() {
            continue;
        }
        let resolver = config.gateway.resolver;
        let names: Vec<String> = config.answers.keys().cloned().collect();
        let looked_up = tokio::task::spawn_blocking(move || {
            names
                .into_iter()
                .map(|name| {
                    let found = crate::config::lookup(resolver, &name);
                    (name, found)
                })
                .collect::<Vec<_>>()
        })
        .await;
        let Ok(looked_up) = looked_up else { continue };
        let mut answers = config.answers.clone();
        for (name, found) in looked_up {
            match found {
                Ok(addrs) => {
                    failing.remove(&name);
                    answers.insert(name, addrs);
                }
                Err(e) => {
                    if failing.insert(name.clone()) {
                        tracing::warn!("{e}; {name} keeps its last known addresses");
                    }
                }
            }
        }
        if answers != config.answers && events.send(Event::Dns(answers)).is_err() {
            return;
        }
    }
}

async fn forward_signals(events: mpsc::UnboundedSender<Event>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup), Ok(mut usr1), Ok(mut usr2)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
        signal(SignalKind::user_defined1()),
        signal(SignalKind::user_defined2()),
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
            _ = usr2.recv() => Signal::Upgrade,
        };
        if events.send(Event::Signal(signal)).is_err() {
            return;
        }
    }
}
