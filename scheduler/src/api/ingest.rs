//! `POST /api/v1/jobs/{id}/ingest`: events into a job whose source is `ingest`.
//!
//! The body is newline-delimited JSON (one event per line; blank lines skipped) or one JSON
//! array of events. It is all-or-nothing on the master: every line is checked first, and if
//! any is bad the answer is 400 `invalid_events` naming the bad lines (up to 20) and nothing
//! is fed; a line over [`MAX_EVENT_BYTES`] answers 413 `event_too_large` naming it. Good
//! requests are archived into batches of at most [`INGEST_BATCH`] events and
//! [`INGEST_BATCH_BYTES`] bytes of JSON and handed to the agent that runs the job's source,
//! which feeds them under the job's backpressure policy. The answer says how many events the
//! job took and how many of those its backpressure policy dropped on the way in.
//!
//! Refusals name what to do: 409 `job_ended` (never retry), 409 `not_ingest`, 503
//! `not_running` (the source is being placed), 503 `agent_unavailable` (the source's agent
//! is silent or did not answer in time), 503 `backpressure` (the job had no room within the
//! agent's 5 s; batches already fed stay fed — the message says how many events).

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use squilla_batch::BatchBuilder;
use squilla_types::SourceSpec;

use super::{ApiError, AppState};

/// Largest ingest body, bytes.
pub const MAX_INGEST_BYTES: usize = 16 << 20;
/// Events per batch handed to the agent.
pub const INGEST_BATCH: usize = 1000;
/// Bytes of JSON per batch handed to the agent (a batch closes before it would pass them).
pub const INGEST_BATCH_BYTES: usize = 4 << 20;
/// Largest event, bytes of JSON: every path of the platform carries an event this large.
pub const MAX_EVENT_BYTES: usize = 4 << 20;
/// Bad lines named in a refusal.
const NAMED_ERRORS: usize = 20;

/// Why a body cannot be ingested.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngestError {
    /// Lines that are not events (400 `invalid_events`).
    Invalid(String),
    /// A line over [`MAX_EVENT_BYTES`] (413 `event_too_large`).
    TooLarge {
        /// Its 1-based line (or array element) number.
        line: usize,
        /// Its size, bytes.
        bytes: usize,
    },
}

impl From<IngestError> for ApiError {
    fn from(err: IngestError) -> Self {
        match err {
            IngestError::Invalid(m) => ApiError::new(StatusCode::BAD_REQUEST, "invalid_events", m),
            IngestError::TooLarge { line, bytes } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "event_too_large",
                format!("line {line} is an event of {bytes} bytes; an event is at most {MAX_EVENT_BYTES} bytes"),
            ),
        }
    }
}

/// Archives `body` into batches (with their event counts), or says why it cannot.
pub fn batches(body: &[u8], now_ms: i64) -> Result<(Vec<(Vec<u8>, usize)>, usize), IngestError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| IngestError::Invalid(format!("the body is not UTF-8 (byte {})", e.valid_up_to())))?;
    let lines: Vec<(usize, String)> = if text.trim_start().starts_with('[') {
        let array: Vec<serde_json::Value> =
            serde_json::from_str(text).map_err(|e| IngestError::Invalid(format!("line {}: {e}", e.line())))?;
        array.into_iter().enumerate().map(|(i, v)| (i + 1, v.to_string())).collect()
    } else {
        text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()).map(|(i, l)| (i + 1, l.to_owned())).collect()
    };
    if let Some((line, text)) = lines.iter().find(|(_, l)| l.len() > MAX_EVENT_BYTES) {
        return Err(IngestError::TooLarge { line: *line, bytes: text.len() });
    }
    let mut errors = Vec::new();
    let mut out = Vec::new();
    let mut builder = BatchBuilder::new().source("ingest");
    let mut bytes = 0usize;
    let finish = |builder: BatchBuilder| -> Result<(Vec<u8>, usize), IngestError> {
        let n = builder.len();
        let batch = builder.finish().map_err(|e| IngestError::Invalid(e.to_string()))?;
        Ok((batch.as_bytes().to_vec(), n))
    };
    for (line, text) in &lines {
        if !builder.is_empty() && bytes + text.len() > INGEST_BATCH_BYTES {
            out.push(finish(std::mem::replace(&mut builder, BatchBuilder::new().source("ingest")))?);
            bytes = 0;
        }
        match squilla_batch::json::push_json_line(&mut builder, text, now_ms) {
            Ok(()) => bytes += text.len(),
            Err(e) => errors.push(format!("line {line}: {e}")),
        }
        if builder.len() == INGEST_BATCH {
            out.push(finish(std::mem::replace(&mut builder, BatchBuilder::new().source("ingest")))?);
            bytes = 0;
        }
    }
    if !errors.is_empty() {
        let more = errors.len().saturating_sub(NAMED_ERRORS);
        errors.truncate(NAMED_ERRORS);
        let mut message = format!("{} bad line(s), nothing ingested: {}", errors.len() + more, errors.join("; "));
        if more > 0 {
            message.push_str(&format!("; and {more} more"));
        }
        return Err(IngestError::Invalid(message));
    }
    if !builder.is_empty() {
        out.push(finish(builder)?);
    }
    Ok((out, lines.len()))
}

