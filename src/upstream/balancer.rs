//! Balancing policies: one small trait, one type per policy, chosen once per upstream.
//!
//! A balancer sees only weights, in-flight counts and which servers may be picked; which
//! are up, which are backups and which were already tried is decided by the caller.
//!
//! Round robin (and least_conn's tie-breaking) draws positions from one counter shared by
//! every worker process (it lives in the shared table), so the rotation is the
//! upstream's, not each worker's: two requests in a row go to two servers whichever
//! workers take them.

use crate::config::Policy;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

/// What a balancer knows of one server.
pub trait Candidate {
    fn weight(&self) -> u32;
    fn in_flight(&self) -> usize;
    /// A stable identity for hashing (the configured address).
    fn key(&self) -> &str;
}

pub trait Select {
    /// Picks one index among those for which `eligible` is true, or `None` if none is.
    fn pick<C: Candidate>(
        &self,
        servers: &[C],
        client: IpAddr,
        eligible: impl Fn(usize) -> bool,
    ) -> Option<usize>;
}

/// The policy an upstream was configured with, chosen once (no dynamic dispatch per pick).
pub enum Balancer {
    RoundRobin(SmoothWeighted),
    IpHash(ConsistentHash),
    LeastConn(LeastConn),
}

impl Balancer {
    /// `weights` of the servers in order; `rotation` the upstream's shared position.
    pub fn new(policy: Policy, weights: &[u32], rotation: &'static AtomicU64) -> Self {
        match policy {
            Policy::RoundRobin => Balancer::RoundRobin(SmoothWeighted::new(weights, rotation)),
            Policy::IpHash => Balancer::IpHash(ConsistentHash),
            Policy::LeastConn => Balancer::LeastConn(LeastConn { rotation }),
        }
    }
}

impl Select for Balancer {
    fn pick<C: Candidate>(
        &self,
        servers: &[C],
        client: IpAddr,
        eligible: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        match self {
            Balancer::RoundRobin(b) => b.pick(servers, client, eligible),
            Balancer::IpHash(b) => b.pick(servers, client, eligible),
            Balancer::LeastConn(b) => b.pick(servers, client, eligible),
        }
    }
}

/// Smooth weighted round robin (nginx's algorithm), shared by all workers: the sequence
/// nginx's algorithm produces for the weights is computed once (a 3:1 pair gives
/// `a a b a`: interleaved, never a burst longer than the weights demand), and each pick
/// takes the next position of the shared rotation. A position whose server may not be
/// picked (down, a backup, already tried) is passed over by drawing the next one, so the
/// eligible servers keep their proportions.
pub struct SmoothWeighted {
    schedule: Vec<u32>,
    rotation: &'static AtomicU64,
}

impl SmoothWeighted {
    pub fn new(weights: &[u32], rotation: &'static AtomicU64) -> Self {
        SmoothWeighted {
            schedule: smooth_schedule(weights),
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
        _servers: &[C],
        _client: IpAddr,
        eligible: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let len = self.schedule.len();
        for _ in 0..len {
            let position = self.rotation.fetch_add(1, Ordering::Relaxed) as usize % len;
            let i = self.schedule[position] as usize;
            if eligible(i) {
                return Some(i);
            }
        }
        // Other workers drew positions meanwhile: look through the whole cycle once.
        self.schedule
            .iter()
            .map(|&i| i as usize)
            .find(|&i| eligible(i))
    }
}

/// Weighted rendezvous hashing on the client address: every server gets a score from a
/// hash of (client, server) and the highest eligible score wins. When a server goes down
/// only the clients that scored it highest move; a new server takes about 1/N of clients.
pub struct ConsistentHash;

impl Select for ConsistentHash {
    fn pick<C: Candidate>(
        &self,
        servers: &[C],
        client: IpAddr,
        eligible: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let client_hash = match client {
            IpAddr::V4(ip) => fnv1a(FNV_OFFSET, &ip.octets()),
            IpAddr::V6(ip) => fnv1a(FNV_OFFSET, &ip.octets()),
        };
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

/// Fewest in-flight requests relative to weight; ties go round robin (on the shared
/// rotation) so that an idle upstream still spreads its requests.
pub struct LeastConn {
    rotation: &'static AtomicU64,
}

impl Select for LeastConn {
    fn pick<C: Candidate>(
        &self,
        servers: &[C],
        _client: IpAddr,
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
            // Compare in_flight/weight without division: a/wa < b/wb  <=>  a*wb < b*wa.
            let fewer = |b: usize| {
                (servers[i].in_flight() as u128) * u128::from(servers[b].weight())
                    < (servers[b].in_flight() as u128) * u128::from(servers[i].weight())
            };
            if best.is_none_or(fewer) {
                best = Some(i);
            }
        }
        best
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
    }
    impl Candidate for S {
        fn weight(&self) -> u32 {
            self.weight
        }
        fn in_flight(&self) -> usize {
            self.in_flight.get()
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
            })
            .collect()
    }
    const ANY: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

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

    fn client(i: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i * 7919))
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
}
