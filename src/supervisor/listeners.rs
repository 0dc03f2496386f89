//! Listening sockets, bound once by the supervisor and handed to every generation of
//! workers: for each listener address, one SO_REUSEPORT socket per worker slot.
//!
//! The sockets outlive the workers: a reload starts new workers on the very sockets the
//! old ones accept on, so no queued connection is ever reset by a close.

use crate::config::Config;
use std::net::{SocketAddr, TcpListener};

struct Bound {
    /// As configured (may have port 0).
    configured: SocketAddr,
    /// What the first socket got; the other slots bind the same.
    actual: SocketAddr,
    slots: Vec<TcpListener>,
}

#[derive(Default)]
pub struct Sockets {
    bound: Vec<Bound>,
}

impl Sockets {
    /// The set `config` needs: the sockets of addresses that stay (duplicated, so this set
    /// stands on its own), plus new ones for new addresses and slots. `self` is left as it
    /// is, so a reload that fails later changes nothing.
    pub fn for_config(&self, config: &Config) -> std::io::Result<Sockets> {
        let workers = config.gateway.workers;
        let mut next = Sockets::default();
        // Each old socket set goes to one listener (two may both ask for port 0).
        let mut taken = vec![false; self.bound.len()];
        for listener in &config.listeners {
            let old = (0..self.bound.len())
                .find(|&i| !taken[i] && self.bound[i].configured == listener.addr);
            if let Some(i) = old {
                taken[i] = true;
            }
            let (actual, mut slots) = match old.map(|i| &self.bound[i]) {
                Some(old) => {
                    // A slot beyond the worker count is not carried over: connections
                    // queued on it would wait for a worker that never comes.
                    let kept = old.slots.iter().take(workers).map(TcpListener::try_clone);
                    (old.actual, kept.collect::<std::io::Result<Vec<_>>>()?)
                }
                None => {
                    let first =
                        crate::net::bind(listener.addr).map_err(|e| with_addr(e, listener.addr))?;
                    let actual = first.local_addr()?;
                    tracing::info!("listening on {actual}");
                    (actual, vec![first])
                }
            };
            while slots.len() < workers {
                slots.push(crate::net::bind(actual).map_err(|e| with_addr(e, actual))?);
            }
            next.bound.push(Bound {
                configured: listener.addr,
                actual,
                slots,
            });
        }
        Ok(next)
    }

    /// The sockets worker `slot` accepts on, one per listener, in config order.
    pub fn for_slot(&self, slot: usize) -> Vec<&TcpListener> {
        self.bound
            .iter()
            .filter_map(|b| b.slots.get(slot))
            .collect()
    }
}

fn with_addr(e: std::io::Error, addr: SocketAddr) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"))
}
