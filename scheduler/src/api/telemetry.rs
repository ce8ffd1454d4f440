//! `GET /api/v1/jobs/{id}/metrics` and its server-sent-events variant: a job's metrics per
//! stage and worker with rates over 10 s, 1 min and 5 min, made by the control loop from the
//! agents' heartbeats (`crate::control::telemetry`).

use std::convert::Infallible;
use std::time::Duration;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};

use super::stream::Subscribed;
use super::{ApiError, AppState, ErrorBody, PathParams};
use crate::control::telemetry::JobMetrics;
use squilla_types::ids::{JobId, JobKey, TenantId};

/// How often the stream pushes a view, and how long a view is shared.
pub const EVERY: Duration = Duration::from_secs(1);

/// Recent metrics documents by job: the view of a job holds the control loop's lock for a
/// time that grows with its workers, so one is made at most once per [`EVERY`] per job, and
/// every request and stream in that second shares it. Entries older than 10 s are dropped.
#[derive(Default)]
pub struct Views {
    recent: std::sync::Mutex<std::collections::HashMap<JobKey, (Instant, Arc<str>)>>,
}

impl Views {
    /// `tenant`'s job `id`'s metrics as JSON, at most [`EVERY`] old.
    fn get(&self, state: &AppState, tenant: &TenantId, id: &JobId) -> Result<Arc<str>, ApiError> {
        let key = JobKey::new(tenant.clone(), id.clone());
        let lock = || self.recent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((at, json)) = lock().get(&key)
            && at.elapsed() < EVERY
        {
            return Ok(json.clone());
        }
        let view = state.control.job_metrics(tenant, id)?;
        let json: Arc<str> = serde_json::to_string(&view).map_err(ApiError::internal)?.into();
        let mut recent = lock();
        recent.retain(|_, (at, _)| at.elapsed() < EVERY * 10);
        recent.insert(key, (Instant::now(), json.clone()));
        Ok(json)
    }
}

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
) -> Result<Response, ApiError> {
    let tenant = state.tenants.authenticate(&headers)?.name.clone();
    let json = state.metrics_views.get(&state, &tenant, &super::job_id(&id)?)?;
    Ok(([(axum::http::header::CONTENT_TYPE, "application/json")], json.to_string()).into_response())
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
    let shared = state.clone();
    let mut ticks = tokio::time::interval(EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stream = futures_util::stream::unfold((ticks, false, place), move |(mut ticks, done, place)| {
        let (shared, tenant, id) = (shared.clone(), tenant.clone(), id.clone());
        async move {
            if done {
                return None;
            }
            ticks.tick().await;
            let ended = shared.control.job(&tenant, &id).ok().is_none_or(|j| j.state.is_terminal());
            let view = shared.metrics_views.get(&shared, &tenant, &id).ok()?;
            let event = Event::default().event("metrics").data(view.as_ref());
            Some((Ok(event), (ticks, ended, place)))
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
