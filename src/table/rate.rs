//! Rate limit counts shared by every worker: one region per limited route, each a
//! fixed set-associative table of client keys, so the memory they take is bounded
//! whatever the number of clients.
//!
//! The count is GCRA (the generic cell rate algorithm): per key one number, the time at
//! which the key's quota is whole again (its "theoretical arrival time"). A request is let
//! in when that time is at most `burst` intervals ahead of now, and moves it one interval
//! on. A key whose time has passed is the same as a key never seen, so a slot holding one
//! is free: keys are forgotten least recently seen first, and one that is forgotten while
//! still limited is the only count ever lost.
//!
//! Each slot is one atomic word (a 16-bit tag of the key's hash and 48 bits of time), so
//! workers update it with compare-and-swap and a worker that dies holds no lock.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Limited routes a table holds (a config error beyond, see `config::limits`).
pub const RATE_REGIONS: usize = crate::config::MAX_LIMITED_ROUTES;
const BUCKETS: usize = 1024;
const WAYS: usize = 8;
/// Keys a route remembers at most.
pub const KEYS_PER_ROUTE: usize = BUCKETS * WAYS;

const TIME_BITS: u32 = 48;
const TIME_MASK: u64 = (1 << TIME_BITS) - 1;

#[repr(C)]
pub struct RateRegion {
    slots: [[AtomicU64; WAYS]; BUCKETS],
    /// Requests refused, for /metrics.
    pub refused: AtomicU64,
}

/// What the count says of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// Requests the key may still make at once.
    pub remaining: u64,
    /// Until the key's quota is whole again (microseconds).
    pub reset_us: u64,
    /// Refused: until the next request would be let in (microseconds).
    pub retry_after_us: u64,
}

/// GCRA for one request at `now` for a key whose time is `tat` (`None`: never seen, or
/// forgotten), `interval` microseconds per request, `burst` more at once: the verdict,
/// and the key's new time when the request is let in.
pub fn gcra(tat: Option<u64>, now: u64, interval: u64, burst: u64) -> (Verdict, Option<u64>) {
    let tolerance = interval * burst;
    let tat = tat.unwrap_or(now).max(now);
    if tat - now > tolerance {
        let retry_after_us = tat - now - tolerance;
        let verdict = Verdict {
            allowed: false,
            remaining: 0,
            reset_us: tat - now,
            retry_after_us,
        };
        return (verdict, None);
    }
    let next = tat + interval;
    let verdict = Verdict {
        allowed: true,
        remaining: (tolerance - (tat - now)) / interval,
        reset_us: next - now,
        retry_after_us: 0,
    };
    (verdict, Some(next))
}

impl RateRegion {
    /// Counts one request of the key hashed to `hash` at `now` (microseconds since the
    /// table's epoch, below 2^48).
    pub fn take(&self, hash: u64, now: u64, interval: u64, burst: u64) -> Verdict {
        let bucket = &self.slots[(hash as usize) % BUCKETS];
        // Tag 0 is an empty slot's: keys use 1..=65535.
        let tag = ((hash >> 48) as u16).max(1);
        let now = now & TIME_MASK;
        // A few rounds at most: each lost race means another worker moved this bucket.
        for _ in 0..16 {
            let (slot, word) = pick(bucket, tag);
            let tat = (tag_of(word) == tag).then_some(word & TIME_MASK);
            let (verdict, next) = gcra(tat, now, interval, burst);
            let Some(next) = next else {
                self.refused.fetch_add(1, Relaxed);
                return verdict;
            };
            let packed = (u64::from(tag) << TIME_BITS) | (next & TIME_MASK);
            if slot
                .compare_exchange(word, packed, Relaxed, Relaxed)
                .is_ok()
            {
                return verdict;
            }
        }
        // Contention this high on one bucket is not a client's doing: let it in.
        gcra(None, now, interval, burst).0
    }
}

fn tag_of(word: u64) -> u16 {
    (word >> TIME_BITS) as u16
}

/// The key's slot in the bucket, else the one to take for it: the one with the earliest
/// time, which is a free one (time passed) when there is one, else the key nearest to
/// being whole again.
fn pick(bucket: &[AtomicU64; WAYS], tag: u16) -> (&AtomicU64, u64) {
    let mut best: Option<(&AtomicU64, u64)> = None;
    for slot in bucket {
        let word = slot.load(Relaxed);
        if tag_of(word) == tag {
            return (slot, word);
        }
        if best.is_none_or(|(_, b)| word & TIME_MASK < b & TIME_MASK) {
            best = Some((slot, word));
        }
    }
    best.expect("a bucket has slots")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region() -> Box<RateRegion> {
        let slots = std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0)));
        Box::new(RateRegion {
            slots,
            refused: AtomicU64::new(0),
        })
    }

    #[test]
    fn burst_then_rate() {
        // 10/s, burst 2: three at once, then one every 100 ms.
        let r = region();
        let (i, b) = (100_000, 2);
        let t0 = 1_000_000;
        let v: Vec<Verdict> = (0..4).map(|_| r.take(42, t0, i, b)).collect();
        assert_eq!(
            v.iter()
                .map(|v| (v.allowed, v.remaining))
                .collect::<Vec<_>>(),
            [(true, 2), (true, 1), (true, 0), (false, 0)]
        );
        assert_eq!(v[3].retry_after_us, 100_000);
        assert!(!r.take(42, t0 + 99_999, i, b).allowed);
        assert!(r.take(42, t0 + 100_000, i, b).allowed);
        assert!(!r.take(42, t0 + 100_000, i, b).allowed);
        // Another key has its own count.
        assert!(r.take(43, t0, i, b).allowed);
        // A quiet key is whole again.
        let later = r.take(42, t0 + 10_000_000, i, b);
        assert_eq!((later.allowed, later.remaining), (true, 2));
        assert_eq!(r.refused.load(Relaxed), 3);
    }

    #[test]
    fn keys_beyond_the_table_forget_the_quiet_ones_first() {
        let r = region();
        let (i, b) = (1_000_000, 0);
        let now = 5_000_000;
        // One limited key, then many keys in its bucket over time.
        let hot = 7u64 | (100 << 48);
        assert!(r.take(hot, now, i, b).allowed);
        assert!(!r.take(hot, now, i, b).allowed);
        for n in 1..=(WAYS as u64 - 1) {
            // Same bucket (the low bits), other tags; they go quiet at once (burst 0,
            // one request each, time passes below).
            let key = hot + ((n << 48) | (n * BUCKETS as u64));
            assert!(r.take(key, now - 2 * i, i, b).allowed);
        }
        // A new key in the full bucket takes a quiet key's slot, not the limited one's.
        let newcomer = hot + ((9u64 << 48) | (9 * BUCKETS as u64));
        assert!(r.take(newcomer, now, i, b).allowed);
        assert!(
            !r.take(hot, now, i, b).allowed,
            "the limited key is remembered"
        );
    }

    /// Property: however many distinct keys come, a key at its limit is refused and the
    /// memory is the region's, fixed.
    #[test]
    fn many_keys_stay_within_the_region() {
        let r = region();
        let mut seed = 1u64;
        let now = 1_000_000;
        for _ in 0..100_000 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            r.take(seed, now, 1_000_000, 1);
        }
        assert_eq!(std::mem::size_of::<RateRegion>(), KEYS_PER_ROUTE * 8 + 8);
    }
}
