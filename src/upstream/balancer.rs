//! Balancing policies: one small trait, one type per policy, chosen once per upstream.
//!
//! A balancer sees only weights, in-flight counts, latencies and which servers may be
//! picked; which are up, which are backups and which were already tried is decided by the
//! caller, and so is what a hashing policy hashes (the client address, a header, ...).
//!
//! Round robin (and least_conn's tie-breaking) draws positions from one counter shared by
//! every worker process (it lives in the shared table), so the rotation is the
//! upstream's, not each worker's: two requests in a row go to two servers whichever
//! workers take them.

use crate::config::Policy;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// What a balancer knows of one server.
pub trait Candidate {
    /// The weight now: the file's, or one set at run time.
    fn weight(&self) -> u32;
    /// Slow start: the part of its weight the server gets now, in (0, 1].
    fn ramp(&self) -> f64 {
        1.0
    }
    fn in_flight(&self) -> usize;
    /// The latency least_time reckons with, in microseconds (see the shared table).
    fn latency_us(&self) -> f64;
    /// A stable identity for hashing (the configured address).
    fn key(&self) -> &str;
}

pub trait Select {
    /// Picks one index among those for which `eligible` is true, or `None` if none is.
    /// `affinity` is the hash of what a hashing policy keeps together (`None` when the
    /// request has no such key).
    fn pick<C: Candidate>(
        &self,
        servers: &[C],
        affinity: Option<u64>,
        eligible: impl Fn(usize) -> bool,
    ) -> Option<usize>;
}

/// The policy an upstream was configured with, chosen once (no dynamic dispatch per pick).
pub enum Balancer {
    RoundRobin(SmoothWeighted),
    /// ip_hash and hash; requests without a key go round robin.
    ConsistentHash(SmoothWeighted),
    LeastConn(LeastConn),
    LeastTime(LeastTime),
}

impl Balancer {
    /// `weights` of the servers in order; `rotation` the upstream's shared position.
    pub fn new(policy: Policy, weights: &[u32], rotation: &'static AtomicU64) -> Self {
        let round_robin = || SmoothWeighted::new(weights, rotation);
        match policy {
            Policy::RoundRobin => Balancer::RoundRobin(round_robin()),
            Policy::IpHash | Policy::Hash => Balancer::ConsistentHash(round_robin()),
            Policy::LeastConn => Balancer::LeastConn(LeastConn { rotation }),
            Policy::LeastTime => Balancer::LeastTime(LeastTime),
        }
    }
}

impl Select for Balancer {
    fn pick<C: Candidate>(
        &self,
        servers: &[C],
        affinity: Option<u64>,
        eligible: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        match self {
            Balancer::RoundRobin(b) => b.pick(servers, affinity, eligible),
            Balancer::ConsistentHash(fallback) => match affinity {
                Some(_) => ConsistentHash.pick(servers, affinity, eligible),
                None => fallback.pick(servers, affinity, eligible),
            },
            Balancer::LeastConn(b) => b.pick(servers, affinity, eligible),
            Balancer::LeastTime(b) => b.pick(servers, affinity, eligible),
        }
    }
}

/// The hash a hashing policy gives a key (client address bytes, a header value, ...).
pub fn affinity_hash(key: &[u8]) -> u64 {
    fnv1a(FNV_OFFSET, key)
}

/// Smooth weighted round robin (nginx's algorithm), shared by all workers: the sequence
/// nginx's algorithm produces for the weights is computed once (a 3:1 pair gives
/// `a a b a`: interleaved, never a burst longer than the weights demand), and each pick
/// takes the next position of the shared rotation. A position whose server may not be
/// picked (down, a backup, already tried) is passed over by drawing the next one, so the
/// eligible servers keep their proportions.
///
/// A weight set at run time makes the worker compute the sequence again (on its next
/// pick); slow start takes a position of a ramping server only with the probability of its
/// ramp, so it gets that part of its share.
pub struct SmoothWeighted {
    /// The weights the schedule was computed for, and the schedule. Locked only for the
    /// length of a pick, in one worker thread: never contended.
    schedule: Mutex<(Vec<u32>, Vec<u32>)>,
    rotation: &'static AtomicU64,
}

