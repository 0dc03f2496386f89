//! The shared state table: one view of every upstream server and every worker for all
//! the processes of a gateway, like nginx's upstream `zone`.
//!
//! The supervisor creates it (an in-memory file mapped shared, see `sys`) before the first
//! worker and every worker inherits it. Everything in it is an atomic: workers update and
//! read it on the request path without locks, and a process that dies cannot leave a lock
//! held. The supervisor hands out the records ([`Assignments`]): a server keeps its record,
//! and with it its health and its counters, across reloads for as long as it stays in the
//! configuration.
//!
//! Concurrent updates are relaxed: two workers failing at the same instant may count one
//! failure fewer towards `max_fails`, which the passive health check tolerates; counters
//! and in-flight sums are exact.

use crate::config::Config;
use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

/// Upstream servers the table holds, over every generation still running.
pub const SERVER_RECORDS: usize = 1024;
/// Worker processes the table holds, draining ones included.
pub const WORKER_RECORDS: usize = 256;
const MAGIC: u64 = u64::from_be_bytes(*b"gwtable2");

/// The memory layout shared between processes. Only atomics, so zero-filled memory is a
/// valid (empty) table.
#[repr(C)]
pub struct TableMemory {
    magic: AtomicU64,
    servers: [ServerRecord; SERVER_RECORDS],
    workers: [WorkerRecord; WORKER_RECORDS],
    /// `[worker][server]`: what each worker has in flight on each server, so that the
    /// share of a worker that crashed can be taken out of the servers' totals.
    in_flight_by_worker: [[AtomicU32; SERVER_RECORDS]; WORKER_RECORDS],
    /// Requests by status and their duration, per upstream (at the record of its first
    /// server), for /metrics.
    upstream_requests: [RequestMetrics; SERVER_RECORDS],
    /// The same for requests that reached no upstream (no route, redirects, refusals).
    unrouted_requests: RequestMetrics,
}

/// Upper bounds (seconds) of the latency histograms' buckets; one more counts the rest.
pub const LATENCY_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A latency histogram every worker adds to: counts per bucket (not cumulative) and the
/// sum in microseconds.
#[repr(C)]
#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, took: std::time::Duration) {
        let seconds = took.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(took.as_micros() as u64, Relaxed);
    }

    /// Cumulative counts per bucket (the last is the total) and the sum in seconds, as
    /// Prometheus wants them.
    pub fn read(&self) -> ([u64; LATENCY_BUCKETS.len() + 1], f64) {
        let mut cumulative = [0; LATENCY_BUCKETS.len() + 1];
        let mut running = 0;
        for (out, bucket) in cumulative.iter_mut().zip(&self.buckets) {
            running += bucket.load(Relaxed);
            *out = running;
        }
        (cumulative, self.sum_us.load(Relaxed) as f64 / 1e6)
    }

    /// The upper bound (seconds) of the bucket that holds quantile `q`, `None` when empty.
    pub fn quantile_bound(&self, q: f64) -> Option<f64> {
        let (cumulative, _) = self.read();
        let total = cumulative[LATENCY_BUCKETS.len()];
        if total == 0 {
            return None;
        }
        let wanted = (q * total as f64).ceil() as u64;
        let bucket = cumulative.iter().position(|&c| c >= wanted)?;
        Some(LATENCY_BUCKETS[bucket.min(LATENCY_BUCKETS.len() - 1)])
    }

    fn reset(&self) {
        for bucket in &self.buckets {
            bucket.store(0, Relaxed);
        }
        self.sum_us.store(0, Relaxed);
    }
}

/// Requests of an upstream: how many per status code, and how long they took in all.
#[repr(C)]
pub struct RequestMetrics {
    /// Index `status - 100`, for 100 to 599.
    codes: [AtomicU64; 500],
    pub duration: Histogram,
}

impl RequestMetrics {
    pub fn observe(&self, status: u16, took: std::time::Duration) {
        if let Some(count) = status
            .checked_sub(100)
            .and_then(|i| self.codes.get(usize::from(i)))
        {
            count.fetch_add(1, Relaxed);
        }
        self.duration.observe(took);
    }

    /// `(status, count)` for every status seen.
    pub fn codes(&self) -> Vec<(u16, u64)> {
        (100u16..)
            .zip(&self.codes)
            .map(|(code, count)| (code, count.load(Relaxed)))
            .filter(|&(_, count)| count > 0)
            .collect()
    }

    fn reset(&self) {
        for count in &self.codes {
            count.store(0, Relaxed);
        }
        self.duration.reset();
    }
}

