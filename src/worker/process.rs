//! A worker process: takes its config and listening sockets from the supervisor, serves,
//! says `ready`, proves it makes progress, and drains when told to (or when the
//! supervisor is gone).

use super::{Cover, DRAINING};
use crate::access_log::AccessLog;
use crate::protocol::{FromWorker, ToWorker, WorkerArgs};
use crate::proxy::Proxy;
use crate::table::{Table, WorkerRecord, WORKER_RECORDS};
use crate::tls::tickets::SharedTicketer;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedReadHalf;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How often a worker stamps its record to show the supervisor's watchdog it is alive.
pub const HEARTBEAT: Duration = Duration::from_millis(250);

pub fn main(config_path: &Path, args: &WorkerArgs) -> ExitCode {
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .and_then(|runtime| runtime.block_on(run(config_path, args)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(
                seat = args.seat,
                generation = args.generation,
                "worker failed: {e}"
            );
            ExitCode::from(1)
        }
    }
}

async fn run(config_path: &Path, args: &WorkerArgs) -> std::io::Result<()> {
    if args.record >= WORKER_RECORDS {
        return Err(std::io::Error::other(format!(
            "bad worker record from the supervisor: {}",
            args.record
        )));
    }
    let table = Table::adopt(args.table_fd)?;
    let record = table.worker(args.record);
    tokio::spawn(heartbeat(record));
    ignore_terminal_signals();

    // Our stdin is a socket pair with the supervisor: take a handle that can also write.
    let channel =
        std::os::unix::net::UnixStream::from(std::io::stdin().as_fd().try_clone_to_owned()?);
    channel.set_nonblocking(true)?;
    let (read_half, mut write_half) = tokio::net::UnixStream::from_std(channel)?.into_split();
    let mut commands = BufReader::new(read_half);
    let ticketer = Arc::new(SharedTicketer::default());
    let mut servers = Servers {
        path: config_path.to_path_buf(),
        text: String::new(),
        answers: crate::config::Answers::new(),
        runtime: crate::config::RuntimeServers::default(),
        apps: crate::config::AppServers::default(),
    };
    servers.text = loop {
        match ToWorker::read(&mut commands).await? {
            Some(ToWorker::Tickets(keys)) => ticketer.set(&keys),
            Some(ToWorker::Dns(found)) => servers.answers = found,
            Some(ToWorker::Runtime(runtime)) => servers.runtime = runtime,
            Some(ToWorker::Apps(apps)) => servers.apps = apps,
            Some(ToWorker::Acme(_, state)) => crate::tls::acme::hold(&state),
            Some(ToWorker::Config(text)) => break text,
            other => {
                return Err(std::io::Error::other(format!(
                    "expected the config from the supervisor, got {other:?}"
                )))
            }
        }
    };
    let config = servers.config().map_err(std::io::Error::other)?;
    let listeners = config.listeners.len();
    if !crate::table::assignment::fits(&config, &args.records)
        || listeners == 0
        || !args.fds.len().is_multiple_of(listeners)
        || args.seat_fds(args.seat, listeners).is_empty()
    {
        return Err(std::io::Error::other(format!(
            "the supervisor's arguments do not fit the config: {args:?}"
        )));
    }
    let sockets = args
        .fds
        .chunks(listeners)
        .map(|seat| {
            seat.iter()
                .map(|&fd| crate::sys::adopt_listener(fd))
                .collect()
        })
        .collect::<std::io::Result<Vec<Vec<_>>>>()?;

    let log = Arc::new(AccessLog::open(
        &config.gateway.access_log,
        config.gateway.access_log_format,
    )?);
    let share = table.share(args.record);
    let proxy = Proxy::new(&config, log.clone(), share, &args.records);

    let shutdown = CancellationToken::new();
    let (say, mut said) = mpsc::unbounded_channel::<FromWorker>();
    let (cover_tx, cover_rx) = mpsc::unbounded_channel();
    let following = tokio::spawn(follow_commands(
        commands,
        Following {
            shutdown: shutdown.clone(),
            cover: cover_tx,
            log,
            ticketer: ticketer.clone(),
            servers,
            proxy: proxy.clone(),
            share,
            say: say.clone(),
        },
    ));
    let reporter = tokio::spawn(async move {
        while let Some(message) = said.recv().await {
            let _ = write_half.write_all(&message.encode()).await;
        }
    });
    let serving = super::Serving {
        sockets,
        seat: args.seat,
        config: Arc::new(config),
        proxy,
        ticketer,
    };
    let result = super::run(serving, shutdown, cover_rx, say).await;
    let _ = reporter.await;
    following.abort();
    result
}

