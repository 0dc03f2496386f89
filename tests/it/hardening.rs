//! The defects hostile probing found, each as the user or attacker met it.

use crate::common::*;
use std::time::Duration;

/// A route for `/public/` in front of an app that also serves `/admin/`: no spelling of a
/// path reaches the app outside `/public/`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_are_normalized_before_routing_so_no_route_is_bypassed() {
    let app = Backend::named("app").await;
    let gw = Gateway::start(&format!(
        "[[route]]\npath_prefix = \"/public/\"\nupstream = \"app\"\n\n[upstream.app]\nservers = [ {{ address = \"{}\" }} ]\n",
        app.addr
    ));
    let get = |target: &str| {
        let request = format!("GET {target} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        status_of(&raw_exchange(
            gw.addr,
            request.as_bytes(),
            Duration::from_secs(5),
        ))
    };
    // The reported bypasses: outside the route after normalization (404) or refused (400).
    assert_eq!(get("/public/../admin/x"), 404);
    assert_eq!(get("/public/%2e%2e/admin/x"), 404);
    assert_eq!(get("/public/%2E%2E/admin/x"), 404);
    assert_eq!(get("/public/.%2e/admin/x"), 404);
    assert_eq!(get("/public/..%2fadmin/x"), 400);
    assert_eq!(get("/public/..%5Cadmin/x"), 400);
    assert_eq!(get("/public/..;/admin/x"), 400);
    assert_eq!(get("http://a/public/../admin/x"), 404);
    // Inside the route after normalization: forwarded as normalized.
    assert_eq!(get("/public//../admin/x"), 200);
    assert_eq!(get("/public/a/./b/../c?q=/../%2e"), 200);
    assert_eq!(get("/public/%7euser/%41"), 200);
    let seen: Vec<String> = app.seen().into_iter().map(|s| s.uri).collect();
    assert_eq!(
        seen,
        [
            "/public/admin/x",
            "/public/a/c?q=/../%2e",
            "/public/~user/A"
        ]
    );
}

fn serving_pids(gw: &Gateway) -> Vec<u64> {
    let status = status_json(gw);
    let mut pids: Vec<u64> = status["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["state"] == "serving")
        .map(|w| w["pid"].as_u64().unwrap())
        .collect();
    pids.sort();
    pids
}

/// `n` GETs, each on a new connection (so spread over every seat's socket), at once;
/// how many got a 200 within `timeout` each.
async fn fresh_gets(gw: &Gateway, n: usize, timeout: Duration) -> usize {
    let url = gw.url("/");
    let tries = (0..n).map(|_| {
        let url = url.clone();
        tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .no_proxy()
                .timeout(timeout)
                .build()
                .unwrap();
            matches!(client.get(url).send().await, Ok(r) if r.status() == 200)
        })
    });
    let mut ok = 0;
    for t in tries.collect::<Vec<_>>() {
        ok += usize::from(t.await.unwrap());
    }
    ok
}

/// A stopped worker (SIGSTOP) still holds its seat's socket, where the kernel keeps
/// queueing new connections: the watchdog kills it, another worker covers the seat, and
/// the queued connections are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_worker_is_killed_by_the_watchdog_and_its_connections_are_served() {
    let backend = Backend::named("a").await;
    let gw = Gateway::start(&format!(
        "[gateway]\nworkers = 2\nworker_watchdog = \"1s\"\n{}",
        upstream_config("app", &[backend.addr], "")
    ));
    let before = serving_pids(&gw);
    signal(before[0], "STOP");
    let started = std::time::Instant::now();
    let ok = fresh_gets(&gw, 20, Duration::from_secs(6)).await;
    assert_eq!(
        ok,
        20,
        "requests lost to a stopped worker:\n{}",
        gw.stderr()
    );
    assert!(started.elapsed() < Duration::from_secs(6));
    assert!(gw.stderr().contains("made no progress"), "{}", gw.stderr());
    // The covering worker may have served everything before the supervisor reaped the
    // killed one and said so.
    wait_until("the kill logged", Duration::from_secs(5), || {
        gw.stderr().contains("was killed by the watchdog")
    })
    .await;
    wait_until("a replacement worker", Duration::from_secs(5), || {
        let now = serving_pids(&gw);
        now.len() == 2 && !now.contains(&before[0])
    })
    .await;
}

