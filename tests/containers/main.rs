//! `docker/Dockerfile` and `docker/compose.yaml` run for real: the image is built as
//! written (with the quick `image-test` Cargo profile unless `GATEWAY_IMAGE_PROFILE` names
//! another, such as `release`), the compose file runs the gateway in front of the app scaled to three and then
//! five replicas, and a reload inside the container and a `docker stop` lose no request.
//!
//! Its own test binary, so that cargo runs it after the other tests, never beside them: the
//! build inside the container takes both cores for minutes. It needs a Docker engine
//! (started when `dockerd` is installed and none runs), `docker-compose` and, where the
//! base images cannot be pulled, `debootstrap` (see `prepare.sh`); without them it prints
//! why and passes. Containers talk only on the network compose makes for the
//! project, and the gateway is published on a free loopback port.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Progress and the reason for a skip, written past the test harness's capture (which
/// takes only `print!` and `eprint!`), so that `make test` shows them.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    if !out.status.success() {
        let said: Vec<u8> = [out.stdout, out.stderr].concat();
        let tail = String::from_utf8_lossy(&said[said.len().saturating_sub(6000)..]);
        panic!("{cmd:?} failed, ending with: {tail}");
    }
    out
}

fn stdout(out: Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The compose project of this test; `down` removes its containers, network and image.
struct Project {
    name: String,
    publish: String,
}

impl Project {
    fn compose(&self) -> Command {
        let mut cmd = Command::new("docker-compose");
        cmd.current_dir(root().join("docker"))
            .args(["-p", &self.name, "-f", "compose.yaml"])
            .env("GATEWAY_PUBLISH", &self.publish)
            .env("COMPOSE_INTERACTIVE_NO_CLI", "1");
        cmd
    }

    fn containers(&self, service: &str) -> Vec<String> {
        let out = run(self.compose().args(["ps", "-q", service]));
        stdout(out).lines().map(str::to_string).collect()
    }

    fn scale(&self, replicas: usize) {
        run(self.compose().args([
            "up",
            "-d",
            "--no-build",
            "--no-recreate",
            "--scale",
            &format!("app={replicas}"),
        ]));
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = self
            .compose()
            .args(["down", "-v", "--rmi", "local", "-t", "2"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // The build stage's image (2 GB) is left untagged by the multi-stage build.
        let _ = Command::new("docker")
            .args([
                "image",
                "prune",
                "-f",
                "--filter",
                "label=gateway.stage=build",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Host names of the app's replicas: a container's host name is its short id.
fn replica_names(project: &Project) -> BTreeSet<String> {
    project
        .containers("app")
        .iter()
        .map(|id| id[..12].to_string())
        .collect()
}

/// Which replica answered `body` ("hello from NAME").
fn replica_of(body: &str) -> String {
    body.trim()
        .strip_prefix("hello from ")
        .unwrap_or_else(|| panic!("not the app's answer: {body:?}"))
        .to_string()
}

/// The replicas that answered `count` requests in a row; panics on any failure.
async fn answered_by(client: &reqwest::Client, base: &str, count: usize) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for _ in 0..count {
        let resp = client.get(base).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        names.insert(replica_of(&resp.text().await.unwrap()));
    }
    names
}

/// Waits (40 s at most) until rounds of requests reach each of the app's `replicas`
/// containers; panics on any failed request.
async fn every_replica_answers(
    project: &Project,
    client: &reqwest::Client,
    base: &str,
    replicas: usize,
) {
    let names = replica_names(project);
    assert_eq!(names.len(), replicas, "{names:?}");
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let seen = answered_by(client, base, 20 * replicas).await;
        if seen == names {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "with {replicas} replicas, traffic reached {seen:?}, not {names:?}\n{}",
            logs(project)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `clients` clients, each sending `each` requests one after another: (ok, failures).
async fn load(base: &str, clients: usize, each: usize) -> (usize, Vec<String>) {
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let url = format!("{base}?delay=5");
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut ok = 0;
                let mut failed = Vec::new();
                for _ in 0..each {
                    match client.get(&url).send().await {
                        Ok(r) if r.status() == 200 => match r.text().await {
                            Ok(body) if body.starts_with("hello from ") => ok += 1,
                            other => failed.push(format!("{other:?}")),
                        },
                        other => failed.push(format!("{other:?}")),
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let mut ok = 0;
    let mut failed = Vec::new();
    for task in tasks {
        let (o, f) = task.await.unwrap();
        ok += o;
        failed.extend(f);
    }
    (ok, failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_builds_and_compose_follows_replicas_reloads_and_stops_losing_nothing() {
    // The same folder as `make test`'s early run of prepare.sh, whose lock this waits for.
    let scratch = Path::new(env!("CARGO_TARGET_TMPDIR")).join("containers");
    let started = Instant::now();
    let prepared = Command::new("bash")
        .arg(root().join("tests/containers/prepare.sh"))
        .arg(&scratch)
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&prepared.stderr);
    say!("{}", said.trim_end());
    match prepared.status.code() {
        Some(0) => {}
        Some(3) => {
            let why = said.lines().last().unwrap_or("no reason given");
            say!("SKIPPED: the container test cannot run here: {why}");
            return;
        }
        _ => panic!("tests/containers/prepare.sh failed: {said}"),
    }
    say!(
        "containers: engine and base images ready after {:?}",
        started.elapsed()
    );

    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let project = Project {
        name: format!("gatewaytest{}", std::process::id()),
        publish: format!("127.0.0.1:{port}"),
    };
    // The Dockerfile as written, through the compose file's `build`, with the quick
    // image-test profile unless GATEWAY_IMAGE_PROFILE says otherwise (release takes 8.5
    // minutes on two cores).
    let profile =
        std::env::var("GATEWAY_IMAGE_PROFILE").unwrap_or_else(|_| "image-test".to_string());
    let build = Instant::now();
    run(project
        .compose()
        .args(["build", "--build-arg"])
        .arg(format!("CARGO_PROFILE={profile}")));
    say!(
        "containers: image built with profile {profile} in {:?}",
        build.elapsed()
    );

    project.scale(3);
    let base = format!("http://127.0.0.1:{port}/");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match client.get(&base).send().await {
            Ok(r) if r.status() == 200 => break,
            other => assert!(
                Instant::now() < deadline,
                "the gateway did not answer within 60 s: {other:?}\n{}",
                logs(&project)
            ),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Every replica gets traffic: least_conn over three servers found by the name `app`.
    every_replica_answers(&project, &client, &base, 3).await;
    // Scaled to five, the gateway finds the two new replicas by DNS without a reload.
    project.scale(5);
    every_replica_answers(&project, &client, &base, 5).await;

    // `gatewayctl reload` inside the container, twice, under load: nothing fails.
    let gateway = project.containers("gateway").remove(0);
    let traffic = tokio::spawn({
        let base = base.clone();
        async move { load(&base, 8, 150).await }
    });
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let out = tokio::task::spawn_blocking({
            let gateway = gateway.clone();
            move || run(Command::new("docker").args(["exec", &gateway, "gatewayctl", "reload"]))
        })
        .await
        .unwrap();
        say!("containers: gatewayctl reload: {}", stdout(out));
    }
    let (ok, failed) = traffic.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} of 1200 failed: {failed:?}",
        failed.len()
    );
    assert_eq!(ok, 1200);

    // `docker stop` while slow requests are at the app: each one is answered, the gateway
    // exits 0 well within Docker's 10 s.
    let in_flight: Vec<_> = (0..6)
        .map(|_| {
            let url = format!("{base}?delay=1500");
            tokio::spawn(async move {
                let resp = reqwest::Client::new().get(&url).send().await?;
                let status = resp.status();
                resp.text().await.map(|body| (status, body))
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stop = Instant::now();
    tokio::task::spawn_blocking({
        let gateway = gateway.clone();
        move || run(Command::new("docker").args(["stop", &gateway]))
    })
    .await
    .unwrap();
    let stopped_in = stop.elapsed();
    for task in in_flight {
        let (status, body) = task.await.unwrap().unwrap_or_else(|e| {
            panic!(
                "a request in flight at `docker stop` failed: {e}\n{}",
                logs(&project)
            )
        });
        assert_eq!(status, 200);
        replica_of(&body);
    }
    let exit = stdout(run(Command::new("docker").args([
        "inspect",
        "--format",
        "{{.State.ExitCode}}",
        &gateway,
    ])));
    assert_eq!(exit, "0", "{}", logs(&project));
    assert!(
        stopped_in < Duration::from_secs(8),
        "docker stop took {stopped_in:?}"
    );
    say!(
        "containers: docker stop took {stopped_in:?}; whole test {:?}",
        started.elapsed()
    );
}

/// The gateway's log, for a failure's message.
fn logs(project: &Project) -> String {
    let out = project
        .compose()
        .args(["logs", "--no-color", "--tail", "60", "gateway"])
        .output();
    match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
        Err(e) => format!("(no logs: {e})"),
    }
}
