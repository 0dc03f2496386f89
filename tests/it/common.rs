//! Test harness: the real `gateway` binary with a real config, real backends on port 0,
//! real clients.

#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub fn full(text: impl Into<Bytes>) -> Body {
    Full::new(text.into()).map_err(|e| match e {}).boxed()
}

/// What a backend saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: http::HeaderMap,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>> + Send + Sync,
>;

/// A real HTTP/1.1 server on 127.0.0.1:0 that records what it receives.
pub struct Backend {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    /// Answers every request with `name` as the body.
    pub async fn named(name: &'static str) -> Backend {
        Backend::start(move |_req| async move { Response::new(full(name)) }).await
    }

    pub async fn start<F, Fut>(handler: F) -> Backend
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        Backend::start_at("127.0.0.1:0".parse().unwrap(), handler).await
    }

    /// Like [`Backend::start`], on a given address (a server coming back on its port).
    pub async fn start_at<F, Fut>(addr: SocketAddr, handler: F) -> Backend
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |req| Box::pin(handler(req)));
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (seen2, conns2) = (seen.clone(), connections.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                conns2.fetch_add(1, Ordering::SeqCst);
                let handler = handler.clone();
                let seen = seen2.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        seen.lock().unwrap().push(Seen {
                            method: req.method().to_string(),
                            uri: req.uri().to_string(),
                            headers: req.headers().clone(),
                        });
                        let fut = handler(req);
                        async move { Ok::<_, std::convert::Infallible>(fut.await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Backend {
            addr,
            seen,
            connections,
            task,
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn requests(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TCP server on 127.0.0.1:0 that reads a request head and answers `reply` verbatim
/// (then closes), for upstreams that break HTTP.
pub async fn raw_backend(reply: &'static [u8]) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = stream.write_all(reply).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (addr, task)
}

/// Copies a program to `to` in a child process: a file this process writes can be held
/// open for writing by a child that another test thread forks at that moment, and then
/// fails to run ("Text file busy") until that child has exec'd.
pub fn copy_apart(from: &std::path::Path, to: &std::path::Path) {
    let status = Command::new("cp").arg(from).arg(to).status().unwrap();
    assert!(status.success(), "cp {} {}", from.display(), to.display());
}

/// A port on 127.0.0.1 where nothing listens.
pub fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A running `gateway` process.
pub struct Gateway {
    /// The first listener (the plain one the harness adds).
    pub addr: SocketAddr,
    /// Every listener, in config order.
    pub addrs: Vec<SocketAddr>,
    /// The admin listener, when the config has `[admin]`.
    pub admin: Option<SocketAddr>,
    pub child: Child,
    pub dir: tempfile::TempDir,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

pub fn gateway_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_gateway"))
}

/// Runs `gateway ARGS… -c PATH`; returns the exit code and stderr.
pub fn gateway_with_config(args: &[&str], path: &std::path::Path) -> (Option<i32>, String) {
    let out = Command::new(gateway_bin())
        .args(args)
        .arg("-c")
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

impl Gateway {
    /// Starts the gateway with a listener on 127.0.0.1:0 plus `rest` (routes, upstreams,
    /// a [gateway] section) and waits until it listens.
    pub fn start(rest: &str) -> Gateway {
        Gateway::start_under(&[], rest)
    }

    /// Like [`Gateway::start`], run by `wrapper` (e.g. `prlimit --nofile=…`).
    pub fn start_under(wrapper: &[&str], rest: &str) -> Gateway {
        Gateway::start_program(wrapper, None, rest)
    }

    /// Like [`Gateway::start`], with the binary copied into the test's directory first
    /// (as `gateway`), so that the test can replace it on disk as a package upgrade does.
    pub fn start_copy(rest: &str) -> Gateway {
        Gateway::start_program(&[], Some(std::path::Path::new("gateway")), rest)
    }

    /// The program path of a gateway started by [`Gateway::start_copy`].
    pub fn program(&self) -> PathBuf {
        self.dir.path().join("gateway")
    }

    /// A package update: a copy of `new` renamed over [`Gateway::program`].
    pub fn replace_program(&self, new: &std::path::Path) {
        let program = self.program();
        let staged = program.with_extension("new");
        copy_apart(new, &staged);
        std::fs::rename(&staged, &program).unwrap();
    }

    fn start_program(wrapper: &[&str], copy: Option<&std::path::Path>, rest: &str) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let gateway = match copy {
            Some(name) => {
                let gateway = dir.path().join(name);
                copy_apart(&gateway_bin(), &gateway);
                gateway
            }
            None => gateway_bin(),
        };
        let path = dir.path().join("gateway.toml");
        // One worker unless the test says otherwise: it starts fastest.
        let mut defaults = String::from("control_socket = \"gateway.sock\"\n");
        if !rest.contains("access_log =") {
            defaults.push_str("access_log = \"stdout\"\n");
        }
        if !rest.contains("workers =") {
            defaults.push_str("workers = 1\n");
        }
        let rest = if rest.contains("[gateway]") {
            rest.replacen("[gateway]", &format!("[gateway]\n{defaults}"), 1)
        } else {
            format!("[gateway]\n{defaults}{rest}")
        };
        let text = format!("[[listener]]\nlisten = \"127.0.0.1:0\"\n\n{rest}");
        std::fs::write(&path, text).unwrap();
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&gateway);
                c
            }
            None => Command::new(&gateway),
        };
        let mut child = command
            .arg("-c")
            .arg(&path)
            .env("GATEWAY_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        {
            let stderr = stderr.clone();
            let pipe = child.stderr.take().unwrap();
            std::thread::spawn(move || {
                let (mut addrs, mut admin) = (Vec::new(), None);
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if let Some(a) = line.split("listening on ").nth(1) {
                        addrs.extend(a.trim().parse::<SocketAddr>().ok());
                    }
                    if let Some(a) = line.split("admin endpoints at http://").nth(1) {
                        admin = a.trim().trim_end_matches('/').parse::<SocketAddr>().ok();
                    }
                    // Ready once the first generation of workers serves.
                    if line.contains("workers serving") && !addrs.is_empty() {
                        let _ = addr_tx.send((std::mem::take(&mut addrs), admin.take()));
                    }
                    stderr.lock().unwrap().push_str(&(line + "\n"));
                }
            });
        }
        {
            let stdout = stdout.clone();
            let pipe = child.stdout.take().unwrap();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    stdout.lock().unwrap().push_str(&(line + "\n"));
                }
            });
        }
        let (addrs, admin) = match addr_rx.recv_timeout(Duration::from_secs(20)) {
            Ok(found) => found,
            Err(_) => {
                let _ = child.kill();
                panic!("gateway did not start: {}", stderr.lock().unwrap());
            }
        };
        Gateway {
            addr: addrs[0],
            addrs,
            admin,
            child,
            dir,
            stdout,
            stderr,
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("gateway.sock")
    }

    /// Runs `gatewayctl -s SOCKET args…`; returns (exit code, stdout, stderr).
    pub fn ctl(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_gatewayctl"))
            .arg("-s")
            .arg(self.socket())
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// GET `path` on the admin listener: (status, body).
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        let admin = self.admin.expect("the config has no [admin] listener");
        let response = client()
            .get(format!("http://{admin}{path}"))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    }

    /// The admin `/status` document.
    pub async fn admin_status(&self) -> serde_json::Value {
        let (code, body) = self.admin_get("/status").await;
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("gateway.toml")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn access_log(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until the access log has `n` lines (lines are written when a response ends).
    pub async fn wait_log_lines(&self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let lines: Vec<String> = self.access_log().lines().map(String::from).collect();
            if lines.len() >= n || Instant::now() > deadline {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `[[route]]` to `upstream` plus `[upstream.NAME]` with these servers and extra keys.
pub fn upstream_config(name: &str, servers: &[SocketAddr], extra: &str) -> String {
    let servers: Vec<String> = servers
        .iter()
        .map(|a| format!("{{ address = \"{a}\" }}"))
        .collect();
    format!(
        "[[route]]\nupstream = \"{name}\"\n\n[upstream.{name}]\nservers = [ {} ]\n{extra}\n",
        servers.join(", ")
    )
}

/// Sends raw bytes on a new connection and returns everything the gateway sends back
/// until it closes the connection (or `wait` passes).
pub fn raw_exchange(addr: SocketAddr, request: &[u8], wait: Duration) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(wait)).unwrap();
    stream.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// The status code of the first response in a raw reply.
pub fn status_of(reply: &str) -> u16 {
    reply
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {reply:?}"))
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// GET `url` with a fresh client (so on a new connection): (status, body).
pub async fn get_fresh(url: String) -> (u16, String) {
    let response = client().get(url).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// GET `url` with a fresh client and return the body text.
pub async fn get_text(url: String) -> String {
    get_fresh(url).await.1
}

/// `gatewayctl status --json`, parsed.
pub fn status_json(gw: &Gateway) -> serde_json::Value {
    let (code, out, err) = gw.ctl(&["status", "--json"]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

pub fn signal(pid: u64, sig: &str) {
    assert!(Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap()
        .success());
}

pub fn alive(pid: u64) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

pub async fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The demo backend as its own process, so that killing it resets its connections.
pub fn demo_backend(name: &str) -> (Child, std::net::SocketAddr) {
    let addr = closed_port();
    (demo_backend_at(name, addr), addr)
}

/// Kills the processes it holds when dropped, so a failed assertion leaves none behind
/// (they would hold the test's output pipes open).
pub struct KillOnDrop(pub Vec<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The demo backend as its own process on `addr` (a server restarted on its port).
pub fn demo_backend_at(name: &str, addr: SocketAddr) -> Child {
    let child = Command::new(
        gateway_bin()
            .parent()
            .unwrap()
            .join("examples/demo_backend"),
    )
    .args([name, &addr.to_string()])
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "demo backend {name} did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// Clients sending GETs in a loop until stopped (at most `max` each): how many got a 200,
/// and what every other answer or error was.
pub struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<(usize, Vec<String>)>>,
}

impl Load {
    pub fn start(url: String, clients: usize, max: usize) -> Load {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let clients = (0..clients)
            .map(|_| {
                let (url, stop) = (url.clone(), stop.clone());
                tokio::spawn(async move {
                    let client = client();
                    let (mut ok, mut failed) = (0, Vec::new());
                    for _ in 0..max {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        match client.get(&url).send().await {
                            Ok(res) if res.status() == 200 => ok += 1,
                            Ok(res) => failed.push(res.status().to_string()),
                            Err(e) => failed.push(e.to_string()),
                        }
                    }
                    (ok, failed)
                })
            })
            .collect();
        Load { stop, clients }
    }

    /// Stops the clients and asserts that none failed and that more than `at_least` got
    /// a 200; returns how many did.
    pub async fn stop_without_failures(self, at_least: usize) -> usize {
        let (ok, failed) = self.stop().await;
        assert!(
            failed.is_empty(),
            "{} of {ok} failed: {:?}",
            failed.len(),
            &failed[..failed.len().min(5)]
        );
        assert!(ok > at_least, "{ok} requests");
        ok
    }

    pub async fn stop(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        let (mut ok, mut failed) = (0, Vec::new());
        for client in self.clients {
            let (o, f) = client.await.unwrap();
            ok += o;
            failed.extend(f);
        }
        (ok, failed)
    }
}

/// The generation `/status` reports, and its workers' pids, sorted.
pub fn generation_and_pids(gw: &Gateway) -> (u64, Vec<u64>) {
    let status = status_json(gw);
    let mut pids: Vec<u64> = status["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["pid"].as_u64().unwrap())
        .collect();
    pids.sort();
    (status["generation"].as_u64().unwrap(), pids)
}

/// A first port with `count` free ports from it, apart from every other test's (below
/// the ephemeral range, where port-0 listeners land): an app's instances listen there.
pub fn free_port_range(count: u16) -> u16 {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    loop {
        let offset = NEXT.fetch_add(count, Ordering::SeqCst);
        let first = 20_000 + (std::process::id() % 40) as u16 * 250 + offset % 250;
        let free =
            (first..first + count).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok());
        if free {
            return first;
        }
    }
}
