//! `GET /api/v1/jobs/{id}/stages/{stage}/workers/{index}/logs`: a worker's log lines, asked of
//! the agent that runs the worker. With `follow=true` the answer is a stream of server-sent
//! events instead: the lines there are now, then each new line as the agent gets it (the master
//! asks the agent every half second for the lines after the last one sent), across the
//! worker's moves to other agents, until the job ends.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::stream::Subscribed;
use super::{ApiError, AppState, ErrorBody, PathParams};
use crate::control::WorkerPlace;
use squilla_types::ids::{JobId, TenantId};

/// How often a follower asks the worker's agent for new lines.
pub const FOLLOW_EVERY: Duration = Duration::from_millis(500);

/// The largest `after` (the largest integer every JSON reader holds exactly, 2^53 - 1).
const MAX_AFTER: u64 = 9_007_199_254_740_991;

/// How long the master waits for an agent's answer.
const AGENT_TIMEOUT: Duration = Duration::from_secs(5);

/// A line of a worker's log.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub struct LogLine {
    /// When the agent received it, ms since the Unix epoch.
    pub at_ms: i64,
    /// `trace`, `debug`, `info`, `warn` or `error`.
    pub level: String,
    /// The text (at most 4,096 bytes).
    pub message: String,
    /// Its number in the worker's log on its agent (rising by one per line, dropped lines
    /// included; starts again at 0 when the worker moves or is replaced).
    #[serde(default)]
    pub seq: u64,
}

/// A worker's log, as its agent keeps it.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkerLog {
    /// The most recent lines (at most 256), oldest first; kept across the worker's instances
    /// (a trap does not lose them), not across a move to another agent.
    pub lines: Vec<LogLine>,
    /// Older lines the ring dropped.
    pub dropped: u64,
    /// The worker incarnation whose log this is (its `seq` numbers start at 0).
    #[serde(default)]
    pub number: u64,
}

/// Query parameters of the logs route.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogParams {
    /// Stream the log as server-sent events (`log` events, one line each) until the job ends.
    #[serde(default)]
    follow: bool,
    /// Only lines numbered above this (`seq`).
    #[serde(default)]
    #[param(minimum = 0, maximum = 9_007_199_254_740_991_u64)]
    after: Option<u64>,
}

fn not_running() -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_running", "the worker runs on no live agent now; retry later")
}

fn unavailable(why: String) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "agent_unavailable", format!("the worker's agent {why}"))
}

/// The worker's lines after `after`, from its agent.
async fn fetch(state: &AppState, place: &WorkerPlace, index: u32, after: Option<u64>) -> Result<WorkerLog, ApiError> {
    let http = place.http.as_ref().ok_or_else(not_running)?;
    let mut url = format!(
        "{}/jobs/{}/stages/{}/workers/{index}/logs",
        squilla_net::tls::agent_base(http),
        place.key,
        place.stage
    );
    if let Some(after) = after {
        url.push_str(&format!("?after={after}"));
    }
    let mut request = state.http.get(url).timeout(AGENT_TIMEOUT);
    if let Some(token) = &state.agent_token_plain {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.map_err(|e| unavailable(format!("did not answer: {e}")))?;
    match response.status() {
        s if s.is_success() => {
            let body = response.bytes().await.map_err(|e| unavailable(format!("broke off its answer: {e}")))?;
            serde_json::from_slice(&body).map_err(|e| unavailable(format!("sent a bad answer: {e}")))
        }
        // Placed, but not started there yet (or just moved away).
        reqwest::StatusCode::NOT_FOUND => Err(not_running()),
        s => Err(unavailable(format!("answered {s}"))),
    }
}

/// `GET /api/v1/jobs/{id}/stages/{stage}/workers/{index}/logs`.
#[utoipa::path(get, path = "/api/v1/jobs/{id}/stages/{stage}/workers/{index}/logs", operation_id = "workerLogs", tag = "jobs",
    params(
        ("id" = JobId, Path, description = "The job."),
        ("stage" = String, Path, description = "The stage: its name or 0-based index."),
        ("index" = u32, Path, description = "The worker's 0-based index in the stage.", maximum = 4_294_967_295_u64),
        LogParams,
    ),
    responses(
        (status = 200, description = "The worker's log; with `follow=true`, server-sent `log` events (one `LogLine` each) until the job ends, counting toward the tenant's open subscriptions.", content(
            (WorkerLog = "application/json"),
            (super::openapi::LogEvent = "text/event-stream"),
        )),
        (status = 400, description = "`bad_request`: unknown or malformed query parameters.", body = ErrorBody),
        (status = 404, description = "`not_found`: no such job of the tenant's; `no_such_stage`; `no_such_worker`.", body = ErrorBody),
        (status = 429, description = "`too_many_subscriptions` (with `follow=true`).", body = ErrorBody),
        (status = 503, description = "`not_running`: the worker has no live agent now; `agent_unavailable`: its agent did not answer in 5 s (without `follow`).", body = ErrorBody),
    ))]
pub async fn logs(
    State(state): State<AppState>,
    headers: HeaderMap,
    PathParams((id, stage, index)): PathParams<(String, String, String)>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Result<Response, ApiError> {
    let tenant = state.tenants.authenticate(&headers)?.name.clone();
    let params: LogParams = serde_urlencoded::from_str(query.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.to_string()))?;
    if params.after.is_some_and(|a| a > MAX_AFTER) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "bad_request", format!("after: at most {MAX_AFTER}")));
    }
    let id = super::job_id(&id)?;
    let index = super::jobs::worker_index(&index)?;
    let place = state.control.worker_place(&tenant, &id, &stage, index)?;
    if !params.follow {
        return Ok(Json(fetch(&state, &place, index, params.after).await?).into_response());
    }
    let held = super::stream::subscribe(&state, &tenant)?;
    Ok(follow(state, tenant, id, stage, index, params.after, held).into_response())
}

/// What a follower knows between polls.
struct Following {
    state: AppState,
    tenant: TenantId,
    id: JobId,
    stage: String,
    index: u32,
    /// The incarnation the lines came from, and the last line sent.
    number: Option<u64>,
    after: Option<u64>,
    ready: std::collections::VecDeque<LogLine>,
    _held: Subscribed,
}

fn follow(
    state: AppState,
    tenant: TenantId,
    id: JobId,
    stage: String,
    index: u32,
    after: Option<u64>,
    held: Subscribed,
) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    let start =
        Following { state, tenant, id, stage, index, number: None, after, ready: Default::default(), _held: held };
    let stream = futures_util::stream::unfold(start, |mut f| async move {
        loop {
            if let Some(line) = f.ready.pop_front() {
                let event = Event::default().event("log").data(serde_json::to_string(&line).unwrap_or_default());
                return Some((Ok(event), f));
            }
            let place = f.state.control.worker_place(&f.tenant, &f.id, &f.stage, f.index).ok()?;
            if place.ended {
                return None;
            }
            if let Ok(mut log) = fetch(&f.state, &place, f.index, f.after).await {
                // Another incarnation (replaced, moved) keeps its own log, numbered from 0:
                // start from its beginning, as the agent says whose log it sent.
                if f.number.is_some_and(|n| n != log.number) && f.after.is_some() {
                    f.after = None;
                    match fetch(&f.state, &place, f.index, None).await {
                        Ok(fresh) => log = fresh,
                        Err(_) => continue,
                    }
                }
                f.number = Some(log.number);
                if let Some(last) = log.lines.last() {
                    f.after = Some(last.seq);
                }
                f.ready.extend(log.lines);
            }
            if f.ready.is_empty() {
                tokio::time::sleep(FOLLOW_EVERY).await;
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
