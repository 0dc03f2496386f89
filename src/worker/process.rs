//! A worker process: takes its config and listening sockets from the supervisor, serves,
//! says `ready`, and drains when told to (or when the supervisor is gone).

use super::forward::Proxy;
use super::DRAINING;
use crate::access_log::AccessLog;
use crate::protocol;
use crate::table::{Table, SERVER_SLOTS, WORKER_SLOTS};
use crate::tls::tickets::{self, SharedTicketer, TicketKeys};
use std::io::{BufRead, BufReader, Read};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// What the supervisor tells a worker on its command line.
#[derive(clap::Args, Debug)]
pub struct WorkerArgs {
    /// The worker's place in the generation (one per `workers`).
    #[arg(long)]
    slot: usize,
    #[arg(long)]
    generation: u64,
    /// Inherited listening sockets, one per listener.
    #[arg(long, value_delimiter = ',')]
    fds: Vec<i32>,
    /// The inherited shared state table.
    #[arg(long)]
    table_fd: i32,
    /// This worker's counters in the table.
    #[arg(long)]
    table_slot: usize,
    /// The table slot of every upstream server, in config order.
    #[arg(long, value_delimiter = ',')]
    server_slots: Vec<usize>,
}

pub fn main(config_path: &Path, args: &WorkerArgs) -> ExitCode {
    match run(config_path, args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(
                slot = args.slot,
                generation = args.generation,
                "worker failed: {e}"
            );
            ExitCode::from(1)
        }
    }
}

fn run(config_path: &Path, args: &WorkerArgs) -> std::io::Result<()> {
    // Our stdin is a socket pair with the supervisor: take a handle that can also write.
    let channel = UnixStream::from(std::io::stdin().as_fd().try_clone_to_owned()?);
    let mut reader = BufReader::new(channel.try_clone()?);
    let (text, ticket_keys) = read_config(&mut reader)?;
    let config = crate::config::parse(config_path, &text).map_err(std::io::Error::other)?;
    let listeners = args
        .fds
        .iter()
        .map(|&fd| crate::sys::adopt_listener(fd))
        .collect::<std::io::Result<Vec<_>>>()?;
    let table = Table::adopt(args.table_fd)?;
    let servers: usize = config.upstreams.iter().map(|u| u.servers.len()).sum();
    if args.server_slots.len() != servers
        || args.server_slots.iter().any(|&s| s >= SERVER_SLOTS)
        || args.table_slot >= WORKER_SLOTS
    {
        return Err(std::io::Error::other(format!(
            "bad table slots from the supervisor: worker {}, servers {:?} for {servers} servers",
            args.table_slot, args.server_slots
        )));
    }

    let log = Arc::new(AccessLog::open(
        &config.gateway.access_log,
        config.gateway.access_log_format,
    )?);

    let proxy = Proxy::new(
        &config,
        log.clone(),
        table.share(args.table_slot),
        &args.server_slots,
    );

    let ticketer = Arc::new(SharedTicketer::default());
    match &ticket_keys {
        Some(keys) => ticketer.set(keys),
        None => tracing::warn!("no TLS ticket keys from the supervisor: no session tickets"),
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        ignore_terminal_signals();
        let (stop_tx, stop_rx) = watch::channel(false);
        channel.set_nonblocking(true)?;
        let channel = tokio::net::UnixStream::from_std(channel)?;
        let (read_half, mut write_half) = channel.into_split();
        // Anything the supervisor wrote after the config and that the blocking reader
        // already buffered is handled first.
        let buffered = reader.buffer().to_vec();
        let commands = tokio::spawn(follow_commands(
            buffered,
            read_half,
            stop_tx,
            log.clone(),
            ticketer.clone(),
        ));
        let (say, mut said) = tokio::sync::mpsc::unbounded_channel::<&'static str>();
        let reporter = tokio::spawn(async move {
            while let Some(message) = said.recv().await {
                let _ = write_half
                    .write_all(format!("{message}\n").as_bytes())
                    .await;
            }
        });
        let closed = say.clone();
        let result = super::run(
            listeners,
            Arc::new(config),
            Arc::new(proxy),
            ticketer,
            stop_rx,
            move || {
                let _ = say.send(protocol::READY);
            },
            move || {
                let _ = closed.send(protocol::DRAINING);
            },
        )
        .await;
        let _ = reporter.await;
        commands.abort();
        result
    })
}

/// The config message, and the TLS ticket keys line that comes before it.
fn read_config(
    reader: &mut BufReader<UnixStream>,
) -> std::io::Result<(String, Option<TicketKeys>)> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let keys = TicketKeys::from_line(line.trim_end());
    if keys.is_some() {
        line.clear();
        reader.read_line(&mut line)?;
    }
    let len: usize = line
        .strip_prefix(protocol::CONFIG)
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("expected a config message, got {line:?}")))?;
    let mut text = vec![0; len];
    reader.read_exact(&mut text)?;
    let text = String::from_utf8(text).map_err(std::io::Error::other)?;
    Ok((text, keys))
}

/// Obeys the supervisor's commands; its going away counts as `drain`.
async fn follow_commands(
    buffered: Vec<u8>,
    channel: tokio::net::unix::OwnedReadHalf,
    stop: watch::Sender<bool>,
    log: Arc<AccessLog>,
    ticketer: Arc<SharedTicketer>,
) {
    let pending = std::io::Cursor::new(buffered);
    let mut lines =
        tokio::io::BufReader::new(tokio::io::AsyncReadExt::chain(pending, channel)).lines();
    loop {
        match lines.next_line().await {
            Ok(Some(line)) if line == protocol::REOPEN => match log.reopen() {
                Ok(()) => tracing::info!("access log reopened"),
                Err(e) => tracing::error!("cannot reopen the access log: {e}"),
            },
            Ok(Some(line)) if line == protocol::DRAIN => break,
            Ok(Some(line)) if line.starts_with(tickets::LINE_PREFIX) => {
                match TicketKeys::from_line(&line) {
                    Some(keys) => ticketer.set(&keys),
                    None => tracing::error!("unreadable TLS ticket keys from the supervisor"),
                }
            }
            Ok(Some(other)) => tracing::warn!("unknown command from the supervisor: {other:?}"),
            Ok(None) | Err(_) => {
                tracing::warn!("supervisor gone: draining");
                break;
            }
        }
    }
    DRAINING.store(true, Ordering::Relaxed);
    let _ = stop.send(true);
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
