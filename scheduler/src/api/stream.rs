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

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{Path, RawQuery, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;

use super::{ApiError, AppState};

type Events = Sse<axum::response::sse::KeepAliveStream<BoxedEvents>>;
type BoxedEvents = std::pin::Pin<Box<dyn Stream<Item = Result<Event, Infallible>> + Send>>;

/// `GET /api/v1/jobs/{id}/status`.
pub async fn status(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Events, ApiError> {
    let tenant = state.tenants.authenticate(&headers)?.name.clone();
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

/// The parameters of a sink subscription, checked here so that a bad one answers 400 before
/// any agent is asked (they are passed on to the agents as given).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SinkParams {
    client_id: Option<String>,
    sample: Option<u32>,
    query: Option<String>,
    ping: Option<u64>,
}

impl SinkParams {
    /// How long a subscriber may go without hearing anything (`ping` seconds, default 15).
    pub(crate) fn ping_interval(&self) -> Duration {
        Duration::from_secs(self.ping.unwrap_or(15).clamp(1, 3600))
    }
}

/// Checks a subscription's query string: 400 `bad_request`, or `invalid_query` with the
/// position of the problem.
pub(crate) fn check_params(raw: Option<&str>) -> Result<SinkParams, ApiError> {
    let params: SinkParams = serde_urlencoded::from_str(raw.unwrap_or(""))
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", format!("query string: {e}")))?;
    if let Some(q) = &params.query {
        squilla_query::Query::parse(q).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                format!("{} (line {}, column {})", e.message, e.line, e.column),
            )
        })?;
    }
    if params.sample == Some(0) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "bad_request", "sample: at least 1 event per second"));
    }
    if params.client_id.as_ref().is_some_and(|c| c.is_empty() || c.len() > 128) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "bad_request", "clientId: 1 to 128 characters"));
    }
    Ok(params)
}

/// `GET /api/v1/jobs/{id}/sink`: server-sent events, or a WebSocket when the request asks to
/// upgrade.
pub async fn sink(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let tenant = state.tenants.authenticate(&headers)?.name.clone();
    state.control.sink_agents(&tenant, &id)?;
    let params = check_params(query.as_deref())?;
    let events = proxy(state, tenant, Follow::Job(id), query, params.ping_interval());
    Ok(match upgrade {
        Ok(upgrade) => super::ws::serve(upgrade, events, params.ping_interval()),
        Err(_) => sse(events),
    })
}

/// How long a server-sent event stream may be silent before the master sends a comment.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Frames proxied sink chunks as a `text/event-stream` response, with a keep-alive comment
/// after 15 s of silence.
pub(crate) fn sse(chunks: mpsc::Receiver<Bytes>) -> Response {
    let stream = futures_util::stream::unfold(chunks, |mut rx| async move {
        let chunk = match tokio::time::timeout(KEEP_ALIVE, rx.recv()).await {
            Ok(chunk) => chunk?,
            Err(_) => Bytes::from_static(b": keep-alive\n\n"),
        };
        Some((Ok::<_, Infallible>(chunk), rx))
    });
    (
        [(axum::http::header::CONTENT_TYPE, "text/event-stream"), (axum::http::header::CACHE_CONTROL, "no-cache")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// What a proxied subscription follows.
#[derive(Debug, Clone)]
pub(crate) enum Follow {
    /// One job.
    Job(String),
    /// Whatever job of the cluster is current (a job source follows its upstream cluster).
    Cluster(String),
}

/// Chunks of complete frames the master holds for one subscriber before it stops reading from
/// the agents (each chunk is what one read from an agent brought, often a whole batch).
pub(crate) const PROXY_CHUNKS: usize = 64;

/// Largest frame (one event's JSON) the master relays; an agent sending a longer one is
/// disconnected (and reconnected within a second).
pub(crate) const MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;

/// Merges the SSE sinks of every agent that runs the followed job's last stage, re-reading
/// where they are every second. Yields chunks of complete frames. An agent connection that
/// brings nothing for three `ping` intervals (agents ping every `ping` when idle) is dropped
/// and made again.
pub(crate) fn proxy(
    state: AppState,
    tenant: String,
    follow: Follow,
    query: Option<String>,
    ping: Duration,
) -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel::<Bytes>(PROXY_CHUNKS);
    let connected: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let client = state.http.clone();
    let token = state.agent_token_plain.clone();
    let silence = ping * 3 + Duration::from_secs(5);
    tokio::spawn(async move {
        let mut relays = tokio::task::JoinSet::new();
        loop {
            // Finished relays leave the set; dropping the set (on return) aborts the others,
            // so that nothing follows the end of the stream.
            while relays.try_join_next().is_some() {}
            if tx.is_closed() {
                return;
            }
            let id = match &follow {
                Follow::Job(id) => Some(id.clone()),
                Follow::Cluster(cluster) => state.control.current_job(&tenant, cluster),
            };
            let agents = id.as_ref().map(|id| state.control.sink_agents(&tenant, id));
            if let (Follow::Job(_), Some(Ok(_))) = (&follow, &agents) {
                let ended = id
                    .as_ref()
                    .is_none_or(|id| state.control.job(&tenant, id).map(|j| j.state.is_terminal()).unwrap_or(true));
                if ended {
                    relays.abort_all();
                    while relays.join_next().await.is_some() {}
                    let mut ended = Vec::new();
                    squilla_types::sse::frame(&mut ended, Some("meta"), r#"{"ended":true}"#);
                    let _ = tx.send(Bytes::from(ended)).await;
                    return;
                }
            }
            for agent in agents.and_then(Result::ok).unwrap_or_default() {
                let key = crate::control::model::job_key(&tenant, id.as_deref().unwrap_or_default());
                if !connected.lock().expect("connected lock").insert(format!("{agent}/{key}")) {
                    continue;
                }
                let mut url = format!("http://{agent}/jobs/{key}/sink");
                if let Some(q) = &query {
                    url.push('?');
                    url.push_str(q);
                }
                let (tx, connected, client, token) = (tx.clone(), connected.clone(), client.clone(), token.clone());
                relays.spawn(async move {
                    if let Err(err) = relay(&client, &url, token.as_deref(), &tx, silence).await {
                        tracing::debug!(%url, error = %err, "sink relay ended");
                    }
                    connected.lock().expect("connected lock").remove(&format!("{agent}/{key}"));
                });
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    rx
}

/// Reads one agent's SSE sink and forwards its complete frames until either side ends.
async fn relay(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    tx: &mpsc::Sender<Bytes>,
    silence: Duration,
) -> Result<(), String> {
    let mut request = client.get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("agent answered {}", response.status()));
    }
    let mut body = response.bytes_stream();
    let mut carry = Vec::new();
    loop {
        let chunk = match tokio::time::timeout(silence, body.next()).await {
            Err(_) => return Err(format!("the agent sent nothing for {silence:?}")),
            Ok(None) => return Ok(()),
            Ok(Some(chunk)) => chunk.map_err(|e| e.to_string())?,
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
                if carry.len() > MAX_FRAME_BYTES {
                    return Err(format!("a frame over {MAX_FRAME_BYTES} bytes"));
                }
                continue;
            }
            let rest = carry.split_off(end);
            Bytes::from(std::mem::replace(&mut carry, rest))
        };
        if tx.send(whole).await.is_err() {
            return Ok(());
        }
    }
}
