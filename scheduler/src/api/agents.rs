//! `/api/v1/agent/*`: what agents call (with the agent token), and `GET /api/v1/agents`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use serde::Serialize;
use squilla_types::control::{AgentUsage, Assignments, Capacity, CertificateAnswer, CertificateRequest, Heartbeat};

use super::{ApiError, AppState, ErrorBody, PathParams};
use squilla_types::ids::Sha256;

fn agent_auth(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    match &state.agent_token {
        Some(token) => token.check(headers),
        None => Err(ApiError::unauthorized()),
    }
}

/// `POST /api/v1/agent/heartbeat`: an agent reports; the answer is its whole plan.
#[utoipa::path(post, path = "/api/v1/agent/heartbeat", operation_id = "heartbeat", tag = "agent",
    security(("agent" = [])),
    request_body(content = Heartbeat),
    responses(
        (status = 200, description = "Every job with a worker on this agent.", body = Assignments),
        (status = 400, description = "`invalid_heartbeat`.", body = ErrorBody),
    ))]
pub async fn heartbeat(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Assignments>, ApiError> {
    agent_auth(&state, &headers)?;
    // The agent's id (`squilla_types::ids::AgentId`) is checked as the body is read.
    let beat: Heartbeat = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_heartbeat", e.to_string()))?;
    // The per-worker maps and the histogram have a few known keys and buckets: more is not a
    // report but a mistake (or an attempt to fill the master's memory).
    if let Some(w) = beat.workers.iter().find(|w| {
        w.counters.call_micros_log2.len() > crate::control::telemetry::BUCKETS
            || w.counters.drops.len() > 4
            || w.failures.len() > 5
    }) {
        let message =
            format!("worker {}/{}: at most 25 histogram buckets, 4 drop reasons and 5 failure kinds", w.stage, w.index);
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_heartbeat", message));
    }
    let control = state.control.clone();
    let answer = tokio::task::spawn_blocking(move || control.heartbeat(beat)).await.map_err(ApiError::internal)??;
    Ok(Json(answer))
}

/// `POST /api/v1/agent/certificate`: a data-port certificate for an agent's own key, signed
/// by the master's CA (see `squilla_net::ca`).
#[utoipa::path(post, path = "/api/v1/agent/certificate", operation_id = "agentCertificate", tag = "agent",
    security(("agent" = [])),
    request_body(content = CertificateRequest),
    responses(
        (status = 200, description = "The certificate, valid for 24 h, and the CA's.", body = CertificateAnswer),
        (status = 400, description = "`invalid_certificate_request`.", body = ErrorBody),
        (status = 503, description = "`no_certificate_authority`: this master issues no certificates.", body = ErrorBody),
    ))]
pub async fn certificate(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<CertificateAnswer>, ApiError> {
    agent_auth(&state, &headers)?;
    let invalid = |message: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_certificate_request", message);
    let request: CertificateRequest = serde_json::from_slice(&body).map_err(|e| invalid(e.to_string()))?;
    let Some(authority) = state.authority.clone() else {
        let message = "this master has no certificate authority";
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_certificate_authority", message));
    };
    // Signing takes a fraction of a millisecond, but off the executor all the same.
    let issued = tokio::task::spawn_blocking(move || {
        authority
            .issue(&request.csr, request.agent.as_str(), squilla_net::ca::LIFETIME)
            .map(|issued| (issued, authority))
    })
    .await
    .map_err(ApiError::internal)?;
    match issued {
        Ok((issued, authority)) => Ok(Json(CertificateAnswer {
            certificate: issued.certificate,
            ca: authority.certificate_pem().to_owned(),
            not_after_ms: issued.not_after_ms,
        })),
        Err(squilla_net::ca::CaError::Request(message)) => Err(invalid(message)),
        Err(err) => Err(ApiError::internal(err)),
    }
}

/// `GET /api/v1/agent/artifacts/{sha256}`: a component's bytes, for an agent to compile (it
/// checks the sha256 itself).
#[utoipa::path(get, path = "/api/v1/agent/artifacts/{sha256}", operation_id = "agentArtifact", tag = "agent",
    security(("agent" = [])),
    params(("sha256" = Sha256, Path, description = "The artifact's sha256.")),
    responses(
        (status = 200, description = "The component.", body = super::openapi::Wasm, content_type = "application/wasm"),
        (status = 404, description = "`not_found`.", body = ErrorBody),
    ))]
