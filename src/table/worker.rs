//! A worker process's record: who it is, and its counters.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

/// One worker process's counters.
#[repr(C, align(64))]
pub struct WorkerRecord {
    pub pid: AtomicU32,
    pub generation: AtomicU64,
    pub connections: AtomicU64,
    pub requests: AtomicU64,
    /// When the worker last proved it makes progress (monotonic ms), for the watchdog.
    pub(super) heartbeat: AtomicU64,
}

impl WorkerRecord {
    pub fn beat(&self, now_ms: u64) {
        self.heartbeat.store(now_ms, Relaxed);
    }

    pub fn last_beat(&self) -> u64 {
        self.heartbeat.load(Relaxed)
    }
}

impl WorkerRecord {
    /// Clears the record for the next worker.
    pub(super) fn clear(&self) {
        self.pid.store(0, Relaxed);
        self.generation.store(0, Relaxed);
        self.connections.store(0, Relaxed);
        self.requests.store(0, Relaxed);
        self.heartbeat.store(0, Relaxed);
    }
}
