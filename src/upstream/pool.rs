//! Keep-alive connections to one upstream server: a stack of idle connections, newest
//! first, so the warmest connection is reused and the oldest ones age out. An idle
//! connection has no task: the runtime notes when its server closes it, and `take`
//! passes over the ones it closed.

use super::http1::Connection;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Idle connections, newest last. An idle connection is kept at most `idle_timeout`
/// (`upstream.idle_timeout`, 4 s by default: below the 5 s keep-alive of Node.js servers,
/// so we do not reuse a connection the server is closing at that very moment).
pub struct Pool {
    idle: Mutex<Vec<(Connection, Instant)>>,
    max_idle: usize,
    idle_timeout: Duration,
}

impl Pool {
    pub fn new(max_idle: usize, idle_timeout: Duration) -> Self {
        Pool {
            idle: Mutex::new(Vec::with_capacity(max_idle)),
            max_idle,
            idle_timeout,
        }
    }

    /// The newest idle connection that is still open, if any.
    pub fn take(&self) -> Option<Connection> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        while let Some((mut conn, since)) = idle.pop() {
            if now.duration_since(since) >= self.idle_timeout {
                // Everything below is older still.
                idle.clear();
                return None;
            }
            if conn.is_usable() {
                return Some(conn);
            }
        }
        None
    }

    /// Keeps a connection whose last exchange completed, if there is room.
    pub fn put(&self, conn: Connection) {
        if self.max_idle == 0 {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() >= self.max_idle {
            idle.remove(0);
        }
        idle.push((conn, Instant::now()));
    }
}
