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
//! has been silent for longer than its lease, or did not answer in time), 503 `backpressure` (the job had no room within the
//! agent's 5 s; batches already fed stay fed — the message says how many events).

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use squilla_batch::json::{JsonBatcher, JsonPushError};
use squilla_types::SourceSpec;

use super::{ApiError, AppState, ErrorBody, PathParams};
use squilla_types::ids::JobId;

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

/// Most events in one request (a body of tiny events is refused rather than parsed into
/// millions of values).
pub const MAX_INGEST_EVENTS: usize = 100_000;

/// Why a body cannot be ingested.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    /// Lines that are not events (400 `invalid_events`).
    #[error("{0}")]
    Invalid(String),
    /// A line over [`MAX_EVENT_BYTES`] (413 `event_too_large`).
    #[error("line {line} is an event of {bytes} bytes; an event is at most {MAX_EVENT_BYTES} bytes")]
    TooLarge {
        /// Its 1-based line (or array element) number.
        line: usize,
        /// Its size, bytes.
        bytes: usize,
    },
    /// More than [`MAX_INGEST_EVENTS`] events (413 `too_many_events`).
    #[error("a request holds at most {MAX_INGEST_EVENTS} events; send the rest in another")]
    TooMany,
}

impl From<IngestError> for ApiError {
    fn from(err: IngestError) -> Self {
        match err {
            IngestError::Invalid(m) => ApiError::new(StatusCode::BAD_REQUEST, "invalid_events", m),
            e @ IngestError::TooLarge { .. } => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "event_too_large", e.to_string())
            }
            e @ IngestError::TooMany => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_many_events", e.to_string()),
        }
    }
}

/// Turns events (JSON texts, numbered from 1) into batches as they come, keeping only the
/// first bad lines' messages: memory stays proportional to the batches made.
struct Batcher {
    now_ms: i64,
    batcher: JsonBatcher,
    out: Vec<(Vec<u8>, usize)>,
    errors: Vec<String>,
    bad: usize,
    events: usize,
}

impl Batcher {
    fn new(now_ms: i64) -> Self {
        Batcher {
            now_ms,
            batcher: JsonBatcher::new("ingest", INGEST_BATCH, INGEST_BATCH_BYTES),
            out: Vec::new(),
            errors: Vec::new(),
            bad: 0,
            events: 0,
        }
    }

    fn keep(&mut self, batch: Option<squilla_batch::BatchBytes>) {
        if let Some(batch) = batch {
            let n = batch.len();
            self.out.push((batch.as_bytes().to_vec(), n));
        }
    }

    fn push(&mut self, line: usize, text: &str) -> Result<(), IngestError> {
        self.events += 1;
        if self.events > MAX_INGEST_EVENTS {
            return Err(IngestError::TooMany);
        }
        if text.len() > MAX_EVENT_BYTES {
            return Err(IngestError::TooLarge { line, bytes: text.len() });
        }
        match self.batcher.push(text, self.now_ms) {
            Ok(closed) => self.keep(closed),
            Err(JsonPushError::Json(e)) => {
                self.bad += 1;
                if self.errors.len() < NAMED_ERRORS {
                    self.errors.push(format!("line {line}: {e}"));
                }
            }
            Err(JsonPushError::Batch(e)) => return Err(IngestError::Invalid(e.to_string())),
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Archived, IngestError> {
        if self.bad > 0 {
            let more = self.bad - self.errors.len();
            let mut message = format!("{} bad line(s), nothing ingested: {}", self.bad, self.errors.join("; "));
            if more > 0 {
                message.push_str(&format!("; and {more} more"));
            }
            return Err(IngestError::Invalid(message));
        }
        let last = self.batcher.take().map_err(|e| IngestError::Invalid(e.to_string()))?;
        self.keep(last);
        Ok(Archived { batches: self.out, events: self.events })
    }
}

/// An ingest body archived into batches.
#[derive(Debug)]
pub struct Archived {
    /// Each batch's bytes and its number of events.
    pub batches: Vec<(Vec<u8>, usize)>,
    /// Events in all.
    pub events: usize,
}

/// Visits a JSON array element by element (each borrowed from the body as it is), feeding a
/// [`Batcher`]; stops at the first hard error, which it leaves in `stopped`.
struct ArrayVisitor<'b> {
    batcher: &'b mut Batcher,
    stopped: &'b mut Option<IngestError>,
}

impl<'de> serde::de::Visitor<'de> for ArrayVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an array of events")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0;
        while let Some(raw) = seq.next_element::<&'de serde_json::value::RawValue>()? {
            index += 1;
            if let Err(e) = self.batcher.push(index, raw.get()) {
                *self.stopped = Some(e);
                return Err(serde::de::Error::custom("stopped"));
            }
        }
        Ok(())
    }
}

/// Archives `body` into batches (with their event counts), or says why it cannot.
pub fn batches(body: &[u8], now_ms: i64) -> Result<Archived, IngestError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| IngestError::Invalid(format!("the body is not UTF-8 (byte {})", e.valid_up_to())))?;
    let mut batcher = Batcher::new(now_ms);
    if text.trim_start().starts_with('[') {
        let mut de = serde_json::Deserializer::from_str(text);
        let mut stopped = None;
        let visited = serde::Deserializer::deserialize_seq(
            &mut de,
            ArrayVisitor { batcher: &mut batcher, stopped: &mut stopped },
        )
        .and_then(|()| de.end());
        if let Some(e) = stopped {
            return Err(e);
        }
        visited.map_err(|e| IngestError::Invalid(format!("line {}: {e}", e.line())))?;
    } else {
        for (i, line) in text.lines().enumerate() {
            if !line.trim().is_empty() {
                batcher.push(i + 1, line)?;
            }
        }
    }
    batcher.finish()
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
    let Archived { batches, events } =
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
    let key = job.key();
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
    Ok(Json(Ingested { events: fed as u64, dropped }))
}