/// Stamps the worker's record with the machine's monotonic clock. It runs on the same
/// single thread as every connection, so a worker that is stopped, spinning or blocked
/// stops stamping, and the supervisor's watchdog replaces it.
///
/// It also hands memory back once a burst of connections is over: when the open
/// connections fell by more than [`TRIM_AFTER_CLOSING`] within [`TRIM_PERIOD`].
async fn heartbeat(record: &'static WorkerRecord) {
    let mut ticks = tokio::time::interval(HEARTBEAT);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut peak, mut since) = (0, tokio::time::Instant::now());
    loop {
        ticks.tick().await;
        record.beat(crate::sys::monotonic_ms());
        let open = record.connections.load(Ordering::Relaxed);
        peak = peak.max(open);
        if since.elapsed() >= TRIM_PERIOD {
            if peak > open + TRIM_AFTER_CLOSING {
                crate::sys::release_free_memory();
            }
            (peak, since) = (open, tokio::time::Instant::now());
        }
    }
}

const TRIM_PERIOD: Duration = Duration::from_secs(2);
const TRIM_AFTER_CLOSING: u64 = 256;

/// What the worker's servers are made of: the config text and the supervisor's DNS
/// answers, run-time changes and ready app instances (the latest it sent).
struct Servers {
    path: std::path::PathBuf,
    text: String,
    answers: crate::config::Answers,
    runtime: crate::config::RuntimeServers,
    apps: crate::config::AppServers,
}

impl Servers {
    fn config(&self) -> Result<crate::config::Config, crate::config::ConfigErrors> {
        crate::config::with_servers(
            &self.path,
            &self.text,
            &self.answers,
            &self.runtime,
            &self.apps,
        )
    }
}

/// What obeying the supervisor's commands acts on.
struct Following {
    shutdown: CancellationToken,
    cover: mpsc::UnboundedSender<Cover>,
    log: Arc<AccessLog>,
    ticketer: Arc<SharedTicketer>,
    servers: Servers,
    proxy: Arc<Proxy>,
    share: crate::table::WorkerShare,
    say: mpsc::UnboundedSender<FromWorker>,
}

/// Obeys the supervisor's commands; its going away counts as `drain`.
async fn follow_commands(mut commands: BufReader<OwnedReadHalf>, mut on: Following) {
    loop {
        match ToWorker::read(&mut commands).await {
            Ok(Some(ToWorker::Reopen)) => match on.log.reopen() {
                Ok(()) => tracing::info!("access log reopened"),
                Err(e) => tracing::error!("cannot reopen the access log: {e}"),
            },
            Ok(Some(ToWorker::Drain)) => break,
            Ok(Some(ToWorker::Tickets(keys))) => on.ticketer.set(&keys),
            Ok(Some(ToWorker::Acme(serial, state))) => {
                crate::tls::acme::hold(&state);
                let _ = on.say.send(FromWorker::AcmeHeld(serial));
            }
            Ok(Some(ToWorker::Cover(seat))) => {
                let _ = on.cover.send(Cover::Start(seat));
            }
            Ok(Some(ToWorker::Uncover(seat))) => {
                let _ = on.cover.send(Cover::Stop(seat));
            }
            Ok(Some(ToWorker::Dns(answers))) => on.servers.answers = answers,
            Ok(Some(ToWorker::Runtime(runtime))) => on.servers.runtime = runtime,
            Ok(Some(ToWorker::Apps(apps))) => on.servers.apps = apps,
            Ok(Some(ToWorker::Records(records))) => match on.servers.config() {
                Ok(config) if crate::table::assignment::fits(&config, &records) => {
                    on.proxy.replace_servers(&config, on.share, &records);
                }
                Ok(_) => tracing::error!(
                    "the supervisor's server records do not fit the servers: kept the old ones"
                ),
                Err(e) => tracing::error!("the new servers are not used: {e}"),
            },
            Ok(Some(ToWorker::Config(_))) => {
                tracing::warn!("a second config from the supervisor is ignored")
            }
            Ok(None) => {
                tracing::warn!("supervisor gone: draining");
                break;
            }
            Err(e) => {
                tracing::error!("{e}; draining");
                break;
            }
        }
    }
    DRAINING.store(true, Ordering::Relaxed);
    on.shutdown.cancel();
}

/// Ctrl-C in a terminal signals the whole process group: the supervisor decides what the
/// workers do, so they ignore it.
fn ignore_terminal_signals() {
    use tokio::signal::unix::{signal, SignalKind};
    for kind in [
        SignalKind::interrupt(),
        SignalKind::hangup(),
        SignalKind::user_defined1(),
    ] {
        if let Ok(mut s) = signal(kind) {
            tokio::spawn(async move { while s.recv().await.is_some() {} });
        }
    }
}
