//! Keeps the cache within `max_size`: the supervisor adds up the entries on disk and, when
//! they take more, removes the least recently used (a hit marks an entry used) until they
//! take 90% of it. Workers never evict: one process decides. Listing a large cache costs,
//! so it is listed when the bytes the workers completed since (a count in the shared
//! table) could have taken it past `max_size`, and once a minute whatever happens (purges
//! and replaced entries make the count an overestimate; the minute keeps the gauge true).

use super::status::Snapshot;
use crate::proxy::cache::entry;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

const EVERY: Duration = Duration::from_secs(2);
const AT_LEAST_EVERY: Duration = Duration::from_secs(60);

/// The bytes the entries take, as last counted (for `/metrics`).
pub type Stored = Arc<AtomicU64>;

pub async fn keep_in_size(
    view: watch::Receiver<Arc<Snapshot>>,
    written: &'static AtomicU64,
    stored: Stored,
) {
    // What the last listing found, the count of completed bytes then, and when it was.
    let mut last: Option<(u64, u64, tokio::time::Instant)> = None;
    loop {
        tokio::time::sleep(EVERY).await;
        let Some(cache) = view.borrow().config.cache.clone() else {
            continue;
        };
        let now_written = written.load(Relaxed);
        if let Some((bytes, then_written, at)) = last {
            let at_most = bytes + now_written.saturating_sub(then_written);
            if at_most <= cache.max_size && at.elapsed() < AT_LEAST_EVERY {
                continue;
            }
        }
        let counted = tokio::task::spawn_blocking(move || evict(&cache.dir, cache.max_size)).await;
        if let Ok(bytes) = counted {
            stored.store(bytes, Relaxed);
            last = Some((bytes, now_written, tokio::time::Instant::now()));
        }
    }
}

/// Removes least recently used entries while they take more than `max_size`; what they
/// take then.
fn evict(dir: &std::path::Path, max_size: u64) -> u64 {
    let mut listed = entry::list(dir);
    let mut total: u64 = listed.iter().map(|l| l.size).sum();
    if total <= max_size {
        return total;
    }
    let target = max_size / 10 * 9;
    listed.sort_by_key(|l| l.used);
    let mut removed = 0;
    for l in listed {
        if total <= target {
            break;
        }
        if std::fs::remove_file(&l.path).is_ok() {
            total -= l.size;
            removed += 1;
        }
    }
    tracing::info!("cache: {removed} least recently used entries removed ({total} bytes kept)");
    total
}
