//! The Squilla agent: hosts workers of many tenants' jobs, as the master plans.
//!
//! An [`Agent`] is four things on one runtime and one executor:
//!
//! - a **heartbeat loop** that reports capacity, attributes and every worker's state to the
//!   master (`POST /api/v1/agent/heartbeat`) and hands each answer — the agent's whole plan —
//!   to the apply loop. Heartbeats never wait for the plan to be applied (compiling a large
//!   component can take seconds), so a busy agent is never mistaken for a lost one;
//! - an **apply loop** ([`jobs::Jobs`]) that reconciles running pipelines to the latest plan;
//! - the **transport** ([`squilla_host::transport`]) for batches between agents;
//! - an **HTTP server** for sinks: `GET /jobs/{id}/sink` streams the job's output produced
//!   here as server-sent events (the master merges these for tenants), `GET /healthz`.
//!
//! The agent's own endpoints take the same agent token the master does.

pub mod chain;
mod fetch;
pub mod jobs;
pub mod sink;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};
use squilla_host::transport::{Transport, TransportConfig};
use squilla_host::{ArtifactCache, Executor, Runtime, RuntimeConfig};
use squilla_types::control::{Assignments, Capacity, Heartbeat, JobAssignment};
use subtle::ConstantTimeEq;
use tokio::sync::watch;

use crate::fetch::Fetcher;
use crate::jobs::Jobs;

/// How long an ingested batch may wait for room in the job's first stage (under `block`).
pub const INGEST_WAIT: Duration = Duration::from_secs(5);

/// How an agent is set up. `AgentConfig::new` gives the documented defaults.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The master's base URL, e.g. `http://127.0.0.1:7070`.
    pub master: String,
    /// The agent token (shared with the master).
    pub token: String,
    /// This agent's id (default `agent-<pid>-<random>`): unique among live agents.
    pub id: String,
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
}

impl AgentConfig {
    /// The defaults, for a master at `master` with agent token `token`.
    pub fn new(master: impl Into<String>, token: impl Into<String>) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
        let nonce = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        AgentConfig {
            master: master.into(),
            token: token.into(),
            id: format!("agent-{}-{:x}", std::process::id(), nonce & 0xffff),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise: None,
            capacity: Capacity { cpu_millis: cores * 1000, memory_mib: 4096, network_mbps: 1000, slots: 64 },
            zone: "default".into(),
            labels: BTreeMap::new(),
            cache_dir: None,
            threads: 0,
        }
    }
}

/// Why an agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The Wasm runtime could not be built.
    #[error("runtime: {0}")]
    Runtime(String),
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
    id: String,
    http: SocketAddr,
    data: SocketAddr,
    jobs: Arc<Jobs>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").field("id", &self.id).field("http", &self.http).field("data", &self.data).finish()
    }
}

#[derive(Clone)]
struct HttpState {
    jobs: Arc<Jobs>,
    token_hash: [u8; 32],
}

