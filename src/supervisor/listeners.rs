//! Listening sockets, bound once by the supervisor and handed to every generation of
//! workers: for each listener address, one SO_REUSEPORT socket per worker seat.
//!
//! The sockets outlive the workers: a reload starts new workers on the very sockets the
//! old ones accept on, so no queued connection is ever reset by a close.

use crate::config::Config;
use std::net::{SocketAddr, TcpListener};

struct Bound {
    /// As configured (may have port 0).
    configured: SocketAddr,
    /// What the first socket got; the other seats bind the same.
    actual: SocketAddr,
    seats: Vec<TcpListener>,
}

/// A listener address as configured and as bound, and its seats' descriptors.
pub type Inherited = (SocketAddr, SocketAddr, Vec<std::os::fd::RawFd>);

#[derive(Default)]
pub struct Sockets {
    bound: Vec<Bound>,
}

impl Sockets {
    /// The set `config` needs: the sockets of addresses that stay (duplicated, so this set
    /// stands on its own), plus new ones for new addresses and seats. `self` is left as it
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
            let (actual, mut seats) = match old.map(|i| &self.bound[i]) {
                Some(old) => {
                    // A seat beyond the worker count is not carried over: connections
                    // queued on it would wait for a worker that never comes.
                    let kept = old.seats.iter().take(workers).map(TcpListener::try_clone);
                    (old.actual, kept.collect::<std::io::Result<Vec<_>>>()?)
                }
                None => {
                    let first = crate::net::ensure_free(listener.addr)
                        .and_then(|()| crate::net::bind(listener.addr))
                        .map_err(|e| {
                            let e = with_addr(e, listener.addr);
                            std::io::Error::new(e.kind(), format!("{}: {e}", listener.at))
                        })?;
                    let actual = first.local_addr()?;
                    tracing::info!("listening on {actual}");
                    (actual, vec![first])
                }
            };
            while seats.len() < workers {
                seats.push(crate::net::bind(actual).map_err(|e| with_addr(e, actual))?);
            }
            next.bound.push(Bound {
                configured: listener.addr,
                actual,
                seats,
            });
        }
        Ok(next)
    }

    /// What a new supervisor inherits (`upgrade`): each address with its seats' sockets,
    /// open while `self` lives.
    pub fn handover(&self) -> Vec<Inherited> {
        use std::os::fd::AsRawFd;
        self.bound
            .iter()
            .map(|b| {
                let fds = b.seats.iter().map(AsRawFd::as_raw_fd).collect();
                (b.configured, b.actual, fds)
            })
            .collect()
    }

    /// The set a replaced supervisor handed over, from the inherited descriptors.
    pub fn adopt(inherited: &[Inherited]) -> std::io::Result<Sockets> {
        let mut bound = Vec::new();
        for (configured, actual, fds) in inherited {
            let seats = fds
                .iter()
                .map(|&fd| crate::sys::adopt_listener(fd))
                .collect::<std::io::Result<Vec<_>>>()?;
            bound.push(Bound {
                configured: *configured,
                actual: *actual,
                seats,
            });
        }
        Ok(Sockets { bound })
    }

    /// Every seat's sockets, seat after seat, one per listener in config order: what
    /// each worker inherits (see `WorkerArgs::fds`).
    pub fn all(&self) -> Vec<&TcpListener> {
        let seats = self.bound.first().map_or(0, |b| b.seats.len());
        (0..seats)
            .flat_map(|seat| self.bound.iter().map(move |b| &b.seats[seat]))
            .collect()
    }
}

fn with_addr(e: std::io::Error, addr: SocketAddr) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"))
}
