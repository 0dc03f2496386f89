//! The process model: workers, crash recovery, reloads that lose nothing, stop.

use crate::common::*;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

fn worker_pids(gw: &Gateway) -> Vec<u64> {
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

fn two_workers(backends: &[std::net::SocketAddr]) -> String {
    format!(
        "[gateway]\nworkers = 2\nshutdown_timeout = \"5s\"\n{}",
        upstream_config("app", backends, "")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_socket_is_private_and_status_lists_the_workers() {
    let backend = Backend::named("a").await;
    let gw = Gateway::start(&two_workers(&[backend.addr]));
    let mode = std::fs::metadata(gw.socket()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let status = status_json(&gw);
    assert_eq!(status["generation"], 1);
    assert_eq!(worker_pids(&gw).len(), 2);
    assert_eq!(status["upstreams"]["app"]["policy"], "round_robin");
    let (code, table, _) = gw.ctl(&["status"]);
    assert_eq!(code, 0);
    assert!(
        table.contains("serving") && table.contains("upstream app"),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_worker_is_replaced_quickly_and_a_crash_loop_backs_off() {
    let backend = Backend::named("a").await;
    let gw = Gateway::start(&two_workers(&[backend.addr]));
    let before = worker_pids(&gw);
    signal(before[0], "KILL");
    let killed_at = Instant::now();
    wait_until("a replacement worker", Duration::from_secs(3), || {
        let now = worker_pids(&gw);
        now.len() == 2 && !now.contains(&before[0])
    })
    .await;
    assert!(
        killed_at.elapsed() < Duration::from_secs(1),
        "replaced after {:?}",
        killed_at.elapsed()
    );
    assert_eq!(
        client().get(gw.url("/")).send().await.unwrap().status(),
        200
    );

    // Keep killing the newest worker: each restart waits longer.
    for _ in 0..3 {
        let pids = worker_pids(&gw);
        let newest = *pids.iter().max().unwrap();
        signal(newest, "KILL");
        wait_until("a replacement worker", Duration::from_secs(5), || {
            let now = worker_pids(&gw);
            now.len() == 2 && !now.contains(&newest)
        })
        .await;
    }
    let log = gw.stderr();
    for delay in [
        "restarting in 100ms",
        "restarting in 200ms",
        "restarting in 400ms",
    ] {
        assert!(log.contains(delay), "no {delay:?} in:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_do_not_outlive_their_supervisor() {
    let backend = Backend::named("a").await;
    let mut gw = Gateway::start(&two_workers(&[backend.addr]));
    let pids = worker_pids(&gw);
    gw.child.kill().unwrap();
    gw.child.wait().unwrap();
    wait_until("workers to exit", Duration::from_secs(5), || {
        pids.iter().all(|&p| !alive(p))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_starts_a_new_generation_and_an_invalid_file_changes_nothing() {
    let (a, b) = (Backend::named("a").await, Backend::named("b").await);
    let gw = Gateway::start(&two_workers(&[a.addr]));
    let c = client();
    assert_eq!(
        c.get(gw.url("/"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "a"
    );
    let old = worker_pids(&gw);

    // Point the upstream at b and reload.
    let text = std::fs::read_to_string(gw.config_path()).unwrap();
    std::fs::write(
        gw.config_path(),
        text.replace(&a.addr.to_string(), &b.addr.to_string()),
    )
    .unwrap();
    let (code, out, err) = gw.ctl(&["reload"]);
    assert_eq!((code, out.trim()), (0, "reloaded: generation 2"), "{err}");
    let new = worker_pids(&gw);
    assert!(new.iter().all(|p| !old.contains(p)));
    // The kept-alive connection ends on the old generation with `Connection: close`...
    let last_old = c.get(gw.url("/")).send().await.unwrap();
    assert_eq!(last_old.headers()["connection"], "close");
    // ...and the next one lands on the new generation.
    assert_eq!(
        c.get(gw.url("/"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "b"
    );
    wait_until("old workers to exit", Duration::from_secs(5), || {
        old.iter().all(|&p| !alive(p))
    })
    .await;

    // An invalid file: refused with the reason, nothing changes.
    let good = std::fs::read_to_string(gw.config_path()).unwrap();
    std::fs::write(gw.config_path(), format!("{good}\nbogus = 1\n")).unwrap();
    let (code, _, err) = gw.ctl(&["reload"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("gateway.toml:") && err.contains("bogus"),
        "{err}"
    );
    assert_eq!(worker_pids(&gw), new);

    // Valid, but the new workers cannot start (their access log cannot be opened): the
    // reload fails and the old generation keeps serving.
    std::fs::write(
        gw.config_path(),
        good.replace(
            "access_log = \"stdout\"",
            "access_log = \"/proc/no/such/dir/access.log\"",
        ),
    )
    .unwrap();
    let (code, _, err) = gw.ctl(&["reload"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("exited before serving"), "{err}");
    assert_eq!(worker_pids(&gw), new);
    assert_eq!(status_json(&gw)["generation"], 2);
    assert_eq!(
        c.get(gw.url("/"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "b"
    );

    // SIGHUP reloads too.
    std::fs::write(gw.config_path(), &good).unwrap();
    signal(gw.child.id() as u64, "HUP");
    wait_until("generation 3", Duration::from_secs(5), || {
        status_json(&gw)["generation"] == 3
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_finishes_the_request_in_flight() {
    let backend = Backend::start(|_req| async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        hyper::Response::new(full("slow"))
    })
    .await;
    let mut gw = Gateway::start(&two_workers(&[backend.addr]));
    let url = gw.url("/");
    let request = tokio::spawn(get_text(url));
    wait_until(
        "the request to reach the backend",
        Duration::from_secs(3),
        || backend.requests() == 1,
    )
    .await;
    let (code, _, err) = gw.ctl(&["stop"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(request.await.unwrap(), "slow");
    let deadline = Instant::now() + Duration::from_secs(5);
    while gw.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "supervisor did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gw.child.try_wait().unwrap().unwrap().success());
    assert!(!gw.socket().exists(), "control socket left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_reopens_the_access_log_for_logrotate() {
    let backend = Backend::named("a").await;
    let gw = Gateway::start(&format!(
        "[gateway]\nworkers = 2\naccess_log = \"access.log\"\n{}",
        upstream_config("app", &[backend.addr], "")
    ));
    let (log, rotated) = (
        gw.dir.path().join("access.log"),
        gw.dir.path().join("access.log.1"),
    );
    let lines = |path: &std::path::Path| {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .count()
    };
    get_text(gw.url("/before")).await;
    wait_until("the first line", Duration::from_secs(5), || {
        lines(&log) == 1
    })
    .await;
    // What logrotate does: rename, then signal.
    std::fs::rename(&log, &rotated).unwrap();
    signal(gw.child.id() as u64, "USR1");
    // Each worker reopens on its own; the next requests may reach either.
    wait_until("both workers to reopen", Duration::from_secs(5), || {
        gw.stderr().matches("access log reopened").count() == 2
    })
    .await;
    for _ in 0..2 {
        get_text(gw.url("/after")).await;
    }
    wait_until("lines in the new file", Duration::from_secs(5), || {
        lines(&log) == 2
    })
    .await;
    assert_eq!(lines(&rotated), 1, "nothing more went to the rotated file");
    assert!(std::fs::read_to_string(&log).unwrap().contains("/after"));
}

/// wrk, 16 connections for 10 s against two backends, five reloads during the run: not one
/// socket error, not one non-2xx answer. Once with keep-alive, once with a new connection
/// per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_lose_no_request() {
    let Some(wrk) = which("wrk") else {
        panic!("wrk is needed for this test: apt-get install wrk (.ci/run does)");
    };
    let (a, b) = (Backend::named("a").await, Backend::named("b").await);
    let gw = Gateway::start(&two_workers(&[a.addr, b.addr]));
    let mut generation = 1;
    for extra in [&[][..], &["-H", "Connection: close"][..]] {
        let mut load = Command::new(&wrk);
        load.args(["-t2", "-c16", "-d10s"])
            .args(extra)
            .arg(gw.url("/"));
        let run = tokio::task::spawn_blocking(move || load.output().unwrap());
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            generation += 1;
            let (code, out, err) = gw.ctl(&["reload"]);
            assert_eq!(code, 0, "{err}");
            assert_eq!(out.trim(), format!("reloaded: generation {generation}"));
        }
        let out = run.await.unwrap();
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{report}");
        assert!(!report.contains("Socket errors"), "{extra:?}:\n{report}");
        assert!(!report.contains("Non-2xx"), "{extra:?}:\n{report}");
        let requests: u64 = report
            .lines()
            .find(|l| l.contains("requests in"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(requests > 1000, "{report}");
        eprintln!("{extra:?}: {requests} requests, 5 reloads, no errors");
    }
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| std::path::Path::new(dir).join(program))
        .find(|p| p.is_file())
}

/// `watch = true`: an edit of the file (written in place or renamed over it) reloads by
/// itself; a broken edit is logged and changes nothing; touching the file is no change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_config_reloads_itself_when_it_changes() {
    let (a, b) = (Backend::named("a").await, Backend::named("b").await);
    // The access log is in the config file's directory: its writes are no change.
    let gw = Gateway::start(&format!(
        "[gateway]\nwatch = true\naccess_log = \"access.log\"\n{}",
        upstream_config("app", &[a.addr], "")
    ));
    assert_eq!(get_text(gw.url("/")).await, "a");
    let noise = {
        let url = gw.url("/noise");
        tokio::spawn(async move {
            for _ in 0..200 {
                let _ = client().get(&url).send().await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        status_json(&gw)["generation"],
        1,
        "log writes are not a change"
    );
    let path = gw.config_path();
    let text = std::fs::read_to_string(&path).unwrap();
    let generation = |gw: &Gateway| status_json(gw)["generation"].as_u64().unwrap();

    // An editor's save: a new file renamed over the old one.
    let edited = text.replace(&a.addr.to_string(), &b.addr.to_string());
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, &edited).unwrap();
    std::fs::rename(&temporary, &path).unwrap();
    wait_until("the edit to be loaded", Duration::from_secs(10), || {
        generation(&gw) == 2
    })
    .await;
    assert_eq!(get_text(gw.url("/")).await, "b");
    noise.abort();

    // A broken edit, written in place: logged, the running generation keeps serving.
    std::fs::write(&path, edited.replace("[upstream.app]", "[upstream.app")).unwrap();
    wait_until(
        "the failed reload in the log",
        Duration::from_secs(10),
        || gw.stderr().contains("reload failed"),
    )
    .await;
    assert_eq!(generation(&gw), 2);
    assert_eq!(get_text(gw.url("/")).await, "b");

    // Fixed again: loaded. Then touched without a change: nothing.
    std::fs::write(&path, &text).unwrap();
    wait_until("the fix to be loaded", Duration::from_secs(10), || {
        generation(&gw) == 3
    })
    .await;
    assert_eq!(get_text(gw.url("/")).await, "a");
    let file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    file.set_modified(std::time::SystemTime::now()).unwrap();
    drop(file);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(generation(&gw), 3, "a touch is not a change");
}

/// A package upgrade renames a new file over the running binary's path: reloads and
/// replacement workers still start (from the supervisor's own program), under load and
/// with the file gone altogether.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_replaced_on_disk_still_reloads_and_respawns() {
    let backend = Backend::named("a").await;
    let gw = Gateway::start_copy(&two_workers(&[backend.addr]));
    let load = Load::start(gw.url("/"), 4, 20_000);
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.replace_program(&gw.program());
    let (code, out, err) = gw.ctl(&["reload"]);
    assert_eq!((code, out.trim()), (0, "reloaded: generation 2"), "{err}");
    std::fs::remove_file(gw.program()).unwrap();
    let (code, out, err) = gw.ctl(&["reload"]);
    assert_eq!((code, out.trim()), (0, "reloaded: generation 3"), "{err}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    load.stop_without_failures(100).await;

    let before = worker_pids(&gw);
    signal(before[0], "KILL");
    wait_until("a replacement worker", Duration::from_secs(3), || {
        let now = worker_pids(&gw);
        now.len() == 2 && !now.contains(&before[0])
    })
    .await;
    let log = gw.stderr();
    assert!(!log.contains("cannot start a worker"), "{log}");
    assert_eq!(get_fresh(gw.url("/")).await, (200, "a".to_string()));
}

/// Stops whatever gateway answers on `socket` when dropped: the supervisor an upgrade
/// started is not the test's child.
pub(crate) struct StopOnDrop(pub(crate) std::path::PathBuf);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = Command::new(env!("CARGO_BIN_EXE_gatewayctl"))
            .arg("-s")
            .arg(&self.0)
            .args(["stop", "--now"])
            .output();
    }
}

/// A package update renames a new binary over the running one; `gatewayctl upgrade`
/// starts it as a new supervisor on the same sockets and state, the old one drains and
/// exits, and clients under load see no failed request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_replaces_the_running_gateway_under_load_without_a_failed_request() {
    let backend = Backend::named("a").await;
    let mut gw = Gateway::start_copy(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n{}",
        two_workers(&[backend.addr])
    ));
    let _stop = StopOnDrop(gw.socket());
    let old_workers = worker_pids(&gw);
    gw.replace_program(&gw.program());

    let load = Load::start(gw.url("/"), 4, 50_000);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (code, out, err) = gw.ctl(&["upgrade"]);
    assert_eq!(code, 0, "{out}{err}\n{}", gw.stderr());
    assert!(out.starts_with("upgraded: "), "{out}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(status) = gw.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the old supervisor did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exit.success(), "{exit}\n{}", gw.stderr());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ok = load.stop_without_failures(100).await;

    // The new supervisor answers on the same control socket and admin address, with new
    // workers, and the counters of the shared table carried over.
    let new_workers = worker_pids(&gw);
    assert_eq!(new_workers.len(), 2);
    assert!(new_workers.iter().all(|p| !old_workers.contains(p)));
    let status = gw.admin_status().await;
    assert_eq!(status["generation"], 2, "the generations go on: {status}");
    let requests = status["upstreams"]["app"]["servers"][0]["requests_total"]
        .as_u64()
        .unwrap();
    assert!(requests as usize >= ok, "{requests} < {ok}: {status}");
    assert_eq!(get_fresh(gw.url("/")).await, (200, "a".to_string()));

    // SIGUSR2 does the same, here to the supervisor the first upgrade started; a server
    // added at run time goes on serving under the next supervisor.
    let added = Backend::named("b").await;
    let (code, _, err) = gw.ctl(&["add-server", "app", &added.addr.to_string()]);
    assert_eq!(code, 0, "{err}");
    let pid: u64 = out
        .rsplit("supervisor pid ")
        .next()
        .and_then(|rest| rest.trim().trim_end_matches(')').parse().ok())
        .unwrap_or_else(|| panic!("no pid in {out:?}"));
    let load = Load::start(gw.url("/"), 4, 50_000);
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(pid, "USR2");
    wait_until(
        "the second supervisor to hand over",
        Duration::from_secs(10),
        || !alive(pid),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    load.stop_without_failures(100).await;
    let third = worker_pids(&gw);
    assert!(third.iter().all(|p| !new_workers.contains(p)), "{third:?}");
    let status = status_json(&gw);
    assert_eq!(status["generation"], 3);
    assert_eq!(
        status["upstreams"]["app"]["servers"][1]["source"], "runtime",
        "{status}"
    );
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4 {
        seen.insert(get_fresh(gw.url("/")).await.1);
    }
    assert_eq!(seen, ["a", "b"].map(String::from).into());
    // A reload after an upgrade starts the next generation, and the records the replaced
    // supervisors used are free again.
    let (code, out, err) = gw.ctl(&["reload"]);
    assert_eq!((code, out.trim()), (0, "reloaded: generation 4"), "{err}");
    assert_eq!(get_fresh(gw.url("/")).await.0, 200);
    eprintln!("two upgrades under load, no request failed");
    let (code, _, err) = gw.ctl(&["stop"]);
    assert_eq!(code, 0, "{err}");
}

/// A new binary that cannot start is refused: `upgrade` exits 1 with the reason, and
/// the running gateway keeps serving with its workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_to_a_binary_that_cannot_start_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let backend = Backend::named("a").await;
    let gw = Gateway::start_copy(&two_workers(&[backend.addr]));
    let _stop = StopOnDrop(gw.socket());
    let workers = worker_pids(&gw);
    let program = gw.program();
    let script = program.with_extension("sh");
    std::fs::write(&script, "#!/bin/sh\necho 'broken build' >&2\nexit 3\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    gw.replace_program(&script);
    let (code, out, err) = gw.ctl(&["upgrade"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("exited"), "{err}");
    assert_eq!(worker_pids(&gw), workers);
    assert_eq!(get_fresh(gw.url("/")).await, (200, "a".to_string()));
    assert!(gw.stderr().contains("broken build"), "{}", gw.stderr());
}

/// With systemd's `Type=notify`, the gateway says `READY=1` once its workers serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_is_told_when_the_gateway_serves() {
    let backend = Backend::named("a").await;
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nworkers = 1\ncontrol_socket = \"gw.sock\"\n[[listener]]\nlisten = \"127.0.0.1:0\"\n{}",
            upstream_config("app", &[backend.addr], "")
        ),
    )
    .unwrap();
    let mut child = Command::new(gateway_bin())
        .arg("-c")
        .arg(&config)
        .env("NOTIFY_SOCKET", &notify)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let got = socket.recv(&mut buf);
    let _ = child.kill();
    let _ = child.wait();
    let n = got.expect("no message from the gateway");
    assert_eq!(&buf[..n], b"READY=1");
}
