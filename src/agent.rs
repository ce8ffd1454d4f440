//! `squilla agent`: hosts workers for a master.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use std::time::Duration;

use anyhow::Context;
use squilla_agent::{Agent, AgentConfig};
use squilla_host::{CompileConfig, CompileIsolation};

/// The hidden subcommand an agent runs to compile a component in a child process.
pub const COMPILE_WORKER: &str = "compile-worker";

/// How compiles are bounded (shared by `squilla agent` and `squilla dev`).
#[derive(clap::Args, Clone)]
pub struct CompileArgs {
    /// CPU seconds one compile may use before it is stopped.
    #[arg(long, env = "SQUILLA_COMPILE_CPU_SECS", default_value_t = 120)]
    pub compile_cpu_secs: u64,
    /// Wall-clock seconds one compile may take before it is stopped.
    #[arg(long, env = "SQUILLA_COMPILE_WALL_SECS", default_value_t = 180)]
    pub compile_wall_secs: u64,
    /// Memory (address space) one compile may use, MiB.
    #[arg(long, env = "SQUILLA_COMPILE_MEMORY_MIB", default_value_t = 4096)]
    pub compile_memory_mib: u64,
    /// Compiles at once on the agent (0: one per two cores, at least 2).
    #[arg(long, env = "SQUILLA_COMPILE_CONCURRENCY", default_value_t = 0)]
    pub compile_concurrency: usize,
}

impl CompileArgs {
    /// The compile settings: in a child process of this binary, within the budget.
    pub fn config(&self) -> anyhow::Result<CompileConfig> {
        let defaults = CompileConfig::default();
        let program = std::env::current_exe().context("cannot find the squilla binary to run compile workers")?;
        Ok(CompileConfig {
            isolation: CompileIsolation::Process { program, args: vec![COMPILE_WORKER.into()] },
            cpu: Duration::from_secs(self.compile_cpu_secs.max(1)),
            wall: Duration::from_secs(self.compile_wall_secs.max(1)),
            memory_bytes: self.compile_memory_mib.max(64) << 20,
            concurrency: if self.compile_concurrency == 0 { defaults.concurrency } else { self.compile_concurrency },
            per_tenant: defaults.per_tenant,
        })
    }
}

/// Arguments of `squilla agent` (or of `squilla agent list`, which asks the master).
#[derive(clap::Args, Clone)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct AgentArgs {
    #[command(subcommand)]
    pub command: Option<crate::client::AgentCommand>,
    /// The master's URL, or every master's, comma-separated (the agent follows the leader).
    #[arg(long, env = "SQUILLA_MASTER", default_value = "http://127.0.0.1:7070")]
    pub master: String,
    /// The agent token the master expects.
    #[arg(long, env = "SQUILLA_AGENT_TOKEN", required = true)]
    pub agent_token: Option<String>,
    /// This agent's id (default: `agent-<pid>-<random>`).
    #[arg(long, env = "SQUILLA_AGENT_ID")]
    pub id: Option<squilla_types::ids::AgentId>,
    /// Where the sink server listens.
    #[arg(long, env = "SQUILLA_AGENT_HTTP", default_value = "127.0.0.1:0")]
    pub http: SocketAddr,
    /// Where batches from other agents arrive.
    #[arg(long, env = "SQUILLA_AGENT_DATA", default_value = "127.0.0.1:0")]
    pub data: SocketAddr,
    /// The address others reach this agent at (default: the listen address).
    #[arg(long, env = "SQUILLA_AGENT_ADVERTISE")]
    pub advertise: Option<IpAddr>,
    /// CPU offered, millicores (default: 1000 per core).
    #[arg(long, env = "SQUILLA_AGENT_CPU_MILLIS")]
    pub cpu_millis: Option<u64>,
    /// Memory offered, MiB.
    #[arg(long, env = "SQUILLA_AGENT_MEMORY_MIB", default_value_t = 4096)]
    pub memory_mib: u64,
    /// Network offered, Mbps.
    #[arg(long, env = "SQUILLA_AGENT_NETWORK_MBPS", default_value_t = 1000)]
    pub network_mbps: u64,
    /// Worker slots offered.
    #[arg(long, env = "SQUILLA_AGENT_SLOTS", default_value_t = 64)]
    pub slots: u64,
    /// The agent's zone.
    #[arg(long, env = "SQUILLA_AGENT_ZONE", default_value = "default")]
    pub zone: String,
    /// A label `name=value` (repeatable).
    #[arg(long = "label", value_name = "NAME=VALUE")]
    pub labels: Vec<String>,
    /// Directory where compiled code is cached across restarts.
    #[arg(long, env = "SQUILLA_AGENT_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Worker threads (0: one per core).
    #[arg(long, env = "SQUILLA_AGENT_THREADS", default_value_t = 0)]
    pub threads: usize,
    #[command(flatten)]
    pub compile: CompileArgs,
    /// Bytes one sink subscriber may have waiting on this agent, MiB.
    #[arg(long, env = "SQUILLA_SINK_SUBSCRIBER_MIB", default_value_t = 16)]
    pub sink_subscriber_mib: usize,
    /// Bytes all of one tenant's sink subscribers and queries may hold on this agent, MiB.
    #[arg(long, env = "SQUILLA_SINK_TENANT_MIB", default_value_t = 256)]
    pub sink_tenant_mib: usize,
    /// Bytes all sink subscribers and queries may hold on this agent, MiB.
    #[arg(long, env = "SQUILLA_SINK_TOTAL_MIB", default_value_t = 1024)]
    pub sink_total_mib: usize,
    /// Bytes one running query's open window may hold, MiB.
    #[arg(long, env = "SQUILLA_QUERY_STATE_MIB", default_value_t = 64)]
    pub query_state_mib: usize,
    /// A PEM file of CA certificates to trust for the master's HTTPS (beside the public ones).
    #[arg(long, env = "SQUILLA_CA")]
    pub ca: Option<PathBuf>,
    /// How the data port admits peers: `tls` (certificates from the master's CA, encrypted)
    /// or `key` (a handshake proving the agent token, unencrypted). Every agent of a fleet
    /// must use the same.
    #[arg(long, env = "SQUILLA_DATA_SECURITY", value_enum, default_value_t = DataSecurityArg::Tls)]
    pub data_security: DataSecurityArg,
}