/// One upstream server as every process sees it. Aligned to a cache line so that
/// workers busy with neighbouring servers do not contend.
#[repr(C, align(64))]
pub struct ServerRecord {
    /// Requests in flight, summed over all workers (what `least_conn` compares).
    in_flight: AtomicU64,
    pub requests: AtomicU64,
    pub failures: AtomicU64,
    /// Passive health: failures in the window that started at `window_start`…
    fails: AtomicU32,
    /// 1 while active health checks have the server down.
    checked_down: AtomicU32,
    window_start: AtomicU64,
    /// … and until when `max_fails` of them keep the server out (monotonic ms).
    down_until: AtomicU64,
    passed_in_a_row: AtomicU32,
    failed_in_a_row: AtomicU32,
    pub checks_passed: AtomicU64,
    pub checks_failed: AtomicU64,
    /// The round-robin position of the upstream whose first server this is: every
    /// worker draws from it, so the rotation is the upstream's, not each worker's.
    rotation: AtomicU64,
    /// least_time: peak-EWMA of the time to the response head, microseconds as f64 bits…
    latency_us: AtomicU64,
    /// … and when the last sample came in (monotonic ms; 0 = never).
    latency_stamp: AtomicU64,
    /// When `in_flight` last went up from zero (monotonic ms).
    busy_since: AtomicU64,
    /// The retry budget of the upstream whose first server this is.
    pub budget: RetryBudget,
    /// Time to the response head, for /metrics.
    pub response_time: Histogram,
    /// 1 while `gatewayctl drain` has the server out of rotation.
    draining: AtomicU32,
    /// A weight set by `gatewayctl weight` (0: none)…
    weight_set: AtomicU32,
    /// … and the file's weight it replaced: a reload with another weight in the file wins.
    weight_set_over: AtomicU32,
    /// When the server last came back (health check passed again, `enable`; monotonic
    /// ms), where slow start ramps from.
    rejoined_at: AtomicU64,
}

/// How fast the peak-EWMA forgets: the weight of the old value after `t` ms is
/// `exp(-t / LATENCY_DECAY_MS)`. An idle server's average fades to the others' level in
/// `ln(ratio)` of these (from 300 ms to 0.3 ms: 7 of them), and it gets a request only
/// then: at 2 s a server that had been slow waited 14 s for its first request when fast
/// again, 1 to 3 of 550 sequential requests in 15 s. At 500 ms it is back within about
/// 3.5 s, and a server that stays slow still gets about one request per fade (its peak
/// sample resets the average, and while it has a request in flight it is not faded).
pub const LATENCY_DECAY_MS: f64 = 500.0;

/// What least_time reckons a server that has never answered and has a request in flight
/// takes (1 s): it waits for that answer before it gets more.
const UNANSWERED_BUSY_US: f64 = 1_000_000.0;

/// Retries of the last 10 s, counted in five 2 s buckets shared by all workers.
#[repr(C)]
#[derive(Default)]
pub struct RetryBudget {
    buckets: [BudgetBucket; BUDGET_BUCKETS],
}

#[repr(C)]
#[derive(Default)]
struct BudgetBucket {
    /// Which 2 s period (plus one, so zero-filled memory is no period) the counts are of.
    period: AtomicU64,
    requests: AtomicU32,
    retries: AtomicU32,
}

const BUDGET_BUCKETS: usize = 5;
const BUDGET_BUCKET_MS: u64 = 2_000;
/// However little traffic there is, this many retries per 10 s are allowed (one a second,
/// like Linkerd's minimum retries per second): failed requests on a quiet upstream are
/// still retried.
pub const BUDGET_MIN_RETRIES: u64 = 10;

impl RetryBudget {
    fn bucket(&self, now_ms: u64) -> &BudgetBucket {
        let period = now_ms / BUDGET_BUCKET_MS + 1;
        let bucket = &self.buckets[(period % BUDGET_BUCKETS as u64) as usize];
        let seen = bucket.period.load(Relaxed);
        if seen != period
            && bucket
                .period
                .compare_exchange(seen, period, Relaxed, Relaxed)
                .is_ok()
        {
            // Racing workers may lose a count or two at the turn of a period: tolerated.
            bucket.requests.store(0, Relaxed);
            bucket.retries.store(0, Relaxed);
        }
        bucket
    }

    /// Counts a request to the upstream.
    pub fn note_request(&self, now_ms: u64) {
        self.bucket(now_ms).requests.fetch_add(1, Relaxed);
    }

    /// Takes one retry from the budget if `share` of the last 10 s of requests (at least
    /// [`BUDGET_MIN_RETRIES`] when `share` > 0) allows another.
    pub fn try_retry(&self, now_ms: u64, share: f64) -> bool {
        if share <= 0.0 {
            return false;
        }
        let current = self.bucket(now_ms);
        let newest = now_ms / BUDGET_BUCKET_MS + 1;
        let (mut requests, mut retries) = (0u64, 0u64);
        for bucket in &self.buckets {
            let period = bucket.period.load(Relaxed);
            if period + (BUDGET_BUCKETS as u64) > newest {
                requests += u64::from(bucket.requests.load(Relaxed));
                retries += u64::from(bucket.retries.load(Relaxed));
            }
        }
        let allowed = ((requests as f64 * share) as u64).max(BUDGET_MIN_RETRIES);
        if retries >= allowed {
            return false;
        }
        current.retries.fetch_add(1, Relaxed);
        true
    }
}

