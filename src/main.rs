//! The `raftkv` binary: parses the command line and runs the chosen command.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use raftkv::cli::{exit, Cli, Command};
use tracing_subscriber::EnvFilter;

/// Default log filter of `raftkv serve`. openraft reports every failed heartbeat to an
/// unreachable peer (four lines per peer every 500 ms); raftkv's network layer logs each peer's
/// reachability once per change instead, so openraft's replication chatter is silenced unless
/// asked for with `RAFTKV_LOG`.
const SERVE_LOG_FILTER: &str =
    "info,openraft=warn,openraft::replication=off,openraft::engine::handler::replication_handler=off";

fn init_logging(default: &str) {
    let filter = EnvFilter::try_from_env("RAFTKV_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let serving = matches!(cli.command, Command::Serve(_));
    init_logging(if serving { SERVE_LOG_FILTER } else { "warn" });
    // Zero workers is reported by `ServeArgs::validate` once the runtime runs.
    let workers = match &cli.command {
        Command::Serve(args) => Some(args.worker_threads),
        _ => None,
    };
    let runtime = match raftkv::server::runtime::build(workers) {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::UNAVAILABLE);
        }
    };
    match runtime.block_on(raftkv::cli::run(cli.command)) {
        Ok(()) => ExitCode::from(exit::OK),
        Err(e) => {
            if !e.message.is_empty() {
                eprintln!("error: {}", e.message);
            }
            ExitCode::from(e.code)
        }
    }
}
