//! Worker processes as the supervisor runs them: starting one on a seat (its argv, the
//! sockets and table it inherits, the first messages), watching its channel and its
//! exit, restarting a seat whose worker died with growing delays, killing a worker that
//! stopped making progress, and covering a seat that has no serving worker.

use super::{Event, Supervisor, WATCHDOG_TICK};
use crate::protocol::{FromWorker, ToWorker, WorkerArgs};
use crate::table;
use std::io::Write;
use std::process::Stdio;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

/// A worker that ran this long before dying starts its seat's back-off afresh.
const STABLE_AFTER: Duration = Duration::from_secs(10);
const FIRST_RESTART_DELAY: Duration = Duration::from_millis(100);
const MAX_RESTART_DELAY: Duration = Duration::from_secs(10);

/// The running program's image, whatever is at its path on disk now: a descriptor opened
/// on `/proc/self/exe` (the image, deleted or not) and kept for the process's life, named
/// as `/proc/self/fd/N`. (Executing `/proc/self/exe` itself would do as well, but under
/// valgrind that names valgrind; opening it gives the program's own file.)
fn own_program() -> std::io::Result<&'static str> {
    static PROGRAM: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if let Some(path) = PROGRAM.get() {
        return Ok(path);
    }
    let image = std::fs::File::open("/proc/self/exe")?;
    let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&image));
    // Open for as long as the process runs: every worker is started from it.
    std::mem::forget(image);
    Ok(PROGRAM.get_or_init(|| path))
}

/// The name workers show in `ps`: the supervisor's own argv[0].
fn program_name() -> std::ffi::OsString {
    std::env::args_os()
        .next()
        .unwrap_or_else(|| "gateway".into())
}

pub(super) struct WorkerProc {
    pub pid: u32,
    /// Its place in the generation, which decides the listening sockets it accepts on.
    pub seat: usize,
    /// Its record in the shared table.
    pub record: usize,
    pub generation: u64,
    pub started: Instant,
    commands: tokio::net::unix::OwnedWriteHalf,
    kill: mpsc::UnboundedSender<()>,
    pub ready: bool,
    pub draining: bool,
    /// Set when the watchdog killed it, so its exit is reported as such.
    pub stuck: bool,
}

impl WorkerProc {
    pub async fn send(&mut self, message: &ToWorker) {
        let _ = self.commands.write_all(&message.encode()).await;
    }

    /// SIGKILL now. Works any number of times, whatever was asked before.
    pub fn kill_now(&self) {
        let _ = self.kill.send(());
    }

    /// SIGKILL after `delay`, unless it exited by then.
    pub fn kill_after(&self, delay: Duration) {
        let (kill, pid) = (self.kill.clone(), self.pid);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if kill.send(()).is_ok() {
                tracing::warn!(
                    pid,
                    "worker did not finish within shutdown_timeout: killing it"
                );
            }
        });
    }
}

#[derive(Default, Clone, Copy)]
pub(super) struct Backoff {
    crashes: u32,
}

