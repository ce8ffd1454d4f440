//! `squilla agent`: hosts workers for a master.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use squilla_agent::{Agent, AgentConfig};

/// Arguments of `squilla agent`.
#[derive(clap::Args, Clone)]
pub struct AgentArgs {
    /// The master's URL.
    #[arg(long, env = "SQUILLA_MASTER", default_value = "http://127.0.0.1:7070")]
    pub master: String,
    /// The agent token the master expects.
    #[arg(long, env = "SQUILLA_AGENT_TOKEN")]
    pub agent_token: String,
    /// This agent's id (default: `agent-<pid>-<random>`).
    #[arg(long, env = "SQUILLA_AGENT_ID")]
    pub id: Option<String>,
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
}

impl AgentArgs {
    /// The agent configuration these arguments describe.
    pub fn config(&self) -> anyhow::Result<AgentConfig> {
        let mut config = AgentConfig::new(&self.master, &self.agent_token);
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
        config.threads = self.threads;
        Ok(config)
    }
}

pub fn run(args: AgentArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let agent = Agent::start(config).await?;
        eprintln!(
            "squilla agent {}: sinks at http://{}, data at {}, master {}",
            agent.id(),
            agent.http_addr(),
            agent.data_addr(),
            args.master
        );
        let _ = tokio::signal::ctrl_c().await;
        agent.shutdown().await;
        anyhow::Ok(())
    })
}
