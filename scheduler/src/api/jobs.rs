//! `/api/v1/jobs` and `/api/v1/clusters/{name}/jobs`: submitting, listing, killing, scaling
//! and resubmitting jobs. Every change is stored durably before the answer.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;

use super::{ApiError, AppState, ErrorBody, PathParams};
use crate::control::{ControlError, Job};
use squilla_types::ids::{ClusterName, JobId};

impl From<ControlError> for ApiError {
    fn from(err: ControlError) -> Self {
        match err {
            ControlError::NoSuchJob(id) => ApiError::not_found(format!("job `{id}`")),
            ControlError::Params(e) => ApiError::new(StatusCode::BAD_REQUEST, e.code(), e.to_string()),
            e @ (ControlError::InvalidScale { .. } | ControlError::OutsidePolicy { .. }) => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_scale", e.to_string())
            }
            ControlError::InvalidPolicy(e) => ApiError::new(StatusCode::BAD_REQUEST, "invalid_policy", e.to_string()),
            // A stage or worker named in the path that the job does not have is missing, as a
            // missing job is.
            e @ ControlError::NoSuchStage { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, "no_such_stage", e.to_string())
            }
            e @ ControlError::NoSuchWorker { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, "no_such_worker", e.to_string())
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

/// A JSON body of the given `shape`, or **400** `bad_request` saying what it should be.
fn parsed<T: serde::de::DeserializeOwned>(body: &[u8], shape: &str) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", format!("the body is {shape}: {e}")))
}

fn json_body<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, ApiError> {
    // No body, or JSON `null`, asks for the defaults.
    if body.iter().all(u8::is_ascii_whitespace) || body.trim_ascii() == b"null" {
        return Ok(T::default());
    }
    let bad = |message: String| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message);
    // An object, not the array serde would also read a struct from.
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
    if !value.is_object() {
        return Err(bad("the body is a JSON object".into()));
    }
    serde_json::from_value(value).map_err(|e| bad(e.to_string()))
}

/// Body of a submission.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Submit {
    /// Overrides of declared parameters (values as strings or JSON scalars).
    #[serde(default)]
    #[schema(value_type = BTreeMap<String, squilla_types::ParamValue>)]
    params: BTreeMap<String, serde_json::Value>,
    /// The cluster version (default: the latest).
    #[serde(default)]
    #[schema(maximum = 4_294_967_295_u64)]
    version: Option<u32>,
}

/// `POST /api/v1/clusters/{name}/jobs`: submits a job.
#[utoipa::path(post, path = "/api/v1/clusters/{name}/jobs", operation_id = "submitJob", tag = "jobs",
    params(("name" = ClusterName, Path, description = "The cluster's name.")),
    request_body(content = Option<Submit>, description = "Parameter overrides and the version (an empty body submits the latest version with its defaults)."),
    responses(
        (status = 201, description = "The job, accepted (and placed when agents have room).", body = Job),
        (status = 400, description = "`bad_request`: the body is not a submission; `unknown_parameter`, `invalid_parameter`, `missing_parameter`: the parameters do not fit the cluster's declarations.", body = ErrorBody),
        (status = 404, description = "`not_found`: no such cluster (or version) of the tenant's.", body = ErrorBody),
        (status = 409, description = "`sla_max_jobs`: the cluster runs as many jobs as its SLA allows.", body = ErrorBody),
        (status = 429, description = "`quota_exceeded`: the tenant's worker or memory quota would be passed.", body = ErrorBody),
    ))]
pub async fn submit(
    State(state): State<AppState>,
    headers: HeaderMap,
    PathParams(name): PathParams<String>,
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
#[utoipa::path(get, path = "/api/v1/jobs", operation_id = "listJobs", tag = "jobs",
    responses((status = 200, description = "The tenant's jobs, oldest first.", body = [Job])))]
