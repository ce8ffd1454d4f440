//! `POST /api/v1/jobs/{id}/ingest`: events into a job whose source is `ingest`.
//!
//! The body is newline-delimited JSON (one event per line; blank lines skipped) or one JSON
//! array of events. It is all-or-nothing: every line is checked first, and if any is bad the
//! answer is 400 `invalid_events` naming the bad lines (up to 20) and nothing is fed. Good
//! requests are archived into batches of at most [`INGEST_BATCH`] events and handed to the
//! agent that runs the job's source, which feeds them under the job's backpressure policy;
//! an agent that cannot take them within 5 s answers 503 `backpressure` (batches already fed
//! stay fed — the message says how many events).

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
/// Bad lines named in a refusal.
const NAMED_ERRORS: usize = 20;

/// Archives `body` into batches (with their event counts), or names its bad lines.
pub fn batches(body: &[u8], now_ms: i64) -> Result<(Vec<(Vec<u8>, usize)>, usize), String> {
    let text = std::str::from_utf8(body).map_err(|e| format!("the body is not UTF-8 (byte {})", e.valid_up_to()))?;
    let lines: Vec<(usize, String)> = if text.trim_start().starts_with('[') {
        let array: Vec<serde_json::Value> =
            serde_json::from_str(text).map_err(|e| format!("line {}: {e}", e.line()))?;
        array.into_iter().enumerate().map(|(i, v)| (i + 1, v.to_string())).collect()
    } else {
        text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()).map(|(i, l)| (i + 1, l.to_owned())).collect()
    };
    let mut errors = Vec::new();
    let mut out = Vec::new();
    let mut builder = BatchBuilder::new().source("ingest");
    for (line, text) in &lines {
        if let Err(e) = squilla_batch::json::push_json_line(&mut builder, text, now_ms) {
            errors.push(format!("line {line}: {e}"));
        }
        if builder.len() == INGEST_BATCH {
            let full = std::mem::replace(&mut builder, BatchBuilder::new().source("ingest"));
            out.push((full.finish().map_err(|e| e.to_string())?.as_bytes().to_vec(), INGEST_BATCH));
        }
    }
    if !errors.is_empty() {
        let more = errors.len().saturating_sub(NAMED_ERRORS);
        errors.truncate(NAMED_ERRORS);
        let mut message = format!("{} bad line(s), nothing ingested: {}", errors.len() + more, errors.join("; "));
        if more > 0 {
            message.push_str(&format!("; and {more} more"));
        }
        return Err(message);
    }
    if !builder.is_empty() {
        let n = builder.len();
        out.push((builder.finish().map_err(|e| e.to_string())?.as_bytes().to_vec(), n));
    }
    Ok((out, lines.len()))
}

/// `POST /api/v1/jobs/{id}/ingest`.
pub async fn ingest(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let tenant = state.tenants.authenticate(&headers)?.name.clone();
    let (agent, source) = state.control.source_agent(&tenant, &id)?;
    if source != SourceSpec::Ingest {
        return Err(ApiError::new(StatusCode::CONFLICT, "not_ingest", format!("job `{id}` does not take ingest")));
    }
    let body = body.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "ingest_too_large",
            format!("an ingest request is at most {MAX_INGEST_BYTES} bytes"),
        )
    })?;
    let now = crate::control::model::now_ms();
    let (batches, events) = tokio::task::spawn_blocking(move || batches(&body, now))
        .await
        .map_err(ApiError::internal)?
        .map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, "invalid_events", m))?;
    let agent = agent.ok_or_else(|| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_running", format!("job `{id}`'s source is not running"))
    })?;
    let key = crate::control::model::job_key(&tenant, &id);
    let mut fed = 0usize;
    for (batch, n) in batches {
        let mut request = state.http.post(format!("http://{agent}/jobs/{key}/ingest")).body(batch);
        if let Some(token) = &state.agent_token_plain {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(ApiError::internal)?;
        if !response.status().is_success() {
            let status = response.status();
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "backpressure",
                format!("the job took {fed} of {events} event(s); the rest was refused ({status}); retry later"),
            ));
        }
        fed += n;
    }
    Ok(Json(serde_json::json!({ "events": fed })))
}
