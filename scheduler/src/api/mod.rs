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
mod console;
mod endpoints;
mod error;
pub mod guard;
pub mod ingest;
mod jobs;
mod logs;
mod metrics;
mod openapi;
pub mod session;
pub mod standby;
mod stream;
mod streams;
mod telemetry;

use std::sync::Arc;

use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::middleware::from_fn_with_state;
use squilla_net::budget::Budgets;
use squilla_net::limits::{BodyLimit, buffer_body};
use squilla_net::rate::{Rate, RateLimiter};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

pub use auth::{AgentToken, Tenant, Tenants, TokensError};
pub use error::{ApiError, ErrorBody};
pub(crate) use squilla_net::extract::PathParams;

use squilla_types::ids::{ClusterName, JobId, Sha256};

use crate::control::Control;
use crate::store::Store;

/// Limits of the API. `Default` gives the values documented on each field.
#[derive(Debug, Clone)]
pub struct ApiLimits {
    /// Largest artifact accepted, in bytes (default 64 MiB).
    pub max_artifact_bytes: usize,
    /// Artifact bytes one tenant may hold (default 1 GiB).
    pub artifact_bytes_per_tenant: u64,
    /// Requests per second from one client address, and its burst (default 500/s, 1,000).
    pub client_rate: Rate,
    /// Requests per second of one tenant, and its burst (default 200/s, 400).
    pub tenant_rate: Rate,
    /// Bytes one stream subscriber may have waiting at the master (default 16 MiB).
    pub subscriber_bytes: usize,
    /// Bytes all of one tenant's subscribers may have waiting at the master (default 256 MiB).
    pub tenant_stream_bytes: usize,
    /// Bytes all subscribers may have waiting at the master (default 1 GiB).
    pub total_stream_bytes: usize,
    /// Longest wait for an agent's answer to an ingest request (default 8 s: the agent's own
    /// 5 s wait for room, and a margin).
    pub agent_timeout: Duration,
    /// Bytes of request bodies being read for one tenant at once (default 192 MiB); past it,
    /// 503 `busy`.
    pub tenant_body_bytes: usize,
    /// Bytes of request bodies being read at once in all (default 768 MiB).
    pub total_body_bytes: usize,
    /// Sink subscriptions (SSE or WebSocket, and job sources reading a cluster) one tenant may
    /// hold open at once (default 64); past it, 429 `too_many_subscriptions`.
    pub subscriptions_per_tenant: usize,
    /// Addresses of gateways (default none): a request from one is rated by the client address
    /// its `X-Forwarded-For` names (the gateway sets it to its own caller's), so that one
    /// gateway's users do not share one client bucket.
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits {
            max_artifact_bytes: 64 << 20,
            artifact_bytes_per_tenant: 1 << 30,
            client_rate: Rate { per_second: 500.0, burst: 1000.0 },
            tenant_rate: Rate { per_second: 200.0, burst: 400.0 },
            subscriber_bytes: 16 << 20,
            tenant_stream_bytes: 256 << 20,
            total_stream_bytes: 1 << 30,
            agent_timeout: Duration::from_secs(8),
            tenant_body_bytes: 192 << 20,
            total_body_bytes: 768 << 20,
            subscriptions_per_tenant: 64,
            trusted_proxies: Vec::new(),
        }
    }
}

/// Request rate limiters.
#[derive(Debug)]
pub struct Rates {
    /// By client address.
    pub per_client: RateLimiter,
    /// By tenant.
    pub per_tenant: RateLimiter,
}

