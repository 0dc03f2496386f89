//! Records the git commit the binary is built from, for `gateway --version`.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=GATEWAY_GIT_COMMIT");
    // A build without .git (a container build) passes the commit in.
    if let Ok(commit) = std::env::var("GATEWAY_GIT_COMMIT") {
        println!("cargo:rustc-env=GATEWAY_GIT_COMMIT={commit}");
        return;
    }
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|commit| !commit.is_empty())
        .unwrap_or_else(|| "unknown".into());
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .ok()
        .is_some_and(|out| out.status.success() && !out.stdout.is_empty());
    let suffix = if dirty { "-modified" } else { "" };
    println!("cargo:rustc-env=GATEWAY_GIT_COMMIT={commit}{suffix}");
    // Again when the commit moves (HEAD, the branch it names, packed refs) or the sources
    // change (they recompile the crate anyway, and say whether it is "-modified"); not
    // for .git/index, which a checkout of a config file or a `git add` changes: that
    // recompiled the whole crate for nothing.
    println!("cargo:rerun-if-changed=.git/HEAD");
    let head = std::fs::read_to_string(".git/HEAD").unwrap_or_default();
    if let Some(branch) = head.trim().strip_prefix("ref: ") {
        println!("cargo:rerun-if-changed=.git/{branch}");
    }
    // A path that does not exist would make every build run this again.
    if std::path::Path::new(".git/packed-refs").exists() {
        println!("cargo:rerun-if-changed=.git/packed-refs");
    }
    println!("cargo:rerun-if-changed=src");
}
