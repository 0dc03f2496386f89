//! Global rate limits: one count per key in Redis for every gateway that uses it.
//!
//! One round trip per request at most: a Lua script does the whole GCRA step on the
//! Redis server, with the server's clock, so gateways on different machines agree. A
//! key refused is remembered here until it may come back, so a client hammering a
//! limited route costs no round trip at all. When Redis cannot be reached (or answers
//! slowly), the request is counted in this gateway's own table instead, and Redis is
//! tried again a second later: a limit never fails a request.

use crate::table::rate::Verdict;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

/// GCRA on the server: `KEYS[1]` the key, `ARGV` the interval and burst (microseconds,
/// requests). Returns `{allowed, remaining, reset_us, retry_after_us}`; the key expires
/// once its quota is whole again.
const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = interval * tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
if tat - now > tolerance then
  return {0, 0, tat - now, tat - now - tolerance}
end
local next = tat + interval
redis.call('SET', KEYS[1], next, 'PX', math.floor((next - now) / 1000) + 1)
return {1, math.floor((tolerance - (tat - now)) / interval), next - now, 0}
";

/// How long a request waits for Redis before it is counted here instead.
const ANSWER_WITHIN: Duration = Duration::from_millis(100);
/// After a failure, Redis is left alone this long (requests count here meanwhile).
const RETRY_AFTER_MS: u64 = 1000;
/// Refused keys remembered here at most (all forgotten when full: they are only a
/// shortcut, Redis holds the count).
const REFUSED_KEYS: usize = 10_000;

pub struct Global {
    client: redis::Client,
    script: redis::Script,
    connection: Mutex<Option<redis::aio::MultiplexedConnection>>,
    connecting: AtomicBool,
    /// Monotonic ms before which Redis is not asked.
    resting_until: AtomicU64,
    /// Key hash to the monotonic µs it may come back at.
    refused: Mutex<HashMap<u64, u64>>,
    /// Set while Redis is unreachable, shared by the workers (one log line per change).
    down: &'static AtomicBool,
    url: String,
}

impl Global {
    pub fn new(config: &crate::config::RedisConfig, down: &'static AtomicBool) -> Option<Global> {
        let url = redacted(&config.url);
        let client = match config.client() {
            Ok(client) => client,
            Err(e) => {
                tracing::error!("redis {url}: {e}: global rate limits count per gateway");
                return None;
            }
        };
        Some(Global {
            client,
            script: redis::Script::new(SCRIPT),
            connection: Mutex::new(None),
            connecting: AtomicBool::new(false),
            resting_until: AtomicU64::new(0),
            refused: Mutex::new(HashMap::new()),
            down,
            url,
        })
    }

    /// The count in Redis for `key`, or `None` when Redis did not answer in time (the
    /// caller counts here).
    pub async fn take(&self, key: u64, interval_us: u64, burst: u64) -> Option<Verdict> {
        let now_us = crate::sys::monotonic_us();
        if let Some(&until) = self.refused.lock().ok()?.get(&key) {
            if until > now_us {
                return Some(Verdict {
                    allowed: false,
                    remaining: 0,
                    reset_us: until - now_us,
                    retry_after_us: until - now_us,
                });
            }
        }
        if now_us / 1000 < self.resting_until.load(Relaxed) {
            return None;
        }
        let mut connection = self.connection().await?;
        let mut invocation = self.script.key(format!("gw:rl:{key:016x}"));
        invocation.arg(interval_us).arg(burst);
        let asked = invocation.invoke_async::<Vec<u64>>(&mut connection);
        match tokio::time::timeout(ANSWER_WITHIN, asked).await {
            Ok(Ok(answer)) if answer.len() == 4 => {
                self.reached();
                let verdict = Verdict {
                    allowed: answer[0] == 1,
                    remaining: answer[1],
                    reset_us: answer[2],
                    retry_after_us: answer[3],
                };
                if !verdict.allowed {
                    if let Ok(mut refused) = self.refused.lock() {
                        if refused.len() >= REFUSED_KEYS {
                            refused.clear();
                        }
                        refused.insert(key, now_us + verdict.retry_after_us);
                    }
                }
                Some(verdict)
            }
            Ok(Ok(answer)) => self.failed(&format!("the script answered {answer:?}")),
            Ok(Err(e)) => self.failed(&e.to_string()),
            Err(_) => self.failed("no answer within 100ms"),
        }
    }

    /// The connection, made now if there is none (by one request at a time: the others
    /// count here meanwhile).
    async fn connection(&self) -> Option<redis::aio::MultiplexedConnection> {
        if let Some(c) = self.connection.lock().ok()?.as_ref() {
            return Some(c.clone());
        }
        if self.connecting.swap(true, Relaxed) {
            return None;
        }
        let made = tokio::time::timeout(
            ANSWER_WITHIN * 2,
            self.client.get_multiplexed_async_connection(),
        )
        .await;
        self.connecting.store(false, Relaxed);
        match made {
            Ok(Ok(c)) => {
                *self.connection.lock().ok()? = Some(c.clone());
                Some(c)
            }
            Ok(Err(e)) => self.failed(&e.to_string()),
            Err(_) => self.failed("no connection within 200ms"),
        }
    }

    fn reached(&self) {
        if self.down.swap(false, Relaxed) {
            tracing::info!(
                "redis {} reachable again: global rate limits count in it",
                self.url
            );
        }
    }

    fn failed<T>(&self, why: &str) -> Option<T> {
        if let Ok(mut c) = self.connection.lock() {
            *c = None;
        }
        self.resting_until
            .store(crate::sys::monotonic_ms() + RETRY_AFTER_MS, Relaxed);
        if !self.down.swap(true, Relaxed) {
            tracing::warn!(
                "redis {} unreachable ({why}): global rate limits count per gateway until it is back",
                self.url
            );
        }
        None
    }
}

/// The URL without its password, for the log.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://…@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_stay_out_of_the_log() {
        assert_eq!(
            super::redacted("redis://user:secret@10.0.0.1:6379/0"),
            "redis://…@10.0.0.1:6379/0"
        );
        assert_eq!(
            super::redacted("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }
}
