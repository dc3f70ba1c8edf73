//! `shoal`: run a peer (`shoal node`) or talk to one (`deploy`, `status`, `logs`).

mod args;
mod assemble;
mod backend;
mod build;
mod client;
mod context;
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
mod unpack;
mod validate;
mod worker;

use args::{Cli, Command};
use clap::Parser;

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
        Command::Deploy(args) => client::deploy(args).await,
        Command::Status(args) => client::status(args).await,
        Command::Logs(args) => client::logs(args).await,
        Command::Cancel(args) => client::cancel(args).await,
        Command::Rollback(args) => client::set_current(args, "rollback").await,
        Command::Promote(args) => client::set_current(args, "promote").await,
        Command::Peers(args) => client::peers(args).await,
        Command::Login(args) => client::login(args).await,
        Command::Logout(args) => client::logout(args).await,
        Command::Env(args) => client::env(args).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
