//! Server names asked of a DNS server directly (`[gateway] resolver = "IP:PORT"`), with
//! hickory: A and AAAA records, no cache (the supervisor asks again every
//! `resolve_interval` and wants the answer of now).

use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::Resolver;
use std::net::SocketAddr;
use std::time::Duration;

/// Every address of `host:port` according to the DNS server at `server`, sorted. Runs its
/// own small runtime on a thread of its own, so it can be called while a file is read,
/// whatever runtime (if any) the caller is on.
pub fn resolve(server: SocketAddr, written: &str) -> Result<Vec<SocketAddr>, String> {
    let Some((host, port)) = written.rsplit_once(':') else {
        return Err(format!(
            "{written:?} is not an address of the form host:port"
        ));
    };
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{written:?} is not an address of the form host:port"))?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| format!("cannot resolve {host:?}: {e}"))?;
                runtime.block_on(lookup(server, host, port))
            })
            .join()
            .unwrap_or_else(|_| Err(format!("cannot resolve {host:?}: the lookup failed")))
    })
}

async fn lookup(server: SocketAddr, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    let servers = NameServerConfigGroup::from_ips_clear(&[server.ip()], server.port(), true);
    let mut options = ResolverOpts::default();
    options.cache_size = 0;
    options.timeout = Duration::from_secs(2);
    options.attempts = 2;
    let resolver = Resolver::builder_with_config(
        ResolverConfig::from_parts(None, vec![], servers),
        TokioConnectionProvider::default(),
    )
    .with_options(options)
    .build();
    // A trailing dot: the name as written, not searched in domains.
    let fqdn = if host.ends_with('.') {
        host.to_string()
    } else {
        format!("{host}.")
    };
    let answer = resolver
        .lookup_ip(fqdn)
        .await
        .map_err(|e| format!("cannot resolve {host:?} at {server}: {e}"))?;
    let mut addrs: Vec<SocketAddr> = answer.iter().map(|ip| SocketAddr::new(ip, port)).collect();
    addrs.sort();
    addrs.dedup();
    if addrs.is_empty() {
        return Err(format!("{host:?} resolves to no address at {server}"));
    }
    Ok(addrs)
}
