//! One app instance as a process: started in a process group of its own that dies with
//! the supervisor, its output copied into the app's log; when it is ready; its memory.

use super::output::{copy_lines, AppLog};
use crate::config::AppConfig;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How often a starting instance is asked whether it is ready.
const READY_POLL: Duration = Duration::from_millis(100);
/// One readiness attempt (connect, request, status line) takes at most this.
const READY_ATTEMPT: Duration = Duration::from_secs(1);

/// Starts instance `slot` of `app` listening on `port`. The child is returned for its
/// exit to be awaited; its stdout and stderr go to `log`.
pub fn spawn(
    app: &AppConfig,
    slot: usize,
    port: u16,
    log: &Arc<AppLog>,
) -> std::io::Result<tokio::process::Child> {
    let mut command = std::process::Command::new(&app.command[0]);
    command
        .args(&app.command[1..])
        .current_dir(&app.dir)
        .envs(&app.env)
        .env("PORT", port.to_string())
        .env("INSTANCE", slot.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Its own group: a signal from a terminal to the gateway's group does not reach
    // it, and stopping it reaches what it started.
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    crate::sys::app_process(&mut command);
    let mut command = tokio::process::Command::from(command);
    command.kill_on_drop(false);
    let mut child = command.spawn()?;
    let pid = child.id().unwrap_or(0);
    let name = format!("{}#{slot} {pid}", app.name);
    if let Some(out) = child.stdout.take() {
        tokio::spawn(copy_lines(out, log.clone(), format!("{name} out")));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(copy_lines(err, log.clone(), format!("{name} err")));
    }
    Ok(child)
}

/// Waits until the instance at `addr` is ready as `path` says (a `GET` answered 2xx or
/// 3xx; without a path, a connection accepted), or says why not after `timeout`.
pub async fn ready(
    addr: SocketAddr,
    path: Option<String>,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let attempt = tokio::time::timeout(READY_ATTEMPT, probe(addr, path.as_deref())).await;
        let last = match attempt {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(why)) => why,
            Err(_) => format!("no answer within {READY_ATTEMPT:?}"),
        };
        if tokio::time::Instant::now() + READY_POLL >= deadline {
            return Err(format!("not ready within {timeout:?}: {last}"));
        }
        tokio::time::sleep(READY_POLL).await;
    }
}

async fn probe(addr: SocketAddr, path: Option<&str>) -> Result<(), String> {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    let Some(path) = path else { return Ok(()) };
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nUser-Agent: gateway-ready-check\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("GET {path}: {e}"))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.contains(&b'\n') && head.len() < 4096 {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| format!("GET {path}: {e}"))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("GET {path}: no HTTP answer"))?;
    if (200..400).contains(&status) {
        Ok(())
    } else {
        Err(format!("GET {path} answered {status}"))
    }
}

/// The resident memory of process `pid`, if it is still there.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kib * 1024)
}

/// Whether something on this machine already listens on `port` (another program, or an
/// instance of the gateway this one replaces).
pub fn port_taken(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_err()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ready_needs_a_2xx_or_3xx_answer_or_a_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut n = 0;
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                n += 1;
                let status = if n < 3 { 503 } else { 204 };
                let _ = s.read(&mut [0u8; 1024]).await;
                let _ = s
                    .write_all(
                        format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n").as_bytes(),
                    )
                    .await;
            }
        });
        ready(addr, None, Duration::from_secs(1)).await.unwrap();
        ready(addr, Some("/healthz".into()), Duration::from_secs(5))
            .await
            .unwrap();
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let gone = closed.local_addr().unwrap();
        drop(closed);
        let e = ready(gone, None, Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(e.contains("not ready within"), "{e}");
    }

    #[test]
    fn this_process_has_resident_memory() {
        assert!(rss_bytes(std::process::id()).unwrap() > 0);
    }
}