pub async fn artifact(
    State(state): State<AppState>,
    headers: HeaderMap,
    PathParams(sha256): PathParams<String>,
) -> Result<impl IntoResponse, ApiError> {
    agent_auth(&state, &headers)?;
    let key = super::sha256(&sha256)?;
    let bytes = super::artifacts::with_store(&state, move |store| store.blob(&key)).await?;
    let bytes = bytes.ok_or_else(|| ApiError::not_found(format!("artifact {sha256}")))?;
    Ok(([(header::CONTENT_TYPE, "application/wasm")], bytes))
}

/// An agent as tenants see it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub struct AgentView {
    /// The agent's id.
    id: String,
    /// Its zone.
    zone: String,
    /// Its labels.
    labels: std::collections::BTreeMap<String, String>,
    /// What it offers.
    capacity: Capacity,
    /// What the workers the master placed on it reserve (their stages' resources).
    reserved: Capacity,
    /// `reserved / capacity` per resource, 0 to 1 (0 where the capacity is 0).
    utilization: Utilization,
    /// Workers it reports running.
    workers: usize,
    /// What it reports using.
    usage: Usage,
    /// Since its last heartbeat, ms.
    silent_ms: u64,
    /// Whether the master has stopped hearing from it (its workers are placed elsewhere).
    lost: bool,
}

/// What an agent reports using, as tenants may see it. (Its compile cache's hits are left
/// out: the cache is shared by sha256, so they would tell a tenant whether another ran the
/// same bytes; operators read them at the agent's `/metrics`.)
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub struct Usage {
    /// Workers running.
    workers: u64,
    /// Linear memory the workers' instances hold now, bytes.
    memory_bytes: u64,
}

impl From<AgentUsage> for Usage {
    fn from(u: AgentUsage) -> Self {
        Usage { workers: u.workers, memory_bytes: u.memory_bytes }
    }
}

/// Shares of an agent's capacity reserved, 0 to 1.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub struct Utilization {
    /// CPU.
    cpu: f64,
    /// Memory.
    memory: f64,
    /// Network.
    network: f64,
    /// Worker slots.
    slots: f64,
}

fn share(used: u64, of: u64) -> f64 {
    if of == 0 { 0.0 } else { used as f64 / of as f64 }
}

/// `GET /api/v1/agents/advice`: how many agents each group should gain or lose, and why.
#[utoipa::path(get, path = "/api/v1/agents/advice", operation_id = "agentAdvice", tag = "agents",
    responses((status = 200, description = "Advice on the agent pool (docs/autoscaling.md).", body = crate::advice::Advice)))]
pub async fn advice(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<crate::advice::Advice>, ApiError> {
    state.tenants.authenticate(&headers)?;
    Ok(Json(state.control.pool_advice(state.pool)))
}

/// `GET /api/v1/agents`: the agents the master knows (any tenant may look).
#[utoipa::path(get, path = "/api/v1/agents", operation_id = "listAgents", tag = "agents",
    responses((status = 200, description = "The agents the master knows, with what is placed on them.", body = [AgentView])))]
pub async fn list(State(state): State<AppState>, headers: HeaderMap) -> Result<Json<Vec<AgentView>>, ApiError> {
    state.tenants.authenticate(&headers)?;
    Ok(Json(
        state
            .control
            .agent_loads()
            .into_iter()
            .map(|a| {
                let (c, r) = (a.beat.capacity, a.reserved);
                AgentView {
                    id: a.id.to_string(),
                    zone: a.beat.zone,
                    labels: a.beat.labels,
                    capacity: c,
                    reserved: r,
                    utilization: Utilization {
                        cpu: share(r.cpu_millis, c.cpu_millis),
                        memory: share(r.memory_mib, c.memory_mib),
                        network: share(r.network_mbps, c.network_mbps),
                        slots: share(r.slots, c.slots),
                    },
                    workers: a.beat.workers.len(),
                    usage: a.beat.usage.into(),
                    silent_ms: a.silent_ms,
                    lost: a.lost,
                }
            })
            .collect(),
    ))
}