impl Agent {
    /// Starts the agent on the current tokio runtime.
    pub async fn start(config: AgentConfig) -> Result<Agent, AgentError> {
        let runtime = Runtime::new(RuntimeConfig::default()).map_err(|e| AgentError::Runtime(e.to_string()))?;
        let cache = match &config.cache_dir {
            Some(dir) => ArtifactCache::on_disk(&runtime, dir).map_err(|e| AgentError::Runtime(e.to_string()))?,
            None => ArtifactCache::in_memory(&runtime),
        };
        let executor = Executor::new(config.threads);
        let transport_config = TransportConfig { agent: config.id.clone(), ..TransportConfig::default() };
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
        let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("http client");
        let fetcher = Fetcher {
            master: config.master.clone(),
            token: config.token.clone(),
            client: client.clone(),
            cache: Arc::new(cache),
            runtime: tokio::runtime::Handle::current(),
        };
        let jobs = Arc::new(Jobs::new(config.id.clone(), runtime, executor, Arc::new(transport), fetcher));
        let (plan_tx, plan_rx) = watch::channel(None::<Vec<JobAssignment>>);
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(apply_loop(jobs.clone(), plan_rx)));
        let beat = Heartbeat {
            agent: config.id.clone(),
            http: http.to_string(),
            data: data.to_string(),
            capacity: config.capacity,
            zone: config.zone.clone(),
            labels: config.labels.clone(),
            workers: Vec::new(),
        };
        tasks.push(tokio::spawn(heartbeat_loop(config.clone(), client, beat, jobs.clone(), plan_tx)));
        let state = HttpState { jobs: jobs.clone(), token_hash: Sha256::digest(config.token.trim().as_bytes()).into() };
        let app = Router::new()
            .route("/healthz", get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }))
            .route("/jobs/{id}/sink", get(sink))
            .route("/jobs/{id}/ingest", axum::routing::post(ingest))
            .with_state(state);
        tasks.push(tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                tracing::error!(error = %err, "agent HTTP server ended");
            }
        }));
        tracing::info!(id = %config.id, %http, %data, master = %config.master, "agent started");
        Ok(Agent { id: config.id, http, data, jobs, tasks })
    }

    /// The agent's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Where its sink server listens.
    pub fn http_addr(&self) -> SocketAddr {
        self.http
    }

    /// Where peers send it batches.
    pub fn data_addr(&self) -> SocketAddr {
        self.data
    }

    /// Its jobs.
    pub fn jobs(&self) -> &Arc<Jobs> {
        &self.jobs
    }

    /// Stops heartbeating and every worker.
    pub async fn shutdown(self) {
        for task in &self.tasks {
            task.abort();
        }
        let jobs = self.jobs.clone();
        let _ = tokio::task::spawn_blocking(move || jobs.stop_all()).await;
    }
}

async fn heartbeat_loop(
    config: AgentConfig,
    client: reqwest::Client,
    mut beat: Heartbeat,
    jobs: Arc<Jobs>,
    plan: watch::Sender<Option<Vec<JobAssignment>>>,
) {
    let url = format!("{}/api/v1/agent/heartbeat", config.master.trim_end_matches('/'));
    let mut period = Duration::from_secs(1);
    let mut failing = false;
    loop {
        let j = jobs.clone();
        beat.workers = tokio::task::spawn_blocking(move || j.reports()).await.unwrap_or_default();
        let answer = async {
            let response =
                client.post(&url).bearer_auth(&config.token).json(&beat).send().await.map_err(|e| e.to_string())?;
            if !response.status().is_success() {
                let status = response.status();
                return Err(format!("{status}: {}", response.text().await.unwrap_or_default()));
            }
            response.json::<Assignments>().await.map_err(|e| e.to_string())
        };
        match answer.await {
            Ok(answer) => {
                if failing {
                    tracing::info!(master = %config.master, "master reachable again");
                    failing = false;
                }
                period = Duration::from_millis(answer.heartbeat_ms.clamp(50, 60_000));
                plan.send_replace(Some(answer.jobs));
            }
            Err(err) => {
                if !failing {
                    tracing::warn!(master = %config.master, error = %err, "heartbeat failed; workers keep running");
                    failing = true;
                }
            }
        }
        tokio::time::sleep(period).await;
    }
}

async fn apply_loop(jobs: Arc<Jobs>, mut plan: watch::Receiver<Option<Vec<JobAssignment>>>) {
    while plan.changed().await.is_ok() {
        let Some(latest) = plan.borrow_and_update().clone() else { continue };
        let j = jobs.clone();
        if let Err(err) = tokio::task::spawn_blocking(move || j.apply(latest)).await {
            tracing::error!(error = %err, "applying the plan panicked");
        }
    }
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({"code": code, "message": message}))).into_response()
}

fn authorized(state: &HttpState, headers: &HeaderMap) -> bool {
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| -> [u8; 32] { Sha256::digest(t.trim().as_bytes()).into() });
    presented.is_some_and(|h| bool::from(h.ct_eq(&state.token_hash)))
}