/// `--data-security`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DataSecurityArg {
    /// TLS 1.3 with mutual authentication.
    Tls,
    /// The key handshake, frames in the clear.
    Key,
}

impl AgentArgs {
    /// The agent configuration these arguments describe.
    pub fn config(&self) -> anyhow::Result<AgentConfig> {
        let token = self.agent_token.as_deref().context("--agent-token (or SQUILLA_AGENT_TOKEN) is required")?;
        let mut config = AgentConfig::new(&self.master, token);
        if let Some(id) = &self.id {
            config.id = id.clone();
        }
        config.http_listen = self.http;
        config.data_listen = self.data;
        config.advertise = self.advertise;
        if let Some(cpu) = self.cpu_millis {
            config.capacity.cpu_millis = cpu;
        }
        config.capacity.memory_mib = self.memory_mib;
        config.capacity.network_mbps = self.network_mbps;
        config.capacity.slots = self.slots;
        config.zone = self.zone.clone();
        for label in &self.labels {
            let (k, v) = label.split_once('=').with_context(|| format!("`{label}`: a label is NAME=VALUE"))?;
            config.labels.insert(k.to_owned(), v.to_owned());
        }
        config.cache_dir = self.cache_dir.clone();
        config.ca = self.ca.clone();
        config.data_security = match self.data_security {
            DataSecurityArg::Tls => squilla_agent::DataSecurity::Tls,
            DataSecurityArg::Key => squilla_agent::DataSecurity::Key,
        };
        config.threads = self.threads;
        config.compile = self.compile.config()?;
        config.sinks = squilla_agent::sink::SinkLimits {
            subscriber_events: squilla_agent::sink::SUBSCRIBER_BUFFER,
            subscriber_bytes: self.sink_subscriber_mib.max(1) << 20,
            query_state_bytes: self.query_state_mib.max(1) << 20,
            budgets: std::sync::Arc::new(squilla_net::budget::Budgets::new(
                self.sink_total_mib.max(1) << 20,
                self.sink_tenant_mib.max(1) << 20,
            )),
        };
        Ok(config)
    }
}

pub fn run(args: AgentArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let agent = Agent::start(config).await?;
        eprintln!(
            "squilla agent {}: sinks at {}, data at {}, master {}",
            agent.id(),
            agent.http_url(),
            agent.data_addr(),
            args.master
        );
        let _ = tokio::signal::ctrl_c().await;
        agent.shutdown().await;
        anyhow::Ok(())
    })
}