/// One worker process's counters.
#[repr(C, align(64))]
pub struct WorkerRecord {
    pub pid: AtomicU32,
    pub generation: AtomicU64,
    pub connections: AtomicU64,
    pub requests: AtomicU64,
    /// When the worker last proved it makes progress (monotonic ms), for the watchdog.
    heartbeat: AtomicU64,
}

impl WorkerRecord {
    pub fn beat(&self, now_ms: u64) {
        self.heartbeat.store(now_ms, Relaxed);
    }

    pub fn last_beat(&self) -> u64 {
        self.heartbeat.load(Relaxed)
    }
}

impl ServerRecord {
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Relaxed)
    }

    pub fn rotation(&self) -> &AtomicU64 {
        &self.rotation
    }

    /// A new time-to-response-head sample: a slower answer than the average is taken at
    /// once (the peak), a faster one is averaged in with a weight that grows with the time
    /// since the last sample.
    pub fn record_latency(&self, sample_us: f64, now_ms: u64) {
        let last = self.latency_stamp.swap(now_ms.max(1), Relaxed);
        let old = f64::from_bits(self.latency_us.load(Relaxed));
        let new = if last == 0 || sample_us >= old {
            sample_us
        } else {
            let kept = (-(now_ms.saturating_sub(last) as f64) / LATENCY_DECAY_MS).exp();
            old * kept + sample_us * (1.0 - kept)
        };
        self.latency_us.store(new.to_bits(), Relaxed);
    }

    /// The average as the last sample left it, in microseconds (for status).
    pub fn latency_average_us(&self) -> f64 {
        f64::from_bits(self.latency_us.load(Relaxed))
    }

    /// The latency least_time reckons with now, in microseconds.
    ///
    /// An idle server's average fades towards zero while it gets no samples, so a server
    /// that was slow is tried again after a while and wins its share back if it is fast
    /// again. Once it has requests in flight it is not faded: it counts at least its
    /// average, and at least as long as it has been busy without answering, so a server
    /// that is stuck, or has never answered, gets one request at a time, not a flood.
    pub fn latency_us(&self, now_ms: u64) -> f64 {
        let last = self.latency_stamp.load(Relaxed);
        let average = f64::from_bits(self.latency_us.load(Relaxed));
        if self.in_flight() == 0 {
            let since_ms = now_ms.saturating_sub(last) as f64;
            return average * (-since_ms / LATENCY_DECAY_MS).exp();
        }
        if last == 0 {
            return UNANSWERED_BUSY_US;
        }
        let silent_since = last.max(self.busy_since.load(Relaxed));
        average.max(now_ms.saturating_sub(silent_since) as f64 * 1000.0)
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Relaxed) != 0
    }

    /// Takes the server out of rotation (`true`) or puts it back; putting it back counts
    /// as coming back, for slow start.
    pub fn set_draining(&self, draining: bool, now_ms: u64) {
        let was = self.draining.swap(u32::from(draining), Relaxed) != 0;
        if was && !draining {
            self.rejoined_at.store(now_ms, Relaxed);
        }
    }

    /// The server (re)joins now: slow start ramps from here.
    pub fn mark_rejoined(&self, now_ms: u64) {
        self.rejoined_at.store(now_ms, Relaxed);
    }

    /// The weight to balance with: one set at run time, unless the file's weight for the
    /// server has changed since (a reload read a new one).
    pub fn weight(&self, file_weight: u32) -> u32 {
        let set = self.weight_set.load(Relaxed);
        if set != 0 && self.weight_set_over.load(Relaxed) == file_weight {
            set
        } else {
            file_weight
        }
    }

    pub fn set_weight(&self, weight: u32, file_weight: u32) {
        self.weight_set_over.store(file_weight, Relaxed);
        self.weight_set.store(weight, Relaxed);
    }

    /// Slow start: the share of its weight a server gets `slow_start_ms` after it came
    /// back (health checks, the end of a `max_fails` period, `enable`), growing linearly
    /// from 1/20 to all of it. A server that never left gets all of it.
    pub fn ramp(&self, now_ms: u64, slow_start_ms: u64) -> f64 {
        if slow_start_ms == 0 {
            return 1.0;
        }
        let mut since = self.rejoined_at.load(Relaxed);
        let passive_end = self.down_until.load(Relaxed);
        if passive_end <= now_ms {
            since = since.max(passive_end);
        }
        if since == 0 {
            return 1.0;
        }
        let part = now_ms.saturating_sub(since) as f64 / slow_start_ms as f64;
        part.clamp(0.05, 1.0)
    }

    /// Up for traffic: neither health checks nor passive failures have it down.
    pub fn is_up(&self, now_ms: u64) -> bool {
        !self.checked_down() && !self.passive_down(now_ms)
    }

    pub fn checked_down(&self) -> bool {
        self.checked_down.load(Relaxed) != 0
    }

    pub fn passive_down(&self, now_ms: u64) -> bool {
        now_ms < self.down_until.load(Relaxed)
    }

    /// Passive health (nginx's max_fails/fail_timeout): `max_fails` failures within
    /// `fail_timeout` take the server out for `fail_timeout`; after that it gets traffic
    /// again and the count starts over. `max_fails = 0` turns this off. Returns true when
    /// this failure took the server down.
    pub fn record_failure(&self, now_ms: u64, max_fails: u32, fail_timeout_ms: u64) -> bool {
        self.failures.fetch_add(1, Relaxed);
        if max_fails == 0 {
            return false;
        }
        let start = self.window_start.load(Relaxed);
        let fails = if now_ms.saturating_sub(start) >= fail_timeout_ms {
            self.window_start.store(now_ms, Relaxed);
            self.fails.store(1, Relaxed);
            1
        } else {
            self.fails.fetch_add(1, Relaxed) + 1
        };
        if fails >= max_fails {
            self.fails.store(0, Relaxed);
            self.window_start.store(0, Relaxed);
            // Only the failure that takes an up server down says so: workers failing at
            // the same moment must not each report (and prolong) the same event.
            let until = self.down_until.load(Relaxed);
            return until <= now_ms
                && self
                    .down_until
                    .compare_exchange(until, now_ms + fail_timeout_ms, Relaxed, Relaxed)
                    .is_ok();
        }
        false
    }

    /// Ends a `max_fails` period now (a health check just reached the server): a server
    /// that came back in a moment is not kept out for the rest of `fail_timeout`. Slow
    /// start runs from now. True when this call ended it (one caller of many at the same
    /// moment).
    pub fn end_passive_down(&self) -> bool {
        let now = crate::sys::monotonic_ms();
        let until = self.down_until.load(Relaxed);
        until > now
            && self
                .down_until
                .compare_exchange(until, now, Relaxed, Relaxed)
                .is_ok()
    }

    pub fn record_success(&self) {
        if self.fails.load(Relaxed) != 0 {
            self.fails.store(0, Relaxed);
        }
    }

    /// Counts one active health check; `fall` failures in a row take the server down,
    /// `rise` passes in a row bring it back. Returns the new state when it changed
    /// (`Some(true)` = up again). Only the supervisor's checker writes these.
    pub fn record_check(&self, passed: bool, fall: u32, rise: u32) -> Option<bool> {
        let down = self.checked_down();
        if passed {
            self.checks_passed.fetch_add(1, Relaxed);
            let _ = self.end_passive_down();
            self.failed_in_a_row.store(0, Relaxed);
            let streak = self.passed_in_a_row.fetch_add(1, Relaxed) + 1;
            if down && streak >= rise {
                self.checked_down.store(0, Relaxed);
                self.rejoined_at.store(crate::sys::monotonic_ms(), Relaxed);
                return Some(true);
            }
        } else {
            self.checks_failed.fetch_add(1, Relaxed);
            self.passed_in_a_row.store(0, Relaxed);
            let streak = self.failed_in_a_row.fetch_add(1, Relaxed) + 1;
            if !down && streak >= fall {
                self.checked_down.store(1, Relaxed);
                return Some(false);
            }
        }
        None
    }

    /// Forgets active health (the upstream no longer has a health check).
    pub fn clear_checks(&self) {
        self.checked_down.store(0, Relaxed);
        self.passed_in_a_row.store(0, Relaxed);
        self.failed_in_a_row.store(0, Relaxed);
    }

    fn reset(&self) {
        for counter in [
            &self.in_flight,
            &self.requests,
            &self.failures,
            &self.window_start,
            &self.down_until,
            &self.checks_passed,
            &self.checks_failed,
            &self.rotation,
            &self.latency_us,
            &self.latency_stamp,
            &self.busy_since,
            &self.rejoined_at,
        ] {
            counter.store(0, Relaxed);
        }
        for flag in [&self.draining, &self.weight_set, &self.weight_set_over] {
            flag.store(0, Relaxed);
        }
        self.response_time.reset();
        for bucket in &self.budget.buckets {
            bucket.period.store(0, Relaxed);
        }
        self.fails.store(0, Relaxed);
        self.clear_checks();
    }
}

