//! The command-line tools as a user meets them: `gateway check`, `gateway -c` on a bad file,
//! `gatewayctl` without a gateway or into a closed pipe, the demo backend.

use crate::common::*;
use std::process::Command;
use std::time::Duration;

fn write(dir: &tempfile::TempDir, text: &str) -> std::path::PathBuf {
    let path = dir.path().join("gw.toml");
    std::fs::write(&path, text).unwrap();
    path
}

const BAD: &str = r#"[[listener]]
listen = "127.0.0.1:0"

[[route]]
upstream = "nope"

[upstream.app]
policy = "fastest"
servers = [ { address = "not an address" } ]
connect_timeout = "3"
"#;

#[test]
fn check_accepts_the_example_config() {
    let out = Command::new(gateway_bin())
        .args(["check", "-c", "conf/gateway.toml"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "configuration ok\n");
    assert!(out.status.success());
}

#[test]
fn check_lists_every_error_with_file_line_column_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, BAD);
    let (code, err) = gateway_with_config(&["check"], &path);
    assert_eq!(code, Some(1));
    let p = path.display();
    for expected in [
        format!("{p}:5:12: route[0].upstream: upstream \"nope\" is not defined"),
        format!("{p}:8:10: upstream.app.policy: unknown policy \"fastest\""),
        format!("{p}:9:25: upstream.app.servers[0].address:"),
        format!("{p}:10:19: upstream.app.connect_timeout:"),
    ] {
        assert!(err.contains(&expected), "missing {expected:?} in:\n{err}");
    }
}

#[test]
fn unknown_key_is_named_with_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "[gateway]\nworkerz = 2\n");
    let (code, err) = gateway_with_config(&["check"], &path);
    assert_eq!(code, Some(1));
    assert!(
        err.contains(&format!("{}:2:1:", path.display())) && err.contains("workerz"),
        "{err}"
    );
}

#[test]
fn run_refuses_an_invalid_file_with_the_same_messages() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, BAD);
    let (code, err) = gateway_with_config(&[], &path);
    assert_eq!(code, Some(1));
    assert!(err.contains("upstream \"nope\" is not defined"), "{err}");
}

#[test]
fn gatewayctl_without_a_gateway_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gatewayctl"))
        .arg("-s")
        .arg(dir.path().join("none.sock"))
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the gateway"));
}

/// `gatewayctl status | head -1`: the reader goes away, gatewayctl ends quietly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gatewayctl_output_into_a_closed_pipe_is_not_a_panic() {
    let backend = Backend::named("a").await;
    let gw = Gateway::start(&upstream_config("app", &[backend.addr], ""));
    let mut child = Command::new(env!("CARGO_BIN_EXE_gatewayctl"))
        .arg("-s")
        .arg(gw.socket())
        .arg("status")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.code(), Some(0), "{err}");
}

/// `access_log = "stderr"` is standard error, not a file named `stderr`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_to_stderr() {
    let backend = Backend::named("a").await;
    let gw = Gateway::start(&format!(
        "[gateway]\naccess_log = \"stderr\"\n{}",
        upstream_config("app", &[backend.addr], "")
    ));
    get_text(gw.url("/to-stderr")).await;
    wait_until("the access log line", Duration::from_secs(5), || {
        gw.stderr().contains("GET /to-stderr HTTP/1.1")
    })
    .await;
    assert!(!gw.dir.path().join("stderr").exists());
    assert!(gw.access_log().is_empty());
}

/// The demo backend says which address it could not listen on.
#[test]
fn demo_backend_names_the_address_it_cannot_listen_on() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let demo = gateway_bin()
        .parent()
        .unwrap()
        .join("examples/demo_backend");
    let out = Command::new(demo).args(["x", &addr]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
}

/// `gateway -t` is `gateway check`; `--version` names the commit.
#[test]
fn dash_t_checks_and_version_names_the_commit() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, BAD);
    let (code, err) = gateway_with_config(&["-t"], &path);
    assert_eq!(code, Some(1));
    assert!(err.contains("upstream.app.policy"), "{err}");
    let out = Command::new(gateway_bin())
        .args(["-t", "-c", "conf/gateway.toml"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "configuration ok\n");
    let out = Command::new(gateway_bin())
        .arg("--version")
        .output()
        .unwrap();
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(
        version.starts_with("gateway 0.") && version.contains("(commit "),
        "{version}"
    );
}

