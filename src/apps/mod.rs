//! Apps the gateway runs (`[app.NAME]`, like PM2's cluster mode): the supervisor starts
//! each app's instances, makes one a server once it is ready, restarts one that exits
//! (waiting longer each time it keeps crashing), replaces one that grows past
//! `max_memory`, restarts them one at a time on `gatewayctl restart` or a reload that
//! changes the program, and stops them once the workers are gone.
//!
//! One task owns every instance and handles one event at a time (here): a rolling
//! replacement starts the new instance, waits until it is ready and serving, then takes
//! the old one out of the servers, waits until nothing is in flight on it (up to
//! `stop_timeout`), sends `SIGTERM`, and `SIGKILL` after another `stop_timeout`.
//! `instance.rs` starts a process and checks it is ready; `output.rs` keeps the app's log.

mod instance;
mod output;

pub use instance::rss_bytes;

use crate::config::{AppConfig, AppServers, DEFAULT_STOP_TIMEOUT};
use crate::table::Table;
use output::AppLog;
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// An instance that ran this long before it exited starts the back-off over.
const STEADY: Duration = Duration::from_secs(30);
/// The delay before restarting an instance that crashed once; doubled for each crash in
/// a row, up to [`MAX_DELAY`] (PM2's exponential back-off, with its cap).
const FIRST_DELAY: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_secs(15);
/// How often the instances' memory is held against `max_memory`.
const MEMORY_TICK: Duration = Duration::from_secs(1);
/// A worker may have picked an instance just before it read that the instance left: its
/// in-flight count is trusted after this.
const SETTLE: Duration = Duration::from_millis(200);
const IN_FLIGHT_POLL: Duration = Duration::from_millis(50);

/// What the supervisor asks of the apps.
pub enum Command {
    /// Run these apps (a reload): new ones start, gone ones stop, changed programs
    /// restart rolling, counts grow or shrink.
    Configure(Vec<AppConfig>),
    /// `gatewayctl restart APP`: answered once every instance was replaced.
    Restart(String, oneshot::Sender<Result<(), String>>),
    /// Reopen the apps' logs (`SIGUSR1`).
    Reopen,
    /// Answered once every instance started has become ready or failed once: whether
    /// all are ready.
    WhenStarted(oneshot::Sender<bool>),
    /// Stop every instance (`SIGTERM`, then `SIGKILL` after `stop_timeout`); answered
    /// once all have exited.
    Stop(oneshot::Sender<()>),
    /// `SIGKILL` every instance now.
    Kill,
}

/// The table records each address that left the servers had, so its in-flight requests
/// can be waited for.
pub type Left = BTreeMap<SocketAddr, Vec<usize>>;

/// Asks the supervisor to serve with these ready instances; it answers once the workers
/// were told.
pub type Publish = Box<dyn Fn(AppServers, oneshot::Sender<Left>) + Send>;

/// The instances as `/status` shows them, by app.
#[derive(Clone, Default)]
pub struct Board(Arc<Mutex<BTreeMap<String, Vec<InstanceView>>>>);

impl Board {
    pub fn get(&self) -> BTreeMap<String, Vec<InstanceView>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[derive(Debug, Clone)]
pub struct InstanceView {
    /// Its `INSTANCE` number.
    pub instance: usize,
    pub pid: u32,
    pub port: u16,
    pub state: &'static str,
    /// `None` once it stopped.
    pub started: Option<Instant>,
    pub restarts: u64,
}

/// The handle the supervisor keeps.
pub struct Apps {
    commands: mpsc::UnboundedSender<Command>,
}

impl Apps {
    pub fn start(
        apps: Vec<AppConfig>,
        board: Board,
        table: &'static Table,
        publish: Publish,
    ) -> Apps {
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let (events, events_rx) = mpsc::unbounded_channel();
        let mut runner = Runner {
            apps: BTreeMap::new(),
            instances: Vec::new(),
            next_id: 0,
            events,
            publish,
            table,
            board,
            published: AppServers::default(),
            started_waiters: Vec::new(),
            stopped_waiter: None,
            closing: false,
        };
        runner.configure(apps);
        tokio::spawn(runner.run(commands_rx, events_rx));
        Apps { commands }
    }

