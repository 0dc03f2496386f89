//! Servers by name with `resolver = "IP:PORT"`: a real DNS server on loopback (built on
//! hickory-proto) whose records the test changes while the gateway runs.

use crate::common::*;
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, SRV};
use hickory_proto::rr::Name;
use hickory_proto::rr::{RData, Record, RecordType};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// SRV records by name: (target, port, weight).
type SrvRecords = Arc<Mutex<HashMap<String, Vec<(String, u16, u16)>>>>;

/// A-record answers by name; a name not in the map is NXDOMAIN.
pub(crate) struct DnsServer {
    pub(crate) addr: SocketAddr,
    records: Arc<Mutex<HashMap<String, Vec<Ipv4Addr>>>>,
    /// A queries answered (AAAA queries are answered empty and not counted).
    queries: Arc<AtomicUsize>,
    srv: SrvRecords,
    task: tokio::task::JoinHandle<()>,
}

impl DnsServer {
    pub(crate) async fn start() -> DnsServer {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let records: Arc<Mutex<HashMap<String, Vec<Ipv4Addr>>>> = Default::default();
        let queries = Arc::new(AtomicUsize::new(0));
        let srv: SrvRecords = Default::default();
        let (records2, queries2, srv2) = (records.clone(), queries.clone(), srv.clone());
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let Ok(request) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let mut reply = Message::new();
                reply
                    .set_id(request.id())
                    .set_message_type(MessageType::Response)
                    .set_op_code(OpCode::Query)
                    .set_recursion_available(true);
                for query in request.queries() {
                    reply.add_query(query.clone());
                    let name = query.name().to_ascii().trim_end_matches('.').to_lowercase();
                    if query.query_type() == RecordType::SRV {
                        let targets = srv2.lock().unwrap().get(&name).cloned().unwrap_or_default();
                        for (target, port, weight) in targets {
                            let target = Name::from_ascii(format!("{target}.")).unwrap();
                            let rdata = RData::SRV(SRV::new(0, weight, port, target));
                            reply.add_answer(Record::from_rdata(query.name().clone(), 1, rdata));
                        }
                        continue;
                    }
                    let known = records2.lock().unwrap().get(&name).cloned();
                    match known {
                        None => {
                            reply.set_response_code(ResponseCode::NXDomain);
                        }
                        Some(ips) if query.query_type() == RecordType::A => {
                            queries2.fetch_add(1, Ordering::SeqCst);
                            for ip in ips {
                                let record =
                                    Record::from_rdata(query.name().clone(), 1, RData::A(A(ip)));
                                reply.add_answer(record);
                            }
                        }
                        Some(_) => {}
                    }
                }
                if let Ok(bytes) = reply.to_vec() {
                    let _ = socket.send_to(&bytes, peer).await;
                }
            }
        });
        DnsServer {
            addr,
            records,
            queries,
            srv,
            task,
        }
    }

    pub(crate) fn set(&self, name: &str, ips: &[Ipv4Addr]) {
        self.records
            .lock()
            .unwrap()
            .insert(name.to_string(), ips.to_vec());
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A backend answering `name` on `ip` at `port`.
async fn backend_at(ip: [u8; 4], port: u16, name: &'static str) -> Backend {
    Backend::start_at(SocketAddr::from((ip, port)), move |_req| async move {
        hyper::Response::new(full(name))
    })
    .await
}

fn addresses(gw: &Gateway) -> Vec<String> {
    status_json(gw)["upstreams"]["app"]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["address"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn servers_follow_their_name_in_dns_without_a_reload() {
    let dns = DnsServer::start().await;
    // Three app instances on one port, at three loopback addresses.
    let port = closed_port().port();
    let one = backend_at([127, 0, 0, 1], port, "one").await;
    let two = backend_at([127, 0, 0, 2], port, "two").await;
    let three = backend_at([127, 0, 0, 3], port, "three").await;
    dns.set(
        "app.test",
        &[Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 0, 0, 2)],
    );
    // Idle upstream connections are kept for the whole test: a new one is a reopened one.
    let gw = Gateway::start(&format!(
        "[gateway]\nworkers = 4\nresolver = \"{}\"\nresolve_interval = \"200ms\"\n[[route]]\nupstream = \"app\"\n[upstream.app]\nidle_timeout = \"60s\"\nservers = [ {{ address = \"app.test:{port}\" }} ]\n",
        dns.addr
    ));
    // Both A records are servers.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..6 {
        seen.insert(get_text(gw.url("/")).await);
    }
    assert_eq!(seen, ["one", "two"].map(String::from).into());
    let status = status_json(&gw);
    assert!(status["upstreams"]["app"]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["name"] == format!("app.test:{port}")));

    // Looked up once per gateway, not once per worker: about one query per interval.
    let before = dns.queries.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let asked = dns.queries.load(Ordering::SeqCst) - before;
    assert!(
        (4..=14).contains(&asked),
        "{asked} A queries in 2 s with 4 workers"
    );

    // A record added, one removed: traffic follows, no request fails meanwhile, and it
    // all happens in place: no new generation, the same workers, and not one connection
    // to the address that stays opened again.
    // One client: one request at a time, so one connection per address suffices.
    let load = Load::start(gw.url("/"), 1, 100_000);
    let warm = two.requests() + 100;
    wait_until("warm connections", Duration::from_secs(5), || {
        two.requests() > warm
    })
    .await;
    let workers_before = generation_and_pids(&gw);
    let two_connections = two.connections.load(Ordering::SeqCst);
    dns.set(
        "app.test",
        &[Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3)],
    );
    let expected = vec![format!("127.0.0.2:{port}"), format!("127.0.0.3:{port}")];
    wait_until("the new addresses", Duration::from_secs(10), || {
        addresses(&gw) == expected
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (ok, failed) = load.stop().await;
    assert!(ok > 50 && failed.is_empty(), "{ok} ok, failed: {failed:?}");
    assert_eq!(
        generation_and_pids(&gw),
        workers_before,
        "the same generation and workers"
    );
    assert_eq!(
        two.connections.load(Ordering::SeqCst),
        two_connections,
        "connections to the address that stayed were kept"
    );
    let sources: Vec<_> = status_json(&gw)["upstreams"]["app"]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["source"].clone())
        .collect();
    assert_eq!(sources, ["dns", "dns"]);
    let three_before = three.requests();
    let one_before = one.requests();
    for _ in 0..6 {
        assert_ne!(get_text(gw.url("/")).await, "one");
    }
    assert!(three.requests() > three_before);
    assert_eq!(
        one.requests(),
        one_before,
        "the removed address gets nothing new"
    );

    // The name stops resolving (NXDOMAIN): the last known addresses stay.
    dns.records.lock().unwrap().clear();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(addresses(&gw), expected);
    assert_eq!(get_fresh(gw.url("/")).await.0, 200);
    assert!(
        gw.stderr().contains("keeps its last known addresses"),
        "{}",
        gw.stderr()
    );
    drop(two);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_does_not_resolve_yet_is_no_error_and_gets_traffic_once_it_does() {
    let dns = DnsServer::start().await;
    let port = closed_port().port();
    let app = backend_at([127, 0, 0, 1], port, "app").await;
    let config = format!(
        "[gateway]\nresolver = \"{}\"\nresolve_interval = \"200ms\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[[route]]\nupstream = \"app\"\n[upstream.app]\nservers = [ {{ address = \"later.test:{port}\" }} ]\n",
        dns.addr
    );
    // `gateway check` warns and passes.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.toml");
    std::fs::write(
        &path,
        format!("[[listener]]\nlisten = \"127.0.0.1:0\"\n{config}"),
    )
    .unwrap();
    let (code, err) = gateway_with_config(&["check"], &path);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("warning: ") && err.contains("later.test"),
        "{err}"
    );

    let gw = Gateway::start(&config);
    assert_eq!(get_fresh(gw.url("/")).await.0, 503);
    let (code, why) = gw.admin_get("/readyz").await;
    assert_eq!(code, 503);
    assert!(
        why.contains(&format!("later.test:{port} does not resolve")),
        "{why}"
    );

    dns.set("later.test", &[Ipv4Addr::new(127, 0, 0, 1)]);
    wait_until("the name to resolve", Duration::from_secs(10), || {
        addresses(&gw) == [format!("127.0.0.1:{port}")]
    })
    .await;
    assert_eq!(get_fresh(gw.url("/")).await, (200, "app".to_string()));
    assert_eq!(gw.admin_get("/readyz").await.0, 200);
    assert!(app.requests() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_srv_name_gives_its_targets_with_their_ports_and_weights() {
    let dns = DnsServer::start().await;
    let (p1, p2) = (closed_port().port(), closed_port().port());
    let heavy = backend_at([127, 0, 0, 1], p1, "heavy").await;
    let light = backend_at([127, 0, 0, 2], p2, "light").await;
    dns.set("a.test", &[Ipv4Addr::new(127, 0, 0, 1)]);
    dns.set("b.test", &[Ipv4Addr::new(127, 0, 0, 2)]);
    dns.srv.lock().unwrap().insert(
        "_http._tcp.app.test".into(),
        vec![("a.test".into(), p1, 3), ("b.test".into(), p2, 1)],
    );
    let gw = Gateway::start(&format!(
        "[gateway]\nresolver = \"{}\"\n[[route]]\nupstream = \"app\"\n[upstream.app]\nservers = [ {{ srv = \"_http._tcp.app.test\" }} ]\n",
        dns.addr
    ));
    let status = status_json(&gw);
    let servers = status["upstreams"]["app"]["servers"]
        .as_array()
        .unwrap()
        .clone();
    let listed: Vec<(String, u64)> = servers
        .iter()
        .map(|s| {
            (
                s["address"].as_str().unwrap().to_string(),
                s["weight"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            (format!("127.0.0.1:{p1}"), 3),
            (format!("127.0.0.2:{p2}"), 1)
        ]
    );
    assert!(
        servers.iter().all(|s| s["name"] == "_http._tcp.app.test"),
        "{status}"
    );
    let mut to_heavy = 0;
    for _ in 0..40 {
        to_heavy += usize::from(get_fresh(gw.url("/")).await.1 == "heavy");
    }
    assert_eq!(to_heavy, 30, "3:1 as the records weigh them");
    assert_eq!(heavy.requests() + light.requests(), 40);
}
