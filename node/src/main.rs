//! `shoal`: run a peer (`shoal node`) or talk to one (`deploy`, `status`, `logs`).

mod assemble;
mod backend;
mod build;
mod cli;
mod config;
mod distribute;
mod election;
mod job;
mod load;
mod metrics;
mod model;
mod peer;
mod poll;
mod project_env;
mod site;
mod state;
mod validate;
mod worker;

use clap::Parser;
use config::{Cli, Command};

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sled=warn,hyper=warn"));
    // Colours for a terminal only: log files and `kubectl logs` get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Node(cfg) => {
            init_tracing();
            peer::run(*cfg).await
        }
        Command::Deploy(args) => cli::deploy(args).await,
        Command::Status(args) => cli::status(args).await,
        Command::Logs(args) => cli::logs(args).await,
        Command::Cancel(args) => cli::cancel(args).await,
        Command::Rollback(args) => cli::set_current(args, "rollback").await,
        Command::Promote(args) => cli::set_current(args, "promote").await,
        Command::Peers(args) => cli::peers(args).await,
        Command::Login(args) => cli::login(args).await,
        Command::Logout(args) => cli::logout(args).await,
        Command::Env(args) => cli::env(args).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
