//! Global rate limits against a real Redis (`redis-server`, started here on a loopback
//! port): two gateways share one count, and Redis going away fails no request.

use crate::common::*;
use hyper::Response;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) struct Redis {
    child: Child,
    pub(crate) addr: SocketAddr,
}

impl Redis {
    /// A Redis on `addr` (a free loopback port when `None`), or `None` when
    /// `redis-server` is not installed (the caller says so and skips).
    pub(crate) async fn start(addr: Option<SocketAddr>) -> Option<Redis> {
        let addr = addr.unwrap_or_else(|| {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap()
        });
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &addr.port().to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let redis = Redis { child, addr };
        wait_until("redis-server answers", Duration::from_secs(10), || {
            ask(addr, "PING").starts_with("+PONG")
        })
        .await;
        Some(redis)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One inline command, and what Redis answers in its first read ("" if nothing).
fn ask(addr: SocketAddr, command: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let _ = s.write_all(format!("{command}\r\n").as_bytes());
    let mut buf = vec![0; 65536];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

fn gateway_with_global_limit(
    redis: SocketAddr,
    backend: SocketAddr,
    rate: &str,
    burst: u32,
) -> Gateway {
    Gateway::start(&format!(
        "[gateway]\naccess_log = \"off\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[redis]\nurl = \"redis://{redis}/0\"\n\
         [[route]]\nupstream = \"app\"\nrate_limit = {{ rate = \"{rate}\", burst = {burst}, scope = \"global\" }}\n\
         [upstream.app]\nservers = [ {{ address = \"{backend}\" }} ]\n"
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_one_global_limit() {
    let Some(redis) = Redis::start(None).await else {
        eprintln!("skipped: redis-server is not installed (.ci/run installs it)");
        return;
    };
    let backend = Backend::start(|_req| async { Response::new(full("ok")) }).await;
    // A burst of 5 takes up the gaps between the clients' requests: the count is then
    // the rate's alone, whenever each request comes.
    let a = gateway_with_global_limit(redis.addr, backend.addr, "50/s", 5);
    let b = gateway_with_global_limit(redis.addr, backend.addr, "50/s", 5);
    // Two clients on each gateway for two seconds, each pausing 5 ms between requests:
    // up to 800 a second, far more than 50, without taking both cores from the tests
    // that run beside this one (least_time's reads latencies).
    let window = Duration::from_secs(2);
    let started = Instant::now();
    let mut clients = Vec::new();
    for gw in [&a, &b] {
        for _ in 0..2 {
            let url = gw.url("/");
            clients.push(tokio::spawn(async move {
                let c = client();
                let (mut ok, mut limited, mut other) = (0u64, 0u64, Vec::new());
                for _ in 0..100_000 {
                    if started.elapsed() >= window {
                        break;
                    }
                    match c.get(&url).send().await.map(|r| r.status().as_u16()) {
                        Ok(200) => ok += 1,
                        Ok(429) => limited += 1,
                        got => other.push(format!("{got:?}")),
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                (ok, limited, other)
            }));
        }
    }
    let (mut ok, mut limited) = (0, 0);
    for c in clients {
        let (o, l, other) = c.await.unwrap();
        assert!(other.is_empty(), "{other:?}");
        ok += o;
        limited += l;
    }
    let elapsed = started.elapsed().as_secs_f64();
    // 50 a second over the window, and the first six at once.
    let expected = 50.0 * elapsed + 6.0;
    let ratio = ok as f64 / expected;
    eprintln!(
        "global limit: {ok} let in over {elapsed:.2}s, expected {expected:.0}, {limited} refused"
    );
    assert!(
        (0.9..=1.1).contains(&ratio),
        "{ok} let in over {elapsed:.2}s (expected {expected:.0}), {limited} refused"
    );
    assert!(limited > ok, "the clients asked for more than the limit");
    let (_, ready) = a.admin_get("/readyz").await;
    assert!(!ready.contains("unreachable"), "{ready}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_going_away_fails_no_request_and_the_gateway_counts_alone_meanwhile() {
    let Some(mut redis) = Redis::start(None).await else {
        eprintln!("skipped: redis-server is not installed (.ci/run installs it)");
        return;
    };
    let addr = redis.addr;
    let backend = Backend::start(|_req| async { Response::new(full("ok")) }).await;
    let gw = gateway_with_global_limit(addr, backend.addr, "1000000/s", 1_000_000);
    let load = Load::start(gw.url("/"), 2, 1_000_000);
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.stop();
    // The gateway notices, says so in /readyz (ready all the same) and in its log once.
    let mut said = String::new();
    for _ in 0..100 {
        let (code, text) = gw.admin_get("/readyz").await;
        if text.contains("unreachable") {
            assert_eq!(code, 200, "{text}");
            said = text;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        said.contains("global rate limits count per gateway"),
        "{said}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let restarted = Redis::start(Some(addr)).await.expect("redis-server again");
    wait_until(
        "the gateway counts in Redis again",
        Duration::from_secs(10),
        || gw.stderr().contains("reachable again"),
    )
    .await;
    let ok = load.stop_without_failures(100).await;
    assert_eq!(
        gw.stderr().matches("unreachable (").count(),
        1,
        "one line when Redis went away: {}",
        gw.stderr()
    );
    // The counts went to the restarted Redis (its keys expire as soon as their quota is
    // whole, so its command counts say it, not its keys).
    let stats = ask(restarted.addr, "INFO commandstats");
    assert!(
        stats.contains("cmdstat_evalsha:calls=") || stats.contains("cmdstat_eval:calls="),
        "{stats} after {ok} requests"
    );
}

/// `rediss://` with the CA that signed Redis's certificate (`redis.ca`): the count is in
/// Redis over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_limit_counts_in_redis_over_tls() {
    if Command::new("redis-server")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: redis-server is not installed (.ci/run installs it)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let generated = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let (cert, key) = (dir.path().join("redis.crt"), dir.path().join("redis.key"));
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new("redis-server")
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
        ])
        .arg("--tls-cert-file")
        .arg(&cert)
        .arg("--tls-key-file")
        .arg(&key)
        .arg("--tls-ca-cert-file")
        .arg(&cert)
        .args([
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_until("redis-server listens", Duration::from_secs(10), || {
        std::net::TcpStream::connect(addr).is_ok()
    })
    .await;
    let backend = Backend::start(|_req| async { Response::new(full("ok")) }).await;
    let gw = Gateway::start(&format!(
        "[gateway]\naccess_log = \"off\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[redis]\nurl = \"rediss://{addr}/0\"\nca = {:?}\n\
         [[route]]\nupstream = \"app\"\nrate_limit = {{ rate = \"1/m\", burst = 0, scope = \"global\" }}\n\
         [upstream.app]\nservers = [ {{ address = \"{}\" }} ]\n",
        cert.display().to_string(),
        backend.addr
    ));
    assert_eq!(get_fresh(gw.url("/")).await.0, 200);
    assert_eq!(get_fresh(gw.url("/")).await.0, 429);
    let (_, ready) = gw.admin_get("/readyz").await;
    assert!(!ready.contains("unreachable"), "{ready}");
    assert!(!gw.stderr().contains("unreachable"), "{}", gw.stderr());
    let _ = child.kill();
    let _ = child.wait();
}
