//! Active health checks, run once per gateway by the supervisor: one task per server of
//! every upstream with a `[upstream.NAME.health_check]`, writing the result into the
//! shared table where every worker reads it.

use crate::config::{Config, HealthCheckConfig, ServerConfig};
use crate::table::assignment::per_upstream;
use crate::table::{ServerRecord, Table};
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use tokio::task::JoinSet;

/// Why each failing server's last check failed, by table record (for `/status`).
pub type LastFailures = Arc<Mutex<BTreeMap<usize, String>>>;

/// The running checkers of one configuration; dropping it stops them.
#[derive(Default)]
pub struct HealthChecks {
    tasks: JoinSet<()>,
}

impl HealthChecks {
    /// Starts checking `config`'s servers (`records`: see `table::assignment`). Servers
    /// of upstreams without a health check are cleared of any earlier check's verdict.
    pub fn start(
        config: &Config,
        records: &[usize],
        table: &'static Table,
        failures: &LastFailures,
    ) -> HealthChecks {
        failures.lock().unwrap_or_else(|p| p.into_inner()).clear();
        let mut tasks = JoinSet::new();
        for (upstream, _, records) in per_upstream(config, records) {
            for (server, &record) in upstream.servers.iter().zip(records) {
                let shared = table.server(record);
                match &upstream.health_check {
                    None => shared.clear_checks(),
                    // A name that resolves to nothing has no address to check.
                    Some(_) if server.unresolved => shared.clear_checks(),
                    Some(check) => {
                        tasks.spawn(check_forever(
                            upstream.name.clone(),
                            server.clone(),
                            check.clone(),
                            (record, shared),
                            failures.clone(),
                        ));
                    }
                }
            }
        }
        HealthChecks { tasks }
    }

    pub fn count(&self) -> usize {
        self.tasks.len()
    }
}

async fn check_forever(
    upstream: String,
    server: ServerConfig,
    check: HealthCheckConfig,
    (record, shared): (usize, &'static ServerRecord),
    failures: LastFailures,
) {
    let mut ticks = tokio::time::interval(check.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let result = match tokio::time::timeout(check.timeout, probe(&server, &check)).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {:?}", check.timeout)),
        };
        let why = result.as_ref().err().cloned().unwrap_or_default();
        {
            let mut failures = failures.lock().unwrap_or_else(|p| p.into_inner());
            match &result {
                Ok(()) => failures.remove(&record),
                Err(why) => failures.insert(record, why.clone()),
            };
        }
        match shared.record_check(
            result.is_ok(),
            check.fall,
            check.rise,
            crate::sys::monotonic_ms(),
        ) {
            Some(false) => tracing::warn!(
                upstream,
                server = %server.name,
                "server down: {} health checks failed in a row; last: {why}",
                check.fall
            ),
            Some(true) => tracing::info!(
                upstream,
                server = %server.name,
                "server up again: {} health checks passed in a row",
                check.rise
            ),
            None => {}
        }
    }
}

/// One check: `GET path` on a new connection; passes when the status is in
/// `expect_status`.
async fn probe(server: &ServerConfig, check: &HealthCheckConfig) -> Result<(), String> {
    let stream = tokio::net::TcpStream::connect(server.addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let request = http::Request::get(check.path.as_str())
        .header(http::header::HOST, server.name.as_str())
        .header(http::header::USER_AGENT, "gateway-health-check")
        .header(http::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let (low, high) = check.expect_status;
    if (low..=high).contains(&status) {
        Ok(())
    } else {
        Err(format!("status {status}, expected {low}-{high}"))
    }
}

/// Logs each server whose `max_fails` period ended since the last call (by its time, a
/// passing health check, or a worker trying it when every server was out): workers only
/// see a deadline in the table pass, so the supervisor, which looks every tick, says it.
/// `down` carries the records that were out at the last call.
pub fn log_passive_returns(
    config: &Config,
    records: &[usize],
    table: &'static Table,
    down: &mut BTreeSet<usize>,
) {
    let now = crate::sys::monotonic_ms();
    for (upstream, _, records) in per_upstream(config, records) {
        for (server, &record) in upstream.servers.iter().zip(records) {
            if table.server(record).passive_down(now) {
                down.insert(record);
            } else if down.remove(&record) {
                tracing::info!(
                    upstream = %upstream.name,
                    server = %server.name,
                    "max_fails period over: the server is back in rotation"
                );
            }
        }
    }
}
