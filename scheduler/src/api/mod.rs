//! The master's HTTP API under `/api/v1` (see docs/api.md).
//!
//! One [`ApiError`] type answers every failure as `{"code", "message"}` with a fitting
//! status. Every object belongs to a tenant; another tenant's object answers 404, exactly as
//! a missing one does. Blocking work (the store, inspecting a component) runs on tokio's
//! blocking pool, never on the async workers.

mod agents;
mod artifacts;
mod auth;
mod clusters;
mod error;
mod ingest;
mod jobs;
mod stream;
mod ws;

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};

pub use auth::{AgentToken, Tenant, Tenants, TokensError};
pub use error::ApiError;

use crate::control::Control;
use crate::store::Store;

/// Limits of the API. `Default` gives the values documented on each field.
#[derive(Debug, Clone)]
pub struct ApiLimits {
    /// Largest artifact accepted, in bytes (default 64 MiB).
    pub max_artifact_bytes: usize,
    /// Artifact bytes one tenant may hold (default 1 GiB).
    pub artifact_bytes_per_tenant: u64,
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits { max_artifact_bytes: 64 << 20, artifact_bytes_per_tenant: 1 << 30 }
    }
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// Who may call.
    pub tenants: Arc<Tenants>,
    /// The embedded store.
    pub store: Arc<Store>,
    /// The limits in force.
    pub limits: ApiLimits,
    /// Jobs, workers and agents.
    pub control: Arc<Control>,
    /// The token agents present (hashed); without one, agents are refused.
    pub agent_token: Option<AgentToken>,
    /// The same token, which the master presents to agents (sinks).
    pub agent_token_plain: Option<String>,
    /// The master's HTTP client (to agents).
    pub http: reqwest::Client,
}

impl AppState {
    /// The state of a master over `store`, with `agent_token` for agents (at least 16
    /// characters).
    pub fn new(
        tenants: Tenants,
        store: Arc<Store>,
        limits: ApiLimits,
        control: Arc<Control>,
        agent_token: Option<String>,
    ) -> Result<Self, TokensError> {
        Ok(AppState {
            tenants: Arc::new(tenants),
            store,
            limits,
            control,
            agent_token: agent_token.as_deref().map(AgentToken::new).transpose()?,
            agent_token_plain: agent_token,
            http: reqwest::Client::new(),
        })
    }
}

/// Runs the control loop's timer (every quarter of the heartbeat period) until the runtime
/// shuts down.
pub fn spawn_control_loop(control: Arc<Control>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let period = (control.config().heartbeat / 4).max(std::time::Duration::from_millis(50));
        let mut timer = tokio::time::interval(period);
        loop {
            timer.tick().await;
            let c = control.clone();
            match tokio::task::spawn_blocking(move || c.tick()).await {
                Ok(Err(err)) => tracing::error!(error = %err, "control loop: store failed"),
                Err(err) => tracing::error!(error = %err, "control loop panicked"),
                Ok(Ok(())) => {}
            }
        }
    })
}

/// The OpenAPI document, served at `/api/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

/// The API's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(serde_json::json!({"status": "ok"})) }))
        .route(
            "/api/v1/openapi.json",
            get(|| async { ([(axum::http::header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .route("/api/v1/artifacts", get(artifacts::list).post(artifacts::upload))
        .route("/api/v1/artifacts/{sha256}", get(artifacts::get).delete(artifacts::delete))
        .route("/api/v1/artifacts/{sha256}/wasm", get(artifacts::download))
        .route("/api/v1/clusters", get(clusters::list).post(clusters::create))
        .route("/api/v1/clusters/{name}", get(clusters::get))
        .route("/api/v1/clusters/{name}/versions/{version}", get(clusters::get_version))
        .route("/api/v1/clusters/{name}/jobs", post(jobs::submit))
        .route("/api/v1/jobs", get(jobs::list))
        .route("/api/v1/jobs/{id}", get(jobs::get))
        .route("/api/v1/jobs/{id}/kill", post(jobs::kill))
        .route("/api/v1/jobs/{id}/stages/{stage}/scale", post(jobs::scale))
        .route("/api/v1/jobs/{id}/stages/{stage}/workers/{index}/resubmit", post(jobs::resubmit))
        .route("/api/v1/jobs/{id}/status", get(stream::status))
        .route("/api/v1/jobs/{id}/sink", get(stream::sink))
        .route("/api/v1/jobs/{id}/ingest", post(ingest::ingest).layer(DefaultBodyLimit::max(ingest::MAX_INGEST_BYTES)))
        .route("/api/v1/agent/subscribe/{tenant}/{cluster}", get(agents::subscribe))
        .route("/api/v1/agents", get(agents::list))
        .route("/api/v1/agent/heartbeat", post(agents::heartbeat))
        .route("/api/v1/agent/artifacts/{sha256}", get(agents::artifact))
        // Uploads enforce their own cap while streaming (413 `artifact_too_large`).
        .layer(DefaultBodyLimit::disable())
        .fallback(|| async { ApiError::not_found("route") })
        .with_state(state)
}
