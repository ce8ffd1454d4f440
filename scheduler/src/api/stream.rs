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
//! The same URL answers a WebSocket upgrade with the same stream (see [`ws`](super::ws)):
//! the proxy below yields [`SinkEvent`]s and each protocol frames them its own way.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    let events = proxy(state, tenant, Follow::Job(id), query);
    Ok(match upgrade {
        Ok(upgrade) => super::ws::serve(upgrade, events, params.ping_interval()),
        Err(_) => sse(events).into_response(),
    })
}

/// One event of a proxied sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SinkEvent {
    /// `None` for an output event; `meta` or `ping` otherwise.
    pub name: Option<String>,
    /// Its JSON text.
    pub data: String,
}

/// Frames proxied sink events as server-sent events.
pub(crate) fn sse(events: mpsc::Receiver<SinkEvent>) -> Events {
    let stream = futures_util::stream::unfold(events, |mut rx| async move {
        let e = rx.recv().await?;
        let mut event = Event::default().data(e.data);
        if let Some(name) = e.name {
            event = event.event(name);
        }
        Some((Ok(event), rx))
    });
    Sse::new(Box::pin(stream) as BoxedEvents).keep_alive(KeepAlive::default())
}

/// What a proxied subscription follows.
#[derive(Debug, Clone)]
pub(crate) enum Follow {
    /// One job.
    Job(String),
    /// Whatever job of the cluster is current (a job source follows its upstream cluster).
    Cluster(String),
}

/// Merges the SSE sinks of every agent that runs the followed job's last stage, re-reading
/// where they are every second.
pub(crate) fn proxy(
    state: AppState,
    tenant: String,
    follow: Follow,
    query: Option<String>,
) -> mpsc::Receiver<SinkEvent> {
    let (tx, rx) = mpsc::channel::<SinkEvent>(1024);
    let connected: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let client = state.http.clone();
    let token = state.agent_token_plain.clone();
    tokio::spawn(async move {
        loop {
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
                    let ended = SinkEvent { name: Some("meta".into()), data: r#"{"ended":true}"#.into() };
                    let _ = tx.send(ended).await;
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
                tokio::spawn(async move {
                    if let Err(err) = relay(&client, &url, token.as_deref(), &tx).await {
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

/// Reads one agent's SSE sink and forwards its events until either side ends.
async fn relay(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    tx: &mpsc::Sender<SinkEvent>,
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
    let mut buffer = String::new();
    let (mut name, mut data) = (None::<String>, String::new());
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find('\n') {
            let line: String = buffer.drain(..=end).collect();
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if !data.is_empty() {
                    let event = SinkEvent { name: name.take(), data: std::mem::take(&mut data) };
                    if tx.send(event).await.is_err() {
                        return Ok(());
                    }
                }
                name = None;
            } else if let Some(v) = line.strip_prefix("data:") {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(v.strip_prefix(' ').unwrap_or(v));
            } else if let Some(v) = line.strip_prefix("event:") {
                name = Some(v.trim().to_owned());
            }
        }
    }
    Ok(())
}