/// The table as one process holds it: mapped for the life of the process.
pub struct Table {
    memory: &'static TableMemory,
    file: File,
}

impl Table {
    /// A new, empty table (the supervisor's).
    pub fn create() -> std::io::Result<Table> {
        let file = crate::sys::shared_memory_file(std::mem::size_of::<TableMemory>())?;
        let memory = crate::sys::map_table(&file)?;
        memory.magic.store(MAGIC, Relaxed);
        Ok(Table { memory, file })
    }

    /// The supervisor's table, inherited under `fd` (a worker's).
    pub fn adopt(fd: RawFd) -> std::io::Result<Table> {
        let file = crate::sys::adopt_shared_memory_file(fd)?;
        let memory = crate::sys::map_table(&file)?;
        if memory.magic.load(Relaxed) != MAGIC {
            return Err(std::io::Error::other(format!(
                "fd {fd} is not a gateway state table"
            )));
        }
        Ok(Table { memory, file })
    }

    /// The descriptor the workers inherit.
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    pub fn server(&self, record: usize) -> &'static ServerRecord {
        &self.memory.servers[record]
    }

    pub fn worker(&self, record: usize) -> &'static WorkerRecord {
        &self.memory.workers[record]
    }

    /// Worker `record`'s handle on the table.
    pub fn share(&self, record: usize) -> WorkerShare {
        WorkerShare {
            memory: self.memory,
            worker: record,
        }
    }

    /// A fresh record for a server new to the table.
    pub fn reset_server(&self, record: usize) {
        self.server(record).reset();
        self.memory.upstream_requests[record].reset();
    }

    /// The request metrics of the upstream whose first server has `record`.
    pub fn upstream_requests(&self, record: usize) -> &'static RequestMetrics {
        &self.memory.upstream_requests[record]
    }

    pub fn unrouted_requests(&self) -> &'static RequestMetrics {
        &self.memory.unrouted_requests
    }

    /// Worker `record` is gone: takes whatever it still had in flight out of the servers'
    /// totals (a crash leaves some) and clears the record for the next worker.
    pub fn release_worker(&self, record: usize) {
        for (server, mine) in self
            .memory
            .servers
            .iter()
            .zip(&self.memory.in_flight_by_worker[record])
        {
            let left = mine.swap(0, Relaxed);
            if left != 0 {
                server.in_flight.fetch_sub(u64::from(left), Relaxed);
            }
        }
        let worker = self.worker(record);
        worker.pid.store(0, Relaxed);
        worker.generation.store(0, Relaxed);
        worker.connections.store(0, Relaxed);
        worker.requests.store(0, Relaxed);
        worker.heartbeat.store(0, Relaxed);
    }
}

