//! The memory layout all the processes of a gateway share. Only atomics, so zero-filled
//! memory is a valid (empty) table; `sys` maps it, and nothing here needs `sys`.

use super::metrics::RequestMetrics;
use super::rate::{RateRegion, RATE_REGIONS};
use super::server::ServerRecord;
use super::upstream::UpstreamRecord;
use super::worker::WorkerRecord;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};

/// Upstreams the table holds, over every generation still running.
pub const UPSTREAM_RECORDS: usize = 256;
/// Upstream servers the table holds, over every generation still running.
pub const SERVER_RECORDS: usize = 1024;
/// Worker processes the table holds, draining ones included.
pub const WORKER_RECORDS: usize = 256;
/// Says the memory is a table of this layout: a table of another layout (an upgrade
/// from a binary that lays it out otherwise) is refused. The layout only grows at its
/// end (zero-filled memory is an empty record): a binary that adds fields there keeps the
/// magic, and grows an older gateway's table when it adopts it on `upgrade`.
pub const MAGIC: u64 = u64::from_be_bytes(*b"gwtable3");

#[repr(C)]
pub struct TableMemory {
    pub magic: AtomicU64,
    pub upstreams: [UpstreamRecord; UPSTREAM_RECORDS],
    pub servers: [ServerRecord; SERVER_RECORDS],
    pub workers: [WorkerRecord; WORKER_RECORDS],
    /// `[worker][server]`: what each worker has in flight on each server, so that the
    /// share of a worker that crashed can be taken out of the servers' totals.
    pub in_flight_by_worker: [[AtomicU32; SERVER_RECORDS]; WORKER_RECORDS],
    /// Requests that reached no upstream (no route, redirects, refusals), for /metrics.
    pub unrouted_requests: RequestMetrics,
    /// Rate limits: the monotonic microsecond their times count from, the key that
    /// client keys are hashed with (random: a client cannot aim at another's slot), and a
    /// region for each limited route.
    pub rate_epoch_us: AtomicU64,
    pub rate_hash_key: [AtomicU64; 2],
    pub rates: [RateRegion; RATE_REGIONS],
    /// Set while the workers find Redis unreachable (global limits count per gateway).
    pub redis_down: AtomicBool,
    /// Answers of each cached route (the how-manyth with `cache`) by outcome.
    pub cache_outcomes: [[AtomicU64; CACHE_OUTCOMES.len()]; CACHED_ROUTES],
    /// Bytes of cache entries the workers completed: the supervisor counts the entries on
    /// disk only when these could have taken them past `max_size`.
    pub cache_written: AtomicU64,
}

/// Routes with `cache` the table counts for.
pub const CACHED_ROUTES: usize = 64;
/// What a cached route's answer was, as `/metrics` labels it.
pub const CACHE_OUTCOMES: [&str; 6] =
    ["hit", "stale", "revalidated", "miss", "collapsed", "bypass"];
