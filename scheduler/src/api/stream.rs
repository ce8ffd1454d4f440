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
//! The master serves it as a gateway built in ([`squilla_gateway`]): every subscriber of a job
//! with the same query string shares one upstream stream per agent
//! ([`squilla_gateway::fanout`]), relayed frame by frame without parsing
//! ([`squilla_gateway::relay`]); the same URL answers a WebSocket upgrade with the same
//! stream. What the master holds for a subscriber is bounded in bytes
//! ([`squilla_net::queue`]): per subscriber (a slow one loses chunks, and is told in a `meta`
//! event), per tenant and in all. A relay never waits for a subscriber. Separate gateway
//! processes (`squilla gateway`) serve the same URL with the master out of the data path.

use std::convert::Infallible;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{RawQuery, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use squilla_gateway::fanout::Join;
use squilla_gateway::relay::{Follow, Locate, Located, Location, MAX_FRAME_BYTES};
use squilla_net::budget::Level;
use squilla_net::queue;

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
    method: axum::http::Method,
    headers: HeaderMap,
    PathParams(id): PathParams<String>,
    RawQuery(query): RawQuery,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let tenant = state.tenants.authenticate(&headers)?.name.clone();
    let id = super::job_id(&id)?;
    state.control.sink_agents(&tenant, &id)?;
    let (params, limit) = check_params(query.as_deref())?;
    if method == axum::http::Method::HEAD {
        // What a GET would answer, without subscribing to anything.
        return Ok(([(axum::http::header::CONTENT_TYPE, "text/event-stream")], ()).into_response());
    }
    let place = subscribe(&state, &tenant)?;
    let events = join(&state, &tenant, &id, query, limit, &params);
    Ok(match upgrade {
        Ok(upgrade) => squilla_gateway::ws::serve(upgrade, events, params.ping_interval(), place),
        Err(_) => squilla_gateway::respond::sse(events, place),
    })
}

/// Joins the shared upstream of `tenant`'s job `id` with this query string
/// ([`squilla_gateway::fanout`]), found from the master's own state and read with the agent
/// token; the subscriber's queue is bounded by its own share, and what it holds is counted in
/// the tenant's stream memory once per chunk.
fn join(
    state: &AppState,
    tenant: &TenantId,
    id: &JobId,
    query: Option<String>,
    limit: Option<u64>,
    params: &SinkParams,
) -> queue::Receiver {
    let share = Some(format!("{tenant}.{id}\n{params:?}"));
    let (split, ping) = (params.client_id.is_some(), params.ping_interval());
    let hold = state.streams.tenant(tenant.as_str());
    let upstream = hold.child(Level::Subscriber, state.limits.subscriber_bytes);
    // The member's queue is bounded by its own share; what it holds is counted for the tenant
    // once per chunk however many members hold it (`squilla_gateway::fanout`).
    let (member, rx) = queue::channel(
        squilla_net::budget::Budget::root(Level::Subscriber, state.limits.subscriber_bytes),
        PROXY_EVENTS,
    );
    let (control, bearer) = (state.control.clone(), state.agent_token_plain.clone());
    let (t, i) = (tenant.clone(), id.clone());
    let locate: Locate = std::sync::Arc::new(move || {
        let location = match control.sink_agents(&t, &i) {
            Ok(agents) => Location::Found(Located {
                ended: control.job(&t, &i).map(|j| j.state.is_terminal()).unwrap_or(true),
                agents,
                bearer: bearer.clone(),
            }),
            Err(e) => Location::Gone(squilla_net::queue::StreamEnd { code: "not_found", message: e.to_string() }),
        };
        Box::pin(std::future::ready(location))
    });
    let follow = Follow {
        locate,
        job: squilla_types::ids::JobKey::new(tenant.clone(), id.clone()).to_string(),
        query,
        limit,
        ping,
        client: state.http.clone(),
        // A frame larger than the subscriber's whole share could never be delivered: relays
        // drop an agent that sends one rather than hold it.
        max_frame: MAX_FRAME_BYTES.min(state.limits.subscriber_bytes),
    };
    state.fanouts.join(Join { share, follow, member, split, budget: upstream, hold });
    rx
}

/// Events a subscriber may have waiting at the master (on top of its byte share).
pub(crate) const PROXY_EVENTS: usize = 16_384;

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
