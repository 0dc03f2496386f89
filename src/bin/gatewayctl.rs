//! `gatewayctl`: talk to a running gateway over its control socket.
//!
//! Exit codes: 0 done, 1 refused or failed (the reason is printed), 2 the gateway cannot
//! be reached.

use clap::{Parser, Subcommand};
use gateway::protocol::{Reply, Request, ServerChange, Status};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "gatewayctl", version, about = "Control a running gateway")]
struct Cli {
    /// The control socket [default: GATEWAY_SOCKET, else gateway.control_socket of
    /// conf/gateway.toml].
    #[arg(short = 's', long = "socket", env = "GATEWAY_SOCKET")]
    socket: Option<PathBuf>,
    /// The config file whose gateway.control_socket to use [default: conf/gateway.toml].
    #[arg(short = 'c', long = "config")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the config file again; waits until the new workers serve.
    Reload,
    /// Replace the running gateway by the binary on disk now (after a package update):
    /// the new one takes over the sockets and the shared state, the old one drains.
    Upgrade,
    /// Show workers and upstream servers.
    Status {
        /// Print the JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The certificates in use: names, issuer, expiry; for ACME ones the next renewal and
    /// the last error.
    Certs {
        /// Print them as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove a cached response (from every worker: the cache is shared).
    Purge {
        /// http://HOST/PATH?QUERY as clients ask for it.
        url: String,
        /// Every response whose URL starts with URL.
        #[arg(long)]
        prefix: bool,
    },
    /// Stop gracefully: stop accepting, finish in-flight requests, exit.
    Stop {
        /// Do not wait for in-flight requests.
        #[arg(long)]
        now: bool,
    },
    /// Take a server out of rotation: no new request goes to it, those in flight finish.
    Drain {
        upstream: String,
        /// An address as `status` lists it, or as the config file writes it.
        server: String,
        /// Return once the server has no request in flight.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits (then exit 1).
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Put a drained server back in rotation (through slow_start when set).
    Enable { upstream: String, server: String },
    /// Set a server's weight (1-1000); kept until the file gives it another weight.
    Weight {
        upstream: String,
        server: String,
        weight: u32,
    },
    /// Add a server (IP:PORT) to an upstream without a new generation of workers; it
    /// joins through slow_start and is kept across reloads until removed.
    AddServer {
        upstream: String,
        address: std::net::SocketAddr,
        #[arg(long, default_value_t = 1)]
        weight: u32,
        #[arg(long)]
        backup: bool,
    },
    /// Restart an app's instances one at a time (a new one ready before the old one
    /// drains); returns once all were replaced.
    Restart {
        app: String,
        /// How long to wait for it (then exit 1; the restart goes on).
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Take a server out of an upstream without a new generation of workers: it gets no
    /// new request and finishes what it has; kept out across reloads until added again.
    RemoveServer {
        upstream: String,
        address: std::net::SocketAddr,
        /// Return once the server has nothing in flight (WebSockets included).
        #[arg(long)]
        wait: bool,
        /// How long --wait waits (then exit 1).
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Without -s, the socket comes from a config file, which a failure then names too.
    let config_file = match (&cli.socket, cli.config) {
        (Some(_), Some(_)) => {
            eprintln!("gatewayctl: give -s SOCKET or -c FILE, not both");
            return ExitCode::from(1);
        }
        (Some(_), None) => None,
        (None, config) => Some(config.unwrap_or_else(|| PathBuf::from("conf/gateway.toml"))),
    };
    let socket = match (cli.socket, &config_file) {
        (Some(s), _) => s,
        (None, None) => unreachable!("a config file is named whenever no socket is"),
        (None, Some(file)) => {
            // Only the socket is read: a file broken elsewhere still reaches the gateway,
            // and `reload` prints what the gateway says is wrong with it.
            match gateway::config::control_socket_of(file).ok_or_else(|| {
                gateway::config::load(file)
                    .err()
                    .map_or_else(|| "unreadable".to_string(), |e| e.to_string())
            }) {
                Ok(socket) => socket,
                Err(e) => {
                    // The file is the problem, not the gateway: say what is wrong with it.
                    eprintln!(
                        "gatewayctl: cannot find the control socket: {} is not a valid config:\n{e}",
                        file.display()
                    );
                    return ExitCode::from(1);
                }
            }
        }
    };
    let request = match cli.command {
        Command::Reload => Request::Reload,
        Command::Upgrade => Request::Upgrade,
        Command::Status { .. } | Command::Certs { .. } => Request::Status,
        Command::Purge { ref url, prefix } => Request::Purge {
            url: url.clone(),
            prefix,
        },
        Command::Stop { now } => Request::Stop { now },
        Command::Restart { ref app, .. } => Request::Restart { app: app.clone() },
        Command::Drain {
            ref upstream,
            ref server,
            ..
        } => server_request(upstream, server, ServerChange::Drain),
        Command::Enable {
            ref upstream,
            ref server,
        } => server_request(upstream, server, ServerChange::Enable),
        Command::Weight {
            ref upstream,
            ref server,
            weight,
        } => server_request(upstream, server, ServerChange::Weight(weight)),
        Command::AddServer {
            ref upstream,
            address,
            weight,
            backup,
        } => Request::AddServer {
            upstream: upstream.clone(),
            server: gateway::config::AddedServer {
                addr: address,
                weight,
                backup,
            },
        },
        Command::RemoveServer {
            ref upstream,
            address,
            wait,
            ..
        } => Request::RemoveServer {
            upstream: upstream.clone(),
            addr: address,
            wait,
        },
    };
    // A reload waits for new workers to serve; remove-server --wait for its requests;
    // restart for every instance to be replaced.
    let patience = match cli.command {
        Command::RemoveServer {
            wait: true,
            timeout,
            ..
        } => timeout,
        Command::Restart { timeout, .. } => timeout,
        _ => Duration::from_secs(60),
    };
    let reply = match ask(&socket, &request, patience) {
        Ok(reply) => reply,
        Err(e)
            if matches!(request, Request::Stop { .. })
                && e.kind() == std::io::ErrorKind::UnexpectedEof =>
        {
            return print_out("the gateway stopped\n");
        }
        Err(e)
            if matches!(request, Request::RemoveServer { wait: true, .. })
                && matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
        {
            eprintln!(
                "gatewayctl: {}: removed, but requests are still in flight after {}",
                request.as_line().trim(),
                humantime::format_duration(patience)
            );
            return ExitCode::from(1);
        }
        Err(e) => {
            eprintln!(
                "gatewayctl: cannot reach the gateway at {}: {e}",
                socket.display()
            );
            // The file that named the socket may be why: say what is wrong with it.
            if let Some(file) = &config_file {
                if let Err(problems) = gateway::config::load(file) {
                    eprintln!("and {} is not a valid config:\n{problems}", file.display());
                }
            }
            return ExitCode::from(2);
        }
    };
    if !reply.ok {
        eprintln!(
            "gatewayctl: {} failed:\n{}",
            request.as_line().trim(),
            reply.error.as_deref().unwrap_or("no reason given")
        );
        return ExitCode::from(1);
    }
    let text = match cli.command {
        Command::Reload => format!("reloaded: generation {}\n", reply.generation.unwrap_or(0)),
        Command::Upgrade => format!(
            "upgraded: {}\n",
            reply.upgraded_to.as_deref().unwrap_or("unknown version")
        ),
        Command::Stop { now: false } => "stopping: in-flight requests are finishing\n".into(),
        Command::Stop { now: true } => "stopping now\n".into(),
        Command::Restart { app, .. } => format!("restarted {app}: every instance was replaced\n"),
        Command::Status { json } => {
            let status = reply.status.unwrap_or_default();
            if json {
                serde_json::to_string_pretty(&status).unwrap_or_default() + "\n"
            } else {
                table(&status)
            }
        }
        Command::Purge { url, .. } => {
            format!(
                "purged {} cached responses of {url}\n",
                reply.purged.unwrap_or(0)
            )
        }
        Command::Certs { json } => {
            let certificates = reply.status.unwrap_or_default().certificates;
            if json {
                serde_json::to_string_pretty(&certificates).unwrap_or_default() + "\n"
            } else {
                certs_table(&certificates)
            }
        }
        Command::Drain {
            upstream,
            server,
            wait,
            timeout,
        } => {
            if wait {
                if let Err(e) = wait_idle(&socket, &upstream, &server, timeout) {
                    eprintln!("gatewayctl: drain {upstream} {server}: {e}");
                    return ExitCode::from(1);
                }
                format!("drained {upstream} {server}: nothing in flight\n")
            } else {
                format!("draining {upstream} {server}\n")
            }
        }
        Command::Enable { upstream, server } => format!("enabled {upstream} {server}\n"),
        Command::Weight {
            upstream,
            server,
            weight,
        } => format!("weight of {upstream} {server} is {weight}\n"),
        Command::AddServer {
            upstream, address, ..
        } => format!("added {address} to {upstream}\n"),
        Command::RemoveServer {
            upstream,
            address,
            wait: true,
            ..
        } => format!("removed {address} from {upstream}: nothing in flight\n"),
        Command::RemoveServer {
            upstream, address, ..
        } => format!("removed {address} from {upstream}: it finishes what it has\n"),
    };
    print_out(&text)
}

fn server_request(upstream: &str, server: &str, change: ServerChange) -> Request {
    Request::Server {
        upstream: upstream.to_string(),
        server: server.to_string(),
        change,
    }
}

/// Polls the status until the drained server has no request in flight.
fn wait_idle(socket: &Path, upstream: &str, server: &str, timeout: Duration) -> Result<(), String> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let reply =
            ask(socket, &Request::Status, Duration::from_secs(5)).map_err(|e| e.to_string())?;
        let status = reply.status.unwrap_or_default();
        let in_flight: u64 = status
            .upstreams
            .get(upstream)
            .into_iter()
            .flat_map(|u| &u.servers)
            .filter(|s| s.address == server || s.name.as_deref() == Some(server))
            .map(|s| s.active_connections)
            .sum();
        if in_flight == 0 {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(format!(
                "still {in_flight} request(s) in flight after {}",
                humantime::format_duration(timeout)
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Writes to stdout; a reader that went away (`gatewayctl status | head`) is not an
/// error, as for any Unix tool.
fn print_out(text: &str) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gatewayctl: cannot write the answer: {e}");
            ExitCode::from(1)
        }
    }
}

fn ask(socket: &Path, request: &Request, patience: Duration) -> std::io::Result<Reply> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(patience))?;
    stream.write_all(request.as_line().as_bytes())?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    if line.is_empty() {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    serde_json::from_str(&line).map_err(|e| std::io::Error::other(format!("unreadable reply: {e}")))
}

/// `gatewayctl certs` as a table.
fn certs_table(certificates: &[gateway::protocol::CertificateStatus]) -> String {
    use gateway::acme::rfc3339;
    if certificates.is_empty() {
        return "no certificates: no listener has tls\n".into();
    }
    let mut out = format!(
        "{:<36}  {:<6}  {:<28}  {:<20}  {:>9}  {:<20}  last error\n",
        "names", "source", "issuer", "expires", "days left", "next renewal"
    );
    for c in certificates {
        let (expires, left) = match (c.not_after, c.expires_in_s) {
            (Some(at), Some(left)) => (rfc3339(at), format!("{:.1}", left as f64 / 86400.0)),
            _ => ("waiting".to_string(), "-".to_string()),
        };
        let _ = writeln!(
            out,
            "{:<36}  {:<6}  {:<28}  {:<20}  {:>9}  {:<20}  {}",
            c.names.join(","),
            c.source,
            c.issuer.as_deref().unwrap_or("-"),
            expires,
            left,
            c.next_renewal.map_or("-".to_string(), rfc3339),
            c.last_error.as_deref().unwrap_or("-")
        );
    }
    out
}

/// `gatewayctl status` as a table.
fn table(status: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "generation {}   reloads {}   worker restarts {}",
        status.generation, status.reloads, status.restarts
    );
    out.push('\n');
    let _ = writeln!(
        out,
        "{:>8}  {:>10}  {:>4}  {:>9}  {:>8}  {:>11}  {:>12}  state",
        "pid", "generation", "seat", "uptime_s", "rss_MiB", "connections", "requests"
    );
    for w in &status.workers {
        let _ = writeln!(
            out,
            "{:>8}  {:>10}  {:>4}  {:>9}  {:>8.1}  {:>11}  {:>12}  {}",
            w.pid,
            w.generation,
            w.seat,
            w.uptime_s,
            w.rss_bytes as f64 / (1024.0 * 1024.0),
            w.active_connections,
            w.requests_total,
            w.state
        );
    }
    for (name, upstream) in &status.upstreams {
        out.push('\n');
        let _ = writeln!(out, "upstream {name} ({})", upstream.policy);
        let _ = writeln!(
            out,
            "  {:<28}  {:<24}  {:<7}  {:>6}  {:>6}  {:>12}  {:>9}  {:>10}  checks passed/failed",
            "server", "state", "source", "weight", "active", "requests", "failures", "latency ms"
        );
        for s in &upstream.servers {
            let state = match &s.down_reason {
                Some(reason) => format!("{} ({reason})", s.state),
                None => s.state.to_string(),
            };
            let checks =
                s.health_checks
                    .as_ref()
                    .map_or("-".to_string(), |c| match &c.last_failure {
                        Some(why) => format!("{}/{}  last: {why}", c.passed, c.failed),
                        None => format!("{}/{}", c.passed, c.failed),
                    });
            let _ = writeln!(
                out,
                "  {:<28}  {:<24}  {:<7}  {:>6}  {:>6}  {:>12}  {:>9}  {:>10.2}  {}",
                match &s.name {
                    Some(name) => format!("{} ({name})", s.address),
                    None => s.address.clone(),
                },
                state,
                s.source.as_str(),
                s.weight,
                s.active_connections,
                s.requests_total,
                s.failures_total,
                s.latency_ms,
                checks
            );
        }
    }
    for (name, app) in &status.apps {
        out.push('\n');
        let _ = writeln!(out, "app {name}");
        let _ = writeln!(
            out,
            "  {:>8}  {:>8}  {:>6}  {:>9}  {:>8}  {:>8}  state",
            "instance", "pid", "port", "uptime_s", "restarts", "rss_MiB"
        );
        for i in &app.instances {
            let _ = writeln!(
                out,
                "  {:>8}  {:>8}  {:>6}  {:>9}  {:>8}  {:>8.1}  {}",
                i.instance,
                i.pid,
                i.port,
                i.uptime_s,
                i.restarts,
                i.rss_bytes as f64 / (1024.0 * 1024.0),
                i.state
            );
        }
    }
    out
}
