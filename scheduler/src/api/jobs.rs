//! `/api/v1/jobs` and `/api/v1/clusters/{name}/jobs`: submitting, listing, killing, scaling
//! and resubmitting jobs. Every change is stored durably before the answer.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;

use super::{ApiError, AppState};
use crate::control::{ControlError, Job};

impl From<ControlError> for ApiError {
    fn from(err: ControlError) -> Self {
        match err {
            ControlError::NoSuchJob(id) => ApiError::not_found(format!("job `{id}`")),
            ControlError::Params(e) => ApiError::new(StatusCode::BAD_REQUEST, e.code(), e.to_string()),
            e @ ControlError::InvalidScale { .. } => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_scale", e.to_string())
            }
            e @ ControlError::NoSuchStage { .. } => {
                ApiError::new(StatusCode::BAD_REQUEST, "no_such_stage", e.to_string())
            }
            e @ ControlError::NoSuchWorker { .. } => {
                ApiError::new(StatusCode::BAD_REQUEST, "no_such_worker", e.to_string())
            }
            e @ (ControlError::WorkerQuota { .. } | ControlError::MemoryQuota { .. }) => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "quota_exceeded", e.to_string())
            }
            e @ ControlError::SlaMaxJobs { .. } => ApiError::new(StatusCode::CONFLICT, "sla_max_jobs", e.to_string()),
            e @ ControlError::Ended(_) => ApiError::new(StatusCode::CONFLICT, "job_ended", e.to_string()),
            ControlError::Store(e) => ApiError::internal(e),
        }
    }
}

/// Runs a control operation on the blocking pool (it writes the store).
async fn blocking<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce(&crate::control::Control) -> Result<T, ControlError> + Send + 'static,
) -> Result<T, ApiError> {
    let control = state.control.clone();
    Ok(tokio::task::spawn_blocking(move || f(&control)).await.map_err(ApiError::internal)??)
}

fn json_body<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.to_string()))
}

/// Body of a submission.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Submit {
    /// Overrides of declared parameters (values as strings or JSON scalars).
    #[serde(default)]
    params: BTreeMap<String, serde_json::Value>,
    /// The cluster version (default: the latest).
    #[serde(default)]
    version: Option<u32>,
}

/// `POST /api/v1/clusters/{name}/jobs`: submits a job.
pub async fn submit(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Job>), ApiError> {
    let tenant = state.tenants.authenticate(&headers)?.name.clone();
    let submit: Submit = json_body(&body)?;
    let mut params = BTreeMap::new();
    for (k, v) in submit.params {
        let text = match v {
            serde_json::Value::String(s) => s,
            v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_)) => v.to_string(),
            _ => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_parameter",
                    format!("parameter `{k}`: a string, number or boolean"),
                ));
            }
        };
        params.insert(k, text);
    }
    let t = tenant.clone();
    let n = super::cluster_name(&name)?;
    let mut versions = super::artifacts::with_store(&state, move |store| store.clusters(&t))
        .await?
        .into_iter()
        .filter(|c| c.name == n);
    let cluster = match submit.version {
        None => versions.next_back(),
        Some(v) => versions.into_iter().find(|c| c.version == v),
    }
    .ok_or_else(|| ApiError::not_found(format!("job cluster `{name}`")))?;
    let job = blocking(&state, move |c| c.submit(&tenant, &cluster, params)).await?;
    Ok((StatusCode::CREATED, Json(job)))
}

/// `GET /api/v1/jobs`: the tenant's jobs, oldest first.
pub async fn list(State(state): State<AppState>, headers: HeaderMap) -> Result<Json<Vec<Job>>, ApiError> {
    let tenant = state.tenants.authenticate(&headers)?;
    Ok(Json(state.control.jobs(&tenant.name)))
}

/// `GET /api/v1/jobs/{id}`.
pub async fn get(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Job>, ApiError> {
    let tenant = state.tenants.authenticate(&headers)?;
    Ok(Json(state.control.job(&tenant.name, &super::job_id(&id)?)?))
}

/// `POST /api/v1/jobs/{id}/kill`.
pub async fn kill(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Job>, ApiError> {
    let tenant = state.tenants.authenticate(&headers)?.name.clone();
    let id = super::job_id(&id)?;
    Ok(Json(blocking(&state, move |c| c.kill(&tenant, &id)).await?))
}

/// Body of a scale request.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scale {
    workers: u32,
}

/// `POST /api/v1/jobs/{id}/stages/{stage}/scale` with `{"workers": N}`.
pub async fn scale(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((id, stage)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Json<Job>, ApiError> {
    let tenant = state.tenants.authenticate(&headers)?.name.clone();
    let id = super::job_id(&id)?;
    let scale: Scale = json_body(&body)?;
    Ok(Json(blocking(&state, move |c| c.scale(&tenant, &id, &stage, scale.workers)).await?))
}

/// `POST /api/v1/jobs/{id}/stages/{stage}/workers/{index}/resubmit`.
pub async fn resubmit(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((id, stage, index)): Path<(String, String, String)>,
) -> Result<Json<Job>, ApiError> {
    let tenant = state.tenants.authenticate(&headers)?.name.clone();
    let id = super::job_id(&id)?;
    let index: u32 = index.parse().map_err(|_| {
        ApiError::new(StatusCode::BAD_REQUEST, "no_such_worker", format!("`{index}` is not a worker index"))
    })?;
    Ok(Json(blocking(&state, move |c| c.resubmit(&tenant, &id, &stage, index)).await?))
}
