//! Server names asked of DNS with hickory: A and AAAA records of names when `[gateway]
//! resolver = "IP:PORT"`, SRV records always (the system's getaddrinfo has none). No
//! cache: the supervisor asks again every `resolve_interval` and wants the answer of now.

use super::{Found, Resolver as Configured};
use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::{Resolver, TokioResolver};
use std::net::SocketAddr;
use std::time::Duration;

/// Every address of `host:port` according to the DNS server at `server`, sorted.
pub fn resolve(server: SocketAddr, written: &str) -> Result<Vec<SocketAddr>, String> {
    let Some((host, port)) = written.rsplit_once(':') else {
        return Err(format!(
            "{written:?} is not an address of the form host:port"
        ));
    };
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{written:?} is not an address of the form host:port"))?;
    on_own_runtime(async {
        let resolver = resolver(Configured::Server(server))?;
        addresses(&resolver, host, port).await
    })
}

/// The servers of SRV name `name`: every address of every target, with the record's port
/// and weight, sorted.
pub fn resolve_srv(configured: Configured, name: &str) -> Result<Vec<Found>, String> {
    on_own_runtime(async {
        let resolver = resolver(configured)?;
        let records = resolver
            .srv_lookup(fqdn(name))
            .await
            .map_err(|e| format!("cannot resolve SRV {name:?}: {e}"))?;
        let mut found = Vec::new();
        for record in records.iter() {
            let target = record.target().to_ascii();
            for addr in addresses(&resolver, &target, record.port()).await? {
                found.push(Found {
                    addr,
                    weight: Some(u32::from(record.weight())),
                });
            }
        }
        found.sort();
        found.dedup();
        if found.is_empty() {
            return Err(format!("SRV {name:?} has no target with an address"));
        }
        Ok(found)
    })
}

/// Runs `lookup` on a small runtime on a thread of its own, so it can be called while a
/// file is read, whatever runtime (if any) the caller is on.
fn on_own_runtime<T: Send>(
    lookup: impl std::future::Future<Output = Result<T, String>> + Send,
) -> Result<T, String> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| format!("cannot start a resolver: {e}"))?;
                runtime.block_on(lookup)
            })
            .join()
            .unwrap_or_else(|_| Err("the lookup failed".to_string()))
    })
}

fn resolver(configured: Configured) -> Result<TokioResolver, String> {
    let mut builder = match configured {
        Configured::System => TokioResolver::builder_tokio()
            .map_err(|e| format!("cannot read the system's resolver configuration: {e}"))?,
        Configured::Server(server) => {
            let servers =
                NameServerConfigGroup::from_ips_clear(&[server.ip()], server.port(), true);
            Resolver::builder_with_config(
                ResolverConfig::from_parts(None, vec![], servers),
                TokioConnectionProvider::default(),
            )
        }
    };
    let options = builder.options_mut();
    options.cache_size = 0;
    options.timeout = Duration::from_secs(2);
    options.attempts = 2;
    Ok(builder.build())
}

/// A trailing dot: the name as written, not searched in domains.
fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

async fn addresses(
    resolver: &TokioResolver,
    host: &str,
    port: u16,
) -> Result<Vec<SocketAddr>, String> {
    let answer = resolver
        .lookup_ip(fqdn(host))
        .await
        .map_err(|e| format!("cannot resolve {host:?}: {e}"))?;
    let mut addrs: Vec<SocketAddr> = answer.iter().map(|ip| SocketAddr::new(ip, port)).collect();
    addrs.sort();
    addrs.dedup();
    if addrs.is_empty() {
        return Err(format!("{host:?} resolves to no address"));
    }
    Ok(addrs)
}