/// One worker's handle on the table.
#[derive(Clone, Copy)]
pub struct WorkerShare {
    memory: &'static TableMemory,
    worker: usize,
}

impl WorkerShare {
    pub fn counters(&self) -> &'static WorkerRecord {
        &self.memory.workers[self.worker]
    }

    pub fn upstream_requests(&self, record: usize) -> &'static RequestMetrics {
        &self.memory.upstream_requests[record]
    }

    pub fn unrouted_requests(&self) -> &'static RequestMetrics {
        &self.memory.unrouted_requests
    }

    pub fn server(&self, record: usize) -> SharedServer {
        SharedServer {
            record: &self.memory.servers[record],
            mine: &self.memory.in_flight_by_worker[self.worker][record],
        }
    }
}

/// A server's record as one worker uses it: in-flight accounting goes to the total and to
/// this worker's own share of it.
#[derive(Clone, Copy)]
pub struct SharedServer {
    pub record: &'static ServerRecord,
    mine: &'static AtomicU32,
}

impl SharedServer {
    pub fn enter(&self) {
        self.mine.fetch_add(1, Relaxed);
        if self.record.in_flight.fetch_add(1, Relaxed) == 0 {
            self.record
                .busy_since
                .store(crate::sys::monotonic_ms(), Relaxed);
        }
    }

    pub fn leave(&self) {
        self.record.in_flight.fetch_sub(1, Relaxed);
        self.mine.fetch_sub(1, Relaxed);
    }
}

/// A server as the record assignment knows it: the same upstream and address (the n-th
/// time it appears there) in two configurations is the same server.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServerKey {
    upstream: String,
    address: String,
    occurrence: usize,
}

/// Every server of `config`, in config order (upstreams, then their servers): the
/// order of the record list a worker gets.
pub fn server_keys(config: &Config) -> Vec<ServerKey> {
    let mut keys: Vec<ServerKey> = Vec::new();
    for upstream in &config.upstreams {
        for server in &upstream.servers {
            let occurrence = keys
                .iter()
                .filter(|k| k.upstream == upstream.name && k.address == server.name)
                .count();
            keys.push(ServerKey {
                upstream: upstream.name.clone(),
                address: server.name.clone(),
                occurrence,
            });
        }
    }
    keys
}

