//! Server-sent event streams: a job's status, and its sink.
//!
//! `GET /api/v1/jobs/{id}/status` sends the job (as `GET /api/v1/jobs/{id}` returns it) as a
//! `status` event now and after every change, and ends after the job ends.
//!
//! `GET /api/v1/jobs/{id}/sink` sends the job's output events, one JSON object per `data`
//! event, merged from every agent that runs a worker of the job's last stage. The master
//! follows the job: when workers move, it connects to their new agents within a second.
//! Agents' `meta` events (such as drops of a slow subscriber) are passed through.
//!
//! The master does not parse what it relays: agents send whole frames
//! ([`squilla_types::sse`]), usually a batch's worth per read, and the proxy forwards every
//! complete frame as it came, so that a stream costs the master a few copies per batch rather
//! than work per event. The same URL answers a WebSocket upgrade with the same stream (see
//! [`ws`](super::ws)), which does parse it, to send one message per event.
//!
//! What the master holds for a subscriber is bounded in bytes ([`squilla_net::queue`]): per
//! subscriber (a slow one loses chunks, and is told in a `meta` event), per tenant and in all
//! (past either, the subscription ends with an `error` event `subscriber_memory`). A relay
//! never waits for a subscriber, so a slow subscriber never slows an agent's stream.
//!
//! Only agents that run the job's last stage now are relayed: once the master moves a worker
//! away from an agent (or loses the agent), the relay from it is dropped within a second, so
//! output of a replaced worker incarnation never reaches a subscriber. An `error` event from an
//! agent (its own limits ended the subscription) ends the whole stream.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{RawQuery, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt};
use squilla_net::budget::Level;
use squilla_net::queue::{self, Item, Offered, StreamEnd};

use squilla_types::ids::{JobId, TenantId};
use squilla_types::sink::SinkParams;

use super::{ApiError, AppState, ErrorBody, PathParams};

type Events = Sse<axum::response::sse::KeepAliveStream<BoxedEvents>>;
type BoxedEvents = std::pin::Pin<Box<dyn Stream<Item = Result<Event, Infallible>> + Send>>;

/// `GET /api/v1/jobs/{id}/status`.
#[utoipa::path(get, path = "/api/v1/jobs/{id}/status", operation_id = "jobStatus", tag = "jobs",
    params(("id" = JobId, Path, description = "The job.")),
    responses(
        (status = 200, description = "Server-sent events: a `status` event with the job (as `GET /api/v1/jobs/{id}`) now and on every change, until the job ends.", body = super::openapi::StatusEvent, content_type = "text/event-stream"),
        (status = 404, description = "`not_found`: no such job of the tenant's.", body = ErrorBody),
    ))]
pub async fn status(
    State(state): State<AppState>,
    headers: HeaderMap,
    PathParams(id): PathParams<String>,
) -> Result<Events, ApiError> {
    let tenant = state.tenants.authenticate(&headers)?.name.clone();
    let id = super::job_id(&id)?;
    let first = state.control.job(&tenant, &id)?;
    let changes = state.control.subscribe();
    let control = state.control.clone();
    let stream = futures_util::stream::unfold(
        (Some(first), changes, None::<String>, false),
        move |(mut next, mut changes, mut last, done)| {
            let (control, tenant, id) = (control.clone(), tenant.clone(), id.clone());
            async move {
                if done {
                    return None;
                }
                loop {
                    if let Some(job) = next.take() {
                        let json = serde_json::to_string(&job).unwrap_or_default();
                        if last.as_deref() != Some(json.as_str()) {
                            let ended = job.state.is_terminal();
                            last = Some(json.clone());
                            let event = Event::default().event("status").data(json);
                            return Some((Ok(event), (None, changes, last, ended)));
                        }
                    }
                    changes.changed().await.ok()?;
                    next = Some(control.job(&tenant, &id).ok()?);
                }
            }
        },
    );
    Ok(Sse::new(Box::pin(stream) as BoxedEvents).keep_alive(KeepAlive::default()))
}

/// Checks a subscription's query string (`squilla_types::sink`) and its query's text: 400
/// `bad_request`, or `invalid_query` with the position of the problem, before any agent is
/// asked.
pub(crate) fn check_params(raw: Option<&str>) -> Result<(SinkParams, Option<u64>), ApiError> {
    let params =
        SinkParams::parse(raw).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.to_string()))?;
    let mut limit = None;
    if let Some(q) = &params.query {
        let query = squilla_query::Query::parse(q).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                format!("{} (line {}, column {})", e.message, e.line, e.column),
            )
        })?;
        limit = query.stream_limit();
    }
    Ok((params, limit))
}

