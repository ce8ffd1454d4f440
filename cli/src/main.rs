//! `squilla`: the command-line entry point.
//!
//! Subcommands: `run` runs a job spec in this process (a source, each stage as one sandboxed
//! worker, the sink printed to standard output as JSON lines); `master` serves the HTTP API
//! with its embedded store. The agent and `dev` build on the same pieces.

mod json;
mod master;
mod run;

use clap::{Parser, Subcommand};

/// Squilla: multi-tenant stream processing with WebAssembly stages.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a job spec in this process and print its output as JSON lines.
    Run(run::RunArgs),
    /// Run the master: the HTTP API and its store (artifacts today; jobs are next).
    Master(master::MasterArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("SQUILLA_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Run(args) => run::run(args),
        Command::Master(args) => master::run(args),
    }
}