/// Which server record each generation's servers use. Kept by the supervisor.
#[derive(Default)]
pub struct Assignments {
    generations: BTreeMap<u64, Vec<(ServerKey, usize)>>,
}

/// A generation's records in config order, and those new to the table (to be reset).
pub struct Assigned {
    pub records: Vec<usize>,
    pub fresh: Vec<usize>,
}

impl Assignments {
    /// Gives `generation`'s servers the records they have in a generation still running,
    /// and free records to the others.
    pub fn assign(&mut self, generation: u64, keys: Vec<ServerKey>) -> Result<Assigned, String> {
        let mut used = vec![false; SERVER_RECORDS];
        for (_, record) in self.generations.values().flatten() {
            used[*record] = true;
        }
        let mut free = (0..SERVER_RECORDS).filter(|&s| !used[s]);
        let (mut records, mut fresh, mut entries) = (Vec::new(), Vec::new(), Vec::new());
        for key in keys {
            let known = self
                .generations
                .values()
                .rev()
                .flatten()
                .find(|(k, _)| *k == key)
                .map(|(_, record)| *record);
            let record = match known {
                Some(record) => record,
                None => {
                    let record = free.next().ok_or_else(|| {
                        format!("more than {SERVER_RECORDS} upstream servers across the running generations")
                    })?;
                    fresh.push(record);
                    record
                }
            };
            records.push(record);
            entries.push((key, record));
        }
        self.generations.insert(generation, entries);
        Ok(Assigned { records, fresh })
    }

    /// `generation`'s records, in config order.
    pub fn records(&self, generation: u64) -> Vec<usize> {
        self.generations
            .get(&generation)
            .map(|entries| entries.iter().map(|(_, record)| *record).collect())
            .unwrap_or_default()
    }

    /// `generation` no longer runs: its records may go to other servers.
    pub fn retire(&mut self, generation: u64) {
        self.generations.remove(&generation);
    }

    /// Every server record in use by any running generation (handed to a new
    /// supervisor, which must not give those records to other servers).
    pub fn in_use(&self) -> Vec<(ServerKey, usize)> {
        self.generations.values().flatten().cloned().collect()
    }

    /// Takes `entries` as what `generation` uses (the records of the supervisor this one
    /// replaces, whose workers still run).
    pub fn seed(&mut self, generation: u64, entries: Vec<(ServerKey, usize)>) {
        self.generations.insert(generation, entries);
    }

