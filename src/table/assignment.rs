//! Which table records a generation's upstreams and servers use. The supervisor hands
//! them out: an upstream or a server keeps its record, and with it its health, counters
//! and balancing state, across reloads for as long as it stays in the configuration.
//!
//! A generation's records are one list in config order: each upstream's own record,
//! then its servers' ([`per_upstream`] reads it back).

use super::layout::{SERVER_RECORDS, UPSTREAM_RECORDS};
use crate::config::{Config, UpstreamConfig};
use std::collections::BTreeMap;

/// An upstream or a server as the assignment knows it: the same upstream name, and for a
/// server the same address (the n-th time it appears there), in two configurations is
/// the same one.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RecordKey {
    Upstream(String),
    Server {
        upstream: String,
        address: String,
        occurrence: usize,
    },
}

impl RecordKey {
    fn is_upstream(&self) -> bool {
        matches!(self, RecordKey::Upstream(_))
    }
}

/// Every upstream and server of `config`, in the order of the record list a worker gets.
pub fn record_keys(config: &Config) -> Vec<RecordKey> {
    let mut keys = Vec::new();
    for upstream in &config.upstreams {
        keys.push(RecordKey::Upstream(upstream.name.clone()));
        let mut seen: Vec<&str> = Vec::new();
        for server in &upstream.servers {
            let occurrence = seen.iter().filter(|&&a| a == server.name).count();
            seen.push(&server.name);
            keys.push(RecordKey::Server {
                upstream: upstream.name.clone(),
                address: server.name.clone(),
                occurrence,
            });
        }
    }
    keys
}

/// Each upstream of `config` with its own record and its servers' records, read from a
/// generation's list. Empty when the list does not fit the config (see [`fits`]).
pub fn per_upstream<'a>(
    config: &'a Config,
    records: &'a [usize],
) -> Vec<(&'a UpstreamConfig, usize, &'a [usize])> {
    if !fits(config, records) {
        return Vec::new();
    }
    split(config, records).collect()
}

/// The list read per upstream; its length must be checked first.
fn split<'a>(
    config: &'a Config,
    mut rest: &'a [usize],
) -> impl Iterator<Item = (&'a UpstreamConfig, usize, &'a [usize])> {
    config.upstreams.iter().map(move |u| {
        let (mine, after) = rest.split_at(1 + u.servers.len());
        rest = after;
        (u, mine[0], &mine[1..])
    })
}

/// Whether `records` is a record list for `config` (what a worker checks of the list its
/// supervisor gave it).
pub fn fits(config: &Config, records: &[usize]) -> bool {
    let servers: usize = config.upstreams.iter().map(|u| u.servers.len()).sum();
    if records.len() != config.upstreams.len() + servers {
        return false;
    }
    split(config, records).all(|(_, own, servers)| {
        own < UPSTREAM_RECORDS && servers.iter().all(|&s| s < SERVER_RECORDS)
    })
}

/// Kept by the supervisor.
#[derive(Default)]
pub struct Assignments {
    generations: BTreeMap<u64, Vec<(RecordKey, usize)>>,
    /// Servers a running generation no longer has (DNS, `remove-server`): their records
    /// stay taken while requests may still hold them, and a server that comes back
    /// before they are released gets its record, and its state, again.
    leaving: Vec<(RecordKey, usize, std::time::Instant)>,
}

/// How long a server that left keeps its record at least: a request that picked it from
/// the set it started with may still count on it.
pub const LEAVING_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

/// A generation's records in config order, and those new to the table (to be reset).
pub struct Assigned {
    pub records: Vec<usize>,
    pub fresh_upstreams: Vec<usize>,
    pub fresh_servers: Vec<usize>,
}

impl Assignments {
    /// Gives `generation`'s upstreams and servers the records they have in a generation
    /// still running, and free records to the others.
    pub fn assign(&mut self, generation: u64, keys: Vec<RecordKey>) -> Result<Assigned, String> {
        let mut used_upstreams = vec![false; UPSTREAM_RECORDS];
        let mut used_servers = vec![false; SERVER_RECORDS];
        let leaving = self.leaving.iter().map(|(key, record, _)| (key, record));
        for (key, record) in self
            .generations
            .values()
            .flatten()
            .map(|(k, r)| (k, r))
            .chain(leaving)
        {
            match key.is_upstream() {
                true => used_upstreams[*record] = true,
                false => used_servers[*record] = true,
            }
        }
        let mut free_upstreams = (0..UPSTREAM_RECORDS).filter(|&r| !used_upstreams[r]);
        let mut free_servers = (0..SERVER_RECORDS).filter(|&r| !used_servers[r]);
        let mut assigned = Assigned {
            records: Vec::new(),
            fresh_upstreams: Vec::new(),
            fresh_servers: Vec::new(),
        };
        let mut entries = Vec::new();
        for key in keys {
            let known = self
                .generations
                .values()
                .rev()
                .flatten()
                .find(|(k, _)| *k == key)
                .map(|(_, record)| *record)
                .or_else(|| {
                    let (_, record, _) = self.leaving.iter().find(|(k, _, _)| *k == key)?;
                    Some(*record)
                });
            let record = match (known, key.is_upstream()) {
                (Some(record), _) => record,
                (None, true) => {
                    let record = free_upstreams.next().ok_or_else(|| {
                        format!(
                            "more than {UPSTREAM_RECORDS} upstreams across the running generations"
                        )
                    })?;
                    assigned.fresh_upstreams.push(record);
                    record
                }
                (None, false) => {
                    let record = free_servers.next().ok_or_else(|| {
                        format!("more than {SERVER_RECORDS} upstream servers across the running generations")
                    })?;
                    assigned.fresh_servers.push(record);
                    record
                }
            };
            assigned.records.push(record);
            entries.push((key, record));
        }
        self.generations.insert(generation, entries);
        Ok(assigned)
    }