/// Why the API's state could not be made.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The agent token is not one.
    #[error(transparent)]
    Token(#[from] TokensError),
    /// The HTTP client (to agents) could not be built.
    #[error("the HTTP client to agents: {0}")]
    HttpClient(#[from] reqwest::Error),
    /// The CA's certificate cannot be trusted by a TLS client.
    #[error("the fleet CA: {0}")]
    Ca(#[from] squilla_net::tls::TlsError),
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
    /// The master's HTTP client (to agents): connect timeout 2 s; each call sets its own.
    pub http: reqwest::Client,
    /// Request rates.
    pub rates: Arc<Rates>,
    /// Memory held for stream subscribers, per tenant and in total.
    pub streams: Arc<Budgets>,
    /// Memory held by request bodies being read, per tenant and in total.
    pub bodies: Arc<Budgets>,
    /// Shared upstreams of sink subscriptions (one per job and query string).
    pub fanouts: Arc<squilla_gateway::fanout::Fanouts>,
    /// Open sink subscriptions by tenant.
    pub subscriptions: Arc<std::sync::Mutex<std::collections::HashMap<squilla_types::ids::TenantId, usize>>>,
    /// Jobs' metrics documents, each made at most once a second however many ask.
    pub metrics_views: Arc<telemetry::Views>,
    /// The rules of agent-pool advice.
    pub pool: crate::advice::PoolRules,
    /// The CA that issues agents their data-port certificates (none: agents cannot use TLS
    /// on the data port).
    pub authority: Option<Arc<squilla_net::ca::Authority>>,
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
    ) -> Result<Self, StateError> {
        let http = reqwest::Client::builder().connect_timeout(Duration::from_secs(2)).build()?;
        Ok(AppState {
            tenants: Arc::new(tenants),
            store,
            rates: Arc::new(Rates {
                per_client: RateLimiter::new(limits.client_rate),
                per_tenant: RateLimiter::new(limits.tenant_rate),
            }),
            streams: Arc::new(Budgets::new(limits.total_stream_bytes, limits.tenant_stream_bytes)),
            bodies: Arc::new(Budgets::new(limits.total_body_bytes, limits.tenant_body_bytes)),
            subscriptions: Arc::default(),
            fanouts: Arc::default(),
            metrics_views: Arc::default(),
            authority: None,
            pool: crate::advice::PoolRules::default(),
            limits,
            control,
            agent_token: agent_token.as_deref().map(AgentToken::new).transpose()?,
            agent_token_plain: agent_token,
            http,
        })
    }
}

impl AppState {
    /// Issues agents their certificates with `authority`, and calls agents serving HTTPS
    /// trusting only the certificates it issued.
    pub fn set_authority(&mut self, authority: Arc<squilla_net::ca::Authority>) -> Result<(), StateError> {
        let tls = squilla_net::tls::agent_client_config(authority.certificate_pem())?;
        self.http =
            reqwest::Client::builder().connect_timeout(Duration::from_secs(2)).use_preconfigured_tls(tls).build()?;
        self.authority = Some(authority);
        Ok(())
    }
}

/// A job id from a path: a malformed one names nothing, so it answers 404 as a missing one.
pub(crate) fn job_id(text: &str) -> Result<JobId, ApiError> {
    text.parse().map_err(|_| ApiError::not_found(format!("job `{text}`")))
}

/// An artifact's sha256 from a path (404 if malformed, as a missing one).
pub(crate) fn sha256(text: &str) -> Result<Sha256, ApiError> {
    text.parse().map_err(|_| ApiError::not_found(format!("artifact {text}")))
}

/// A cluster name from a path (404 if malformed, as a missing one).
pub(crate) fn cluster_name(text: &str) -> Result<ClusterName, ApiError> {
    text.parse().map_err(|_| ApiError::not_found(format!("job cluster `{text}`")))
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

/// Body caps of the routes that take a body (see docs/api.md).
pub mod body_limits {
    use squilla_net::limits::BodyLimit;

    /// A job spec: 256 KiB (413 `spec_too_large`).
    pub const SPEC: BodyLimit = BodyLimit::bytes(256 << 10).code("spec_too_large");
    /// A submission, scale or other small JSON request: 64 KiB (413 `body_too_large`).
    pub const SMALL: BodyLimit = BodyLimit::bytes(64 << 10);
    /// A heartbeat (an agent's capacity and every worker's state): 8 MiB.
    pub const HEARTBEAT: BodyLimit = BodyLimit::bytes(8 << 20);
    /// An ingest request: 16 MiB (413 `ingest_too_large`).
    pub const INGEST: BodyLimit = BodyLimit::bytes(squilla_gateway::ingest::MAX_INGEST_BYTES).code("ingest_too_large");
}

/// `route` with its body read first, under `limit` (after the guards), and the answers of
/// that reading in its documentation.
fn capped(route: UtoipaMethodRouter<AppState>, limit: BodyLimit) -> UtoipaMethodRouter<AppState> {
    let (schemas, mut paths, router) = route.layer(from_fn_with_state(limit, buffer_body));
    openapi::body_cap(&mut paths, limit.code);
    (schemas, paths, router)
}

/// The master's health.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok` while the master serves.
    pub status: &'static str,
}

/// `GET /healthz`: whether the master serves.
#[utoipa::path(get, path = "/healthz", operation_id = "health", tag = "meta", security(()),
    responses((status = 200, description = "The master serves.", body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// The API's OpenAPI document, as served.
#[derive(Clone)]
struct Document(Arc<str>);

/// `GET /api/v1/openapi.json`: this document.
#[utoipa::path(get, path = "/api/v1/openapi.json", operation_id = "openapi", tag = "meta", security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document of this API.", body = Object)))]
async fn openapi_json(axum::Extension(Document(text)): axum::Extension<Document>) -> impl axum::response::IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], text.to_string())
}

