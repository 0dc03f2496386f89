//! `gateway`: run the gateway (a supervisor and its workers), or check a config file.

use clap::{Parser, Subcommand};
use gateway::config;
use std::path::PathBuf;
use std::process::ExitCode;

use gateway::VERSION;

#[derive(Parser)]
#[command(name = "gateway", version = VERSION, about = "A reverse-proxy gateway")]
struct Cli {
    /// Validate the config file and exit, like `gateway check` (nginx's -t).
    #[arg(short = 't', long = "test")]
    test: bool,
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
    /// Translate an nginx configuration (with its includes) into this gateway's: written
    /// to OUT (else stdout), what was not translated on stderr; exit 0 when the result
    /// passes `gateway check`.
    ImportNginx {
        /// The nginx configuration file.
        file: PathBuf,
        /// Where to write the result.
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
    },
    /// A worker process, started by the supervisor (not for direct use).
    #[command(hide = true)]
    Worker(gateway::protocol::WorkerArgs),
}

fn init_logging() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("GATEWAY_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default = if cli.test {
        Command::Check
    } else {
        Command::Run
    };
    match cli.command.unwrap_or(default) {
        Command::ImportNginx { file, output } => {
            let place = output.clone().unwrap_or_else(|| {
                std::env::current_dir()
                    .unwrap_or_default()
                    .join("gateway.toml")
            });
            match gateway::import_nginx::import(&file, &place) {
                Ok(imported) => {
                    let written = match &output {
                        Some(path) => std::fs::write(path, &imported.toml)
                            .map_err(|e| format!("cannot write {}: {e}", path.display())),
                        None => {
                            print!("{}", imported.toml);
                            Ok(())
                        }
                    };
                    eprint!("{}", imported.summary);
                    match written {
                        Err(e) => {
                            eprintln!("gateway import-nginx: {e}");
                            ExitCode::from(1)
                        }
                        Ok(()) if imported.valid => ExitCode::SUCCESS,
                        Ok(()) => ExitCode::from(1),
                    }
                }
                Err(e) => {
                    eprintln!("gateway import-nginx: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Worker(args) => {
            init_logging();
            gateway::worker::process::main(&cli.config, &args)
        }
        Command::Check => match config::load(&cli.config) {
            Ok(config) => {
                for warning in &config.warnings {
                    eprintln!("warning: {warning}");
                }
                // Only start can bind; say now what it would find in the way.
                let admin = config.admin.map(|addr| (addr, &config.admin_at));
                let listeners = config.listeners.iter().map(|l| (l.addr, &l.at));
                for (addr, at) in listeners.chain(admin) {
                    if let Err(e) = gateway::net::ensure_free(addr) {
                        eprintln!(
                            "warning: {at}: {addr}: {e} (a running gateway with this \
                             address keeps its socket on reload; any other process \
                             stops the start)"
                        );
                    }
                }
                println!("configuration ok");
                ExitCode::SUCCESS
            }
            Err(errors) => invalid(&errors),
        },
        Command::Run => match config::load_with_text(&cli.config) {
            Ok((config, text)) => {
                init_logging();
                gateway::supervisor::run(cli.config, config, text)
            }
            Err(errors) => invalid(&errors),
        },
    }
}

fn invalid(errors: &config::ConfigErrors) -> ExitCode {
    eprintln!("{errors}");
    eprintln!("configuration invalid: {} error(s)", errors.0.len());
    ExitCode::from(1)
}