pub async fn list(State(state): State<AppState>, headers: HeaderMap) -> Result<Json<Vec<Job>>, ApiError> {
    let tenant = state.tenants.authenticate(&headers)?;
    Ok(Json(state.control.jobs(&tenant.name)))
}

/// `GET /api/v1/jobs/{id}`.
#[utoipa::path(get, path = "/api/v1/jobs/{id}", operation_id = "getJob", tag = "jobs",
    params(("id" = JobId, Path, description = "The job.")),
    responses(
        (status = 200, description = "The job.", body = Job),
        (status = 404, description = "`not_found`: no such job of the tenant's.", body = ErrorBody),
    ))]
pub async fn get(
    State(state): State<AppState>,
    headers: HeaderMap,
    PathParams(id): PathParams<String>,
) -> Result<Json<Job>, ApiError> {
    let tenant = state.tenants.authenticate(&headers)?;
    Ok(Json(state.control.job(&tenant.name, &super::job_id(&id)?)?))
}

/// `POST /api/v1/jobs/{id}/kill`.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/kill", operation_id = "killJob", tag = "jobs",
    params(("id" = JobId, Path, description = "The job.")),
    responses(
        (status = 200, description = "The job, killed.", body = Job),
        (status = 404, description = "`not_found`: no such job of the tenant's.", body = ErrorBody),
        (status = 409, description = "`job_ended`: the job has already ended.", body = ErrorBody),
    ))]
pub async fn kill(
    State(state): State<AppState>,
    headers: HeaderMap,
    PathParams(id): PathParams<String>,
) -> Result<Json<Job>, ApiError> {
    let tenant = state.tenants.authenticate(&headers)?.name.clone();
    let id = super::job_id(&id)?;
    Ok(Json(blocking(&state, move |c| c.kill(&tenant, &id)).await?))
}

/// Body of a scale request.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Scale {
    /// The stage's new number of workers.
    #[schema(minimum = 1, maximum = 1000)]
    workers: u32,
}

/// `POST /api/v1/jobs/{id}/stages/{stage}/scale` with `{"workers": N}`.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/stages/{stage}/scale", operation_id = "scaleStage", tag = "jobs",
    params(
        ("id" = JobId, Path, description = "The job."),
        ("stage" = String, Path, description = "The stage: its name or 0-based index."),
    ),
    request_body(content = Scale),
    responses(
        (status = 200, description = "The job, with the stage's new workers waiting for places.", body = Job),
        (status = 400, description = "`bad_request`: the body is not `{\"workers\": N}`; `invalid_scale`: N is not between 1 and 1,000.", body = ErrorBody),
        (status = 404, description = "`not_found`: no such job of the tenant's; `no_such_stage`.", body = ErrorBody),
        (status = 409, description = "`job_ended`.", body = ErrorBody),
        (status = 429, description = "`quota_exceeded`: the tenant's worker or memory quota would be passed.", body = ErrorBody),
    ))]
pub async fn scale(
    State(state): State<AppState>,
    headers: HeaderMap,
    PathParams((id, stage)): PathParams<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Json<Job>, ApiError> {
    let tenant = state.tenants.authenticate(&headers)?.name.clone();
    let id = super::job_id(&id)?;
    let scale: Scale = parsed(&body, "`{\"workers\": N}`")?;
    Ok(Json(blocking(&state, move |c| c.scale(&tenant, &id, &stage, scale.workers)).await?))
}

/// `PUT /api/v1/jobs/{id}/stages/{stage}/scaling` with a scaling policy, or `null`.
#[utoipa::path(put, path = "/api/v1/jobs/{id}/stages/{stage}/scaling", operation_id = "setStageScaling", tag = "jobs",
    params(
        ("id" = JobId, Path, description = "The job."),
        ("stage" = String, Path, description = "The stage: its name or 0-based index."),
    ),
    request_body(content = Option<squilla_types::scaling::ScalingPolicy>, description = "The stage's new scaling policy (docs/autoscaling.md), or `null` for none."),
    responses(
        (status = 200, description = "The job, with the stage's new policy.", body = Job),
        (status = 400, description = "`bad_request`: not a policy; `invalid_policy`: a rule broken (its path in the message); `invalid_scale`: the stage's workers lie outside the new bounds.", body = ErrorBody),
        (status = 404, description = "`not_found`: no such job of the tenant's; `no_such_stage`.", body = ErrorBody),
        (status = 409, description = "`job_ended`.", body = ErrorBody),
    ))]