/// `POST /jobs/{id}/ingest` (from the master): one archived batch for the job's first stage.
async fn ingest(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    if !authorized(&state, &headers) {
        return error(StatusCode::UNAUTHORIZED, "unauthorized", "the agent token is required");
    }
    let batch = match squilla_batch::BatchBytes::validate(body.to_vec()) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_batch", &e.to_string()),
    };
    let jobs = state.jobs.clone();
    let fed = tokio::task::spawn_blocking(move || jobs.ingest(&id, batch, INGEST_WAIT)).await;
    match fed {
        Ok(true) => axum::Json(serde_json::json!({"fed": true})).into_response(),
        _ => error(StatusCode::SERVICE_UNAVAILABLE, "backpressure", "the job had no room in time, or is not here"),
    }
}

/// Query parameters of a sink subscription (see docs/api.md).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SinkParams {
    /// Subscribers sharing a client id split the stream.
    pub client_id: Option<String>,
    /// At most this many events per second.
    pub sample: Option<u32>,
    /// A query (SQL subset, see `squilla_query`).
    pub query: Option<String>,
    /// Seconds between `ping` events (default 15).
    pub ping: Option<u64>,
}

impl SinkParams {
    /// Checks the parameters; the error is `(code, message, line, column)`.
    pub fn options(&self) -> Result<sink::Options, (&'static str, String, u64, u64)> {
        let query = match &self.query {
            None => None,
            Some(text) => Some(Arc::new(
                squilla_query::Query::parse(text).map_err(|e| ("invalid_query", e.message, e.line, e.column))?,
            )),
        };
        if self.sample == Some(0) {
            return Err(("bad_request", "sample: at least 1 event per second".into(), 0, 0));
        }
        if self.client_id.as_ref().is_some_and(|c| c.is_empty() || c.len() > 128) {
            return Err(("bad_request", "clientId: 1 to 128 characters".into(), 0, 0));
        }
        Ok(sink::Options { client_id: self.client_id.clone(), sample_per_second: self.sample, query })
    }
}

/// `GET /jobs/{id}/sink`: this agent's part of a job's output, as server-sent events.
async fn sink(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    params: Result<axum::extract::Query<SinkParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if !authorized(&state, &headers) {
        return error(StatusCode::UNAUTHORIZED, "unauthorized", "the agent token is required");
    }
    let params = match params {
        Ok(axum::extract::Query(p)) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", &e.body_text()),
    };
    let options = match params.options() {
        Ok(o) => o,
        Err((code, message, line, column)) => {
            let body = serde_json::json!({"code": code, "message": message, "line": line, "column": column});
            return (StatusCode::BAD_REQUEST, axum::Json(body)).into_response();
        }
    };
    let Some(hub) = state.jobs.hub(&id) else {
        return error(StatusCode::NOT_FOUND, "not_found", &format!("job `{id}` not found on this agent"));
    };
    let subscription = hub.subscribe(options);
    drop(hub);
    let ping = Duration::from_secs(params.ping.unwrap_or(15).clamp(1, 3600));
    // Chunks of frames as the hub rendered them; a `meta` frame first when some were lost;
    // a `ping` frame after `ping` of silence.
    let stream = futures_util::stream::unfold(subscription, move |mut sub| async move {
        let chunk = match tokio::time::timeout(ping, sub.recv()).await {
            Err(_) => {
                let mut text = Vec::new();
                squilla_types::sse::frame(&mut text, Some("ping"), "{}");
                return Some((Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(text)), sub));
            }
            Ok(chunk) => chunk?,
        };
        let dropped = sub.take_dropped();
        if dropped == 0 {
            return Some((Ok(chunk.text), sub));
        }
        let mut text = Vec::with_capacity(chunk.text.len() + 64);
        let meta = serde_json::json!({"dropped": dropped, "reason": "subscriber too slow"}).to_string();
        squilla_types::sse::frame(&mut text, Some("meta"), &meta);
        text.extend_from_slice(&chunk.text);
        Some((Ok(axum::body::Bytes::from(text)), sub))
    });
    (
        [(axum::http::header::CONTENT_TYPE, "text/event-stream"), (axum::http::header::CACHE_CONTROL, "no-cache")],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}
