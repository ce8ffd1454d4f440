//! One log line per request: method, route (the path's template, so that ids do not make
//! every line unique), status, latency and — when the request authenticated — its tenant.
//! Tenant routes log at `info`, agents' (heartbeats every second per agent) at `debug`, under
//! the target `squilla::request`; `SQUILLA_LOG=squilla::request=info` shows only these.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use squilla_types::ids::TenantId;

/// Who a request was authenticated as, put on its response by the guards.
#[derive(Debug, Clone)]
pub(crate) enum Caller {
    /// A tenant.
    Tenant(TenantId),
    /// An agent (the agent token).
    Agent,
}

/// The middleware.
pub(crate) async fn log(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "(no route)".to_owned());
    let response = next.run(request).await;
    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    let status = response.status().as_u16();
    match response.extensions().get::<Caller>() {
        Some(Caller::Agent) => {
            tracing::debug!(target: "squilla::request", %method, %route, status, latency_us = micros, caller = "agent", "request");
        }
        Some(Caller::Tenant(tenant)) => {
            tracing::info!(target: "squilla::request", %method, %route, status, latency_us = micros, %tenant, "request");
        }
        None => {
            tracing::info!(target: "squilla::request", %method, %route, status, latency_us = micros, "request");
        }
    }
    response
}
