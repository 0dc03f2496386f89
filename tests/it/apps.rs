//! Apps the gateway runs (`[app.NAME]`): a real Node.js app and the demo backend as
//! instances, started, made servers once ready, restarted (rolling, crashed, too big),
//! reloaded, upgraded, stopped and killed with the gateway.

use crate::common::*;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// `node` is there (Debian's `nodejs`; `.ci/run` installs it), or the test says it skips.
fn node() -> bool {
    let found = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("skipped: node is not installed (.ci/run installs Debian's nodejs)");
    }
    found
}

fn node_app(instances: u16, extra: &str) -> String {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/apps");
    format!(
        "[[route]]\nupstream = \"web\"\n\n[upstream.web]\nservers = [{{ app = \"web\" }}]\n\n\
         [app.web]\ncommand = [\"node\", \"web.js\"]\ndir = \"{dir}\"\ninstances = {instances}\n\
         port = {}\nready = {{ path = \"/healthz\", timeout = \"10s\" }}\nstop_timeout = \"5s\"\n\
         log = \"web.log\"\n{extra}",
        free_port_range(2 * instances)
    )
}

/// The `apps.web.instances` of `/status`: (instance, pid, port, state, restarts).
fn instances(gw: &Gateway) -> Vec<(u64, u64, u64, String, u64)> {
    let status = status_json(gw);
    status["apps"]["web"]["instances"]
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .map(|i| {
            (
                i["instance"].as_u64().unwrap(),
                i["pid"].as_u64().unwrap(),
                i["port"].as_u64().unwrap(),
                i["state"].as_str().unwrap().to_string(),
                i["restarts"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Waits until none of `pids` runs any more.
async fn wait_exited(what: &str, pids: &[u64]) {
    let what = format!("{what} exited");
    wait_until(&what, Duration::from_secs(10), || {
        pids.iter().all(|&p| !alive(p))
    })
    .await;
}

fn ready_pids(gw: &Gateway) -> Vec<u64> {
    let mut pids: Vec<u64> = instances(gw)
        .into_iter()
        .filter(|i| i.3 == "ready")
        .map(|i| i.1)
        .collect();
    pids.sort();
    pids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_start_ready_with_port_and_instance_and_serve_in_turn() {
    if !node() {
        return;
    }
    // Each instance answers /healthz only after 300 ms: listening is not ready.
    let gw = Gateway::start(&node_app(
        2,
        "env = { READY_AFTER_MS = \"300\", GREETING = \"hi\" }\n",
    ));
    // The workers serve once the instances are ready: the first request finds them.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let (status, body) = get_fresh(gw.url("/")).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.starts_with("hi from instance "), "{body}");
        seen.insert(body);
    }
    assert_eq!(seen.len(), 2, "both instances take requests: {seen:?}");
    let listed = instances(&gw);
    assert_eq!(listed.len(), 2);
    for (n, (instance, pid, port, state, restarts)) in listed.iter().enumerate() {
        assert_eq!(
            (*instance, state.as_str(), *restarts),
            (n as u64, "ready", 0)
        );
        assert!(seen.contains(&format!("hi from instance {n} pid {pid} port {port}\n")));
    }
    let status = status_json(&gw);
    let servers = status["upstreams"]["web"]["servers"].as_array().unwrap();
    assert_eq!(servers.len(), 2);
    assert!(servers
        .iter()
        .all(|s| s["source"] == "app" && s["state"] == "up"));
    let (code, table, _) = gw.ctl(&["status"]);
    assert_eq!(code, 0);
    assert!(
        table.contains("app web") && table.contains("ready"),
        "{table}"
    );
    // The gateway runs them: they are not removed by hand.
    let first = format!("127.0.0.1:{}", listed[0].2);
    let (code, _, err) = gw.ctl(&["remove-server", "web", &first]);
    assert_eq!(code, 1);
    assert!(err.contains("is an instance of app:web"), "{err}");
    // Nothing the supervisor holds open reaches the app (the shared table least of all).
    for (_, pid, ..) in listed {
        let fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.unwrap().path()).ok())
            .map(|p| p.display().to_string())
            .collect();
        assert!(!fds.iter().any(|f| f.contains("gateway-table")), "{fds:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_instances_restart_one_at_a_time_under_load_without_a_failed_request() {
    if !node() {
        return;
    }
    let gw = Gateway::start(&node_app(4, ""));
    let before = ready_pids(&gw);
    assert_eq!(before.len(), 4);
    // A WebSocket on an old instance: it is left to finish until stop_timeout.
    let mut ws = std::net::TcpStream::connect(gw.addr).unwrap();
    ws.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    ws.write_all(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").unwrap();
    let mut head = [0u8; 512];
    let n = ws.read(&mut head).unwrap();
    assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 101"));
    let echo = |ws: &mut std::net::TcpStream, text: &[u8]| {
        ws.write_all(text)?;
        let mut back = vec![0u8; text.len()];
        ws.read_exact(&mut back)?;
        Ok::<_, std::io::Error>(back)
    };
    assert_eq!(echo(&mut ws, b"before").unwrap(), b"before");

    let load = Load::start(gw.url("/"), 8, 100_000);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let (code, out, err) = gw.ctl(&["restart", "web"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("restarted web"), "{out}");
    let took = started.elapsed();
    // The WebSocket still works on its draining instance (it ends at stop_timeout).
    assert_eq!(echo(&mut ws, b"during").unwrap(), b"during");
    assert!(instances(&gw).iter().any(|i| i.3 == "draining"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let served = load.stop_without_failures(100).await;

    let after = ready_pids(&gw);
    assert_eq!(after.len(), 4);
    assert!(
        after.iter().all(|p| !before.contains(p)),
        "{before:?} -> {after:?}"
    );
    assert!(instances(&gw)
        .iter()
        .filter(|i| i.3 == "ready")
        .all(|i| i.4 == 1));
    // One at a time: each new instance was ready before its old one left.
    let log = gw.stderr();
    let order: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("app instance ready") || l.contains("app instance started"))
        .skip(8)
        .collect();
    assert_eq!(order.len(), 8, "{log}");
    for pair in order.chunks(2) {
        assert!(
            pair[0].contains("started") && pair[1].contains("ready"),
            "{order:?}"
        );
    }
    wait_until(
        "the old instance is killed at stop_timeout",
        Duration::from_secs(10),
        || echo(&mut ws, b"x").is_err(),
    )
    .await;
    wait_exited("the old instances", &before).await;
    eprintln!("{served} requests, 0 failed, restart of 4 instances took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_instance_comes_back_and_a_crash_loop_waits_longer_each_time() {
    if !node() {
        return;
    }
    let gw = Gateway::start(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n{}\n[upstream.loop]\nservers = [{{ app = \"loop\" }}]\n\n[app.loop]\ncommand = [\"sh\", \"-c\", \"echo starting; exit 3\"]\ninstances = 1\nport = {}\n",
        node_app(2, ""),
        free_port_range(2)
    ));
    let before = ready_pids(&gw);
    let (status, _) = get_fresh(gw.url("/crash")).await;
    assert_eq!(status, 502, "the instance died under the request");
    wait_until(
        "the crashed instance is back",
        Duration::from_secs(10),
        || {
            let now = ready_pids(&gw);
            now.len() == 2 && now != before
        },
    )
    .await;
    for _ in 0..4 {
        assert_eq!(get_fresh(gw.url("/")).await.0, 200);
    }
    assert_eq!(instances(&gw).iter().map(|i| i.4).sum::<u64>(), 1);
    assert!(gw.stderr().contains("exited (exit status: 3)"));

    // The loop app never gets ready: 0.1 s, 0.2 s, 0.4 s… between its starts.
    wait_until("the crash loop backs off", Duration::from_secs(10), || {
        gw.stderr().contains("restarting in 0.8s")
    })
    .await;
    let log = gw.stderr();
    let delays: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("app loop#0"))
        .filter_map(|l| l.split("restarting in ").nth(1))
        .collect();
    assert_eq!(&delays[..4], ["0.1s", "0.2s", "0.4s", "0.8s"], "{log}");
    let status = status_json(&gw);
    let looping = &status["apps"]["loop"]["instances"][0];
    assert!(looping["restarts"].as_u64().unwrap() >= 3, "{looping}");
    assert_eq!(status["upstreams"]["loop"]["servers"][0]["state"], "down");
    assert_eq!(status["upstreams"]["loop"]["servers"][0]["source"], "app");
    let (code, why) = gw.admin_get("/readyz").await;
    assert_eq!(code, 503);
    assert!(
        why.contains("upstream loop: app loop has no ready instance"),
        "{why}"
    );
    let app_log = std::fs::read_to_string(gw.dir.path().join("web.log")).unwrap();
    assert!(app_log.contains("listening on"), "{app_log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_above_max_memory_is_replaced_rolling() {
    if !node() {
        return;
    }
    let gw = Gateway::start(&node_app(2, "max_memory = \"100m\"\n"));
    let before = ready_pids(&gw);
    let load = Load::start(gw.url("/"), 4, 100_000);
    // Two allocations of 64 MiB on one instance: above 100 MiB.
    let client = client();
    let mut grown = None;
    for _ in 0..2 {
        let body = client
            .get(gw.url("/grow"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if body.contains("128 MiB") {
            grown = Some(body);
            break;
        }
    }
    let grown = match grown {
        Some(g) => g,
        None => client
            .get(gw.url("/grow"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    };
    assert!(grown.contains("MiB"), "{grown}");
    wait_until(
        "the big instance is replaced",
        Duration::from_secs(15),
        || {
            gw.stderr().contains("above max_memory")
                && ready_pids(&gw).len() == 2
                && ready_pids(&gw) != before
        },
    )
    .await;
    load.stop_without_failures(10).await;
    let replaced: Vec<u64> = before
        .iter()
        .copied()
        .filter(|p| !ready_pids(&gw).contains(p))
        .collect();
    assert!(!replaced.is_empty());
    wait_exited("the big instance", &replaced).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_restarts_a_changed_app_rolling_and_leaves_an_unchanged_one_alone() {
    if !node() {
        return;
    }
    let gw = Gateway::start(&node_app(2, ""));
    let first = ready_pids(&gw);
    let path = gw.config_path();
    let text = std::fs::read_to_string(&path).unwrap();
    // A change elsewhere in the file: the instances stay.
    std::fs::write(
        &path,
        format!("{text}\n[upstream.other]\nservers = [{{ address = \"127.0.0.1:9\" }}]\n"),
    )
    .unwrap();
    let (code, out, err) = gw.ctl(&["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(ready_pids(&gw), first);
    // A new environment under load: rolling, nothing fails, the new one answers.
    let load = Load::start(gw.url("/"), 4, 100_000);
    tokio::time::sleep(Duration::from_millis(200)).await;
    std::fs::write(
        &path,
        text.replace(
            "log = \"web.log\"",
            "log = \"web.log\"\nenv = { GREETING = \"v2\" }",
        ),
    )
    .unwrap();
    let (code, out, err) = gw.ctl(&["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    wait_until("both instances run v2", Duration::from_secs(15), || {
        let now = ready_pids(&gw);
        now.len() == 2 && now.iter().all(|p| !first.contains(p))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    load.stop_without_failures(10).await;
    for _ in 0..2 {
        assert!(get_fresh(gw.url("/")).await.1.starts_with("v2 from"));
    }
    // And a worker that dies leaves them alone too.
    let (_, workers) = generation_and_pids(&gw);
    let pids = ready_pids(&gw);
    signal(workers[0], "KILL");
    wait_until("the worker is replaced", Duration::from_secs(10), || {
        generation_and_pids(&gw).1 != workers
    })
    .await;
    assert_eq!(ready_pids(&gw), pids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_lets_the_last_request_finish_then_stops_the_instances() {
    if !node() {
        return;
    }
    let mut gw = Gateway::start(&node_app(2, ""));
    let pids = ready_pids(&gw);
    let slow = tokio::spawn(get_fresh(gw.url("/slow?ms=1500")));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (code, _, _) = gw.ctl(&["stop"]);
    assert_eq!(code, 0);
    let (status, body) = slow.await.unwrap();
    assert_eq!(status, 200, "{body}");
    let exit = tokio::task::spawn_blocking(move || {
        let status = gw.child.wait().unwrap();
        (status, gw)
    })
    .await
    .unwrap();
    assert!(exit.0.success());
    let gw = exit.1;
    for pid in pids {
        assert!(!alive(pid), "instance {pid} outlived the gateway");
    }
    let log = std::fs::read_to_string(gw.dir.path().join("web.log")).unwrap();
    assert_eq!(log.matches("got SIGTERM").count(), 2, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_instance_outlives_a_gateway_killed_with_sigkill() {
    let demo = gateway_bin()
        .parent()
        .unwrap()
        .join("examples/demo_backend");
    let gw = Gateway::start(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[[route]]\nupstream = \"demo\"\n\n[upstream.demo]\nservers = [{{ app = \"demo\" }}]\n\n\
         [app.demo]\ncommand = [\"{}\", \"d\"]\ninstances = 3\nport = {}\n",
        demo.display(),
        free_port_range(6)
    ));
    let body = get_text(gw.url("/")).await;
    assert!(body.starts_with("hello from backend d"), "{body}");
    let status = status_json(&gw);
    let pids: Vec<u64> = status["apps"]["demo"]["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["pid"].as_u64().unwrap())
        .collect();
    assert_eq!(pids.len(), 3);
    let (_, metrics) = gw.admin_get("/metrics").await;
    for line in [
        "gateway_app_instances{app=\"demo\",state=\"ready\"} 3",
        "gateway_app_instances{app=\"demo\",state=\"stopped\"} 0",
        "gateway_app_restarts_total{app=\"demo\"} 0",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    signal(gw.child.id() as u64, "KILL");
    wait_exited("every instance", &pids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_replaces_the_instances_without_a_failed_request() {
    if !node() {
        return;
    }
    let gw = Gateway::start_copy(&node_app(2, ""));
    // The supervisor the upgrade starts is not the test's child: stopped through its socket.
    let _stop = crate::lifecycle::StopOnDrop(gw.socket());
    let before = ready_pids(&gw);
    let load = Load::start(gw.url("/"), 4, 100_000);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (code, out, err) = gw.ctl(&["upgrade"]);
    assert_eq!(code, 0, "{out}{err}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    load.stop_without_failures(10).await;
    let after = ready_pids(&gw);
    assert_eq!(after.len(), 2);
    assert!(after.iter().all(|p| !before.contains(p)));
    wait_exited("the old supervisor's instances", &before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_goes_to_the_log_line_by_line_and_sigusr1_reopens_it() {
    if !node() {
        return;
    }
    let gw = Gateway::start(&node_app(1, ""));
    let log = gw.dir.path().join("web.log");
    assert_eq!(get_text(gw.url("/print?line=first")).await, "printed\n");
    let pid = ready_pids(&gw)[0];
    wait_until("the lines are written", Duration::from_secs(5), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("stderr first")
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains(&format!(" web#0 {pid} out: first\n")),
        "{text}"
    );
    assert!(
        text.contains(&format!(" web#0 {pid} err: stderr first\n")),
        "{text}"
    );
    std::fs::rename(&log, log.with_extension("log.1")).unwrap();
    signal(gw.child.id() as u64, "USR1");
    tokio::time::sleep(Duration::from_millis(300)).await;
    get_text(gw.url("/print?line=second")).await;
    wait_until(
        "the new file has the next line",
        Duration::from_secs(5),
        || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("out: second")
        },
    )
    .await;
}

#[test]
fn check_refuses_an_app_it_could_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        "[[listener]]\nlisten = \"127.0.0.1:0\"\n[[route]]\nupstream = \"web\"\n\
         [upstream.web]\nservers = [{ app = \"web\" }]\n\
         [app.web]\ncommand = [\"./missing.js\"]\ndir = \"nowhere\"\nport = 3100\n",
    )
    .unwrap();
    let (code, err) = gateway_with_config(&["check"], &path);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("gateway.toml:9:7: app.web.dir"), "{err}");
    assert!(err.contains("app.web.command"), "{err}");
}
