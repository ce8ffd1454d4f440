//! The master's HTTP API under `/api/v1` (see docs/api.md).
//!
//! One [`ApiError`] type answers every failure as `{"code", "message"}` with a fitting
//! status. Every object belongs to a tenant; another tenant's object answers 404, exactly as
//! a missing one does. Blocking work (the store, inspecting a component) runs on tokio's
//! blocking pool, never on the async workers.

mod artifacts;
mod auth;
mod clusters;
mod error;

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;

pub use auth::{Tenant, Tenants, TokensError};
pub use error::ApiError;

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
        // Uploads enforce their own cap while streaming (413 `artifact_too_large`).
        .layer(DefaultBodyLimit::disable())
        .fallback(|| async { ApiError::not_found("route") })
        .with_state(state)
}