impl SmoothWeighted {
    pub fn new(weights: &[u32], rotation: &'static AtomicU64) -> Self {
        SmoothWeighted {
            schedule: Mutex::new((weights.to_vec(), smooth_schedule(weights))),
            rotation,
        }
    }
}

/// One cycle of nginx's smooth weighted round robin over `weights` (reduced by their
/// greatest common divisor): each step adds every weight to its server's score, takes the
/// highest score and subtracts the total from it.
fn smooth_schedule(weights: &[u32]) -> Vec<u32> {
    let divisor = weights.iter().copied().fold(0, gcd).max(1);
    let weights: Vec<i64> = weights.iter().map(|&w| i64::from(w / divisor)).collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, w) in weights.iter().enumerate() {
            current[i] += w;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        schedule.push(best as u32);
    }
    schedule
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl Select for SmoothWeighted {
    fn pick<C: Candidate>(
        &self,
        servers: &[C],
        _affinity: Option<u64>,
        eligible: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let mut held = self.schedule.lock().unwrap_or_else(|p| p.into_inner());
        let (weights, schedule) = &mut *held;
        let changed = weights.len() != servers.len()
            || servers
                .iter()
                .zip(weights.iter())
                .any(|(s, &w)| s.weight() != w);
        if changed {
            *weights = servers.iter().map(Candidate::weight).collect();
            *schedule = smooth_schedule(weights);
        }
        let len = schedule.len();
        // Ramping servers pass up some of their positions: draw up to two cycles.
        for _ in 0..2 * len {
            let position = self.rotation.fetch_add(1, Ordering::Relaxed) as usize % len;
            let i = schedule[position] as usize;
            if eligible(i) {
                let ramp = servers.get(i).map_or(1.0, Candidate::ramp);
                if ramp >= 1.0 || fastrand::f64() < ramp {
                    return Some(i);
                }
            }
        }
        // Other workers drew positions meanwhile: look through the whole cycle once.
        schedule.iter().map(|&i| i as usize).find(|&i| eligible(i))
    }
}

/// Weighted rendezvous hashing of the affinity key: every server gets a score from a
/// hash of (key, server) and the highest eligible score wins. When a server goes down
/// only the keys that scored it highest move; a new server takes about 1/N of keys.
pub struct ConsistentHash;