/// `gatewayctl -c FILE` finds the socket in FILE; a broken FILE is reported as such
/// (exit 1), not as an unreachable gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gatewayctl_reads_the_socket_from_a_config_file_and_names_its_errors() {
    let backend = Backend::named("a").await;
    let gw = Gateway::start(&upstream_config("app", &[backend.addr], ""));
    let ctl = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_gatewayctl"))
            .args(args)
            .env_remove("GATEWAY_SOCKET")
            .current_dir(gw.dir.path())
            .output()
            .unwrap()
    };
    let config = gw.config_path();
    let out = ctl(&["-c", config.to_str().unwrap(), "status"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("upstream app"));
    // A broken file whose gateway does not run: unreachable, and what is wrong with it.
    let dir = tempfile::tempdir().unwrap();
    let bad = write(&dir, BAD);
    let out = ctl(&["-c", bad.to_str().unwrap(), "status"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach the gateway")
            && err.contains("is not a valid config")
            && err.contains("gw.toml:"),
        "{err}"
    );
    // The running gateway's own file, broken: `reload` reaches it, prints its errors,
    // and the gateway logs the failed reload and keeps serving.
    let good = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{good}\n[upstream.x]\npolicy = \"fastest\"\nservers = [{{ address = \"127.0.0.1:1\" }}]\n")).unwrap();
    let out = ctl(&["-c", config.to_str().unwrap(), "reload"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("upstream.x.policy: unknown policy \"fastest\""),
        "{err}"
    );
    // The log reaches the test through a reader thread: a moment after the reply.
    wait_until(
        "the failed reload in the log",
        Duration::from_secs(5),
        || gw.stderr().contains("reload failed"),
    )
    .await;
    assert_eq!(get_text(gw.url("/")).await, "a");
}

/// `${NAME}` and `${NAME:-default}` come from the environment; an unset name without a
/// default is an error at its line and column.
#[test]
fn environment_references_are_replaced_or_reported_where_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "[[listener]]\nlisten = \"127.0.0.1:${GW_TEST_PORT}\"\n\n[[route]]\nupstream = \"app\"\n\n[upstream.app]\nservers = [ { address = \"${GW_TEST_APP:-127.0.0.1:3001}\" } ]\n",
    );
    let check = |port: Option<&str>| {
        let mut c = Command::new(gateway_bin());
        c.args(["check", "-c"]).arg(&path).env_remove("GW_TEST_APP");
        match port {
            Some(p) => c.env("GW_TEST_PORT", p),
            None => c.env_remove("GW_TEST_PORT"),
        };
        let out = c.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(check(Some("8089")).0, Some(0));
    let (code, err) = check(None);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("gw.toml:2:21: ") && err.contains("GW_TEST_PORT is not set"),
        "{err}"
    );
}

/// The build script runs again when the commit or the sources change, not when
/// `.git/index` does (a checkout of a config file, a `git add`): that recompiled the
/// crate for 1-2 minutes before `make run`. Read from what the script told cargo.
#[test]
fn the_build_does_not_redo_the_crate_for_a_git_index_change() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    if !root.join(".git").exists() {
        eprintln!("skipped: not built from a git checkout");
        return;
    }
    let build = gateway_bin().parent().unwrap().join("build");
    let newest = std::fs::read_dir(&build)
        .unwrap()
        .filter_map(|e| {
            let output = e.ok()?.path().join("output");
            let text = std::fs::read_to_string(&output).ok()?;
            let modified = std::fs::metadata(&output).ok()?.modified().ok()?;
            text.contains("GATEWAY_GIT_COMMIT")
                .then_some((modified, text))
        })
        .max_by_key(|(modified, _)| *modified)
        .map(|(_, text)| text)
        .expect("the build script's output");
    assert!(
        newest.contains("cargo:rerun-if-changed=.git/HEAD"),
        "{newest}"
    );
    assert!(newest.contains("cargo:rerun-if-changed=src"), "{newest}");
    assert!(!newest.contains(".git/index"), "{newest}");
}

/// `make install PREFIX=…` installs stripped binaries and a unit that runs them from
/// that prefix (it ran /usr/local/bin/gateway whatever the prefix).
#[test]
fn install_puts_stripped_binaries_and_a_unit_for_the_prefix() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let prefix = tempfile::tempdir().unwrap();
    let bin = gateway_bin().parent().unwrap().to_path_buf();
    let out = Command::new("make")
        .current_dir(root)
        .arg("-s")
        .arg("install-files")
        .arg(format!("BIN={}", bin.display()))
        .arg(format!("PREFIX={}", prefix.path().display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let unit =
        std::fs::read_to_string(prefix.path().join("lib/systemd/system/gateway.service")).unwrap();
    let installed = prefix.path().join("bin/gateway");
    assert!(
        unit.contains(&format!("ExecStart={} -c", installed.display())),
        "{unit}"
    );
    assert!(!unit.contains("/usr/local"), "{unit}");
    for name in ["gateway", "gatewayctl"] {
        let (built, installed) = (bin.join(name), prefix.path().join("bin").join(name));
        let size = |p: &std::path::Path| std::fs::metadata(p).unwrap().len();
        assert!(
            size(&installed) < size(&built) / 2,
            "{name} is not stripped"
        );
        let version = Command::new(&installed).arg("--version").output().unwrap();
        assert!(version.status.success());
    }
}

/// The README's first commands work from a fresh checkout: before `make install`, the
/// programs are named by their path.
#[test]
fn the_readme_names_the_programs_by_path_before_install() {
    let readme = include_str!("../../README.md");
    let two_commands = readme
        .split("## Two commands")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .unwrap();
    assert!(two_commands.contains("./target/release/gatewayctl status"));
    assert!(
        !two_commands.contains("\n`gatewayctl") && !two_commands.contains(" `gatewayctl status`"),
        "{two_commands}"
    );
    let running = readme.split("## Running it").nth(1).unwrap();
    let before_commands = running.split("```sh").next().unwrap();
    assert!(
        before_commands.contains("./target/release/gateway"),
        "{before_commands}"
    );
}