/// `GET /api/v1/jobs/{id}/sink`: server-sent events, or a WebSocket when the request asks to
/// upgrade.
#[utoipa::path(get, path = "/api/v1/jobs/{id}/sink", operation_id = "jobSink", tag = "jobs",
    params(("id" = JobId, Path, description = "The job."), SinkParams),
    responses(
        (status = 200, description = "Server-sent events: each output event as a data event; `meta` (drops, the job's end), `ping` and `error` events (docs/api.md).", body = super::openapi::SinkEvent, content_type = "text/event-stream"),
        (status = 101, description = "A WebSocket, when the request asks to upgrade: one text message per event (docs/api.md)."),
        (status = 400, description = "`bad_request`: the query string is not one of these parameters; `invalid_query`: the query does not parse (the message gives the line and column).", body = ErrorBody),
        (status = 404, description = "`not_found`: no such job of the tenant's.", body = ErrorBody),
        (status = 429, description = "`too_many_subscriptions`: the tenant holds its limit of open subscriptions.", body = ErrorBody),
    ))]
pub async fn sink(
    State(state): State<AppState>,
    headers: HeaderMap,
    PathParams(id): PathParams<String>,
    RawQuery(query): RawQuery,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let tenant = state.tenants.authenticate(&headers)?.name.clone();
    let id = super::job_id(&id)?;
    state.control.sink_agents(&tenant, &id)?;
    let (params, limit) = check_params(query.as_deref())?;
    let place = subscribe(&state, &tenant)?;
    let events = proxy(state, tenant, id, query, limit, params.ping_interval(), place);
    Ok(match upgrade {
        Ok(upgrade) => super::ws::serve(upgrade, events, params.ping_interval()),
        Err(_) => sse(events),
    })
}

/// How long a server-sent event stream may be silent before the master sends a comment.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The frames that tell a subscriber it lost `dropped` events at the master.
fn dropped_frame(out: &mut Vec<u8>, dropped: u64) {
    let meta = serde_json::json!({"dropped": dropped, "reason": "subscriber too slow"}).to_string();
    squilla_types::sse::frame(out, Some("meta"), &meta);
}

/// The frame of an error that ended a stream.
pub(crate) fn error_frame(end: &StreamEnd) -> Bytes {
    let mut out = Vec::new();
    let body = serde_json::json!({"code": end.code, "message": end.message}).to_string();
    squilla_types::sse::frame(&mut out, Some("error"), &body);
    Bytes::from(out)
}

/// Frames proxied sink chunks as a `text/event-stream` response, with a keep-alive comment
/// after 15 s of silence; a stream ended by a limit ends with an `error` event.
pub(crate) fn sse(chunks: queue::Receiver) -> Response {
    let stream = futures_util::stream::unfold(Some(chunks), |rx| async move {
        let mut rx = rx?;
        let item = match tokio::time::timeout(KEEP_ALIVE, rx.recv()).await {
            Ok(item) => item?,
            Err(_) => return Some((Ok::<_, Infallible>(Bytes::from_static(b": keep-alive\n\n")), Some(rx))),
        };
        match item {
            Item::Chunk { bytes, dropped: 0 } => Some((Ok(bytes), Some(rx))),
            Item::Chunk { bytes, dropped } => {
                let mut out = Vec::with_capacity(bytes.len() + 64);
                dropped_frame(&mut out, dropped);
                out.extend_from_slice(&bytes);
                Some((Ok(Bytes::from(out)), Some(rx)))
            }
            Item::End(end) => Some((Ok(error_frame(&end)), None)),
        }
    });
    (
        [(axum::http::header::CONTENT_TYPE, "text/event-stream"), (axum::http::header::CACHE_CONTROL, "no-cache")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// Events a subscriber may have waiting at the master (on top of its byte share).
pub(crate) const PROXY_EVENTS: usize = 16_384;

/// Largest frame (one event's JSON) the master relays; an agent sending a longer one is
/// disconnected (and reconnected within a second).
pub(crate) const MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;

/// How a relay ended.
enum RelayEnd {
    /// The agent's stream ended or broke (the proxy connects again if the agent still runs
    /// the job).
    Agent(String),
    /// The subscriber is gone, or a limit ended its stream.
    Subscriber,
    /// The agent ended the subscription with an `error` event, passed on: the stream is over.
    Error,
    /// A stream's `LIMIT` was reached: the stream is over.
    Limit,
    /// The agent ended a stream with a `LIMIT` normally: it sent its first results, and is
    /// not asked again.
    Done,
}

/// A tenant's place among its open subscriptions, given back when the proxy ends.
pub(crate) struct Subscribed {
    counts: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<TenantId, usize>>>,
    tenant: TenantId,
}

impl Drop for Subscribed {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = counts.get_mut(&self.tenant) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.tenant);
            }
        }
    }
}

