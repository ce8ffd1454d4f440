//! The Squilla agent: hosts workers of many tenants' jobs, as the master plans.
//!
//! An [`Agent`] is four things on one runtime and one executor:
//!
//! - a **heartbeat loop** ([`heartbeat`]) that reports capacity, attributes and every worker's
//!   state to the master (`POST /api/v1/agent/heartbeat`), hands each answer — the agent's
//!   whole plan — to [`jobs::Jobs`], and renews the agent's lease (no emitting without one);
//! - **jobs** ([`jobs`], [`job`]): one thread per job reconciles it to its latest assignment,
//!   so no job's compile, start or stop ever waits on another's, nor a heartbeat on any;
//! - the **transport** ([`squilla_host::transport`]) for batches between agents;
//! - an **HTTP server** ([`http`]) for sinks and ingest, with the agent token checked before
//!   any body is read, and connection, body and memory limits.

mod certificate;
pub mod chain;
mod config;
mod heartbeat;
pub mod http;
mod job;
pub mod jobs;
mod master;
mod metrics;
pub mod reconcile;
pub mod sink;
pub mod tap;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use squilla_host::transport::{Auth, DataTls, Transport, TransportConfig};
use squilla_host::{ArtifactCache, Executor, Lease, Runtime, RuntimeConfig};
use squilla_net::server::ServerStats;
use squilla_types::control::Heartbeat;
use squilla_types::ids::AgentId;

pub use config::{AgentConfig, DataSecurity};
pub use http::INGEST_WAIT;
pub use master::FETCH_TIMEOUT;

use crate::job::Context;
use crate::jobs::Jobs;
use crate::master::MasterClient;

/// Why an agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The Wasm runtime could not be built.
    #[error("runtime: {0}")]
    Runtime(String),
    /// The executor's threads could not be started.
    #[error("cannot start the executor's threads: {0}")]
    Executor(#[source] std::io::Error),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A running agent.
pub struct Agent {
    id: AgentId,
    http: SocketAddr,
    http_url: String,
    data: SocketAddr,
    jobs: Arc<Jobs>,
    stats: Arc<ServerStats>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").field("id", &self.id).field("http", &self.http).field("data", &self.data).finish()
    }
}

