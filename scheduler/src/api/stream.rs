//! Server-sent event streams: a job's status, and its sink.
//!
//! `GET /api/v1/jobs/{id}/status` sends the job (as `GET /api/v1/jobs/{id}` returns it) as a
//! `status` event now and after every change, and ends after the job ends.
//!
//! `GET /api/v1/jobs/{id}/sink` sends the job's output events, one JSON object per `data`
//! event, merged from every agent that runs a worker of the job's last stage. The master
//! follows the job: when workers move, it connects to their new agents within a second.
//! Agents' `meta` events (such as drops of a slow subscriber) are passed through.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
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

/// `GET /api/v1/jobs/{id}/sink`.
pub async fn sink(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Events, ApiError> {
    let tenant = state.tenants.authenticate(&headers)?.name.clone();
    state.control.sink_agents(&tenant, &id)?;
    let (tx, rx) = mpsc::channel::<Event>(1024);
    let connected: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let client = state.http.clone();
    let token = state.agent_token_plain.clone();
    tokio::spawn(async move {
        loop {
            if tx.is_closed() {
                return;
            }
            let Ok(agents) = state.control.sink_agents(&tenant, &id) else { return };
            let ended = state.control.job(&tenant, &id).map(|j| j.state.is_terminal()).unwrap_or(true);
            if ended {
                let _ = tx.send(Event::default().event("meta").data(r#"{"ended":true}"#)).await;
                return;
            }
            for agent in agents {
                if !connected.lock().expect("connected lock").insert(agent.clone()) {
                    continue;
                }
                let key = crate::control::model::job_key(&tenant, &id);
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
                    connected.lock().expect("connected lock").remove(&agent);
                });
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) });
    Ok(Sse::new(Box::pin(stream) as BoxedEvents).keep_alive(KeepAlive::default()))
}

/// Reads one agent's SSE sink and forwards its events until either side ends.
async fn relay(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    tx: &mpsc::Sender<Event>,
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
                    let mut event = Event::default().data(std::mem::take(&mut data));
                    if let Some(name) = name.take() {
                        event = event.event(name);
                    }
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
