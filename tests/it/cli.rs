//! `gateway check`, `gateway -c` on a bad file, `gatewayctl` without a gateway.

use crate::common::{gateway_bin, gateway_with_config};
use std::process::Command;

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