impl Supervisor {
    /// Starts a worker of the current generation on `seat`.
    pub(super) fn spawn(&mut self, seat: usize) -> std::io::Result<WorkerProc> {
        let record = (0..table::WORKER_RECORDS)
            .find(|&t| {
                !self.workers.iter().any(|w| w.record == t) && !self.foreign_workers.contains(&t)
            })
            .ok_or_else(|| {
                std::io::Error::other(format!(
                    "more than {} worker processes at once",
                    table::WORKER_RECORDS
                ))
            })?;
        self.table.release_worker(record);
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        // Every seat's sockets, so that this worker can cover a seat whose worker is gone.
        let sockets = self.sockets.all();
        let mut fds = Vec::new();
        for socket in &sockets {
            fds.push(crate::sys::inheritable(socket)?);
        }
        let args = WorkerArgs {
            seat,
            generation: self.generation,
            fds,
            table_fd: self.table.fd(),
            record,
            records: self.assignments.records(self.generation),
        };
        // The supervisor's own program, even after a package upgrade renamed another file
        // over its path (the binary now on disk is started by `upgrade` alone).
        let spawned = tokio::process::Command::new(own_program()?)
            .arg0(program_name())
            .arg("worker")
            .arg("-c")
            .arg(&self.config_path)
            .args(args.to_args())
            .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .spawn();
        // Only workers being started may inherit the sockets.
        for socket in &sockets {
            socket2::SockRef::from(*socket).set_cloexec(true)?;
        }
        let mut child = spawned?;
        let pid = child.id().unwrap_or(0);
        let counters = self.table.worker(record);
        counters.pid.store(pid, Relaxed);
        counters.generation.store(self.generation, Relaxed);
        counters.beat(crate::sys::monotonic_ms());

        let mut ours = ours;
        ours.write_all(&ToWorker::Tickets(self.tickets.clone()).encode())?;
        ours.write_all(&ToWorker::Dns(self.config.answers.clone()).encode())?;
        ours.write_all(&ToWorker::Runtime(self.runtime.clone()).encode())?;
        ours.write_all(&ToWorker::Apps(self.app_servers.clone()).encode())?;
        let acme = ToWorker::Acme(self.acme_serial, self.acme_state.clone());
        ours.write_all(&acme.encode())?;
        ours.write_all(&ToWorker::Config(self.config_text.clone()).encode())?;
        ours.set_nonblocking(true)?;
        let (read, commands) = tokio::net::UnixStream::from_std(ours)?.into_split();

        let (kill, mut killed) = mpsc::unbounded_channel::<()>();
        let events = self.events.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(read).lines();
            let mut channel_open = true;
            loop {
                tokio::select! {
                    line = lines.next_line(), if channel_open => match line {
                        Ok(Some(line)) => match FromWorker::parse(&line) {
                            Some(message) => {
                                let _ = events.send(Event::Worker { pid, message });
                            }
                            None => tracing::warn!(pid, "unknown message from a worker: {line:?}"),
                        },
                        Ok(None) | Err(_) => channel_open = false,
                    },
                    Some(()) = killed.recv() => {
                        let _ = child.start_kill();
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
        tracing::info!(pid, seat, generation = self.generation, "worker started");
        Ok(WorkerProc {
            pid,
            seat,
            record,
            generation: self.generation,
            started: Instant::now(),
            commands,
            kill,
            ready: false,
            draining: false,
            stuck: false,
        })
    }

    pub(super) fn on_exit(&mut self, pid: u32, status: std::process::ExitStatus) {
        let Some(index) = self.workers.iter().position(|w| w.pid == pid) else {
            return;
        };
        let worker = self.workers.swap_remove(index);
        self.table.release_worker(worker.record);
        self.acme_held(pid, 0);
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
        let backoff = &mut self.backoff[worker.seat];
        if worker.started.elapsed() >= STABLE_AFTER {
            backoff.crashes = 0;
        }
        backoff.crashes += 1;
        let delay = restart_delay(backoff.crashes);
        let how = if worker.stuck {
            "was killed by the watchdog".to_string()
        } else {
            format!("exited unexpectedly ({status})")
        };
        tracing::error!(
            pid,
            seat = worker.seat,
            "worker {how} after {:.1}s; restarting in {delay:?} ({} crash(es) in a row)",
            worker.started.elapsed().as_secs_f64(),
            backoff.crashes
        );
        self.schedule_respawn(worker.seat, delay);
    }

    fn schedule_respawn(&self, seat: usize, delay: Duration) {
        let (events, generation) = (self.events.clone(), self.generation);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = events.send(Event::Respawn { seat, generation });
        });
    }

    pub(super) fn respawn(&mut self, seat: usize, generation: u64) {
        let occupied = self
            .workers
            .iter()
            .any(|w| w.seat == seat && w.generation == self.generation && !w.draining);
        if self.stopping
            || generation != self.generation
            || occupied
            || seat >= self.config.gateway.workers
        {
            return;
        }
        match self.spawn(seat) {
            Ok(worker) => self.workers.push(worker),
            Err(e) => {
                let backoff = &mut self.backoff[seat];
                backoff.crashes += 1;
                let delay = restart_delay(backoff.crashes);
                tracing::error!(
                    seat,
                    "cannot start a worker: {e}; trying again in {delay:?}"
                );
                self.schedule_respawn(seat, delay);
            }
        }
    }

    pub(super) fn kill_all(&mut self) {
        for w in &self.workers {
            w.kill_now();
        }
    }

    /// Generations with no worker left free their server records (the current one
    /// stays).
    pub(super) fn retire_finished_generations(&mut self) {
        for generation in self.assignments.generations() {
            // The replaced supervisor's records stay taken until it has exited.
            let predecessor = generation == super::upgrade::PREDECESSOR && self.predecessor_running;
            if generation != self.generation
                && !predecessor
                && !self.workers.iter().any(|w| w.generation == generation)
            {
                self.assignments.retire(generation);
            }
        }
    }

    /// The watchdog: kills every worker whose heartbeat is older than `worker_watchdog`
    /// (stopped, spinning or blocked: its sockets' connections would wait forever). Its
    /// exit then restarts the seat, and another worker covers the seat meanwhile.
    pub(super) fn check_progress(&mut self) {
        let now = crate::sys::monotonic_ms();
        // If the supervisor itself did not run for a while (the whole process group was
        // stopped), every heartbeat looks old: start judging afresh.
        if now.saturating_sub(self.last_watchdog_tick) > 4 * WATCHDOG_TICK.as_millis() as u64 {
            self.watching_since = now;
        }
        self.last_watchdog_tick = now;
        let Some(limit) = self.config.gateway.worker_watchdog else {
            return;
        };
        for w in self.workers.iter_mut().filter(|w| !w.stuck) {
            let last = self.table.worker(w.record).last_beat();
            let silent = now.saturating_sub(last.max(self.watching_since));
            if silent >= limit.as_millis() as u64 {
                tracing::error!(
                    pid = w.pid,
                    seat = w.seat,
                    generation = w.generation,
                    "worker made no progress for {:.1}s (stopped, spinning or blocked): killing it (worker_watchdog = {limit:?})",
                    silent as f64 / 1000.0
                );
                w.stuck = true;
                w.kill_now();
            }
        }
    }

    /// Makes sure every seat of the current generation is accepted on: a seat without a
    /// serving worker (crashed and waiting out its back-off, killed by the watchdog,
    /// still starting) is given to a serving worker, which accepts on the seat's sockets
    /// too until the seat's own worker serves again. Without this, the connections the
    /// kernel queues on such a seat's sockets would wait for a worker that may be
    /// seconds away.
    pub(super) async fn arrange_cover(&mut self) {
        let (generation, stopping) = (self.generation, self.stopping);
        let serving = |w: &WorkerProc| {
            w.generation == generation && w.ready && !w.draining && !w.stuck && !stopping
        };
        let seats = self.config.gateway.workers;
        let served: Vec<bool> = (0..seats)
            .map(|seat| self.workers.iter().any(|w| w.seat == seat && serving(w)))
            .collect();
        let mut messages = Vec::new();
        let covered = std::mem::take(&mut self.covered);
        for (seat, pid) in covered {
            let coverer_serves = self.workers.iter().any(|w| w.pid == pid && serving(w));
            let seat_served = served.get(seat).copied().unwrap_or(true);
            if coverer_serves && !seat_served {
                self.covered.insert(seat, pid);
            } else if coverer_serves {
                tracing::info!(seat, "seat serves again: worker {pid} stops covering it");
                messages.push((pid, ToWorker::Uncover(seat)));
            }
        }
        for seat in (0..seats).filter(|s| !served[*s]) {
            if self.covered.contains_key(&seat) {
                continue;
            }
            let coverer = self
                .workers
                .iter()
                .filter(|w| serving(w))
                .min_by_key(|w| self.covered.values().filter(|&&p| p == w.pid).count())
                .map(|w| w.pid);
            let Some(pid) = coverer else {
                break;
            };
            tracing::info!(seat, "seat has no serving worker: worker {pid} covers it");
            self.covered.insert(seat, pid);
            messages.push((pid, ToWorker::Cover(seat)));
        }
        for (pid, message) in messages {
            if let Some(w) = self.workers.iter_mut().find(|w| w.pid == pid) {
                w.send(&message).await;
            }
        }
    }
}

/// 100 ms, 200 ms, 400 ms, … up to 10 s.
fn restart_delay(crashes: u32) -> Duration {
    let factor = 1u32 << crashes.saturating_sub(1).min(16);
    (FIRST_RESTART_DELAY * factor).min(MAX_RESTART_DELAY)
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
