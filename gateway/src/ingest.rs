//! Ingest without the master in the path: a body of JSON events archived into batches here,
//! and each batch posted to the agent that runs the job's source.
//!
//! The body is newline-delimited JSON (one event per line; blank lines skipped) or one JSON
//! array of events. It is all-or-nothing: every line is checked first, and if any is bad
//! nothing is fed ([`IngestError`]). Good requests are archived into batches of at most
//! [`INGEST_BATCH`] events and [`INGEST_BATCH_BYTES`] bytes of JSON and posted in order to the
//! source's agent ([`forward`]), which feeds them under the job's backpressure policy. The
//! master and every gateway use these same functions, so a request answers the same wherever
//! it is sent.

use std::time::Duration;

use axum::http::StatusCode;
use squilla_batch::json::{JsonBatcher, JsonPushError};

/// Most bytes of framed batches forwarded to an agent in one request (agents take 16 MiB).
pub const FORWARD_BYTES: usize = 8 << 20;
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
            self.out.push((batch.into_vec(), n));
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

/// Why events could not all be fed: an HTTP status, a stable code and a message that says how
/// many events the job took before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The status to answer.
    pub status: StatusCode,
    /// The stable code.
    pub code: &'static str,
    /// For people.
    pub message: String,
}

impl IngestError {
    /// The refusal this error answers with.
    pub fn refusal(&self) -> Refusal {
        let (status, code) = match self {
            IngestError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_events"),
            IngestError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "event_too_large"),
            IngestError::TooMany => (StatusCode::PAYLOAD_TOO_LARGE, "too_many_events"),
        };
        Refusal { status, code, message: self.to_string() }
    }
}

/// Whether job `id` takes events at all: 409 `job_ended` or `not_ingest` if not. Checked
/// before the body is parsed.
pub fn takes_events(id: &str, target: &Target<'_>) -> Result<(), Refusal> {
    if target.ended {
        return Err(Refusal {
            status: StatusCode::CONFLICT,
            code: "job_ended",
            message: format!("job `{id}` has ended (\"{}\"); it takes no more events", target.state),
        });
    }
    if !target.ingest {
        return Err(Refusal {
            status: StatusCode::CONFLICT,
            code: "not_ingest",
            message: format!("job `{id}` does not take ingest"),
        });
    }
    Ok(())
}

/// The agent that runs job `id`'s source, or 503 `not_running` / `agent_unavailable`.
/// Checked once the body has been parsed, so that a bad body is named whatever the job's
/// placement.
pub fn source<'a>(id: &str, target: &Target<'a>) -> Result<&'a str, Refusal> {
    match (target.source, target.fresh) {
        (Some(agent), true) => Ok(agent),
        (Some(_), false) => Err(Refusal {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "agent_unavailable",
            message: format!("the agent running job `{id}`'s source has not been heard from lately; retry later"),
        }),
        (None, _) => Err(Refusal {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "not_running",
            message: format!("job `{id}`'s source is not running yet; retry later"),
        }),
    }
}

/// What decides where a job's ingest goes.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The job's state, by name.
    pub state: &'a str,
    /// Whether it has ended.
    pub ended: bool,
    /// Whether its source is `ingest`.
    pub ingest: bool,
    /// The HTTP address of the agent running its source.
    pub source: Option<&'a str>,
    /// Whether that agent has been heard from within its lease.
    pub fresh: bool,
}

/// Events fed, and of those, events the job's backpressure policy dropped on the way in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fed {
    /// Events the job took.
    pub events: u64,
    /// Of those, events its first stage's queue dropped under a `drop-*` policy.
    pub dropped: u64,
}

/// Posts `archived`'s batches in order to job `job`'s source on the agent at `agent`
/// (`host:port`), presenting `bearer` (the agent token, or a capability): framed together
/// ([`squilla_batch::frames`]) in bodies of at most [`FORWARD_BYTES`], each request within
/// `timeout`. Stops at the first refusal: batches already fed stay fed, and the refusal says
/// how many events were.
pub async fn forward(
    client: &reqwest::Client,
    agent: &str,
    job: &str,
    bearer: Option<&str>,
    timeout: Duration,
    archived: Archived,
) -> Result<Fed, Refusal> {
    let Archived { batches, events } = archived;
    let mut fed = Fed::default();
    let unavailable = |fed: u64, why: String| Refusal {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: "agent_unavailable",
        message: format!("the job took {fed} of {events} event(s); the agent running its source {why}; retry later"),
    };
    let mut batches = batches.into_iter().peekable();
    while batches.peek().is_some() {
        // As many batches as fit one body, framed: one round trip to the agent.
        let mut body = Vec::new();
        let mut n = 0;
        while let Some((batch, events)) =
            batches.next_if(|(b, _)| body.is_empty() || body.len() + 4 + b.len() <= FORWARD_BYTES)
        {
            squilla_batch::frames::push(&mut body, &batch).map_err(|e| unavailable(fed.events, e.to_string()))?;
            n += events;
        }
        let url = format!("{}/jobs/{job}/ingest", squilla_net::tls::agent_base(agent));
        let mut request = client
            .post(url)
            .timeout(timeout)
            .header(reqwest::header::CONTENT_TYPE, squilla_batch::frames::CONTENT_TYPE)
            .body(body);
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) if e.is_timeout() => {
                return Err(unavailable(fed.events, format!("did not answer within {timeout:?}")));
            }
            Err(e) => return Err(unavailable(fed.events, format!("cannot be reached ({e})"))),
        };
        let status = response.status();
        let answer: serde_json::Value = tokio::time::timeout(Duration::from_secs(2), response.bytes())
            .await
            .ok()
            .and_then(Result::ok)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        // The agent counts what it fed, also when it stopped partway (404, 503).
        let taken = answer["events"].as_u64();
        fed.dropped += answer["dropped"].as_u64().unwrap_or(0);
        fed.events += match status.as_u16() {
            200 => taken.unwrap_or(n as u64),
            _ => taken.unwrap_or(0),
        };
        match status.as_u16() {
            200 => {}
            404 => {
                return Err(Refusal {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    code: "not_running",
                    message: format!(
                        "the job took {} of {events} event(s); its source is moving; retry later",
                        fed.events
                    ),
                });
            }
            503 => {
                return Err(Refusal {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    code: "backpressure",
                    message: format!(
                        "the job took {} of {events} event(s); it had no room for the rest in time; retry later",
                        fed.events
                    ),
                });
            }
            _ => {
                let why = answer["message"]
                    .as_str()
                    .map_or_else(|| format!("answered {status}"), |m| format!("answered {status}: {m}"));
                return Err(unavailable(fed.events, why));
            }
        }
    }
    Ok(fed)
}