impl Agent {
    /// Starts the agent on the current tokio runtime.
    pub async fn start(config: AgentConfig) -> Result<Agent, AgentError> {
        let runtime = Runtime::new(RuntimeConfig::default()).map_err(|e| AgentError::Runtime(e.to_string()))?;
        let cache = match &config.cache_dir {
            Some(dir) => ArtifactCache::on_disk(&runtime, dir).map_err(|e| AgentError::Runtime(e.to_string()))?,
            None => ArtifactCache::in_memory(&runtime),
        }
        .with_compile_config(config.compile.clone());
        let executor = Executor::start(config.threads).map_err(AgentError::Executor)?;
        let lease = Lease::expired();
        let data_tls = (config.data_security == DataSecurity::Tls).then(DataTls::new);
        let auth = match &data_tls {
            Some(tls) => Auth::Tls(tls.clone()),
            None => Auth::Key(squilla_host::transport::handshake::key_from_token(&config.token)),
        };
        let transport_config =
            TransportConfig { agent: config.id.to_string(), lease: lease.clone(), auth, ..TransportConfig::default() };
        let transport = Transport::bind(config.data_listen, transport_config)
            .map_err(|source| AgentError::Listen { addr: config.data_listen, source })?;
        let listener = tokio::net::TcpListener::bind(config.http_listen)
            .await
            .map_err(|source| AgentError::Listen { addr: config.http_listen, source })?;
        let advertise = |addr: SocketAddr| {
            let ip = config.advertise.unwrap_or(if addr.ip().is_unspecified() {
                IpAddr::from([127, 0, 0, 1])
            } else {
                addr.ip()
            });
            SocketAddr::new(ip, addr.port())
        };
        let http =
            advertise(listener.local_addr().map_err(|source| AgentError::Listen { addr: config.http_listen, source })?);
        let data = advertise(transport.local_addr());
        // Redirects are the masters' leadership answers, which `Masters` follows itself
        // (reqwest would drop the token on the way).
        let mut client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none());
        if let Some(ca) = &config.ca {
            let pem = std::fs::read(ca).map_err(|e| AgentError::Runtime(format!("--ca {}: {e}", ca.display())))?;
            let roots = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| AgentError::Runtime(format!("--ca {}: {e}", ca.display())))?;
            for root in roots {
                client = client.add_root_certificate(root);
            }
        }
        let client = client.build().map_err(|e| AgentError::Runtime(format!("http client: {e}")))?;
        let master = MasterClient {
            url: config.master.clone(),
            token: config.token.clone(),
            client: client.clone(),
            cache: Arc::new(cache),
            runtime: tokio::runtime::Handle::current(),
        };
        let jobs = Arc::new(Jobs::new(Context {
            agent: config.id.clone(),
            runtime,
            executor,
            transport: Arc::new(transport),
            master,
            lease: lease.clone(),
            sink_limits: config.sinks.clone(),
        }));
        let mut tasks = Vec::new();
        // Under TLS the agent's HTTP server serves HTTPS with the data port's certificate, and
        // says so in the address it reports.
        let acceptor = match &data_tls {
            Some(tls) => Some(squilla_net::tls::TlsAcceptor::from(
                tls.http_server_config().map_err(|e| AgentError::Runtime(e.to_string()))?,
            )),
            None => None,
        };
        let http_url = format!("{}://{http}", if acceptor.is_some() { "https" } else { "http" });
        let beat = Heartbeat {
            agent: config.id.clone(),
            http: http_url.clone(),
            data: data.to_string(),
            capacity: config.capacity,
            zone: config.zone.clone(),
            labels: config.labels.clone(),
            workers: Vec::new(),
            usage: Default::default(),
        };
        let heartbeats = heartbeat::run(config.clone(), client.clone(), beat, jobs.clone(), lease);
        tasks.push(tokio::spawn({
            let config = config.clone();
            async move {
                // An agent takes part in the data plane only once it holds a certificate.
                match data_tls {
                    Some(tls) => {
                        let valid = certificate::obtain(&config, &client, &tls).await;
                        tokio::join!(heartbeats, certificate::renew(config, client, tls, valid));
                    }
                    None => heartbeats.await,
                }
            }
        }));
        let app = http::router(jobs.clone(), &config.token);
        let stats = Arc::new(ServerStats::default());
        let serving = squilla_net::server::serve_tls(listener, app, config.server.clone(), stats.clone(), acceptor);
        tasks.push(tokio::spawn(serving));
        tracing::info!(id = %config.id, http = %http_url, %data, master = %config.master, "agent started");
        Ok(Agent { id: config.id, http, http_url, data, jobs, stats, tasks })
    }

    /// The agent's id.
    pub fn id(&self) -> &AgentId {
        &self.id
    }

    /// Where its sink server listens.
    pub fn http_addr(&self) -> SocketAddr {
        self.http
    }

    /// Its sink server's base URL, as it reports it: `https://…` under TLS (its certificate
    /// from the master's CA), `http://…` otherwise.
    pub fn http_url(&self) -> &str {
        &self.http_url
    }

    /// Where peers send it batches.
    pub fn data_addr(&self) -> SocketAddr {
        self.data
    }

    /// Its jobs.
    pub fn jobs(&self) -> &Arc<Jobs> {
        &self.jobs
    }

    /// What the HTTP server has refused (connections over a limit, idle connections).
    pub fn server_stats(&self) -> &Arc<ServerStats> {
        &self.stats
    }

    /// Stops heartbeating and every worker (waiting up to 5 s for the jobs to stop).
    pub async fn shutdown(self) {
        for task in &self.tasks {
            task.abort();
        }
        let jobs = self.jobs.clone();
        let _ = tokio::task::spawn_blocking(move || jobs.stop_all(Duration::from_secs(5))).await;
    }
}
