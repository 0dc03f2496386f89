//! The shared state table: one view of every upstream, upstream server and worker for
//! all the processes of a gateway, like nginx's upstream `zone`.
//!
//! The supervisor creates it (an in-memory file mapped shared, see `sys`) before the first
//! worker and every worker inherits it. Everything in it is an atomic: workers update and
//! read it on the request path without locks, and a process that dies cannot leave a lock
//! held. The supervisor hands out the records (`assignment`).
//!
//! Concurrent updates are relaxed: two workers failing at the same instant may count one
//! failure fewer towards `max_fails`, which the passive health check tolerates; counters
//! and in-flight sums are exact.
//!
//! ```text
//! layout.rs      the shared memory: upstream, server and worker records, and limits
//! upstream.rs    an upstream's own record: round-robin position, retry budget, metrics
//! server.rs      a server's record: in flight, counters, latency, slow start, weight, drain
//! health.rs      passive (max_fails) and active (checks) health of a server
//! worker.rs      a worker's record: pid, generation, counters, heartbeat
//! metrics.rs     latency histograms and requests by status
//! rate.rs        rate limit counts: a bounded region of client keys per limited route
//! assignment.rs  which records a generation's upstreams and servers use
//! ```

pub mod assignment;
mod health;
pub mod layout;
pub mod metrics;
pub mod rate;
pub mod server;
pub mod upstream;
pub mod worker;

pub use assignment::{Assignments, RecordKey};
pub use layout::{CACHED_ROUTES, CACHE_OUTCOMES, SERVER_RECORDS, UPSTREAM_RECORDS, WORKER_RECORDS};
pub use metrics::{quantile, Histogram, RequestMetrics, LATENCY_BUCKETS};
pub use server::{ServerRecord, LATENCY_DECAY_MS};
pub use upstream::{RetryBudget, UpstreamRecord, BUDGET_MIN_RETRIES};
pub use worker::WorkerRecord;

use layout::{TableMemory, MAGIC};
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

/// The table as one process holds it: mapped for the life of the process.
pub struct Table {
    records: Records,
    file: File,
}

/// The records the supervisor and the workers read alike; [`Table`] and [`WorkerShare`]
/// both hand them out (`Deref`), so each accessor is written once.
#[derive(Clone, Copy)]
pub struct Records(&'static TableMemory);

impl Records {
    pub fn upstream(&self, record: usize) -> &'static UpstreamRecord {
        &self.0.upstreams[record]
    }

    pub fn unrouted_requests(&self) -> &'static RequestMetrics {
        &self.0.unrouted_requests
    }

    /// The rate limit counts of limited route `region` (the how-manyth with a limit).
    pub fn rate_region(&self, region: usize) -> &'static rate::RateRegion {
        &self.0.rates[region]
    }

    /// Bytes of cache entries completed so far (by every worker).
    pub fn cache_written(&self) -> &'static AtomicU64 {
        &self.0.cache_written
    }

    /// The answer counts of cached route `slot` (the how-manyth with `cache`).
    pub fn cache_outcomes(
        &self,
        slot: usize,
    ) -> &'static [AtomicU64; layout::CACHE_OUTCOMES.len()] {
        &self.0.cache_outcomes[slot]
    }
}

impl std::ops::Deref for Table {
    type Target = Records;
    fn deref(&self) -> &Records {
        &self.records
    }
}

impl std::ops::Deref for WorkerShare {
    type Target = Records;
    fn deref(&self) -> &Records {
        &self.records
    }
}

impl Table {
    /// A new, empty table (the supervisor's).
    pub fn create() -> std::io::Result<Table> {
        let file = crate::sys::shared_memory_file(std::mem::size_of::<TableMemory>())?;
        let memory = crate::sys::map_table(&file)?;
        memory.magic.store(MAGIC, Relaxed);
        set_rate_clock_and_key(memory)?;
        Ok(Table {
            records: Records(memory),
            file,
        })
    }

    /// The supervisor's table, inherited under `fd` (a worker's, or a new supervisor's
    /// on `upgrade`). A table of this layout made by an older binary is shorter (the
    /// layout grows at its end): its file is grown to this layout's size, the new part
    /// zero-filled, which is empty records.
    pub fn adopt(fd: RawFd) -> std::io::Result<Table> {
        let file = crate::sys::adopt_shared_memory_file(fd)?;
        let mut magic = [0u8; 8];
        let is_table = std::os::unix::fs::FileExt::read_exact_at(&file, &mut magic, 0).is_ok()
            && u64::from_ne_bytes(magic) == MAGIC;
        if !is_table {
            return Err(std::io::Error::other(format!(
                "fd {fd} is not a gateway state table"
            )));
        }
        let size = std::mem::size_of::<TableMemory>() as u64;
        if file.metadata()?.len() < size {
            file.set_len(size)?;
        }
        let memory = crate::sys::map_table(&file)?;
        // A table from before rate limits: give it a hash key no client knows.
        if memory.rate_hash_key.iter().all(|k| k.load(Relaxed) == 0) {
            set_rate_clock_and_key(memory)?;
        }
        Ok(Table {
            records: Records(memory),
            file,
        })
    }

