//! `gateway`: run the gateway, or check a config file.

use clap::{Parser, Subcommand};
use gateway::access_log::AccessLog;
use gateway::config;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

#[derive(Parser)]
#[command(name = "gateway", version, about = "A reverse-proxy gateway")]
struct Cli {
    /// The config file.
    #[arg(
        short = 'c',
        long = "config",
        global = true,
        default_value = "conf/gateway.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Start the gateway in the foreground (the default).
    Run,
    /// Validate the config file and exit: 0 valid, 1 invalid.
    Check,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match config::load(&cli.config) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("configuration invalid: {} error(s)", errors.0.len());
            return ExitCode::from(1);
        }
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::Check => {
            println!("configuration ok");
            ExitCode::SUCCESS
        }
        Command::Run => run(config),
    }
}

fn run(config: config::Config) -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("GATEWAY_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();

    let mut listeners = Vec::new();
    for l in &config.listeners {
        match gateway::net::bind(l.addr) {
            Ok(listener) => {
                let local = listener.local_addr().map_or(l.addr, |a| a);
                tracing::info!("listening on {local}");
                listeners.push(listener);
            }
            Err(e) => {
                tracing::error!("cannot listen on {}: {e}", l.addr);
                return ExitCode::from(1);
            }
        }
    }
    let log = match AccessLog::open(&config.gateway.access_log, config.gateway.access_log_format) {
        Ok(log) => Arc::new(log),
        Err(e) => {
            tracing::error!(
                "cannot open the access log {:?}: {e}",
                config.gateway.access_log
            );
            return ExitCode::from(1);
        }
    };

    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let config = Arc::new(config);
    runtime.block_on(async move {
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(handle_signals(stop_tx, log.clone()));
        match gateway::worker::run(listeners, config, log, stop_rx).await {
            Ok(()) => {
                tracing::info!("stopped");
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!("worker failed: {e}");
                ExitCode::from(1)
            }
        }
    })
}

/// SIGTERM/SIGINT: graceful stop, and a second one stops at once. SIGUSR1: reopen the
/// access log.
async fn handle_signals(stop: watch::Sender<bool>, log: Arc<AccessLog>) {
    let (Ok(mut term), Ok(mut int), Ok(mut usr1), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::user_defined1()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            _ = usr1.recv() => {
                if let Err(e) = log.reopen() {
                    tracing::error!("cannot reopen the access log: {e}");
                }
                continue;
            }
            _ = hup.recv() => {
                tracing::warn!("SIGHUP: reloading needs the supervisor, which this build does not have yet");
                continue;
            }
        }
        if *stop.borrow() {
            tracing::warn!("second stop signal: exiting now");
            std::process::exit(1);
        }
        tracing::info!("stopping: finishing in-flight requests");
        let _ = stop.send(true);
    }
}
