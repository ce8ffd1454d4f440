//! `POST /api/v1/jobs/{id}/ingest`: events into a job whose source is `ingest`.
//!
//! The body is newline-delimited JSON (one event per line; blank lines skipped) or one JSON
//! array of events. It is all-or-nothing on the master: every line is checked first, and if
//! any is bad the answer is 400 `invalid_events` naming the bad lines (up to 20) and nothing
//! is fed; a line over 4 MiB answers 413 `event_too_large` naming it. Good requests are
//! archived into batches and handed to the agent that runs the job's source, which feeds them
//! under the job's backpressure policy ([`squilla_gateway::ingest`], shared with gateways). The answer says how many events the
//! job took and how many of those its backpressure policy dropped on the way in.
//!
//! Refusals name what to do: 409 `job_ended` (never retry), 409 `not_ingest`, 503
//! `not_running` (the source is being placed), 503 `agent_unavailable` (the source's agent
//! has been silent for longer than its lease, or did not answer in time), 503 `backpressure` (the job had no room within the
//! agent's 5 s; batches already fed stay fed — the message says how many events).

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use squilla_gateway::ingest::{Archived, Refusal, Target, batches};

use super::{ApiError, AppState, ErrorBody, PathParams};
use squilla_types::ids::JobId;

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        ApiError::new(r.status, r.code, r.message)
    }
}

/// The answer to an ingest request.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Ingested {
    /// Events the job took.
    pub events: u64,
    /// Of those, events its first stage's queue dropped under a `drop-*` backpressure policy.
    pub dropped: u64,
}

/// `POST /api/v1/jobs/{id}/ingest`.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/ingest", operation_id = "ingest", tag = "jobs",
    params(("id" = JobId, Path, description = "The job (its source must be `ingest`).")),
    request_body(
        description = "Events: one JSON object per line, or a JSON array of objects (at most 16 MiB, 100,000 events, 4 MiB per event); the content type is not looked at. All or nothing: a bad line refuses the request. An empty body is zero events.",
        content(
            (String = "application/x-ndjson"),
            (super::openapi::JsonEvents = "application/json"),
        )
    ),
    responses(
        (status = 200, description = "The events were handed to the job.", body = Ingested),
        (status = 400, description = "`invalid_events`: lines that are not JSON objects (the first are named).", body = ErrorBody),
        (status = 404, description = "`not_found`: no such job of the tenant's.", body = ErrorBody),
        (status = 409, description = "`job_ended`; `not_ingest`: the job's source is not `ingest`.", body = ErrorBody),
        (status = 413, description = "`event_too_large`, `too_many_events`.", body = ErrorBody),
        (status = 503, description = "`not_running`, `agent_unavailable`, `backpressure`: retry later (the message says how many events were taken).", body = ErrorBody),
    ))]
pub async fn ingest(
    State(state): State<AppState>,
    headers: HeaderMap,
    PathParams(id): PathParams<String>,
    body: Bytes,
) -> Result<Json<Ingested>, ApiError> {
    let tenant = state.tenants.authenticate(&headers)?.name.clone();
    let id = super::job_id(&id)?;
    let job = state.control.job(&tenant, &id)?;
    let (source, _, fresh) = state.control.source_agent(&tenant, &id)?;
    let state_name =
        serde_json::to_value(job.state).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
    let target = Target {
        state: &state_name,
        ended: job.state.is_terminal(),
        ingest: job.spec.source.takes_ingest(),
        source: source.as_deref(),
        fresh,
    };
    squilla_gateway::ingest::takes_events(id.as_str(), &target)?;
    let now = crate::control::model::now_ms();
    let archived = tokio::task::spawn_blocking(move || batches(&body, now))
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| ApiError::from(e.refusal()))?;
    let agent = squilla_gateway::ingest::source(id.as_str(), &target)?;
    let archived: Archived = archived;
    let bearer = state.agent_token_plain.as_deref();
    let fed = squilla_gateway::ingest::forward(
        &state.http,
        agent,
        &job.key().to_string(),
        bearer,
        state.limits.agent_timeout,
        archived,
    )
    .await?;
    Ok(Json(Ingested { events: fed.events, dropped: fed.dropped }))
}
