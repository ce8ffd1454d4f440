//! How an agent is set up; `AgentConfig::new` gives the documented defaults.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use squilla_host::CompileConfig;
use squilla_net::server::ServerLimits;
use squilla_types::control::Capacity;
use squilla_types::ids::AgentId;

use crate::sink::SinkLimits;

/// How an agent is set up. `AgentConfig::new` gives the documented defaults.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The masters' base URLs, e.g. `http://127.0.0.1:7070`, or several, comma-separated,
    /// for a fleet of masters: the agent follows the one that leads.
    pub master: squilla_net::masters::Masters,
    /// The agent token (shared with the master).
    pub token: String,
    /// This agent's id (default `agent-<pid>-<random>`): unique among live agents.
    pub id: AgentId,
    /// Where the sink server listens (default `127.0.0.1:0`: any free port).
    pub http_listen: SocketAddr,
    /// Where peers' batches arrive (default `127.0.0.1:0`).
    pub data_listen: SocketAddr,
    /// The address others use to reach this agent (default: the listen address, or
    /// 127.0.0.1 when listening on all addresses).
    pub advertise: Option<IpAddr>,
    /// What the agent offers (default: cores × 1000 millicores, 4096 MiB, 1000 Mbps, 64
    /// slots).
    pub capacity: Capacity,
    /// Its zone (default `default`).
    pub zone: String,
    /// Its labels (default none).
    pub labels: BTreeMap<String, String>,
    /// Where compiled code is cached across restarts (default: memory only).
    pub cache_dir: Option<PathBuf>,
    /// Worker threads (default 0: one per core).
    pub threads: usize,
    /// How compiles are run and bounded (default [`CompileConfig::default`]: on a thread;
    /// `squilla agent` compiles in a child process).
    pub compile: CompileConfig,
    /// Memory limits of sink subscriptions (default [`SinkLimits::default`]).
    pub sinks: SinkLimits,
    /// Connection limits and timeouts of the agent's HTTP server (default
    /// [`ServerLimits::default`] without a lower limit per client address: the agent's clients
    /// are the master and gateways, each speaking for many tenants).
    pub server: ServerLimits,
    /// A PEM file of certificates to trust for the master's HTTPS, beside the public roots
    /// (default none).
    pub ca: Option<PathBuf>,
    /// How the data port admits peers (default [`DataSecurity::Tls`]).
    pub data_security: DataSecurity,
}

/// How an agent's data port admits peers; every agent of a fleet must use the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DataSecurity {
    /// TLS 1.3 with a certificate from the master's CA at both ends: peers authenticated,
    /// frames encrypted and authenticated.
    #[default]
    Tls,
    /// Both ends prove they hold a key derived from the agent token; frames travel in the
    /// clear (for networks nobody else can tap).
    Key,
}

impl AgentConfig {
    /// The defaults, for a master at `master` with agent token `token`.
    pub fn new(master: impl Into<String>, token: impl Into<String>) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
        let nonce = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        AgentConfig {
            master: squilla_net::masters::Masters::new(&master.into()),
            token: token.into(),
            id: AgentId::numbered(std::process::id(), nonce & 0xffff),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise: None,
            capacity: Capacity { cpu_millis: cores * 1000, memory_mib: 4096, network_mbps: 1000, slots: 64 },
            zone: "default".into(),
            labels: BTreeMap::new(),
            cache_dir: None,
            threads: 0,
            compile: CompileConfig::default(),
            sinks: SinkLimits::default(),
            // Its clients are the master and gateways, a few addresses each carrying many
            // tenants' streams: no limit per address below the total.
            server: ServerLimits {
                max_connections_per_ip: ServerLimits::default().max_connections,
                ..ServerLimits::default()
            },
            ca: None,
            data_security: DataSecurity::Tls,
        }
    }
}
