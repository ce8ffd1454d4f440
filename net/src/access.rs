//! One log line per request, for every Squilla server (the master's API, agents' HTTP):
//! method, route (the path's template, so that ids do not make every line unique), status,
//! latency and — when the request authenticated — who called. A tenant's requests log at
//! `info`; agents' calls (heartbeats every second per agent, the master's calls to agents) at
//! `debug`; all under the target `squilla::request`, so `SQUILLA_LOG=squilla::request=info`
//! shows only these. Guards put a [`Caller`] on the response they let through.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;

/// Who a request was authenticated as, put on its response by the guards.
#[derive(Debug, Clone)]
pub enum Caller {
    /// A tenant, by name.
    Tenant(String),
    /// The holder of the agent token (an agent, or the master calling one).
    Agent,
}

/// The middleware (`axum::middleware::from_fn(log)`, layered on the whole router so that the
/// route is known).
pub async fn log(request: Request, next: Next) -> Response {
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
