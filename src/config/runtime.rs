//! Servers changed at run time (`gatewayctl add-server` and `remove-server`): kept by the
//! supervisor apart from the file, laid over the file's servers at every reload for as long
//! as their upstream exists, and handed to the workers and to an upgraded supervisor.

use super::{Config, ServerConfig, ServerSource};
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// Every upstream's run-time changes, by upstream name.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RuntimeServers(pub BTreeMap<String, RuntimeChanges>);

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RuntimeChanges {
    /// Servers added, in the order they were.
    pub added: Vec<AddedServer>,
    /// Servers of the file (written or found by name) taken out, by address.
    pub removed: Vec<SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AddedServer {
    pub addr: SocketAddr,
    pub weight: u32,
    pub backup: bool,
}

impl RuntimeServers {
    /// Adds `server` to `upstream` of `config`: a server of the file removed earlier comes
    /// back (with the file's weight), another becomes a run-time server.
    pub fn add(
        &mut self,
        config: &Config,
        upstream: &str,
        server: AddedServer,
    ) -> Result<(), String> {
        let running = find(config, upstream)?;
        if running
            .iter()
            .any(|s| s.addr == server.addr && !s.unresolved)
        {
            return Err(format!("{} is already a server of {upstream}", server.addr));
        }
        if !(1..=1000).contains(&server.weight) {
            return Err(format!("weight {}: must be from 1 to 1000", server.weight));
        }
        let changes = self.0.entry(upstream.to_string()).or_default();
        let before = changes.removed.len();
        changes.removed.retain(|&a| a != server.addr);
        if changes.removed.len() == before {
            changes.added.push(server);
        }
        Ok(())
    }

    /// Takes the server at `addr` out of `upstream` of `config`.
    pub fn remove(
        &mut self,
        config: &Config,
        upstream: &str,
        addr: SocketAddr,
    ) -> Result<(), String> {
        let running = find(config, upstream)?;
        let Some(server) = running.iter().find(|s| s.addr == addr && !s.unresolved) else {
            return Err(format!("{addr} is not a server of {upstream}"));
        };
        let app = server.entry.as_deref().unwrap_or_default();
        let changes = self.0.entry(upstream.to_string()).or_default();
        match server.source {
            ServerSource::Runtime => changes.added.retain(|s| s.addr != addr),
            ServerSource::File | ServerSource::Dns => changes.removed.push(addr),
            ServerSource::App => {
                return Err(format!(
                    "{addr} is an instance of {app}: the gateway runs it (`gatewayctl restart` replaces its instances)"
                ))
            }
        }
        Ok(())
    }

    /// Lays the changes over `config`'s servers. Changes of an upstream the config no
    /// longer has are forgotten (and named in the warnings).
    pub fn apply(&mut self, config: &mut Config) {
        self.0.retain(|name, changes| {
            let Some(upstream) = config.upstreams.iter_mut().find(|u| &u.name == name) else {
                config.warnings.push(format!(
                    "upstream {name} is gone: its servers added or removed at run time are forgotten"
                ));
                return false;
            };
            upstream.servers.retain(|s| !changes.removed.contains(&s.addr));
            for added in &changes.added {
                if upstream.servers.iter().any(|s| s.addr == added.addr) {
                    continue;
                }
                upstream.servers.push(ServerConfig {
                    name: added.addr.to_string(),
                    entry: None,
                    unresolved: false,
                    addr: added.addr,
                    weight: added.weight,
                    backup: added.backup,
                    source: ServerSource::Runtime,
                });
            }
            !(changes.added.is_empty() && changes.removed.is_empty())
        });
    }
}

fn find<'a>(config: &'a Config, upstream: &str) -> Result<&'a [ServerConfig], String> {
    config
        .upstreams
        .iter()
        .find(|u| u.name == upstream)
        .map(|u| u.servers.as_slice())
        .ok_or_else(|| format!("no upstream {upstream:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        let text = "[[listener]]\nlisten = \"127.0.0.1:1\"\n[[route]]\nupstream = \"app\"\n\
                    [upstream.app]\nservers = [{ address = \"127.0.0.1:1\" }, { address = \"127.0.0.1:2\" }]\n";
        crate::config::parse(std::path::Path::new("t.toml"), text).unwrap()
    }

    fn addrs(config: &Config) -> Vec<(String, ServerSource)> {
        config.upstreams[0]
            .servers
            .iter()
            .map(|s| (s.name.clone(), s.source))
            .collect()
    }

    #[test]
    fn added_and_removed_servers_lay_over_the_file_and_undo_each_other() {
        let mut runtime = RuntimeServers::default();
        let base = config();
        let added = |port: u16| AddedServer {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            weight: 1,
            backup: false,
        };
        runtime.add(&base, "app", added(3)).unwrap();
        assert!(
            runtime.add(&base, "app", added(1)).is_err(),
            "already there"
        );
        assert!(runtime.add(&base, "nope", added(4)).is_err());
        runtime
            .remove(&base, "app", "127.0.0.1:1".parse().unwrap())
            .unwrap();
        assert!(runtime
            .remove(&base, "app", "127.0.0.1:9".parse().unwrap())
            .is_err());
        let mut now = config();
        runtime.apply(&mut now);
        use ServerSource::*;
        assert_eq!(
            addrs(&now),
            [
                ("127.0.0.1:2".into(), File),
                ("127.0.0.1:3".into(), Runtime)
            ]
        );
        // Removing the run-time server forgets it; adding the file's server back undoes
        // its removal.
        runtime
            .remove(&now, "app", "127.0.0.1:3".parse().unwrap())
            .unwrap();
        runtime.add(&now, "app", added(1)).unwrap();
        let mut again = config();
        runtime.apply(&mut again);
        assert_eq!(addrs(&again), addrs(&config()));
        assert_eq!(runtime, RuntimeServers::default());
    }

    #[test]
    fn the_changes_of_an_upstream_that_is_gone_are_forgotten() {
        let mut runtime = RuntimeServers::default();
        runtime.0.insert("old".into(), RuntimeChanges::default());
        runtime
            .0
            .get_mut("old")
            .unwrap()
            .removed
            .push("127.0.0.1:1".parse().unwrap());
        let mut c = config();
        runtime.apply(&mut c);
        assert!(runtime.0.is_empty());
        assert!(c
            .warnings
            .iter()
            .any(|w| w.contains("upstream old is gone")));
    }
}