/// The API's routes with their OpenAPI document. Every tenant route is guarded by
/// [`guard::tenant`] and every agent route by [`guard::agent`], before any body is read.
fn routes(state: &AppState) -> OpenApiRouter<AppState> {
    let mut tenant = OpenApiRouter::new()
        .routes(routes!(artifacts::list, artifacts::upload))
        .routes(routes!(artifacts::get, artifacts::delete))
        .routes(routes!(artifacts::download))
        .routes(routes!(clusters::list))
        .routes(capped(routes!(clusters::create), body_limits::SPEC))
        .routes(routes!(clusters::get))
        .routes(routes!(clusters::get_version))
        .routes(capped(routes!(jobs::submit), body_limits::SMALL))
        .routes(routes!(jobs::list))
        .routes(routes!(jobs::get))
        .routes(capped(routes!(jobs::kill), body_limits::SMALL))
        .routes(capped(routes!(jobs::scale), body_limits::SMALL))
        .routes(capped(routes!(jobs::set_scaling), body_limits::SMALL))
        .routes(capped(routes!(jobs::set_autoscaling), body_limits::SMALL))
        .routes(capped(routes!(jobs::resubmit), body_limits::SMALL))
        .routes(routes!(logs::logs))
        .routes(routes!(telemetry::metrics))
        .routes(routes!(telemetry::stream))
        .routes(routes!(stream::status))
        .routes(routes!(stream::sink))
        .routes(routes!(endpoints::endpoints))
        .routes(routes!(streams::get))
        .routes(capped(routes!(ingest::ingest), body_limits::INGEST))
        .routes(routes!(agents::list))
        .routes(routes!(agents::advice))
        .route_layer(from_fn_with_state(state.clone(), guard::tenant));
    openapi::tenant_guard(&mut tenant.get_openapi_mut().paths);
    openapi::optional_body(&mut tenant.get_openapi_mut().paths, "/api/v1/jobs/{id}/ingest");
    let mut agent = OpenApiRouter::new()
        .routes(capped(routes!(agents::heartbeat), body_limits::HEARTBEAT))
        .routes(routes!(agents::artifact))
        .routes(capped(routes!(agents::certificate), body_limits::SMALL))
        .routes(routes!(metrics::metrics))
        .route_layer(from_fn_with_state(state.clone(), guard::agent));
    openapi::agent_guard(&mut agent.get_openapi_mut().paths);
    let mut all = OpenApiRouter::new().merge(tenant).merge(agent);
    openapi::internal(&mut all.get_openapi_mut().paths);
    let mut routes =
        OpenApiRouter::with_openapi(openapi::base()).routes(routes!(healthz)).routes(routes!(openapi_json)).merge(all);
    openapi::close_variants(routes.get_openapi_mut(), &["SourceSpec", "SinkSpec", "Routing"]);
    routes
}

/// The OpenAPI document of the API (as `GET /api/v1/openapi.json` serves it).
pub fn openapi_document(state: &AppState) -> utoipa::openapi::OpenApi {
    routes(state).into_openapi()
}

/// The API's router.
pub fn router(state: AppState) -> Router {
    let (router, document) = routes(&state).split_for_parts();
    let text = document.to_pretty_json().unwrap_or_else(|e| {
        tracing::error!(error = %e, "cannot write the OpenAPI document");
        "{}".into()
    });
    router
        .merge(console::routes())
        .fallback(|| async { ApiError::not_found("route") })
        .method_not_allowed_fallback(squilla_net::extract::method_not_allowed)
        .layer(axum::Extension(Document(text.into())))
        // Bodies are capped per route, by `capped` and by the upload's own streaming cap.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn(squilla_net::access::log))
        .with_state(state)
}