/// Takes one of `tenant`'s subscription places: 429 `too_many_subscriptions` past the limit.
pub(crate) fn subscribe(state: &AppState, tenant: &TenantId) -> Result<Subscribed, ApiError> {
    let mut counts = state.subscriptions.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let n = counts.entry(tenant.clone()).or_default();
    if *n >= state.limits.subscriptions_per_tenant {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_subscriptions",
            format!("tenant `{tenant}` has {n} subscriptions open, its limit; close one first"),
        ));
    }
    *n += 1;
    Ok(Subscribed { counts: state.subscriptions.clone(), tenant: tenant.clone() })
}

/// Merges the SSE sinks of every agent that runs the followed job's last stage, re-reading
/// where they are every second. Yields chunks of complete frames into a byte-bounded queue.
/// An agent connection that brings nothing for three `ping` intervals (agents ping every
/// `ping` when idle) is dropped and made again. With a stream `LIMIT` (`limit`), the first
/// `limit` results from all agents together are passed on, then the stream ends; an agent
/// whose own stream ended is not asked again.
pub(crate) fn proxy(
    state: AppState,
    tenant: TenantId,
    id: JobId,
    query: Option<String>,
    limit: Option<u64>,
    ping: Duration,
    place: Subscribed,
) -> queue::Receiver {
    let budget = state.streams.tenant(tenant.as_str()).child(Level::Subscriber, state.limits.subscriber_bytes);
    // A frame larger than the subscriber's whole share could never be delivered: relays drop
    // an agent that sends one rather than hold it.
    let max_frame = MAX_FRAME_BYTES.min(state.limits.subscriber_bytes);
    let (tx, rx) = queue::channel(budget, PROXY_EVENTS);
    let client = state.http.clone();
    let token = state.agent_token_plain.clone();
    let silence = ping * 3 + Duration::from_secs(5);
    let remaining = limit.map(|n| std::sync::Arc::new(std::sync::atomic::AtomicU64::new(n)));
    tokio::spawn(async move {
        let _place = place;
        // Agents whose limited stream ended normally.
        let mut done: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
        // Relays by `agent/job-key`: dropping one aborts it.
        let mut relays: BTreeMap<String, tokio::task::JoinHandle<RelayEnd>> = BTreeMap::new();
        let abort_all = |relays: &mut BTreeMap<String, tokio::task::JoinHandle<RelayEnd>>| {
            for (_, relay) in std::mem::take(relays) {
                relay.abort();
            }
        };
        loop {
            let mut over = false;
            relays.retain(|name, relay| {
                if !relay.is_finished() {
                    return true;
                }
                match relay_result(relay) {
                    Some(Ok(RelayEnd::Error | RelayEnd::Subscriber | RelayEnd::Limit)) => over = true,
                    Some(Ok(RelayEnd::Done)) => {
                        done.insert(name.clone());
                    }
                    _ => {}
                }
                false
            });
            if over || tx.is_closed() {
                abort_all(&mut relays);
                tx.finish();
                return;
            }
            let agents = state.control.sink_agents(&tenant, &id);
            if agents.is_ok() {
                let ended = state.control.job(&tenant, &id).map(|j| j.state.is_terminal()).unwrap_or(true);
                if ended {
                    abort_all(&mut relays);
                    let mut ended = Vec::new();
                    squilla_types::sse::frame(&mut ended, Some("meta"), r#"{"ended":true}"#);
                    tx.offer(Bytes::from(ended), 1);
                    tx.finish();
                    return;
                }
            }
            let key = squilla_types::ids::JobKey::new(tenant.clone(), id.clone()).to_string();
            let wanted: Vec<(String, String)> =
                agents.unwrap_or_default().into_iter().map(|agent| (format!("{agent}/{key}"), agent)).collect();
            // Fencing: a relay from an agent that no longer runs the job's last stage ends now.
            relays.retain(|name, relay| {
                let keep = wanted.iter().any(|(n, _)| n == name);
                if !keep {
                    relay.abort();
                }
                keep
            });
            for (name, agent) in wanted {
                if relays.contains_key(&name) || done.contains(&name) {
                    continue;
                }
                let mut url = format!("http://{agent}/jobs/{key}/sink");
                if let Some(q) = &query {
                    url.push('?');
                    url.push_str(q);
                }
                let (tx, client, token, remaining) = (tx.clone(), client.clone(), token.clone(), remaining.clone());
                let relay = tokio::spawn(async move {
                    let end =
                        relay(&client, &url, token.as_deref(), &tx, silence, max_frame, remaining.as_deref()).await;
                    if let RelayEnd::Agent(err) = &end {
                        tracing::debug!(%url, error = %err, "sink relay ended");
                    }
                    end
                });
                relays.insert(name, relay);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    rx
}

/// The result of a finished relay, without waiting.
fn relay_result(relay: &mut tokio::task::JoinHandle<RelayEnd>) -> Option<Result<RelayEnd, tokio::task::JoinError>> {
    futures_util::FutureExt::now_or_never(relay)
}

/// Whether `chunk` holds an `error` event (an agent ended the subscription).
fn has_error_event(chunk: &[u8]) -> bool {
    chunk.starts_with(b"event: error\n") || chunk.windows(14).any(|w| w == b"\nevent: error\n")
}

/// Events (frames) in a chunk of complete frames.
fn frames_in(chunk: &[u8]) -> usize {
    chunk.windows(2).filter(|w| w == b"\n\n").count().max(1)
}

/// Keeps of `chunk` (complete frames) the data frames that `remaining` still allows, with
/// every other frame before the first refused one; returns them, and whether the limit is
/// now reached.
fn within_limit(chunk: &[u8], remaining: &std::sync::atomic::AtomicU64) -> (Vec<u8>, bool) {
    use std::sync::atomic::Ordering;
    let mut kept = Vec::with_capacity(chunk.len());
    let mut reached = false;
    let mut rest = chunk;
    while !rest.is_empty() {
        let end = rest.windows(2).position(|w| w == b"\n\n").map_or(rest.len(), |i| i + 2);
        let (frame, tail) = rest.split_at(end);
        rest = tail;
        if frame.starts_with(b"data:") {
            let took = remaining.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1)).is_ok();
            if !took {
                reached = true;
                break;
            }
        }
        kept.extend_from_slice(frame);
    }
    (kept, reached || remaining.load(Ordering::Acquire) == 0)
}

/// Reads one agent's SSE sink and forwards its complete frames until either side ends.
async fn relay(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    tx: &queue::Sender,
    silence: Duration,
    max_frame: usize,
    remaining: Option<&std::sync::atomic::AtomicU64>,
) -> RelayEnd {
    let mut request = client.get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = match tokio::time::timeout(Duration::from_secs(5), request.send()).await {
        Err(_) => return RelayEnd::Agent("the agent did not answer in 5 s".into()),
        Ok(Err(e)) => return RelayEnd::Agent(e.to_string()),
        Ok(Ok(r)) => r,
    };
    if !response.status().is_success() {
        return RelayEnd::Agent(format!("agent answered {}", response.status()));
    }
    let mut body = response.bytes_stream();
    let mut carry = Vec::new();
    loop {
        let chunk = match tokio::time::timeout(silence, body.next()).await {
            Err(_) => return RelayEnd::Agent(format!("the agent sent nothing for {silence:?}")),
            Ok(None) if remaining.is_some() => return RelayEnd::Done,
            Ok(None) => return RelayEnd::Agent("the agent ended the stream".into()),
            Ok(Some(Err(e))) => return RelayEnd::Agent(e.to_string()),
            Ok(Some(Ok(chunk))) => chunk,
        };
        // Usually a read ends on a frame's end: pass it on as it is.
        let whole = if carry.is_empty() && chunk.ends_with(b"\n\n") {
            chunk
        } else {
            // No frame ended in `carry` before: look only where one can end now.
            let from = carry.len().saturating_sub(1);
            carry.extend_from_slice(&chunk);
            let end = squilla_types::sse::complete_from(&carry, from);
            if end == 0 {
                if carry.len() > max_frame {
                    return RelayEnd::Agent(format!("a frame over {max_frame} bytes"));
                }
                continue;
            }
            let rest = carry.split_off(end);
            Bytes::from(std::mem::replace(&mut carry, rest))
        };
        let (whole, reached) = match remaining {
            Some(remaining) => {
                let (kept, reached) = within_limit(&whole, remaining);
                (Bytes::from(kept), reached)
            }
            None => (whole, false),
        };
        let error = has_error_event(&whole);
        let events = frames_in(&whole);
        if !whole.is_empty() && tx.offer(whole, events) == Offered::Closed {
            return RelayEnd::Subscriber;
        }
        if error {
            return RelayEnd::Error;
        }
        if reached {
            return RelayEnd::Limit;
        }
    }
}
