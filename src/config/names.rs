//! Server entries by name: what a name resolved to (the answers every process shares),
//! how it is looked up, and `[gateway] resolver`.

use super::{dns, Validator};
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};

/// What each server entry by name resolved to: `"app:3000"` -> its addresses, and
/// `"srv:_http._tcp.app"` -> its targets' addresses with the records' ports and weights.
pub type Answers = std::collections::BTreeMap<String, Vec<Found>>;

/// One address a name resolved to; an SRV record also gives its weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Found {
    pub addr: SocketAddr,
    pub weight: Option<u32>,
}

impl Found {
    pub fn addr(addr: SocketAddr) -> Found {
        Found { addr, weight: None }
    }
}

/// `10.0.0.5:3000`, or with an SRV weight `10.0.0.5:3000/5` (the supervisor-worker
/// encoding, and the log's).
impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.weight {
            Some(w) => write!(f, "{}/{w}", self.addr),
            None => write!(f, "{}", self.addr),
        }
    }
}

impl std::str::FromStr for Found {
    type Err = String;
    fn from_str(s: &str) -> Result<Found, String> {
        let (addr, weight) = match s.rsplit_once('/') {
            Some((addr, w)) => (
                addr,
                Some(w.parse().map_err(|_| format!("bad weight in {s:?}"))?),
            ),
            None => (s, None),
        };
        let addr = addr.parse().map_err(|_| format!("bad address in {s:?}"))?;
        Ok(Found { addr, weight })
    }
}

/// The answers key of an SRV entry.
pub fn srv_key(name: &str) -> String {
    format!("srv:{name}")
}

/// How server names are turned into addresses while a file is read.
#[derive(Clone, Copy)]
pub enum Lookup<'a> {
    /// Ask the resolver the file configures (the supervisor).
    Live,
    /// Take what the supervisor found (a worker: every process lists the same servers,
    /// and names are looked up once per gateway).
    Answers(&'a Answers),
}

/// `[gateway] resolver`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Resolver {
    /// The system's (getaddrinfo: /etc/hosts, /etc/resolv.conf).
    #[default]
    System,
    /// A DNS server at this address, asked directly.
    Server(SocketAddr),
}

impl Validator<'_> {
    /// The addresses of server entry `written`, recorded in the answers when it is a name.
    /// A name that does not resolve is no error (the app may not be up yet): it gives no
    /// address, a warning, and an empty answer, which later lookups fill in.
    pub(super) fn addresses(&mut self, written: &str) -> Result<Vec<Found>, String> {
        if let Ok(addr) = written.parse::<SocketAddr>() {
            return Ok(vec![Found::addr(addr)]);
        }
        if written.strip_prefix("srv:").is_none() {
            host_port(written)?;
        }
        let addrs = match self.lookup {
            Lookup::Answers(answers) => answers
                .get(written)
                .cloned()
                .ok_or_else(|| format!("{written:?} was not resolved by the supervisor"))?,
            Lookup::Live => lookup(self.resolver, written).unwrap_or_else(|e| {
                self.warnings.push(format!(
                    "{e}: its upstream gets no server from it until it resolves"
                ));
                Vec::new()
            }),
        };
        self.answers.insert(written.to_string(), addrs.clone());
        Ok(addrs)
    }
}

/// `host:port`, resolved now so a name that does not resolve is a config error.
/// `host:port` split, or why it is not that.
pub(crate) fn host_port(s: &str) -> Result<(&str, u16), String> {
    let bad = || format!("{s:?} is not an address of the form host:port");
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let port = port.parse::<u16>().map_err(|_| bad())?;
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host, port))
}

pub(super) fn resolve(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let (host, _) = host_port(s)?;
    match s.to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| format!("{host:?} resolves to no address")),
        Err(e) => Err(format!("cannot resolve {host:?}: {e}")),
    }
}

/// Every address of answers key `written` (`host:port`, or `srv:NAME`) according to
/// `resolver`.
pub fn lookup(resolver: Resolver, written: &str) -> Result<Vec<Found>, String> {
    if let Some(name) = written.strip_prefix("srv:") {
        return dns::resolve_srv(resolver, name);
    }
    let addrs = match resolver {
        Resolver::System => resolve_all(written),
        Resolver::Server(server) => dns::resolve(server, written),
    }?;
    Ok(addrs.into_iter().map(Found::addr).collect())
}

/// Every address `s` (`host:port`) stands for, in a stable order (sorted: the resolver may
/// answer in any order, and every process must list the servers alike).
fn resolve_all(s: &str) -> Result<Vec<SocketAddr>, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(vec![addr]);
    }
    host_port(s)?;
    let mut addrs: Vec<SocketAddr> = s
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {s:?}: {e}"))?
        .collect();
    addrs.sort();
    addrs.dedup();
    Ok(addrs)
}