impl Select for ConsistentHash {
    fn pick<C: Candidate>(
        &self,
        servers: &[C],
        affinity: Option<u64>,
        eligible: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let client_hash = affinity.unwrap_or(FNV_OFFSET);
        let mut best: Option<(usize, f64)> = None;
        for (i, server) in servers.iter().enumerate() {
            if !eligible(i) {
                continue;
            }
            let h = mix(fnv1a(client_hash, server.key().as_bytes()));
            // Map to (0, 1) and take -w / ln(u): the weighted rendezvous score.
            let unit = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            let score = -f64::from(server.weight()) / unit.ln();
            if best.is_none_or(|(_, s)| score > s) {
                best = Some((i, score));
            }
        }
        best.map(|(i, _)| i)
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// The splitmix64 finalizer: FNV alone leaves the high bits poorly mixed.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// In-flight requests relative to the weight a server has now (slow start included).
fn load<C: Candidate>(server: &C) -> f64 {
    server.in_flight() as f64 / (f64::from(server.weight()) * server.ramp())
}

/// Fewest in-flight requests relative to weight; ties go round robin (on the shared
/// rotation) so that an idle upstream still spreads its requests.
pub struct LeastConn {
    rotation: &'static AtomicU64,
}

impl Select for LeastConn {
    fn pick<C: Candidate>(
        &self,
        servers: &[C],
        _affinity: Option<u64>,
        eligible: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let n = servers.len();
        if n == 0 {
            return None;
        }
        let start = self.rotation.fetch_add(1, Ordering::Relaxed) as usize % n;
        let mut best: Option<usize> = None;
        for offset in 0..n {
            let i = (start + offset) % n;
            if !eligible(i) {
                continue;
            }
            let fewer = |b: usize| load(&servers[i]) < load(&servers[b]);
            if best.is_none_or(fewer) {
                best = Some(i);
            }
        }
        best
    }
}

/// Latency-aware power of two choices: two different eligible servers drawn at random in
/// proportion to their weights, and the one with the lower `latency * (in_flight + 1) /
/// weight` taken. Drawing two rather than scanning for the minimum keeps every worker
/// from piling onto the same server between two updates of the shared figures.
pub struct LeastTime;

/// least_time counts two costs as equal when they differ by at most this many
/// microseconds…
const TIE_US: f64 = 500.0;
/// … or by at most this share of the larger one.
const TIE_SHARE: f64 = 0.25;

impl LeastTime {
    fn cost<C: Candidate>(server: &C) -> f64 {
        server.latency_us() * (server.in_flight() as f64 + 1.0)
            / (f64::from(server.weight()) * server.ramp())
    }
}

/// One eligible index drawn in proportion to weight, `skip` excluded.
fn weighted_draw<C: Candidate>(
    servers: &[C],
    eligible: &impl Fn(usize) -> bool,
    skip: Option<usize>,
) -> Option<usize> {
    let usable = |i: usize| Some(i) != skip && eligible(i);
    let total: u64 = (0..servers.len())
        .filter(|&i| usable(i))
        .map(|i| u64::from(servers[i].weight()))
        .sum();
    if total == 0 {
        return None;
    }
    let mut ticket = fastrand::u64(0..total);
    for (i, server) in servers.iter().enumerate() {
        if !usable(i) {
            continue;
        }
        let weight = u64::from(server.weight());
        if ticket < weight {
            return Some(i);
        }
        ticket -= weight;
    }
    None
}

impl Select for LeastTime {
    fn pick<C: Candidate>(
        &self,
        servers: &[C],
        _affinity: Option<u64>,
        eligible: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let first = weighted_draw(servers, &eligible, None)?;
        let Some(second) = weighted_draw(servers, &eligible, Some(first)) else {
            return Some(first);
        };
        let (cost_first, cost_second) = (Self::cost(&servers[first]), Self::cost(&servers[second]));
        // Costs this close are a tie, which the first (random, weighted) draw breaks:
        // sub-millisecond noise alone must not hand one of two equal servers every
        // request of a sequential client for as long as the other's last sample fades.
        let tie =
            (cost_first - cost_second).abs() <= TIE_US.max(TIE_SHARE * cost_first.max(cost_second));
        if !tie && cost_second < cost_first {
            Some(second)
        } else {
            Some(first)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    struct S {
        key: String,
        weight: u32,
        in_flight: Cell<usize>,
        latency_us: Cell<f64>,
    }
    impl Candidate for S {
        fn weight(&self) -> u32 {
            self.weight
        }
        fn in_flight(&self) -> usize {
            self.in_flight.get()
        }
        fn latency_us(&self) -> f64 {
            self.latency_us.get()
        }
        fn key(&self) -> &str {
            &self.key
        }
    }
    fn servers(weights: &[u32]) -> Vec<S> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| S {
                key: format!("10.0.0.{i}:80"),
                weight,
                in_flight: Cell::new(0),
                latency_us: Cell::new(0.0),
            })
            .collect()
    }
    const ANY: Option<u64> = None;

    fn rotation() -> &'static AtomicU64 {
        Box::leak(Box::new(AtomicU64::new(0)))
    }

    #[test]
    fn smooth_schedule_is_nginxs_sequence() {
        assert_eq!(smooth_schedule(&[3, 1]), [0, 0, 1, 0]);
        assert_eq!(smooth_schedule(&[5, 1, 1]), [0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(
            smooth_schedule(&[300, 100]),
            [0, 0, 1, 0],
            "reduced by the gcd"
        );
        assert_eq!(smooth_schedule(&[1, 1, 1]), [0, 1, 2]);
    }

    #[test]
    fn smooth_weighted_interleaves_three_to_one() {
        let s = servers(&[3, 1]);
        let b = SmoothWeighted::new(&[3, 1], rotation());
        let picks: Vec<usize> = (0..400)
            .map(|_| b.pick(&s, ANY, |_| true).unwrap())
            .collect();
        for window in picks.chunks(4) {
            assert_eq!(window.iter().filter(|&&i| i == 0).count(), 3, "{picks:?}");
        }
        let longest_run = picks
            .chunk_by(|a, b| a == b)
            .map(<[usize]>::len)
            .max()
            .unwrap();
        assert!(longest_run <= 3, "{picks:?}");
    }

    #[test]
    fn smooth_weighted_skips_ineligible_and_keeps_the_others_proportions() {
        let s = servers(&[2, 1, 1]);
        let b = SmoothWeighted::new(&[2, 1, 1], rotation());
        let picks: Vec<usize> = (0..300)
            .map(|_| b.pick(&s, ANY, |i| i != 1).unwrap())
            .collect();
        assert!(!picks.contains(&1));
        assert_eq!(
            picks.iter().filter(|&&i| i == 0).count(),
            200,
            "2:1 stays 2:1"
        );
        assert_eq!(b.pick(&s, ANY, |_| false), None);
    }

    #[test]
    fn workers_sharing_the_rotation_take_turns() {
        let s = servers(&[1, 1]);
        let shared = rotation();
        let (one, two) = (
            SmoothWeighted::new(&[1, 1], shared),
            SmoothWeighted::new(&[1, 1], shared),
        );
        let picks: Vec<usize> = (0..6)
            .map(|n| {
                let worker = if n % 3 == 0 { &one } else { &two };
                worker.pick(&s, ANY, |_| true).unwrap()
            })
            .collect();
        assert_eq!(picks, [0, 1, 0, 1, 0, 1]);
    }

    fn client(i: u32) -> Option<u64> {
        Some(affinity_hash(&(0x0a00_0000 + i * 7919).to_be_bytes()))
    }

    #[test]
    fn hash_is_sticky_and_moves_only_clients_of_a_down_server() {
        let s = servers(&[1, 1, 1]);
        let b = ConsistentHash;
        let before: Vec<usize> = (0..3000)
            .map(|c| b.pick(&s, client(c), |_| true).unwrap())
            .collect();
        let again: Vec<usize> = (0..3000)
            .map(|c| b.pick(&s, client(c), |_| true).unwrap())
            .collect();
        assert_eq!(before, again);
        for server in 0..3 {
            let share = before.iter().filter(|&&p| p == server).count();
            assert!(
                (800..1200).contains(&share),
                "server {server} got {share} of 3000"
            );
        }
        let after: Vec<usize> = (0..3000)
            .map(|c| b.pick(&s, client(c), |i| i != 1).unwrap())
            .collect();
        for (was, now) in before.iter().zip(&after) {
            if *was != 1 {
                assert_eq!(was, now, "a client of an up server moved");
            }
        }
    }

    #[test]
    fn hash_adding_a_fourth_server_moves_about_a_quarter() {
        let three = servers(&[1, 1, 1]);
        let four = servers(&[1, 1, 1, 1]);
        let b = ConsistentHash;
        let moved = (0..4000)
            .filter(|&c| b.pick(&three, client(c), |_| true) != b.pick(&four, client(c), |_| true))
            .count();
        assert!((800..1200).contains(&moved), "{moved} of 4000 moved");
    }

    #[test]
    fn hash_respects_weights() {
        let s = servers(&[3, 1]);
        let heavy = (0..4000)
            .filter(|&c| ConsistentHash.pick(&s, client(c), |_| true) == Some(0))
            .count();
        assert!((2800..3200).contains(&heavy), "{heavy} of 4000");
    }

    #[test]
    fn least_conn_prefers_fewest_relative_to_weight_and_rotates_ties() {
        let s = servers(&[1, 1, 2]);
        let b = LeastConn {
            rotation: rotation(),
        };
        let picks: Vec<usize> = (0..3).map(|_| b.pick(&s, ANY, |_| true).unwrap()).collect();
        let mut sorted = picks.clone();
        sorted.sort();
        assert_eq!(sorted, vec![0, 1, 2], "ties should rotate: {picks:?}");
        s[0].in_flight.set(1);
        s[1].in_flight.set(1);
        s[2].in_flight.set(1); // 1/2 is less loaded than 1/1
        assert_eq!(b.pick(&s, ANY, |_| true), Some(2));
        s[2].in_flight.set(3); // 3/2 is more than 1/1
        assert_ne!(b.pick(&s, ANY, |_| true), Some(2));
    }

    #[test]
    fn hash_without_a_key_goes_round_robin() {
        let s = servers(&[1, 1, 1]);
        let b = Balancer::new(Policy::Hash, &[1, 1, 1], rotation());
        let picks: Vec<usize> = (0..3)
            .map(|_| b.pick(&s, None, |_| true).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 2]);
        let keyed = b.pick(&s, client(7), |_| true);
        assert!((0..20).all(|_| b.pick(&s, client(7), |_| true) == keyed));
    }

    #[test]
    fn least_time_sends_a_slow_server_little_and_tries_an_unsampled_one() {
        let s = servers(&[1, 1, 1]);
        s[0].latency_us.set(1_000.0);
        s[1].latency_us.set(1_000.0);
        s[2].latency_us.set(10_000.0); // ten times slower
        let b = LeastTime;
        let mut counts = [0usize; 3];
        for _ in 0..3000 {
            counts[b.pick(&s, ANY, |_| true).unwrap()] += 1;
        }
        assert_eq!(counts[2], 0, "the slow one loses every draw: {counts:?}");
        assert!(counts[0] > 1200 && counts[1] > 1200, "{counts:?}");
        // Requests in flight make a fast server costlier: 1 ms x 11 > 10 ms x 1.
        s[0].in_flight.set(10);
        s[1].in_flight.set(10);
        assert!((0..50).any(|_| b.pick(&s, ANY, |_| true) == Some(2)));
        s[0].in_flight.set(0);
        s[1].in_flight.set(0);
        s[2].latency_us.set(0.0); // no samples yet
        assert!((0..50).any(|_| b.pick(&s, ANY, |_| true) == Some(2)));
        assert_eq!(b.pick(&s, ANY, |i| i == 1), Some(1));
        assert_eq!(b.pick(&s, ANY, |_| false), None);
    }

    /// Costs within half a millisecond or a quarter of each other are a tie, broken by
    /// the random draw: equal servers share even when their last samples differ a little.
    #[test]
    fn least_time_shares_between_servers_whose_costs_are_close() {
        let s = servers(&[1, 1]);
        s[0].latency_us.set(300.0);
        s[1].latency_us.set(700.0);
        let ones = (0..2000)
            .filter(|_| LeastTime.pick(&s, ANY, |_| true) == Some(1))
            .count();
        assert!((800..1200).contains(&ones), "{ones} of 2000");
        s[0].latency_us.set(40_000.0);
        s[1].latency_us.set(52_000.0);
        let ones = (0..2000)
            .filter(|_| LeastTime.pick(&s, ANY, |_| true) == Some(1))
            .count();
        assert!((800..1200).contains(&ones), "{ones} of 2000");
        s[1].latency_us.set(60_000.0); // half again as slow: no tie
        assert!((0..200).all(|_| LeastTime.pick(&s, ANY, |_| true) == Some(0)));
    }

    #[test]
    fn least_time_draws_in_proportion_to_weight() {
        let s = servers(&[3, 1]);
        s[0].latency_us.set(10_000.0);
        s[1].latency_us.set(10_000.0);
        // Two servers are always both drawn: the weight divides the cost.
        assert!((0..100).all(|_| LeastTime.pick(&s, ANY, |_| true) == Some(0)));
        s[0].in_flight.set(5); // 10 ms x 6 / 3 > 10 ms x 1 / 1
        assert_eq!(LeastTime.pick(&s, ANY, |_| true), Some(1));
        let three = servers(&[3, 1, 1]);
        let firsts = (0..4000)
            .filter(|_| weighted_draw(&three, &|_| true, None) == Some(0))
            .count();
        assert!(
            (2100..2700).contains(&firsts),
            "{firsts} of 4000 drawn first"
        );
    }
}