    pub fn send(&self, command: Command) {
        let _ = self.commands.send(command);
    }

    /// Asks and waits for the answer (`None` when the apps' task is gone).
    pub async fn ask<T>(&self, command: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.send(command(tx));
        rx.await.ok()
    }
}

struct Runner {
    apps: BTreeMap<String, App>,
    /// Every live instance, of every app (also of apps a reload removed, until they exit).
    instances: Vec<Instance>,
    next_id: u64,
    events: mpsc::UnboundedSender<Event>,
    publish: Publish,
    table: &'static Table,
    board: Board,
    published: AppServers,
    started_waiters: Vec<oneshot::Sender<bool>>,
    stopped_waiter: Option<oneshot::Sender<()>>,
    /// Stopping or killed: nothing starts any more.
    closing: bool,
}

struct App {
    config: AppConfig,
    log: Arc<AppLog>,
    slots: Vec<Slot>,
    /// Slots waiting to be replaced, one at a time.
    rolling: VecDeque<usize>,
    /// The slot being replaced and its new instance's id.
    replacing: Option<(usize, u64)>,
    /// `gatewayctl restart`s waiting for the rolling replacement to end.
    waiters: Vec<oneshot::Sender<Result<(), String>>>,
}

/// What is kept of an `INSTANCE` number across its processes.
#[derive(Default, Clone)]
struct Slot {
    restarts: u64,
    crashes_in_a_row: u32,
    /// A start was tried since the gateway started (for [`Command::WhenStarted`]).
    tried: bool,
    last_pid: u32,
    last_port: u16,
}

struct Instance {
    id: u64,
    app: String,
    slot: usize,
    pid: u32,
    port: u16,
    state: State,
    started: Instant,
    /// Why it was stopped before it was ready.
    failed: Option<String>,
    /// Leaving, it waits for its requests to end or got `SIGTERM`.
    stopping: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Starting,
    Ready,
    /// Out of the servers (or being stopped): it finishes what it has and exits.
    Leaving,
}

enum Event {
    Exited {
        id: u64,
        status: String,
    },
    Ready {
        id: u64,
        outcome: Result<(), String>,
    },
    Respawn {
        app: String,
        slot: usize,
    },
    /// Nothing in flight any more (or `stop_timeout` passed): time for `SIGTERM`.
    Drained {
        id: u64,
    },
    /// `stop_timeout` after `SIGTERM`: `SIGKILL` if it is still there.
    Overdue {
        id: u64,
    },
}

impl Runner {
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut events: mpsc::UnboundedReceiver<Event>,
    ) {
        let mut memory = tokio::time::interval(MEMORY_TICK);
        memory.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => self.command(command).await,
                    None => {
                        self.kill_all();
                        return;
                    }
                },
                Some(event) = events.recv() => self.event(event).await,
                _ = memory.tick() => self.check_memory().await,
            }
            self.show();
            if let Some(all_ready) = self.started() {
                for waiter in self.started_waiters.drain(..) {
                    let _ = waiter.send(all_ready);
                }
            }
            if self.stopped_waiter.is_some() && self.instances.is_empty() {
                if let Some(waiter) = self.stopped_waiter.take() {
                    let _ = waiter.send(());
                }
                return;
            }
        }
    }

    async fn command(&mut self, command: Command) {
        match command {
            Command::Configure(apps) => {
                self.configure(apps);
                self.drain_left().await;
                let names: Vec<String> = self.apps.keys().cloned().collect();
                for name in names {
                    self.kick(&name).await;
                }
            }
            Command::Restart(name, reply) => {
                let Some(app) = self.apps.get_mut(&name) else {
                    let _ = reply.send(Err(format!("no app {name:?}")));
                    return;
                };
                if self.closing {
                    let _ = reply.send(Err("the gateway is stopping".into()));
                    return;
                }
                tracing::info!(app = name, "restarting the instances one at a time");
                app.rolling = (0..app.config.instances).collect();
                app.waiters.push(reply);
                self.kick(&name).await;
            }
            Command::Reopen => {
                for app in self.apps.values() {
                    app.log.reopen();
                }
            }
            Command::WhenStarted(reply) => self.started_waiters.push(reply),
            Command::Stop(reply) => {
                self.stopped_waiter = Some(reply);
                self.closing = true;
                for app in self.apps.values_mut() {
                    app.rolling.clear();
                    for waiter in app.waiters.drain(..) {
                        let _ = waiter.send(Err("the gateway is stopping".into()));
                    }
                }
                let ids: Vec<u64> = self.instances.iter().map(|i| i.id).collect();
                for id in ids {
                    self.terminate(id);
                }
            }
            Command::Kill => {
                self.closing = true;
                for i in &mut self.instances {
                    i.state = State::Leaving;
                    i.stopping = true;
                }
                self.kill_all();
            }
        }
    }

    /// Takes a new list of apps: the instances of a gone app or slot leave, a new app
    /// or slot starts, a changed program is queued for a rolling restart.
    fn configure(&mut self, apps: Vec<AppConfig>) {
        let names: Vec<String> = apps.iter().map(|a| a.name.clone()).collect();
        let gone: Vec<String> = self
            .apps
            .keys()
            .filter(|n| !names.contains(n))
            .cloned()
            .collect();
        for name in gone {
            tracing::info!(
                app = name,
                "the app is gone from the config: its instances stop"
            );
            if let Some(app) = self.apps.remove(&name) {
                for waiter in app.waiters {
                    let _ = waiter.send(Err(format!("app {name} is gone from the config")));
                }
            }
            self.retire(|i| i.app == name);
        }
        for config in apps {
            let name = config.name.clone();
            let mut changed = false;
            let (from, to) = match self.apps.get_mut(&name) {
                None => {
                    let log = AppLog::open(config.log.clone());
                    self.apps.insert(
                        name.clone(),
                        App {
                            slots: vec![Slot::default(); config.instances],
                            config,
                            log,
                            rolling: VecDeque::new(),
                            replacing: None,
                            waiters: Vec::new(),
                        },
                    );
                    (0, self.apps[&name].config.instances)
                }
                Some(app) => {
                    app.log.retarget(config.log.clone());
                    let from = app.config.instances;
                    changed = !app.config.same_program(&config);
                    if changed {
                        tracing::info!(
                            app = name,
                            "the app's command, dir, env or port changed: its instances restart one at a time"
                        );
                        app.rolling = (0..from.min(config.instances)).collect();
                    }
                    let to = config.instances;
                    app.slots.resize(to.max(from), Slot::default());
                    app.config = config;
                    (from, to)
                }
            };
            if to < from {
                self.retire(|i| i.app == name && i.slot >= to);
                if let Some(app) = self.apps.get_mut(&name) {
                    app.slots.truncate(to);
                }
            }
            // An instance still starting runs the old program: it starts again now
            // (one that is ready is replaced rolling).
            let replacement = self.apps[&name].replacing.map(|(_, id)| id);
            let stale = |i: &Instance| {
                changed && i.app == name && i.state == State::Starting && Some(i.id) != replacement
            };
            let mut again: Vec<usize> = self
                .instances
                .iter()
                .filter(|i| stale(i) && i.slot < to)
                .map(|i| i.slot)
                .collect();
            self.retire(stale);
            again.extend(from..to);
            for slot in again {
                self.start_or_retry(&name, slot);
            }
        }
    }

    async fn event(&mut self, event: Event) {
        match event {
            Event::Ready { id, outcome } => self.on_ready(id, outcome).await,
            Event::Exited { id, status } => self.on_exit(id, status).await,
            Event::Respawn { app, slot } => {
                let Some(a) = self.apps.get_mut(&app) else {
                    return;
                };
                let live = self
                    .instances
                    .iter()
                    .any(|i| i.app == app && i.slot == slot);
                if slot < a.config.instances && !live && !self.closing {
                    a.slots[slot].restarts += 1;
                    self.start_or_retry(&app, slot);
                }
            }
            Event::Drained { id } => self.terminate(id),
            Event::Overdue { id } => {
                if let Some(i) = self.instances.iter().find(|i| i.id == id) {
                    tracing::warn!(
                        "app {}#{} (pid {}) did not exit within stop_timeout: killed",
                        i.app,
                        i.slot,
                        i.pid
                    );
                    crate::sys::signal_group(i.pid, libc::SIGKILL);
                }
            }
        }
    }

    async fn on_ready(&mut self, id: u64, outcome: Result<(), String>) {
        let Some(i) = self
            .instances
            .iter_mut()
            .find(|i| i.id == id && i.state == State::Starting)
        else {
            return;
        };
        if let Err(why) = outcome {
            tracing::error!("app {}#{} (pid {}) is {why}: killed", i.app, i.slot, i.pid);
            i.failed = Some(why);
            crate::sys::signal_group(i.pid, libc::SIGKILL);
            return;
        }
        i.state = State::Ready;
        let (app, slot, pid, port) = (i.app.clone(), i.slot, i.pid, i.port);
        tracing::info!(
            app,
            instance = slot,
            pid,
            port,
            "app instance ready: it takes requests"
        );
        self.publish().await;
        let Some(a) = self.apps.get_mut(&app) else {
            return;
        };
        if a.replacing == Some((slot, id)) {
            a.replacing = None;
            self.retire(|i| i.app == app && i.slot == slot && i.id != id);
            self.drain_left().await;
            self.kick(&app).await;
        }
    }

    async fn on_exit(&mut self, id: u64, status: String) {
        let Some(at) = self.instances.iter().position(|i| i.id == id) else {
            return;
        };
        let gone = self.instances.remove(at);
        let ran = gone.started.elapsed();
        if gone.state == State::Leaving {
            tracing::info!(
                "app {}#{} (pid {}) stopped ({status})",
                gone.app,
                gone.slot,
                gone.pid
            );
            return;
        }
        if gone.state == State::Ready {
            self.publish().await;
        }
        if self.closing {
            return;
        }
        let why = gone.failed.clone().unwrap_or_else(|| status.clone());
        let Some(app) = self.apps.get_mut(&gone.app) else {
            return;
        };
        if app.replacing.is_some_and(|(_, new)| new == id) {
            app.replacing = None;
            app.rolling.clear();
            let message = format!(
                "instance {}'s replacement (pid {}) did not become ready ({why}); the running instances keep serving",
                gone.slot, gone.pid
            );
            tracing::error!(app = gone.app, "restart stopped: {message}");
            for waiter in app.waiters.drain(..) {
                let _ = waiter.send(Err(message.clone()));
            }
            return;
        }
        let live = self
            .instances
            .iter()
            .any(|i| i.app == gone.app && i.slot == gone.slot);
        if gone.slot >= app.config.instances || live {
            return;
        }
        let slot = &mut app.slots[gone.slot];
        slot.crashes_in_a_row = if ran >= STEADY {
            1
        } else {
            slot.crashes_in_a_row + 1
        };
        let delay = backoff(slot.crashes_in_a_row);
        tracing::warn!(
            "app {}#{} (pid {}) exited ({why}) after {:.1}s: restarting in {:.1}s",
            gone.app,
            gone.slot,
            gone.pid,
            ran.as_secs_f64(),
            delay.as_secs_f64()
        );
        self.respawn_after(&gone.app, gone.slot, delay);
    }

    /// Starts instance `slot` of `app`; when it cannot, tries again after a back-off.
    fn start_or_retry(&mut self, app: &str, slot: usize) {
        if let Err(e) = self.start(app, slot) {
            let Some(a) = self.apps.get_mut(app) else {
                return;
            };
            let s = &mut a.slots[slot];
            s.tried = true;
            s.crashes_in_a_row += 1;
            let delay = backoff(s.crashes_in_a_row);
            tracing::error!(
                "app {app}#{slot} cannot start: {e}; trying again in {:.1}s",
                delay.as_secs_f64()
            );
            self.respawn_after(app, slot, delay);
        }
    }

    fn start(&mut self, name: &str, slot: usize) -> Result<u64, String> {
        let app = self.apps.get_mut(name).ok_or("no such app")?;
        let ours: Vec<u16> = self.instances.iter().map(|i| i.port).collect();
        let ports = app.config.ports();
        let port = ports
            .clone()
            .find(|p| !ours.contains(p) && !instance::port_taken(*p))
            .ok_or_else(|| {
                format!(
                    "no free port in {}-{} (port to port + 2 × instances - 1)",
                    ports.start,
                    ports.end - 1
                )
            })?;
        let mut child = instance::spawn(&app.config, slot, port, &app.log).map_err(|e| {
            let (program, dir) = (&app.config.command[0], app.config.dir.display());
            format!("{program:?} in {dir}: {e}")
        })?;
        let pid = child.id().unwrap_or(0);
        let id = self.next_id;
        self.next_id += 1;
        let s = &mut app.slots[slot];
        s.tried = true;
        (s.last_pid, s.last_port) = (pid, port);
        self.instances.push(Instance {
            id,
            app: name.to_string(),
            slot,
            pid,
            port,
            state: State::Starting,
            started: Instant::now(),
            failed: None,
            stopping: false,
        });
        tracing::info!(
            app = name,
            instance = slot,
            pid,
            port,
            "app instance started"
        );
        let events = self.events.clone();
        tokio::spawn(async move {
            let status = match child.wait().await {
                Ok(s) => s.to_string(),
                Err(e) => format!("cannot wait for it: {e}"),
            };
            let _ = events.send(Event::Exited { id, status });
        });
        let events = self.events.clone();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let (path, timeout) = (app.config.ready.path.clone(), app.config.ready.timeout);
        tokio::spawn(async move {
            let outcome = instance::ready(addr, path, timeout).await;
            let _ = events.send(Event::Ready { id, outcome });
        });
        Ok(id)
    }

    /// Starts the next replacement of `app`'s rolling restart, unless one is under way;
    /// answers the waiting restarts when none is left.
    async fn kick(&mut self, name: &str) {
        loop {
            let Some(app) = self.apps.get_mut(name) else {
                return;
            };
            if app.replacing.is_some() {
                return;
            }
            let Some(slot) = app.rolling.pop_front() else {
                for waiter in app.waiters.drain(..) {
                    let _ = waiter.send(Ok(()));
                }
                return;
            };
            let serving = self
                .instances
                .iter()
                .any(|i| i.app == name && i.slot == slot && i.state == State::Ready);
            // A slot with nothing serving is starting or waiting to: it starts as
            // configured now anyway.
            if slot >= app.config.instances || !serving {
                continue;
            }
            app.slots[slot].restarts += 1;
            let started = self.start(name, slot);
            let Some(app) = self.apps.get_mut(name) else {
                return;
            };
            match started {
                Ok(id) => {
                    app.replacing = Some((slot, id));
                    return;
                }
                Err(e) => {
                    app.rolling.clear();
                    let message = format!("instance {slot}'s replacement cannot start: {e}");
                    tracing::error!(app = name, "restart stopped: {message}");
                    for waiter in app.waiters.drain(..) {
                        let _ = waiter.send(Err(message.clone()));
                    }
                    return;
                }
            }
        }
    }

    /// Takes the instances `which` picks out of the servers: a starting one is stopped at
    /// once, a ready one once [`Runner::drain_left`] saw it finish what it has.
    fn retire(&mut self, which: impl Fn(&Instance) -> bool) {
        let mut starting = Vec::new();
        for i in self.instances.iter_mut().filter(|i| which(i)) {
            if i.state == State::Starting {
                starting.push(i.id);
            }
            i.state = State::Leaving;
        }
        for id in starting {
            self.terminate(id);
        }
    }

    /// Publishes the servers without the instances that are leaving, then waits in the
    /// background for each to have nothing in flight before it gets `SIGTERM`.
    async fn drain_left(&mut self) {
        let left = self.publish().await;
        for i in self
            .instances
            .iter_mut()
            .filter(|i| i.state == State::Leaving && !i.stopping)
        {
            i.stopping = true;
            let addr = SocketAddr::from(([127, 0, 0, 1], i.port));
            let records = left.get(&addr).cloned().unwrap_or_default();
            let stop_timeout = self
                .apps
                .get(&i.app)
                .map_or(DEFAULT_STOP_TIMEOUT, |a| a.config.stop_timeout);
            let (table, events, id) = (self.table, self.events.clone(), i.id);
            let label = format!("{}#{} (pid {})", i.app, i.slot, i.pid);
            tokio::spawn(async move {
                tokio::time::sleep(SETTLE).await;
                let deadline = tokio::time::Instant::now() + stop_timeout;
                let in_flight =
                    || -> u64 { records.iter().map(|&r| table.server(r).in_flight()).sum() };
                while in_flight() > 0 && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(IN_FLIGHT_POLL).await;
                }
                let left = in_flight();
                if left > 0 {
                    tracing::warn!(
                        "app {label} still has {left} requests or WebSockets after stop_timeout: stopped anyway"
                    );
                }
                let _ = events.send(Event::Drained { id });
            });
        }
    }

    /// `SIGTERM` to instance `id`'s group, and `SIGKILL` after `stop_timeout`.
    fn terminate(&mut self, id: u64) {
        let Some(i) = self.instances.iter_mut().find(|i| i.id == id) else {
            return;
        };
        i.state = State::Leaving;
        i.stopping = true;
        crate::sys::signal_group(i.pid, libc::SIGTERM);
        let stop_timeout = self
            .apps
            .get(&i.app)
            .map_or(DEFAULT_STOP_TIMEOUT, |a| a.config.stop_timeout);
        let events = self.events.clone();
        tokio::spawn(async move {
            tokio::time::sleep(stop_timeout).await;
            let _ = events.send(Event::Overdue { id });
        });
    }

    fn kill_all(&mut self) {
        for i in &self.instances {
            crate::sys::signal_group(i.pid, libc::SIGKILL);
        }
    }

    fn respawn_after(&self, app: &str, slot: usize, delay: Duration) {
        let events = self.events.clone();
        let app = app.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = events.send(Event::Respawn { app, slot });
        });
    }

    /// Queues a rolling replacement of each ready instance above its app's `max_memory`.
    async fn check_memory(&mut self) {
        let mut over = Vec::new();
        for i in self.instances.iter().filter(|i| i.state == State::Ready) {
            let Some(app) = self.apps.get(&i.app) else {
                continue;
            };
            let (Some(max), Some(rss)) = (app.config.max_memory, rss_bytes(i.pid)) else {
                continue;
            };
            let queued =
                app.rolling.contains(&i.slot) || app.replacing.is_some_and(|(s, _)| s == i.slot);
            if rss > max && !queued {
                tracing::warn!(
                    "app {}#{} (pid {}) uses {} MiB, above max_memory ({} MiB): it is replaced",
                    i.app,
                    i.slot,
                    i.pid,
                    rss >> 20,
                    max >> 20
                );
                over.push((i.app.clone(), i.slot));
            }
        }
        for (name, slot) in over {
            if let Some(app) = self.apps.get_mut(&name) {
                app.rolling.push_back(slot);
            }
            self.kick(&name).await;
        }
    }

    /// Tells the supervisor the ready instances when they changed, and waits until the
    /// workers were told.
    async fn publish(&mut self) -> Left {
        let mut servers = AppServers::default();
        for name in self.apps.keys() {
            let mut ready: Vec<&Instance> = self
                .instances
                .iter()
                .filter(|i| &i.app == name && i.state == State::Ready)
                .collect();
            ready.sort_by_key(|i| (i.slot, i.id));
            servers.0.insert(
                name.clone(),
                ready
                    .iter()
                    .map(|i| SocketAddr::from(([127, 0, 0, 1], i.port)))
                    .collect(),
            );
        }
        if servers == self.published || self.closing {
            return Left::new();
        }
        self.published = servers.clone();
        let (tx, rx) = oneshot::channel();
        (self.publish)(servers, tx);
        rx.await.unwrap_or_default()
    }

    /// Once every instance was tried and is ready or failed since: whether all are ready.
    fn started(&self) -> Option<bool> {
        let mut all_ready = true;
        for (name, app) in &self.apps {
            for (slot, s) in app.slots.iter().enumerate() {
                let ready = self
                    .instances
                    .iter()
                    .any(|i| &i.app == name && i.slot == slot && i.state == State::Ready);
                if !s.tried || !(ready || s.crashes_in_a_row > 0) {
                    return None;
                }
                all_ready &= ready;
            }
        }
        Some(all_ready)
    }

    fn show(&self) {
        let mut shown: BTreeMap<String, Vec<InstanceView>> = BTreeMap::new();
        for (name, app) in &self.apps {
            let views = shown.entry(name.clone()).or_default();
            for (slot, s) in app.slots.iter().enumerate() {
                let live: Vec<&Instance> = self
                    .instances
                    .iter()
                    .filter(|i| &i.app == name && i.slot == slot)
                    .collect();
                if live.is_empty() {
                    views.push(InstanceView {
                        instance: slot,
                        pid: s.last_pid,
                        port: s.last_port,
                        state: "stopped",
                        started: None,
                        restarts: s.restarts,
                    });
                }
                for i in live {
                    views.push(InstanceView {
                        instance: slot,
                        pid: i.pid,
                        port: i.port,
                        state: match i.state {
                            State::Starting => "starting",
                            State::Ready => "ready",
                            State::Leaving => "draining",
                        },
                        started: Some(i.started),
                        restarts: s.restarts,
                    });
                }
            }
        }
        // Instances of apps or slots a reload removed, until they exit.
        for i in &self.instances {
            let known = self
                .apps
                .get(&i.app)
                .is_some_and(|a| i.slot < a.slots.len());
            if !known {
                shown.entry(i.app.clone()).or_default().push(InstanceView {
                    instance: i.slot,
                    pid: i.pid,
                    port: i.port,
                    state: "draining",
                    started: Some(i.started),
                    restarts: 0,
                });
            }
        }
        *self.board.0.lock().unwrap_or_else(|p| p.into_inner()) = shown;
    }
}

/// The delay before restarting an instance after `crashes` in a row.
fn backoff(crashes: u32) -> Duration {
    FIRST_DELAY
        .saturating_mul(1 << crashes.saturating_sub(1).min(16))
        .min(MAX_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_wait_longer_for_each_crash_in_a_row_up_to_a_cap() {
        let delays: Vec<u64> = (1..=10).map(|n| backoff(n).as_millis() as u64).collect();
        assert_eq!(
            delays,
            [100, 200, 400, 800, 1600, 3200, 6400, 12800, 15000, 15000]
        );
        assert_eq!(backoff(u32::MAX), MAX_DELAY);
    }
}
