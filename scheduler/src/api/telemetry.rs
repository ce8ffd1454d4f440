//! `GET /api/v1/jobs/{id}/metrics` and its server-sent-events variant: a job's metrics per
//! stage and worker with rates over 10 s, 1 min and 5 min, made by the control loop from the
//! agents' heartbeats (`crate::control::telemetry`).

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};

use super::stream::Subscribed;
use super::{ApiError, AppState, ErrorBody, PathParams};
use crate::control::telemetry::JobMetrics;
use squilla_types::ids::JobId;

/// How often the stream pushes a view.
pub const EVERY: Duration = Duration::from_secs(1);

/// `GET /api/v1/jobs/{id}/metrics`.
#[utoipa::path(get, path = "/api/v1/jobs/{id}/metrics", operation_id = "jobMetrics", tag = "jobs",
    params(("id" = JobId, Path, description = "The job.")),
    responses(
        (status = 200, description = "The job's metrics per stage and worker: totals since the job started, rates over 10 s, 1 min and 5 min, call-time quantiles.", body = JobMetrics),
        (status = 404, description = "`not_found`: no such job of the tenant's.", body = ErrorBody),
    ))]
pub async fn metrics(
    State(state): State<AppState>,
    headers: HeaderMap,
    PathParams(id): PathParams<String>,
) -> Result<Json<JobMetrics>, ApiError> {
    let tenant = state.tenants.authenticate(&headers)?;
    Ok(Json(state.control.job_metrics(&tenant.name, &super::job_id(&id)?)?))
}

/// `GET /api/v1/jobs/{id}/metrics/stream`.
#[utoipa::path(get, path = "/api/v1/jobs/{id}/metrics/stream", operation_id = "jobMetricsStream", tag = "jobs",
    params(("id" = JobId, Path, description = "The job.")),
    responses(
        (status = 200, description = "Server-sent events: a `metrics` event (as `GET /api/v1/jobs/{id}/metrics`) now and every second; after the job ends, one last event and the end of the stream. Counts toward the tenant's open subscriptions.", body = super::openapi::MetricsEvent, content_type = "text/event-stream"),
        (status = 404, description = "`not_found`: no such job of the tenant's.", body = ErrorBody),
        (status = 429, description = "`too_many_subscriptions`.", body = ErrorBody),
    ))]
pub async fn stream(
    State(state): State<AppState>,
    headers: HeaderMap,
    PathParams(id): PathParams<String>,
) -> Result<Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let tenant = state.tenants.authenticate(&headers)?.name.clone();
    let id: JobId = super::job_id(&id)?;
    state.control.job(&tenant, &id)?;
    let place: Subscribed = super::stream::subscribe(&state, &tenant)?;
    let control = state.control.clone();
    let mut ticks = tokio::time::interval(EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stream = futures_util::stream::unfold((ticks, false, place), move |(mut ticks, done, place)| {
        let (control, tenant, id) = (control.clone(), tenant.clone(), id.clone());
        async move {
            if done {
                return None;
            }
            ticks.tick().await;
            let ended = control.job(&tenant, &id).ok().is_none_or(|j| j.state.is_terminal());
            let view = control.job_metrics(&tenant, &id).ok()?;
            let event = Event::default().event("metrics").data(serde_json::to_string(&view).unwrap_or_default());
            Some((Ok(event), (ticks, ended, place)))
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