    /// The descriptor the workers inherit.
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    pub fn server(&self, record: usize) -> &'static ServerRecord {
        &self.records.0.servers[record]
    }

    pub fn worker(&self, record: usize) -> &'static WorkerRecord {
        &self.records.0.workers[record]
    }

    /// Worker `record`'s handle on the table.
    pub fn share(&self, record: usize) -> WorkerShare {
        WorkerShare {
            records: self.records,
            worker: record,
        }
    }

    /// Fresh records for the upstreams and servers new to the table.
    pub fn reset_fresh(&self, assigned: &assignment::Assigned) {
        for &record in &assigned.fresh_upstreams {
            self.upstream(record).reset();
        }
        for &record in &assigned.fresh_servers {
            self.server(record).reset();
        }
    }

    /// Whether the workers find Redis unreachable.
    pub fn redis_down(&self) -> bool {
        self.records.0.redis_down.load(Relaxed)
    }

    /// Worker `record` is gone: takes whatever it still had in flight out of the servers'
    /// totals (a crash leaves some) and clears the record for the next worker.
    pub fn release_worker(&self, record: usize) {
        for (server, mine) in self
            .records
            .0
            .servers
            .iter()
            .zip(&self.records.0.in_flight_by_worker[record])
        {
            let left = mine.swap(0, Relaxed);
            if left != 0 {
                server.in_flight.fetch_sub(u64::from(left), Relaxed);
            }
        }
        self.worker(record).clear();
    }
}

/// Rate limit times count from now (so they fit their 48 bits for years), and client
/// keys are hashed with a key no client knows.
fn set_rate_clock_and_key(memory: &TableMemory) -> std::io::Result<()> {
    memory
        .rate_epoch_us
        .store(crate::sys::monotonic_us().saturating_sub(1), Relaxed);
    let mut key = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
        .map_err(|_| std::io::Error::other("no randomness for the rate limit key"))?;
    for (word, bytes) in memory.rate_hash_key.iter().zip(key.chunks(8)) {
        word.store(
            u64::from_le_bytes(bytes.try_into().expect("8 bytes")),
            Relaxed,
        );
    }
    Ok(())
}

/// One worker's handle on the table.
#[derive(Clone, Copy)]
pub struct WorkerShare {
    records: Records,
    worker: usize,
}

impl WorkerShare {
    pub fn counters(&self) -> &'static WorkerRecord {
        &self.records.0.workers[self.worker]
    }

    /// Microseconds since the table's rate epoch, and the key to hash client keys with.
    pub fn rate_clock(&self) -> u64 {
        crate::sys::monotonic_us().saturating_sub(self.records.0.rate_epoch_us.load(Relaxed))
    }

    pub fn redis_down(&self) -> &'static std::sync::atomic::AtomicBool {
        &self.records.0.redis_down
    }

    pub fn rate_hash_key(&self) -> (u64, u64) {
        (
            self.records.0.rate_hash_key[0].load(Relaxed),
            self.records.0.rate_hash_key[1].load(Relaxed),
        )
    }

    pub fn server(&self, record: usize) -> SharedServer {
        SharedServer {
            record: &self.records.0.servers[record],
            mine: &self.records.0.in_flight_by_worker[self.worker][record],
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

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Table {
        Table::create().unwrap()
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

    /// An older binary's table is this layout without its last fields (rate limits): an
    /// upgrade adopts it, grown, with what the old one held kept and a rate key set.
    #[test]
    fn an_older_binarys_shorter_table_is_grown_on_adoption() {
        let old_len = std::mem::offset_of!(TableMemory, rate_epoch_us);
        let file = crate::sys::shared_memory_file(old_len).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, &MAGIC.to_ne_bytes(), 0).unwrap();
        // The old gateway counted 7 requests on server record 3.
        let requests = std::mem::offset_of!(TableMemory, servers)
            + 3 * std::mem::size_of::<ServerRecord>()
            + std::mem::offset_of!(ServerRecord, requests);
        std::os::unix::fs::FileExt::write_all_at(&file, &7u64.to_ne_bytes(), requests as u64)
            .unwrap();
        let fd = std::os::fd::IntoRawFd::into_raw_fd(file.try_clone().unwrap());
        let adopted = Table::adopt(fd).unwrap();
        assert_eq!(
            file.metadata().unwrap().len(),
            std::mem::size_of::<TableMemory>() as u64
        );
        assert_ne!(adopted.share(0).rate_hash_key(), (0, 0));
        assert_eq!(adopted.server(3).requests.load(Relaxed), 7, "kept");
        assert_eq!(
            adopted.rate_region(0).refused.load(Relaxed),
            0,
            "new and empty"
        );
        // A file that is not a table is refused, and not grown.
        let other = crate::sys::shared_memory_file(64).unwrap();
        let fd = std::os::fd::IntoRawFd::into_raw_fd(other.try_clone().unwrap());
        assert!(Table::adopt(fd).is_err());
        assert_eq!(other.metadata().unwrap().len(), 64);
    }

    #[test]
    fn histograms_and_status_counts_add_up_as_prometheus_reads_them() {
        let t = table();
        let m = &t.upstream(3).requests;
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
        t.upstream(3).reset();
        assert!(m.codes().is_empty());
    }
}