pub async fn set_scaling(
    State(state): State<AppState>,
    headers: HeaderMap,
    PathParams((id, stage)): PathParams<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Json<Job>, ApiError> {
    let tenant = state.tenants.authenticate(&headers)?.name.clone();
    let id = super::job_id(&id)?;
    let policy: Option<squilla_types::scaling::ScalingPolicy> = parsed(&body, "a scaling policy or `null`")?;
    Ok(Json(blocking(&state, move |c| c.set_scaling(&tenant, &id, &stage, policy)).await?))
}

/// Whether a job's autoscaling is paused.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Autoscaling {
    /// `true` pauses every stage's scaling policy; `false` resumes them.
    paused: bool,
}

/// `POST /api/v1/jobs/{id}/autoscaling` with `{"paused": true|false}`.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/autoscaling", operation_id = "setAutoscaling", tag = "jobs",
    params(("id" = JobId, Path, description = "The job.")),
    request_body(content = Autoscaling),
    responses(
        (status = 200, description = "The job (`autoscale_paused` says which).", body = Job),
        (status = 400, description = "`bad_request`: the body is not `{\"paused\": bool}`.", body = ErrorBody),
        (status = 404, description = "`not_found`: no such job of the tenant's.", body = ErrorBody),
        (status = 409, description = "`job_ended`.", body = ErrorBody),
    ))]
pub async fn set_autoscaling(
    State(state): State<AppState>,
    headers: HeaderMap,
    PathParams(id): PathParams<String>,
    body: axum::body::Bytes,
) -> Result<Json<Job>, ApiError> {
    let tenant = state.tenants.authenticate(&headers)?.name.clone();
    let id = super::job_id(&id)?;
    let autoscaling: Autoscaling = parsed(&body, "`{\"paused\": bool}`")?;
    Ok(Json(blocking(&state, move |c| c.set_autoscaling(&tenant, &id, autoscaling.paused)).await?))
}

/// `POST /api/v1/jobs/{id}/stages/{stage}/workers/{index}/resubmit`.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/stages/{stage}/workers/{index}/resubmit", operation_id = "resubmitWorker", tag = "jobs",
    params(
        ("id" = JobId, Path, description = "The job."),
        ("stage" = String, Path, description = "The stage: its name or 0-based index."),
        ("index" = u32, Path, description = "The worker's 0-based index in the stage.", maximum = 4_294_967_295_u64),
    ),
    responses(
        (status = 200, description = "The job, with a new incarnation of the worker waiting for a place.", body = Job),
        (status = 404, description = "`not_found`: no such job of the tenant's; `no_such_stage`; `no_such_worker`.", body = ErrorBody),
        (status = 409, description = "`job_ended`.", body = ErrorBody),
    ))]
pub async fn resubmit(
    State(state): State<AppState>,
    headers: HeaderMap,
    PathParams((id, stage, index)): PathParams<(String, String, String)>,
) -> Result<Json<Job>, ApiError> {
    let tenant = state.tenants.authenticate(&headers)?.name.clone();
    let id = super::job_id(&id)?;
    let index = worker_index(&index)?;
    Ok(Json(blocking(&state, move |c| c.resubmit(&tenant, &id, &stage, index)).await?))
}

/// A worker index from a path: a missing worker when it is not a number.
pub(super) fn worker_index(index: &str) -> Result<u32, ApiError> {
    index
        .parse()
        .map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "no_such_worker", format!("`{index}` is not a worker index")))
}
