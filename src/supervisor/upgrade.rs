//! `gatewayctl upgrade` and SIGUSR2: the running gateway replaced by the binary now on
//! disk, with nothing lost (nginx's USR2, HAProxy's socket transfer).
//!
//! ```text
//! old supervisor ── spawns ──► new supervisor (GATEWAY_UPGRADE: the descriptors below)
//!   listening sockets, shared table, control socket, admin listener, a channel
//!                                 new: adopts them, starts its workers on the same sockets
//!   ◄── "ready VERSION" ──────────  once its workers serve
//!   answers gatewayctl, stops serving the control socket and the admin listener,
//!   drains its workers (they stop accepting; the new ones go on), exits
//!                                 new: sees the channel close, forgets the old records
//! ```
//!
//! A new binary that exits, cannot read the state (another table layout), or does not
//! serve within [`READY_WITHIN`] is refused: it is killed and the old one keeps serving.

use super::{Event, Supervisor};
use crate::protocol::Reply;
use crate::table::RecordKey;
use crate::tls::tickets::TicketKeys;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;
use tokio::sync::oneshot;

/// The environment variable that carries the [`Handover`] to the new supervisor.
pub const ENV: &str = "GATEWAY_UPGRADE";

/// The generation that stands, in a new supervisor's record assignment, for the workers of
/// the one it replaced (its own generations start after the old one's last).
pub const PREDECESSOR: u64 = 0;

/// How long the new supervisor has to serve before it is given up.
pub const READY_WITHIN: Duration = Duration::from_secs(60);

/// What a supervisor hands to the one that replaces it: descriptor numbers it inherits,
/// and which shared-table records are in use.
#[derive(Debug, Serialize, Deserialize)]
pub struct Handover {
    /// Each listener address (as configured, as bound) and its seats' sockets.
    pub listeners: Vec<super::listeners::Inherited>,
    pub table_fd: RawFd,
    pub control_fd: RawFd,
    /// The admin listener, by its configured address.
    pub admin: Option<(SocketAddr, RawFd)>,
    /// The channel to the old supervisor: "ready" goes back on it, and its close says
    /// the old one is gone.
    pub channel_fd: RawFd,
    /// Server records in use by the old supervisor's generations.
    pub records: Vec<(RecordKey, usize)>,
    /// Servers added and removed at run time.
    #[serde(default)]
    pub runtime: crate::config::RuntimeServers,
    /// A socket carrying the TLS ticket keys (`TicketKeys::to_words`), so that clients
    /// resume across the upgrade; not in this JSON, which the environment (and /proc)
    /// would show.
    #[serde(default)]
    pub tickets_fd: Option<RawFd>,
    /// Worker records in use by the old supervisor's workers.
    pub workers: Vec<usize>,
    /// The old supervisor's generation: the new one's first is the next.
    pub generation: u64,
    /// Reloads and worker restarts so far, for `/status` to go on counting.
    pub reloads: u64,
    pub restarts: u64,
}

/// The handover this process was started with, if it replaces a running gateway. Taken
/// out of the environment, so the workers do not see it.
pub fn inherited() -> Option<Result<Handover, String>> {
    let text = std::env::var(ENV).ok()?;
    // Before any other thread runs (the runtime starts later).
    std::env::remove_var(ENV);
    Some(serde_json::from_str(&text).map_err(|e| format!("{ENV} cannot be read: {e}")))
}

/// The ticket keys the replaced supervisor handed over on `fd`; new ones when it sent
/// none or they cannot be read (clients then make full handshakes once).
pub fn inherited_tickets(fd: Option<RawFd>) -> Result<TicketKeys, String> {
    let handed = fd.map(|fd| -> Result<TicketKeys, String> {
        let mut words = String::new();
        crate::sys::adopt_stream(fd)
            .and_then(|mut s| s.read_to_string(&mut words))
            .map_err(|e| e.to_string())?;
        let mut words = words.split_whitespace();
        let current = words.next().unwrap_or_default();
        TicketKeys::from_words(current, words.next()).ok_or_else(|| "not ticket keys".into())
    });
    match handed {
        Some(Ok(keys)) => Ok(keys),
        Some(Err(e)) => {
            tracing::warn!(
                "upgrade: the TLS ticket keys did not come over ({e}); new ones are made"
            );
            TicketKeys::new()
        }
        None => TicketKeys::new(),
    }
}

/// An upgrade under way: who waits for its outcome, and the channel to the new one.
pub(super) struct Pending {
    reply: Option<oneshot::Sender<Reply>>,
    /// Kept open for as long as this supervisor lives: its close tells the new one.
    _channel: UnixStream,
}

impl Supervisor {
    /// Starts the binary on disk as the new supervisor; the outcome comes back as
    /// [`Event::Upgraded`].
    pub(super) fn start_upgrade(&mut self, reply: Option<oneshot::Sender<Reply>>) {
        let refuse = |reply: Option<oneshot::Sender<Reply>>, why: String| {
            tracing::error!("upgrade refused: {why}");
            if let Some(reply) = reply {
                let _ = reply.send(Reply::failed(why));
            }
        };
        if self.stopping {
            return refuse(reply, "the gateway is stopping".into());
        }
        if self.upgrade.is_some() {
            return refuse(reply, "an upgrade is under way".into());
        }
        match self.spawn_successor() {
            Ok(channel) => {
                self.upgrade = Some(Pending {
                    reply,
                    _channel: channel,
                })
            }
            Err(e) => refuse(
                reply,
                format!("cannot start {}: {e}", self.program.display()),
            ),
        }
    }