/// A seat whose worker keeps crashing waits out growing back-off delays; meanwhile a live
/// worker accepts on its socket, so no connection waits for a worker that is not there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_looping_seat_is_covered_by_a_live_worker() {
    let backend = Backend::named("a").await;
    let gw = Gateway::start(&format!(
        "[gateway]\nworkers = 2\naccess_log = \"logs/access.log\"\n{}",
        upstream_config("app", &[backend.addr], "")
    ));
    let logs = gw.dir.path().join("logs");
    // New workers cannot open the access log now (a file stands where its directory
    // was): the seat's replacements crash.
    std::fs::remove_dir_all(&logs).unwrap();
    std::fs::write(&logs, "").unwrap();
    let before = serving_pids(&gw);
    signal(before[0], "KILL");
    wait_until("the crash loop", Duration::from_secs(10), || {
        gw.stderr().contains("restarting in 400ms")
    })
    .await;
    let ok = fresh_gets(&gw, 30, Duration::from_secs(2)).await;
    assert_eq!(
        ok,
        30,
        "connections stranded on the crashed seat:\n{}",
        gw.stderr()
    );
    assert!(gw.stderr().contains("covers it"), "{}", gw.stderr());
    // Once the seat's own worker starts, the cover ends.
    std::fs::remove_file(&logs).unwrap();
    wait_until("the seat's own worker", Duration::from_secs(15), || {
        gw.stderr().contains("stops covering it")
    })
    .await;
    assert_eq!(fresh_gets(&gw, 10, Duration::from_secs(2)).await, 10);
}

/// The second SIGTERM stops at once, even while the first one's drain waits for a slow
/// request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_stops_at_once() {
    let backend = Backend::start(|_req| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        hyper::Response::new(full("late"))
    })
    .await;
    let mut gw = Gateway::start(&format!(
        "[gateway]\nshutdown_timeout = \"60s\"\n{}",
        upstream_config("app", &[backend.addr], "")
    ));
    let url = gw.url("/slow");
    let slow = tokio::spawn(async move { client().get(url).send().await.map(|r| r.status()) });
    wait_until("the slow request upstream", Duration::from_secs(5), || {
        backend.requests() == 1
    })
    .await;
    let pid = gw.child.id() as u64;
    signal(pid, "TERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        alive(pid),
        "the first SIGTERM must wait for the request in flight"
    );
    signal(pid, "TERM");
    let stopped = std::time::Instant::now();
    loop {
        if gw.child.try_wait().unwrap().is_some() {
            break;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(3),
            "still running after the second SIGTERM:\n{}",
            gw.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Read from the gateway's stderr by a thread of its own: the last lines may land
    // a moment after the process ended.
    wait_until("the stop logged", Duration::from_secs(5), || {
        gw.stderr().contains("stopping now")
    })
    .await;
    assert!(slow.await.unwrap().is_err(), "the slow request was cut");
}

/// nginx's rule: the only server of an upstream is not taken out by passive failures, so
/// it gets traffic the moment it is back (instead of 503 for fail_timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sole_server_is_never_marked_down_passively() {
    let port = closed_port();
    let gw = Gateway::start(&upstream_config(
        "app",
        &[port],
        "max_fails = 1\nfail_timeout = \"30s\"",
    ));
    for _ in 0..3 {
        assert_eq!(get_fresh(gw.url("/")).await.0, 502);
    }
    let _back = Backend::start_at(port, |_req| async { hyper::Response::new(full("back")) }).await;
    assert_eq!(get_fresh(gw.url("/")).await, (200, "back".to_string()));
    assert!(!gw.stderr().contains("marked down"), "{}", gw.stderr());
}

