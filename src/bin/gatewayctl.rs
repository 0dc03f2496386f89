//! `gatewayctl`: talk to a running gateway over its control socket.
//!
//! The supervisor that answers on the control socket is not built yet: for now every
//! command reports that the gateway cannot be reached (exit 2), which is the truth.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "gatewayctl", version, about = "Control a running gateway")]
struct Cli {
    /// The control socket (default: gateway.control_socket of conf/gateway.toml).
    #[arg(short = 's', long = "socket", env = "GATEWAY_SOCKET")]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the config file again.
    Reload,
    /// Show workers and upstream servers.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Stop gracefully (or at once with --now).
    Stop {
        #[arg(long)]
        now: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let socket = match cli.socket {
        Some(s) => s,
        None => match gateway::config::load(std::path::Path::new("conf/gateway.toml")) {
            Ok(c) => c.gateway.control_socket,
            Err(e) => {
                eprintln!(
                    "gatewayctl: no -s SOCKET given and conf/gateway.toml is not usable:\n{e}"
                );
                return ExitCode::from(2);
            }
        },
    };
    let _ = cli.command;
    match std::os::unix::net::UnixStream::connect(&socket) {
        Err(e) => {
            eprintln!(
                "gatewayctl: cannot reach the gateway at {}: {e}",
                socket.display()
            );
            ExitCode::from(2)
        }
        Ok(_) => {
            eprintln!(
                "gatewayctl: the gateway at {} does not speak the control protocol yet",
                socket.display()
            );
            ExitCode::from(2)
        }
    }
}