    fn spawn_successor(&mut self) -> std::io::Result<UnixStream> {
        let (ours, theirs) = UnixStream::pair()?;
        let listeners = self.sockets.handover();
        let control = self.control_fd.ok_or_else(|| {
            std::io::Error::other("the control socket is not served by this supervisor")
        })?;
        let admin = self.admin.as_ref().map(|a| (a.configured, a.fd));
        // Each is open and owned by this process while the handover lasts (sockets and
        // table by self, control and admin by their tasks); the table's is inheritable.
        let mut raw: Vec<RawFd> = listeners
            .iter()
            .flat_map(|(_, _, fds)| fds.clone())
            .collect();
        raw.push(control);
        raw.extend(admin.map(|(_, fd)| fd));
        raw.push(theirs.as_raw_fd());
        // Written now, read by the new supervisor as it starts (a socket buffer holds it).
        let (keys_ours, keys_theirs) = UnixStream::pair()?;
        (&keys_ours).write_all(self.tickets.to_words().as_bytes())?;
        drop(keys_ours);
        raw.push(keys_theirs.as_raw_fd());
        let handover = Handover {
            listeners,
            table_fd: self.table.fd(),
            control_fd: control,
            admin,
            channel_fd: theirs.as_raw_fd(),
            tickets_fd: Some(keys_theirs.as_raw_fd()),
            records: self.assignments.in_use(),
            runtime: self.runtime.clone(),
            workers: self.workers.iter().map(|w| w.record).collect(),
            generation: self.generation,
            reloads: self.reloads,
            restarts: self.restarts,
        };
        let json = serde_json::to_string(&handover).map_err(std::io::Error::other)?;
        for &fd in &raw {
            crate::sys::set_cloexec(fd, false)?;
        }
        let spawned = tokio::process::Command::new(&self.program)
            .arg("-c")
            .arg(&self.config_path)
            .env(ENV, json)
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .spawn();
        // Only the new supervisor inherits them; its workers must not.
        for &fd in &raw {
            crate::sys::set_cloexec(fd, true)?;
        }
        drop(theirs);
        drop(keys_theirs);
        let mut child = spawned?;
        let pid = child.id().unwrap_or(0);
        tracing::info!(pid, program = %self.program.display(), "upgrade: new supervisor started");
        let mut lines = tokio::io::BufReader::new(tokio::net::UnixStream::from_std({
            let read = ours.try_clone()?;
            read.set_nonblocking(true)?;
            read
        })?)
        .lines();
        let events = self.events.clone();
        tokio::spawn(async move {
            let exited = |status: std::io::Result<std::process::ExitStatus>| {
                format!(
                    "the new supervisor exited ({}) before it served; its log above says why",
                    status.map_or_else(|e| e.to_string(), |s| s.to_string())
                )
            };
            let outcome = tokio::select! {
                line = tokio::time::timeout(READY_WITHIN, lines.next_line()) => match line {
                    Ok(Ok(Some(line))) => match line.strip_prefix("ready ") {
                        Some(version) => Ok(format!("{version} (supervisor pid {pid})")),
                        None => Err(format!("the new supervisor said {line:?}")),
                    },
                    // Closed: it is exiting, most likely; say how it ended if it does.
                    Ok(_) => match tokio::time::timeout(Duration::from_secs(2), child.wait()).await {
                        Ok(status) => Err(exited(status)),
                        Err(_) => Err("the new supervisor closed its channel".to_string()),
                    },
                    Err(_) => Err(format!("the new supervisor did not serve within {READY_WITHIN:?}")),
                },
                status = child.wait() => Err(exited(status)),
            };
            if outcome.is_err() {
                let _ = child.start_kill();
            }
            let _ = events.send(Event::Upgraded(outcome));
        });
        Ok(ours)
    }

    /// The new supervisor serves (or failed): answer, and hand over or go on.
    pub(super) async fn on_upgraded(&mut self, outcome: Result<String, String>) {
        let Some(mut pending) = self.upgrade.take() else {
            return;
        };
        let reply = pending.reply.take();
        match outcome {
            Err(why) => {
                tracing::error!("upgrade refused, this gateway keeps serving: {why}");
                if let Some(reply) = reply {
                    let _ = reply.send(Reply::failed(why));
                }
            }
            Ok(version) => {
                tracing::info!("upgrade: {version} serves; this supervisor drains and exits");
                if let Some(reply) = reply {
                    let _ = reply.send(Reply {
                        ok: true,
                        upgraded_to: Some(version),
                        ..Reply::default()
                    });
                }
                // The new supervisor answers on the control socket and the admin
                // listener from now on, and owns the socket file.
                if let Some(task) = self.control_task.take() {
                    task.abort();
                }
                self.control_fd = None;
                self.admin = None;
                if let Some(cleanup) = self.cleanup.take() {
                    cleanup.disarm();
                }
                // Kept until this process exits: its close tells the new one.
                self.handed_over = Some(pending);
                self.stop(false).await;
            }
        }
    }
}

impl Supervisor {
    /// The new supervisor of an upgrade, once its workers serve: says so to the one it
    /// replaces, takes the control socket file over, and watches for the old one's exit.
    pub(super) fn take_over(
        &mut self,
        channel_fd: RawFd,
        control_path: std::path::PathBuf,
    ) -> std::io::Result<()> {
        use std::io::Write;
        let mut channel = crate::sys::adopt_stream(channel_fd)?;
        channel.write_all(format!("ready {}\n", crate::VERSION).as_bytes())?;
        self.cleanup = Some(super::control::Cleanup(control_path));
        channel.set_nonblocking(true)?;
        let mut channel = tokio::net::UnixStream::from_std(channel)?;
        let events = self.events.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut buf = [0u8; 64];
            while matches!(channel.read(&mut buf).await, Ok(n) if n > 0) {}
            let _ = events.send(Event::PredecessorGone);
        });
        Ok(())
    }
}