/// The gateway running out of file descriptors is its own trouble: the servers are not
/// marked down (with max_fails = 1 they would refuse everyone for fail_timeout after the
/// pressure ended), the client gets a 503 that says why, and the accept loop does not
/// log every 50 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_file_descriptors_does_not_mark_servers_down() {
    let (a, b) = (Backend::named("a").await, Backend::named("b").await);
    let gw = Gateway::start_under(
        &["prlimit", "--nofile=64:64"],
        &upstream_config(
            "app",
            &[a.addr, b.addr],
            "keepalive = 0\nmax_fails = 1\nfail_timeout = \"30s\"",
        ),
    );
    // One client connection that will ask while the worker has no descriptor left.
    let mut asker = std::net::TcpStream::connect(gw.addr).unwrap();
    asker
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let ask = |stream: &mut std::net::TcpStream| {
        use std::io::{Read, Write};
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = stream.read(&mut buf).unwrap();
        status_of(&String::from_utf8_lossy(&buf[..n]))
    };
    assert_eq!(ask(&mut asker), 200);
    let mut hogs = Vec::new();
    for _ in 0..80 {
        hogs.push(std::net::TcpStream::connect(gw.addr).unwrap());
    }
    wait_until(
        "the worker to run out of descriptors",
        Duration::from_secs(5),
        || gw.stderr().contains("accept failed"),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(ask(&mut asker), 503);
    drop(hogs);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Pressure over: both servers still take requests at once.
    let mut bodies = Vec::new();
    for _ in 0..4 {
        bodies.push(get_fresh(gw.url("/")).await);
    }
    assert!(bodies.iter().all(|(code, _)| *code == 200), "{bodies:?}");
    assert!(
        bodies.iter().any(|(_, body)| body == "a") && bodies.iter().any(|(_, body)| body == "b")
    );
    let log = gw.stderr();
    assert!(!log.contains("marked down"), "{log}");
    assert!(log.matches("accept failed").count() <= 2, "{log}");
    assert!(
        gw.access_log().contains("out of resources"),
        "{}",
        gw.access_log()
    );
}

/// SO_REUSEPORT would let a second gateway bind beside a running one and take most of its
/// connections: it refuses to start, and a reload onto a busy address is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_another_process_listens_on_is_refused() {
    let (a, b) = (Backend::named("a").await, Backend::named("b").await);
    let first = Gateway::start(&upstream_config("app", &[a.addr], ""));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("second.toml");
    std::fs::write(
        &path,
        format!(
            "[gateway]\nworkers = 1\ncontrol_socket = \"second.sock\"\n[[listener]]\nlisten = \"{}\"\n{}",
            first.addr,
            upstream_config("app", &[b.addr], "")
        ),
    )
    .unwrap();
    let mut second = std::process::Command::new(gateway_bin())
        .arg("-c")
        .arg(&path)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(5) {
            let _ = second.kill();
            panic!("a second gateway started on {}", first.addr);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "second.toml:5:10: listener[0].listen: cannot listen on {}: another process already listens on it",
            first.addr
        )),
        "{stderr}"
    );
    // `check` cannot bind, but says what start would find in the way.
    let (code, err) = gateway_with_config(&["check"], &path);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains(&format!(
            "warning: {}:5:10: listener[0].listen: {}: another process already listens on it",
            path.display(),
            first.addr
        )),
        "{err}"
    );

    // A running gateway reloading onto the first one's address is refused too.
    let other = Gateway::start(&upstream_config("app", &[b.addr], ""));
    let text = std::fs::read_to_string(other.config_path()).unwrap();
    std::fs::write(
        other.config_path(),
        format!("[[listener]]\nlisten = \"{}\"\n{text}", first.addr),
    )
    .unwrap();
    let (code, _, err) = other.ctl(&["reload"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("another process already listens on it"),
        "{err}"
    );
    for _ in 0..10 {
        assert_eq!(get_text(first.url("/")).await, "a");
        assert_eq!(get_text(other.url("/")).await, "b");
    }
}
