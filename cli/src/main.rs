//! `squilla`: the command-line entry point.
//!
//! Today it has one subcommand, `run`, which runs a job spec in this process: a source, each
//! stage as one sandboxed worker, and the sink printed to standard output as JSON lines. The
//! master, the agent and `dev` build on the same runtime.

mod json;
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
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("SQUILLA_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Run(args) => run::run(args),
    }
}
