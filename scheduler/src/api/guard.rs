//! What runs before any handler: who is calling, how often, and how much body they may send.
//!
//! The order is the point (limits before work): a request is counted against its client
//! address's rate, then authenticated from its headers alone (a tenant's bearer token, or the
//! agent token for `/api/v1/agent/*`), then counted against its tenant's rate — and only then
//! is its body read, under the route's byte cap and read timeout
//! ([`squilla_net::limits::buffer_body`]). A client without a valid token never gets a byte
//! of its body read.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use squilla_net::limits::BodyBudget;
use squilla_net::server::ClientAddr;

use super::{ApiError, AppState};
use squilla_net::access::Caller;

fn too_many(wait: Duration, whom: &str) -> Response {
    let mut response = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!("too many requests from this {whom}; retry in {} ms", wait.as_millis().max(1)),
    )
    .into_response();
    let secs = wait.as_secs().max(1).to_string();
    if let Ok(value) = HeaderValue::from_str(&secs) {
        response.headers_mut().insert(axum::http::header::RETRY_AFTER, value);
    }
    response
}

/// A change authenticated by the console's cookie alone, without the console's header: 403
/// `console_header_required` (see `super::session`).
fn console_change_without_header(request: &Request) -> Option<Response> {
    let headers = request.headers();
    let safe = matches!(*request.method(), axum::http::Method::GET | axum::http::Method::HEAD);
    let by_cookie = !headers.contains_key(axum::http::header::AUTHORIZATION);
    (by_cookie && !safe && !headers.contains_key(super::session::CONSOLE_HEADER)).then(|| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "console_header_required",
            "a change signed in by the console's cookie must carry the X-Squilla-Console header",
        )
        .into_response()
    })
}

/// The client address's rate: the 429 that refuses a request over it. A request from a
/// trusted gateway is rated by the address its `X-Forwarded-For` names (its last entry).
pub(crate) fn client_rate(state: &AppState, request: &Request) -> Option<Response> {
    let ClientAddr(addr) = request.extensions().get::<ClientAddr>()?;
    let mut ip = addr.ip();
    if state.limits.trusted_proxies.contains(&ip)
        && let Some(forwarded) = request
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|v| v.trim().parse().ok())
    {
        ip = forwarded;
    }
    let key = squilla_net::rate::client_key(ip);
    state.rates.per_client.check(&key).err().map(|wait| too_many(wait, "address"))
}

/// The budget of request bodies of agents (all agents share it).
const AGENTS: &str = "\0agents";

/// Middleware for tenant routes: client rate, tenant token, tenant rate; the request's body
/// will be read into the tenant's share of memory for bodies.
pub async fn tenant(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    if let Some(refusal) = client_rate(&state, &request) {
        return refusal;
    }
    let tenant = match state.tenants.authenticate(request.headers()) {
        Ok(t) => t.name.clone(),
        Err(e) => return e.into_response(),
    };
    if let Some(refusal) = console_change_without_header(&request) {
        return refusal;
    }
    if let Err(wait) = state.rates.per_tenant.check(tenant.as_str()) {
        return too_many(wait, "tenant");
    }
    request.extensions_mut().insert(BodyBudget(state.bodies.tenant(tenant.as_str())));
    let mut response = next.run(request).await;
    response.extensions_mut().insert(Caller::Tenant(tenant.to_string()));
    // A tenant's answers are its own: no shared cache may keep them (a cookie-authenticated
    // request is not protected by RFC 9111's rule for `Authorization`).
    response
        .headers_mut()
        .entry(axum::http::header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("private, no-store"));
    response
}

/// Middleware for agent routes: the agent token; only a request without it counts against
/// its client address's rate (agents behind one address are never slowed by others there).
pub async fn agent(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let authorized = match &state.agent_token {
        Some(token) => token.check(request.headers()).is_ok(),
        None => false,
    };
    if !authorized {
        if let Some(refusal) = client_rate(&state, &request) {
            return refusal;
        }
        return ApiError::unauthorized().into_response();
    }
    request.extensions_mut().insert(BodyBudget(state.bodies.tenant(AGENTS)));
    let mut response = next.run(request).await;
    response.extensions_mut().insert(Caller::Agent);
    response
}
