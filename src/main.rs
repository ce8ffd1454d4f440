//! `squilla`: the command-line entry point.
//!
//! - `dev`: master and one agent in one process (and, given a job spec, the job running with
//!   its output printed);
//! - `master` / `agent`: the two halves, as separate processes on one machine or many;
//! - `gateway`: jobs' sinks and ingest served without the master in the data path, every
//!   other request passed through to the master;
//! - `artifact`, `cluster`, `job`, `tail`: clients of the master's API;
//! - `run`: a job spec in this process, without a master.
//!
//! `squilla compile-worker …` is internal: an agent starts it to compile one component within
//! the compile budget (see `squilla_host::compile`); it is not for people to run.
//!
//! Configuration: flags, then `SQUILLA_*` variables, then a config file (`--config FILE` or
//! `SQUILLA_CONFIG`: `key = value` lines, where `key` is a variable's name without the
//! prefix, in any case: `listen = "127.0.0.1:7070"` sets `SQUILLA_LISTEN`), then defaults.

mod agent;
mod client;
mod config;
mod dev;
mod examples;
mod fleet;
mod gateway;
mod master;
mod publish;
mod run;
mod table;

use clap::{Parser, Subcommand};

/// Squilla: multi-tenant stream processing with WebAssembly stages.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// A config file of `key = value` lines (see `squilla --help` above).
    #[arg(long, env = "SQUILLA_CONFIG", global = true)]
    config: Option<std::path::PathBuf>,
    /// How the process logs to stderr: `text`, or `json` (one object per line, for log
    /// collectors). What is logged is chosen with `SQUILLA_LOG` (default `warn`; `info` adds
    /// one line per API request with tenant, route, status and latency).
    #[arg(long, env = "SQUILLA_LOG_FORMAT", global = true, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Master and one agent in one process; given a job spec, run it and print its output.
    Dev(dev::DevArgs),
    /// The master: HTTP API, store, scheduler.
    Master(master::MasterArgs),
    /// An agent: hosts workers for a master.
    Agent(Box<agent::AgentArgs>),
    /// A gateway: serves jobs' sinks and ingest from the agents, shares one upstream per job
    /// and query among all subscribers, and passes other requests to the master.
    Gateway(gateway::GatewayArgs),
    /// Upload and list artifacts.
    Artifact {
        #[command(subcommand)]
        command: client::ArtifactCommand,
        #[command(flatten)]
        connection: client::Connection,
    },
    /// Create and list job clusters.
    Cluster {
        #[command(subcommand)]
        command: client::ClusterCommand,
        #[command(flatten)]
        connection: client::Connection,
    },
    /// Submit, list, show, kill and scale jobs.
    Job {
        #[command(subcommand)]
        command: client::JobCommand,
        #[command(flatten)]
        connection: client::Connection,
    },
    /// Print a worker's recent log lines (what its stage logged, kept across its instances).
    Logs {
        /// The job id, e.g. `device-errors-1`.
        job: String,
        /// The stage: its name or 0-based index.
        stage: String,
        /// The worker's 0-based index in the stage.
        index: u32,
        /// Print the JSON document instead of one line per log line.
        #[arg(long)]
        json: bool,
        /// Keep printing new lines as the worker logs them, until the job ends or Ctrl-C.
        #[arg(long, short)]
        follow: bool,
        #[command(flatten)]
        connection: client::Connection,
    },
    /// Print a job's output (its sink) as JSON lines.
    Tail {
        /// The job id, e.g. `device-errors-1`.
        job: String,
        #[command(flatten)]
        options: client::TailOptions,
        #[command(flatten)]
        connection: client::Connection,
    },
    /// Run a job spec in this process (no master) and print its output as JSON lines.
    Run(run::RunArgs),
    /// Publish JSON lines from standard input to an application stream, through a gateway:
    /// only what some subscription wants is sent.
    Publish(publish::PublishArgs),
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(agent::COMPILE_WORKER) {
        let code = squilla_host::compile::run_worker(&args[2..]);
        return std::process::ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    config::load_from_args()?;
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("SQUILLA_LOG").unwrap_or_else(|_| "warn".into());
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
        LogFormat::Json => logs.json().flatten_event(true).with_current_span(false).init(),
    }
    match cli.command {
        Command::Dev(args) => dev::run(args),
        Command::Master(args) => master::run(args),
        Command::Gateway(args) => gateway::run(args),
        Command::Agent(args) => match args.command {
            Some(command) => client::agent(command),
            None => agent::run(*args),
        },
        Command::Artifact { command, connection } => client::artifact(connection, command),
        Command::Cluster { command, connection } => client::cluster(connection, command),
        Command::Job { command, connection } => client::job(connection, command),
        Command::Tail { job, options, connection } => client::tail(connection, job, options),
        Command::Logs { job, stage, index, json, follow, connection } => {
            client::logs(connection, &job, &stage, index, json, follow)
        }
        Command::Run(args) => run::run(args),
        Command::Publish(args) => publish::run(args),
    }
}