    /// Gives running `generation` the servers of `keys` in place of the ones it had:
    /// those that stay keep their records, those that go are leaving.
    pub fn reassign(&mut self, generation: u64, keys: Vec<RecordKey>) -> Result<Assigned, String> {
        let old = self.generations.remove(&generation).unwrap_or_default();
        let now = std::time::Instant::now();
        let before = self.leaving.len();
        self.leaving
            .extend(old.iter().cloned().map(|(key, record)| (key, record, now)));
        match self.assign(generation, keys) {
            Ok(assigned) => {
                self.leaving
                    .retain(|(_, record, _)| !assigned.records.contains(record));
                Ok(assigned)
            }
            Err(e) => {
                self.leaving.truncate(before);
                self.generations.insert(generation, old);
                Err(e)
            }
        }
    }

    /// Frees the records of servers that left more than [`LEAVING_GRACE`] ago and that
    /// `idle` says nothing holds any more.
    pub fn release_leaving(&mut self, idle: impl Fn(usize) -> bool) {
        self.leaving.retain(|(key, record, since)| {
            key.is_upstream() || since.elapsed() < LEAVING_GRACE || !idle(*record)
        });
    }

    /// `generation`'s records, in config order.
    pub fn records(&self, generation: u64) -> Vec<usize> {
        self.generations
            .get(&generation)
            .map(|entries| entries.iter().map(|(_, record)| *record).collect())
            .unwrap_or_default()
    }

    /// `generation` no longer runs: its records may go to others.
    pub fn retire(&mut self, generation: u64) {
        self.generations.remove(&generation);
    }

    /// Every record in use by any running generation (handed to a new supervisor, which
    /// must not give those records to others).
    pub fn in_use(&self) -> Vec<(RecordKey, usize)> {
        let leaving = self
            .leaving
            .iter()
            .map(|(key, record, _)| (key.clone(), *record));
        self.generations
            .values()
            .flatten()
            .cloned()
            .chain(leaving)
            .collect()
    }

    /// Takes `entries` as what `generation` uses (the records of the supervisor this one
    /// replaces, whose workers still run).
    pub fn seed(&mut self, generation: u64, entries: Vec<(RecordKey, usize)>) {
        self.generations.insert(generation, entries);
    }

    pub fn generations(&self) -> Vec<u64> {
        self.generations.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(upstreams: &str) -> Config {
        let text = format!(
            "[[listener]]\nlisten = \"127.0.0.1:1\"\n[[route]]\nupstream = \"app\"\n{upstreams}"
        );
        crate::config::parse(std::path::Path::new("t.toml"), &text).unwrap()
    }

    #[test]
    fn upstreams_and_servers_that_stay_keep_their_record_and_freed_ones_are_reused_fresh() {
        let mut a = Assignments::default();
        let first = config(
            "[upstream.app]\nservers = [{ address = \"127.0.0.1:1\" }, { address = \"127.0.0.1:2\" }]\n\
             [upstream.api]\nservers = [{ address = \"127.0.0.1:1\" }]\n",
        );
        let one = a.assign(1, record_keys(&first)).unwrap();
        // In name order: api, its server, app, its two servers.
        assert_eq!(one.records, [0, 0, 1, 1, 2]);
        assert_eq!(
            (one.fresh_upstreams, one.fresh_servers),
            (vec![0, 1], vec![0, 1, 2])
        );
        assert_eq!(
            per_upstream(&first, &one.records)
                .into_iter()
                .map(|(u, own, servers)| (u.name.as_str(), own, servers.to_vec()))
                .collect::<Vec<_>>(),
            [("api", 0, vec![0]), ("app", 1, vec![1, 2])]
        );
        // :2 leaves app, :3 arrives, the same address twice is two servers, and a new
        // upstream gets a record of its own.
        let second = config(
            "[upstream.api]\nservers = [{ address = \"127.0.0.1:1\" }]\n\
             [upstream.app]\nservers = [{ address = \"127.0.0.1:3\" }, { address = \"127.0.0.1:1\" }, { address = \"127.0.0.1:1\" }]\n\
             [upstream.web]\nservers = [{ address = \"127.0.0.1:1\" }]\n",
        );
        let two = a.assign(2, record_keys(&second)).unwrap();
        assert_eq!(two.records, [0, 0, 1, 3, 1, 4, 2, 5]);
        assert_eq!(
            (two.fresh_upstreams, two.fresh_servers),
            (vec![2], vec![3, 4, 5])
        );
        assert!(fits(&second, &two.records) && !fits(&first, &two.records));
        // Generation 1 still drains: :2's record is not free yet.
        a.retire(1);
        let third = config("[upstream.app]\nservers = [{ address = \"127.0.0.1:2\" }]\n");
        let three = a.assign(3, record_keys(&third)).unwrap();
        assert_eq!(
            three.records,
            [1, 2],
            "free again once generation 1 is gone"
        );
        assert_eq!(three.fresh_servers, [2]);
        assert_eq!(a.generations(), [2, 3]);
    }
}
