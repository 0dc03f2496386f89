//! `gatewayctl`: talk to a running gateway over its control socket.
//!
//! Exit codes: 0 done, 1 refused or failed (the reason is printed), 2 the gateway cannot
//! be reached.

use clap::{Parser, Subcommand};
use gateway::protocol::{Reply, Request, Status};
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
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the config file again; waits until the new workers serve.
    Reload,
    /// Show workers and upstream servers.
    Status {
        /// Print the JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Stop gracefully: stop accepting, finish in-flight requests, exit.
    Stop {
        /// Do not wait for in-flight requests.
        #[arg(long)]
        now: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let socket = match cli.socket {
        Some(s) => s,
        None => match gateway::config::load(Path::new("conf/gateway.toml")) {
            Ok(c) => c.gateway.control_socket,
            Err(e) => {
                eprintln!("gatewayctl: no -s SOCKET or GATEWAY_SOCKET, and conf/gateway.toml is not usable:\n{e}");
                return ExitCode::from(2);
            }
        },
    };
    let request = match cli.command {
        Command::Reload => Request::Reload,
        Command::Status { .. } => Request::Status,
        Command::Stop { now } => Request::Stop { now },
    };
    let reply = match ask(&socket, request) {
        Ok(reply) => reply,
        Err(e)
            if matches!(request, Request::Stop { .. })
                && e.kind() == std::io::ErrorKind::UnexpectedEof =>
        {
            return print_out("the gateway stopped\n");
        }
        Err(e) => {
            eprintln!(
                "gatewayctl: cannot reach the gateway at {}: {e}",
                socket.display()
            );
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
        Command::Stop { now: false } => "stopping: in-flight requests are finishing\n".into(),
        Command::Stop { now: true } => "stopping now\n".into(),
        Command::Status { json } => {
            let status = reply.status.unwrap_or_default();
            if json {
                serde_json::to_string_pretty(&status).unwrap_or_default() + "\n"
            } else {
                table(&status)
            }
        }
    };
    print_out(&text)
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

fn ask(socket: &Path, request: Request) -> std::io::Result<Reply> {
    let mut stream = UnixStream::connect(socket)?;
    // A reload waits for new workers to serve; give it room.
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    stream.write_all(request.as_line().as_bytes())?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    if line.is_empty() {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    serde_json::from_str(&line).map_err(|e| std::io::Error::other(format!("unreadable reply: {e}")))
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
            "  {:<28}  {:<24}  {:>6}  {:>6}  {:>12}  {:>9}  checks passed/failed",
            "server", "state", "weight", "active", "requests", "failures"
        );
        for s in &upstream.servers {
            let state = match &s.down_reason {
                Some(reason) => format!("{} ({reason})", s.state),
                None => s.state.clone(),
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
                "  {:<28}  {:<24}  {:>6}  {:>6}  {:>12}  {:>9}  {}",
                s.address,
                state,
                s.weight,
                s.active_connections,
                s.requests_total,
                s.failures_total,
                checks
            );
        }
    }
    out
}