/// `POST /api/v1/jobs/{id}/ingest`.
pub async fn ingest(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let tenant = state.tenants.authenticate(&headers)?.name.clone();
    let job = state.control.job(&tenant, &id)?;
    if job.state.is_terminal() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "job_ended",
            format!("job `{id}` has ended ({}); it takes no more events", serde_json::json!(job.state)),
        ));
    }
    if job.spec.source != SourceSpec::Ingest {
        return Err(ApiError::new(StatusCode::CONFLICT, "not_ingest", format!("job `{id}` does not take ingest")));
    }
    let now = crate::control::model::now_ms();
    let (batches, events) =
        tokio::task::spawn_blocking(move || batches(&body, now)).await.map_err(ApiError::internal)??;
    let agent = match state.control.source_agent(&tenant, &id)? {
        (Some(agent), _, true) => agent,
        (Some(_), _, false) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "agent_unavailable",
                format!("the agent running job `{id}`'s source has not been heard from lately; retry later"),
            ));
        }
        (None, _, _) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_running",
                format!("job `{id}`'s source is not running yet; retry later"),
            ));
        }
    };
    let key = crate::control::model::job_key(&tenant, &id);
    let (mut fed, mut dropped) = (0usize, 0u64);
    let unavailable = |fed: usize, why: String| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "agent_unavailable",
            format!("the job took {fed} of {events} event(s); the agent running its source {why}; retry later"),
        )
    };
    for (batch, n) in batches {
        let mut request = state
            .http
            .post(format!("http://{agent}/jobs/{key}/ingest"))
            .timeout(state.limits.agent_timeout)
            .body(batch);
        if let Some(token) = &state.agent_token_plain {
            request = request.bearer_auth(token);
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) if e.is_timeout() => {
                return Err(unavailable(fed, format!("did not answer within {:?}", state.limits.agent_timeout)));
            }
            Err(e) => return Err(unavailable(fed, format!("cannot be reached ({e})"))),
        };
        let status = response.status();
        let answer: serde_json::Value = tokio::time::timeout(Duration::from_secs(2), response.bytes())
            .await
            .ok()
            .and_then(Result::ok)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        match status.as_u16() {
            200 => {
                fed += n;
                dropped += answer["dropped"].as_u64().unwrap_or(0);
            }
            404 => {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not_running",
                    format!("the job took {fed} of {events} event(s); its source is moving; retry later"),
                ));
            }
            503 => {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "backpressure",
                    format!(
                        "the job took {fed} of {events} event(s); it had no room for the rest in time; retry later"
                    ),
                ));
            }
            _ => return Err(unavailable(fed, format!("answered {status}"))),
        }
    }
    Ok(Json(serde_json::json!({ "events": fed, "dropped": dropped })))
}
