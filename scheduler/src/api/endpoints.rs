//! `GET /api/v1/jobs/{id}/endpoints`: where a job's data is, and a capability to use it there.
//!
//! The answer names the agents that run the job's last stage (its sink is the merge of theirs)
//! and the agent that runs its source (where ingest goes), by their HTTP addresses, with a
//! capability ([`squilla_net::capability`]) the master signs for this job: `sink` always,
//! `ingest` when the job takes ingest, valid for 60 s. A gateway uses it to serve the job's
//! sink and ingest without the master in the path; a program that wants no hop at all
//! connects to the agents itself (`GET http://{agent}/jobs/{job}/sink`,
//! `POST http://{agent}/jobs/{job}/ingest` with one archived batch), presenting the
//! capability as its bearer token, and asks again before it expires or when an agent stops
//! answering (workers move).

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use serde::Serialize;
use squilla_net::capability::{Capability, DEFAULT_TTL_MS, Verb, key_from_token};
use squilla_types::ids::JobId;

use super::{ApiError, AppState, ErrorBody, PathParams};

/// Where a job's data is.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub struct Endpoints {
    /// The job, as agents name it (`tenant.job`).
    pub job: String,
    /// The job's state.
    pub state: crate::control::model::JobState,
    /// Whether the job has ended (nothing more will come out of it).
    pub ended: bool,
    /// The agents running the job's last stage, as they report their HTTP servers: base URLs
    /// (`https://host:port`, certificates from the fleet CA), or `host:port` for plain HTTP.
    pub sinks: Vec<String>,
    /// The agent running the job's source, the same way, while it has one.
    pub source: Option<String>,
    /// Whether the source's agent has been heard from within its lease (ingest can go there).
    pub source_fresh: bool,
    /// Whether the job takes ingest.
    pub ingest: bool,
    /// The bearer token for those agents: `sink` (and `ingest` if the job takes it) on this
    /// job only. `None` once the job has ended, or if the master has no agent token.
    pub capability: Option<String>,
    /// When the capability expires, Unix ms.
    pub expires_at_ms: i64,
    /// The fleet CA's certificate (PEM): agents serving HTTPS present certificates it issued,
    /// naming `squilla-agent`. `None` if the master has no CA.
    pub ca: Option<String>,
}

/// `GET /api/v1/jobs/{id}/endpoints`.
#[utoipa::path(get, path = "/api/v1/jobs/{id}/endpoints", operation_id = "jobEndpoints", tag = "jobs",
    params(("id" = JobId, Path, description = "The job.")),
    responses(
        (status = 200, description = "Where the job's sink and source run, and a capability for them (docs/api.md).", body = Endpoints),
        (status = 404, description = "`not_found`: no such job of the tenant's.", body = ErrorBody),
        (status = 503, description = "`agent_unavailable`: the master has just started (or taken over) and not yet heard from the agents running the job's last stage; retry in a second.", body = ErrorBody),
    ))]
pub async fn endpoints(
    State(state): State<AppState>,
    headers: HeaderMap,
    PathParams(id): PathParams<String>,
) -> Result<Json<Endpoints>, ApiError> {
    let tenant = state.tenants.authenticate(&headers)?.name.clone();
    let id = super::job_id(&id)?;
    let job = state.control.job(&tenant, &id)?;
    let ended = job.state.is_terminal();
    if !ended && state.control.sinks_unknown(&tenant, &id) {
        return Err(ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "agent_unavailable",
            "this master has just started and not yet heard from the agents running the job; retry in a second",
        ));
    }
    // An ended job has nowhere to read or feed: no agents, no capability.
    let (sinks, (source, _, source_fresh)) = match ended {
        false => (state.control.sink_agents(&tenant, &id)?, state.control.source_agent(&tenant, &id)?),
        true => (Vec::new(), (None, job.spec.source.clone(), false)),
    };
    let ingest = job.spec.source.takes_ingest();
    let key = job.key().to_string();
    let expires_at_ms = crate::control::model::now_ms() + DEFAULT_TTL_MS;
    let mut verbs = vec![Verb::Sink];
    if ingest {
        verbs.push(Verb::Ingest);
    }
    let capability =
        state.agent_token_plain.as_deref().filter(|_| !ended).map(|token| {
            Capability { job: key.clone(), verbs, expires_ms: expires_at_ms }.sign(&key_from_token(token))
        });
    Ok(Json(Endpoints {
        job: key,
        state: job.state,
        ended,
        sinks,
        source,
        source_fresh,
        ingest,
        capability,
        expires_at_ms,
        ca: state.authority.as_ref().map(|a| a.certificate_pem().to_owned()),
    }))
}
