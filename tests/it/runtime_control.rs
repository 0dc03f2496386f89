//! Servers changed at run time: `gatewayctl drain`, `enable` and `weight`, and a rolling
//! restart of the app under load with the example script.

use crate::common::*;
use hyper::Response;
use std::time::{Duration, Instant};

/// A backend that answers `name`, after a second for `/slow`.
async fn with_slow_path(name: &'static str) -> Backend {
    Backend::start(move |req| async move {
        if req.uri().path() == "/slow" {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Response::new(full(name))
    })
    .await
}

fn server_state(gw: &Gateway, address: &str) -> (String, u64) {
    let status = status_json(gw);
    let server = status["upstreams"]["app"]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["address"] == address)
        .unwrap()
        .clone();
    (
        server["state"].as_str().unwrap().to_string(),
        server["weight"].as_u64().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drain_enable_and_weight_change_the_rotation_at_run_time_and_survive_a_reload() {
    let (a, b, c) = (
        with_slow_path("a").await,
        with_slow_path("b").await,
        with_slow_path("c").await,
    );
    let gw = Gateway::start(&format!(
        "[gateway]\naccess_log = \"off\"\n{}",
        upstream_config("app", &[a.addr, b.addr, c.addr], "")
    ));
    let b_addr = b.addr.to_string();
    // One slow request on each server, then drain b while its request is in flight.
    let slow: Vec<_> = (0..3)
        .map(|_| tokio::spawn(get_fresh(gw.url("/slow"))))
        .collect();
    wait_until("a request in flight on b", Duration::from_secs(5), || {
        b.requests() == 1
    })
    .await;
    let started = Instant::now();
    let (code, out, err) = gw.ctl(&["drain", "app", &b_addr, "--wait"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("nothing in flight"), "{out}");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "--wait returned while b's request was still in flight"
    );
    for call in slow {
        assert_eq!(
            call.await.unwrap().0,
            200,
            "the drained server's request finished"
        );
    }
    assert_eq!(server_state(&gw, &b_addr).0, "draining");
    for _ in 0..12 {
        assert_ne!(get_fresh(gw.url("/")).await.1, "b");
    }
    assert_eq!(b.requests(), 1, "nothing new went to the drained server");

    // A reload keeps it drained.
    let (code, _, err) = gw.ctl(&["reload"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(server_state(&gw, &b_addr).0, "draining");
    for _ in 0..6 {
        assert_ne!(get_fresh(gw.url("/")).await.1, "b");
    }

    let (code, _, err) = gw.ctl(&["enable", "app", &b_addr]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(server_state(&gw, &b_addr).0, "up");
    let mut bodies = Vec::new();
    for _ in 0..6 {
        bodies.push(get_fresh(gw.url("/")).await.1);
    }
    assert_eq!(bodies.iter().filter(|b| *b == "b").count(), 2, "{bodies:?}");

    // Weight 3 for a: 3 of every 5 requests.
    let (code, _, err) = gw.ctl(&["weight", "app", &a.addr.to_string(), "3"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(server_state(&gw, &a.addr.to_string()).1, 3);
    let mut to_a = 0;
    for _ in 0..50 {
        to_a += usize::from(get_fresh(gw.url("/")).await.1 == "a");
    }
    assert_eq!(to_a, 30);

    // Mistakes are refused with a reason and exit 1.
    for (args, why) in [
        (vec!["drain", "nope", &b_addr], "no upstream \"nope\""),
        (vec!["drain", "app", "10.9.9.9:1"], "has no server"),
        (vec!["weight", "app", &b_addr, "0"], "from 1 to 1000"),
    ] {
        let (code, _, err) = gw.ctl(&args);
        assert_eq!(code, 1, "{args:?}");
        assert!(err.contains(why), "{args:?}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drain_wait_gives_up_after_its_timeout() {
    let a = with_slow_path("a").await;
    let gw = Gateway::start(&upstream_config("app", &[a.addr], ""));
    let slow = tokio::spawn(get_fresh(gw.url("/slow")));
    wait_until("the request in flight", Duration::from_secs(5), || {
        a.requests() == 1
    })
    .await;
    let (code, _, err) = gw.ctl(&[
        "drain",
        "app",
        &a.addr.to_string(),
        "--wait",
        "--timeout",
        "200ms",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("still 1 request(s) in flight"), "{err}");
    assert_eq!(slow.await.unwrap().0, 200);
    // Its only server drained: 503 until it is enabled.
    assert_eq!(get_fresh(gw.url("/")).await.0, 503);
    assert_eq!(gw.ctl(&["enable", "app", &a.addr.to_string()]).0, 0);
    assert_eq!(get_fresh(gw.url("/")).await.0, 200);
}

/// The example rolling restart: each of three app processes drained, restarted and
/// enabled in turn while clients keep sending requests; none fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_under_load_fails_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let demo = gateway_bin()
        .parent()
        .unwrap()
        .join("examples/demo_backend");
    // start.sh ADDR starts an app process and records its pid; restart.sh ADDR replaces it.
    let start = dir.path().join("start.sh");
    std::fs::write(
        &start,
        format!(
            "#!/bin/sh\n{} app \"$1\" >/dev/null 2>&1 &\necho $! > \"{}/$1.pid\"\n",
            demo.display(),
            dir.path().display()
        ),
    )
    .unwrap();
    let restart = dir.path().join("restart.sh");
    std::fs::write(
        &restart,
        format!(
            "#!/bin/sh\npid=$(cat \"{0}/$1.pid\")\nkill \"$pid\"\nwhile kill -0 \"$pid\" 2>/dev/null; do sleep 0.05; done\n\"{1}\" \"$1\"\n",
            dir.path().display(),
            start.display()
        ),
    )
    .unwrap();
    for script in [&start, &restart] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let addrs: Vec<_> = (0..3).map(|_| closed_port()).collect();
    for addr in &addrs {
        assert!(std::process::Command::new(&start)
            .arg(addr.to_string())
            .status()
            .unwrap()
            .success());
    }
    for addr in &addrs {
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "app {addr} did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let gw = Gateway::start(&format!(
        "[gateway]\nworkers = 2\naccess_log = \"off\"\n{}",
        upstream_config("app", &addrs, "slow_start = \"1s\"")
    ));

    let load = Load::start(gw.url("/"), 4, 100_000);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/rolling-restart.sh");
    let mut args = vec!["app".to_string(), restart.display().to_string()];
    args.extend(addrs.iter().map(|a| a.to_string()));
    let out = tokio::task::spawn_blocking({
        let socket = gw.socket();
        move || {
            std::process::Command::new("bash")
                .arg(script)
                .args(args)
                .env("GATEWAYCTL", env!("CARGO_BIN_EXE_gatewayctl"))
                .env("GATEWAY_SOCKET", socket)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ok, failed) = load.stop().await;
    for addr in &addrs {
        if let Ok(pid) = std::fs::read_to_string(dir.path().join(format!("{addr}.pid"))) {
            let _ = std::process::Command::new("kill").arg(pid.trim()).status();
        }
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("all 3 servers restarted"), "{stdout}");
    assert!(ok > 200, "only {ok} requests went through");
    assert!(
        failed.is_empty(),
        "{} of {ok} failed: {failed:?}",
        failed.len()
    );
}

/// A drain that cannot finish (a long request still in flight) makes the rolling
/// restart stop with exit 1, and the server it drained is enabled again: the script
/// leaves nothing changed behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_that_stops_early_enables_what_it_drained() {
    let backend = Backend::start(|req| async move {
        if req.uri().path() == "/long" {
            tokio::time::sleep(Duration::from_secs(4)).await;
        }
        hyper::Response::new(full("a"))
    })
    .await;
    let gw = Gateway::start(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n{}",
        upstream_config("app", &[backend.addr], "")
    ));
    let long = tokio::spawn(get_fresh(gw.url("/long")));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/rolling-restart.sh");
    let socket = gw.socket();
    let server = backend.addr.to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("bash")
            .arg(script)
            .args(["app", "true", &server])
            .env("GATEWAYCTL", env!("CARGO_BIN_EXE_gatewayctl"))
            .env("GATEWAY_SOCKET", socket)
            .env("DRAIN_TIMEOUT", "500ms")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("enabling it again"), "{stderr}");
    let status = gw.admin_status().await;
    assert_eq!(
        status["upstreams"]["app"]["servers"][0]["state"], "up",
        "{status}"
    );
    assert_eq!(long.await.unwrap().0, 200);
}

/// The `/status` entries of upstream `app`: (address, source).
fn sources(gw: &Gateway) -> Vec<(String, String)> {
    status_json(gw)["upstreams"]["app"]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["address"].as_str().unwrap().to_string(),
                s["source"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn servers_added_and_removed_at_run_time_change_nothing_else_and_survive_a_reload() {
    let (a, b, c) = (
        with_slow_path("a").await,
        with_slow_path("b").await,
        with_slow_path("c").await,
    );
    let gw = Gateway::start(&format!(
        "[gateway]\nworkers = 2\naccess_log = \"off\"\n{}",
        // Idle connections are kept for the whole test: any new one is a reopened one.
        upstream_config("app", &[a.addr, b.addr], "idle_timeout = \"60s\"")
    ));
    let (a_addr, b_addr, c_addr) = (a.addr.to_string(), b.addr.to_string(), c.addr.to_string());
    // One client: at most one request in flight, so one connection per server suffices
    // and any further one would be a reopened one.
    let load = Load::start(gw.url("/"), 1, 1_000_000);
    wait_until("both servers warm", Duration::from_secs(5), || {
        a.requests() > 50 && b.requests() > 50
    })
    .await;
    let before = generation_and_pids(&gw);
    let b_connections = b.connections.load(std::sync::atomic::Ordering::SeqCst);

    let (code, out, err) = gw.ctl(&["add-server", "app", &c_addr]);
    assert_eq!(
        (code, out.trim()),
        (0, format!("added {c_addr} to app").as_str()),
        "{err}"
    );
    wait_until("c serves", Duration::from_secs(5), || c.requests() > 20).await;
    assert_eq!(
        b.connections.load(std::sync::atomic::Ordering::SeqCst),
        b_connections,
        "no connection to b, which stayed, was opened again"
    );
    // a leaves while it has a request in flight: --wait returns once that is done.
    let started = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..20 {
        slow.push(tokio::spawn(get_fresh(gw.url("/slow"))));
        tokio::time::sleep(Duration::from_millis(10)).await;
        if a.seen().iter().any(|s| s.uri == "/slow") {
            break;
        }
    }
    wait_until("a slow request on a", Duration::from_secs(5), || {
        a.seen().iter().any(|s| s.uri == "/slow")
    })
    .await;
    // The slow requests on b took connections of their own: counted from here.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let b_connections = b.connections.load(std::sync::atomic::Ordering::SeqCst);
    let (code, out, err) = gw.ctl(&["remove-server", "app", &a_addr, "--wait"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("nothing in flight"), "{out}");
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "--wait returned while a's request was in flight"
    );
    for request in slow {
        assert_eq!(request.await.unwrap().0, 200);
    }
    let a_total = a.requests();
    tokio::time::sleep(Duration::from_millis(300)).await;
    load.stop_without_failures(200).await;
    assert_eq!(a.requests(), a_total, "a removed server gets nothing new");
    assert_eq!(
        generation_and_pids(&gw),
        before,
        "no new generation, the same workers"
    );
    assert_eq!(
        b.connections.load(std::sync::atomic::Ordering::SeqCst),
        b_connections,
        "no connection to b, which stayed, was opened again"
    );
    assert_eq!(
        sources(&gw),
        [
            (b_addr.clone(), "file".into()),
            (c_addr.clone(), "runtime".into())
        ]
    );

    // Refusals name their reason and change nothing.
    let (code, _, err) = gw.ctl(&["add-server", "app", &b_addr]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("already a server of app"), "{err}");
    let (code, _, err) = gw.ctl(&["add-server", "nope", &c_addr]);
    assert_eq!(code, 1);
    assert!(err.contains("no upstream \"nope\""), "{err}");
    let (code, _, err) = gw.ctl(&["remove-server", "app", &a_addr]);
    assert_eq!(code, 1);
    assert!(err.contains("is not a server of app"), "{err}");

    // A reload keeps the run-time changes while the upstream exists.
    let (code, _, err) = gw.ctl(&["reload"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        sources(&gw),
        [
            (b_addr.clone(), "file".into()),
            (c_addr.clone(), "runtime".into())
        ]
    );
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..6 {
        seen.insert(get_fresh(gw.url("/")).await.1);
    }
    assert_eq!(seen, ["b", "c"].map(String::from).into());
    // Adding the file's server back undoes its removal.
    let (code, _, err) = gw.ctl(&["add-server", "app", &a_addr]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        sources(&gw),
        [
            (a_addr, "file".into()),
            (b_addr, "file".into()),
            (c_addr, "runtime".into())
        ]
    );
}