    pub fn generations(&self) -> Vec<u64> {
        self.generations.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Table {
        Table::create().unwrap()
    }

    #[test]
    fn max_fails_within_fail_timeout_takes_a_server_down_for_fail_timeout() {
        let t = table();
        let s = t.server(0);
        assert!(!s.record_failure(1_000, 3, 10_000));
        assert!(!s.record_failure(2_000, 3, 10_000));
        assert!(s.is_up(2_000));
        assert!(s.record_failure(3_000, 3, 10_000));
        assert!(!s.is_up(3_000));
        assert!(!s.is_up(12_999));
        assert!(s.is_up(13_000));
        // Counting starts over once it is back.
        assert!(!s.record_failure(13_100, 3, 10_000));
        assert_eq!(s.failures.load(Relaxed), 4);
    }

    #[test]
    fn only_the_failure_that_takes_the_server_down_reports_it() {
        let t = table();
        let s = t.server(0);
        assert!(s.record_failure(1_000, 1, 10_000));
        // Other workers' requests that were in flight fail too.
        assert!(!s.record_failure(1_001, 1, 10_000));
        assert!(!s.record_failure(5_000, 1, 10_000));
        assert!(s.is_up(11_000), "late failures do not prolong the event");
        assert!(s.record_failure(11_000, 1, 10_000), "a new event");
    }

    #[test]
    fn failures_spread_wider_than_fail_timeout_do_not_add_up() {
        let t = table();
        let s = t.server(0);
        assert!(!s.record_failure(1_000, 2, 1_000));
        assert!(!s.record_failure(2_500, 2, 1_000));
        assert!(s.record_failure(2_600, 2, 1_000));
    }

    #[test]
    fn a_success_clears_the_count_and_zero_max_fails_disables() {
        let t = table();
        let s = t.server(0);
        s.record_failure(1_000, 2, 1_000);
        s.record_success();
        assert!(!s.record_failure(1_100, 2, 1_000));
        let off = t.server(1);
        for now in 0..10 {
            assert!(!off.record_failure(now, 0, 1_000));
        }
        assert!(off.is_up(10));
    }

    #[test]
    fn health_checks_need_fall_failures_to_go_down_and_rise_passes_to_come_back() {
        let t = table();
        let s = t.server(0);
        assert_eq!(s.record_check(false, 2, 3), None);
        assert_eq!(s.record_check(true, 2, 3), None, "a pass breaks the streak");
        assert_eq!(s.record_check(false, 2, 3), None);
        assert!(s.is_up(0));
        assert_eq!(s.record_check(false, 2, 3), Some(false));
        assert!(!s.is_up(0));
        assert_eq!(s.record_check(false, 2, 3), None, "already down");
        assert_eq!(s.record_check(true, 2, 3), None);
        assert_eq!(s.record_check(true, 2, 3), None);
        assert_eq!(s.record_check(true, 2, 3), Some(true));
        assert!(s.is_up(0));
        assert_eq!(s.checks_passed.load(Relaxed), 4);
        assert_eq!(s.checks_failed.load(Relaxed), 4);
    }

    #[test]
    fn in_flight_is_summed_over_workers_and_a_crashed_workers_share_is_taken_out() {
        let t = table();
        let (a, b) = (t.share(0), t.share(1));
        a.server(5).enter();
        a.server(5).enter();
        b.server(5).enter();
        assert_eq!(t.server(5).in_flight(), 3);
        b.server(5).leave();
        // Worker 0 dies with two requests in flight.
        t.release_worker(0);
        assert_eq!(t.server(5).in_flight(), 0);
        b.server(5).enter();
        t.release_worker(0);
        assert_eq!(
            t.server(5).in_flight(),
            1,
            "releasing twice takes nothing more"
        );
    }

    #[test]
    fn a_worker_sees_the_supervisors_table_through_the_inherited_file() {
        let t = table();
        // What a worker inherits is the same open file under another number.
        let inherited = std::os::fd::IntoRawFd::into_raw_fd(t.file.try_clone().unwrap());
        let other = Table::adopt(inherited).unwrap();
        t.server(3).requests.fetch_add(7, Relaxed);
        assert_eq!(other.server(3).requests.load(Relaxed), 7);
        assert!(Table::adopt(1).is_err());
    }

    #[test]
    fn peak_ewma_takes_a_slow_answer_at_once_and_averages_fast_ones_in() {
        let t = table();
        let s = t.server(0);
        assert_eq!(s.latency_us(1_000), 0.0, "no samples: tried first");
        s.record_latency(1_000.0, 1_000);
        assert_eq!(s.latency_us(1_000), 1_000.0);
        s.record_latency(50_000.0, 1_010);
        assert_eq!(s.latency_us(1_010), 50_000.0, "the peak counts at once");
        // Fast answers bring it down, faster the longer the gap between samples.
        s.record_latency(1_000.0, 1_020);
        let after_one = s.latency_us(1_020);
        assert!(after_one > 49_000.0, "{after_one}");
        for ms in (1_020..5_020).step_by(10) {
            s.record_latency(1_000.0, ms);
        }
        let after_4s = s.latency_us(5_010);
        assert!(after_4s < 8_000.0, "back near 1 ms after 4 s: {after_4s}");
    }

    #[test]
    fn latency_fades_while_idle_but_not_while_requests_hang() {
        let t = table();
        let s = t.server(0);
        s.record_latency(20_000.0, 1_000);
        let faded = s.latency_us(9_000);
        assert!(faded < 400.0, "8 s without samples: {faded}");
        let share = t.share(0).server(0);
        share.enter();
        let now = crate::sys::monotonic_ms();
        assert!(
            s.latency_us(now) >= 20_000.0,
            "tried again: counts its average until it answers"
        );
        assert!(
            s.latency_us(now + 60_000) >= 60_000_000.0,
            "busy for a minute without an answer"
        );
        share.leave();
        let fresh = t.server(1);
        t.share(0).server(1).enter();
        assert_eq!(
            fresh.latency_us(now),
            UNANSWERED_BUSY_US,
            "never answered, one in flight: wait for it"
        );
    }

    #[test]
    fn slow_start_ramps_from_a_twentieth_to_all_after_a_server_comes_back() {
        let t = table();
        let s = t.server(0);
        assert_eq!(s.ramp(50_000, 10_000), 1.0, "never left");
        s.set_draining(true, 1_000);
        assert!(s.draining());
        s.set_draining(false, 100_000);
        assert_eq!(s.ramp(100_000, 10_000), 0.05);
        assert!((s.ramp(105_000, 10_000) - 0.5).abs() < 1e-9);
        assert_eq!(s.ramp(110_000, 10_000), 1.0);
        assert_eq!(s.ramp(100_000, 0), 1.0, "no slow_start");
        // The end of a max_fails period is a return too.
        let p = t.server(1);
        assert!(p.record_failure(200_000, 1, 10_000));
        assert!(!p.is_up(205_000));
        assert!((p.ramp(212_000, 10_000) - 0.2).abs() < 1e-9);
    }

    #[test]
    fn a_weight_set_at_run_time_holds_until_the_file_says_otherwise() {
        let t = table();
        let s = t.server(0);
        assert_eq!(s.weight(3), 3);
        s.set_weight(10, 3);
        assert_eq!(
            s.weight(3),
            10,
            "a reload with the same file weight keeps it"
        );
        assert_eq!(s.weight(5), 5, "a new weight in the file wins");
    }

    #[test]
    fn histograms_and_status_counts_add_up_as_prometheus_reads_them() {
        let t = table();
        let m = t.upstream_requests(3);
        m.observe(200, std::time::Duration::from_micros(800));
        m.observe(200, std::time::Duration::from_millis(30));
        m.observe(503, std::time::Duration::from_secs(20));
        m.observe(0, std::time::Duration::ZERO); // no status: only the duration
        assert_eq!(m.codes(), [(200, 2), (503, 1)]);
        let (buckets, sum) = m.duration.read();
        assert_eq!(buckets[0], 2, "0 and 0.8 ms are under 1 ms");
        assert_eq!(buckets[5], 3, "30 ms under 50 ms");
        assert_eq!(buckets[LATENCY_BUCKETS.len() - 1], 3, "20 s is over 10 s");
        assert_eq!(buckets[LATENCY_BUCKETS.len()], 4, "the total");
        assert!((sum - 20.0308).abs() < 1e-9, "{sum}");
        assert_eq!(m.duration.quantile_bound(0.5), Some(0.001));
        assert_eq!(m.duration.quantile_bound(0.75), Some(0.05));
        assert_eq!(
            m.duration.quantile_bound(0.99),
            Some(10.0),
            "past the last bound"
        );
        assert_eq!(t.server(9).response_time.quantile_bound(0.99), None);
        t.reset_server(3);
        assert!(m.codes().is_empty());
    }

    #[test]
    fn the_retry_budget_allows_its_share_of_the_last_ten_seconds() {
        let t = table();
        let b = &t.server(0).budget;
        for _ in 0..BUDGET_MIN_RETRIES {
            assert!(b.try_retry(1_000, 0.2), "the minimum on a quiet upstream");
        }
        assert!(!b.try_retry(1_000, 0.2));
        assert!(!b.try_retry(1_000, 0.0) && !t.server(1).budget.try_retry(0, 0.0));
        for _ in 0..100 {
            b.note_request(3_000);
        }
        let granted = (0..100).filter(|_| b.try_retry(3_500, 0.2)).count();
        assert_eq!(
            granted as u64,
            20 - BUDGET_MIN_RETRIES,
            "20% of 100, 3 used"
        );
        // Ten seconds on, the old requests and retries are forgotten.
        assert_eq!(
            (0..10).filter(|_| b.try_retry(14_000, 0.2)).count() as u64,
            BUDGET_MIN_RETRIES
        );
    }

    fn keys(config_servers: &[(&str, &str)]) -> Vec<ServerKey> {
        let mut keys: Vec<ServerKey> = Vec::new();
        for (upstream, address) in config_servers {
            let occurrence = keys
                .iter()
                .filter(|k| k.upstream == *upstream && k.address == *address)
                .count();
            keys.push(ServerKey {
                upstream: upstream.to_string(),
                address: address.to_string(),
                occurrence,
            });
        }
        keys
    }

    #[test]
    fn servers_that_stay_keep_their_record_and_freed_records_are_reused_fresh() {
        let mut a = Assignments::default();
        let first = a
            .assign(1, keys(&[("app", "h:1"), ("app", "h:2"), ("api", "h:1")]))
            .unwrap();
        assert_eq!(first.records, [0, 1, 2]);
        assert_eq!(first.fresh, [0, 1, 2]);
        // h:2 leaves, h:3 arrives, the same address twice is two servers.
        let second = a
            .assign(
                2,
                keys(&[
                    ("api", "h:1"),
                    ("app", "h:3"),
                    ("app", "h:1"),
                    ("app", "h:1"),
                ]),
            )
            .unwrap();
        assert_eq!(second.records, [2, 3, 0, 4]);
        assert_eq!(second.fresh, [3, 4]);
        // Generation 1 still drains: h:2's record is not free yet.
        a.retire(1);
        let third = a.assign(3, keys(&[("app", "h:2")])).unwrap();
        assert_eq!(third.records, [1], "free again once generation 1 is gone");
        assert_eq!(third.fresh, [1]);
        assert_eq!(a.records(2), [2, 3, 0, 4]);
        assert_eq!(a.generations(), [2, 3]);
    }
}
