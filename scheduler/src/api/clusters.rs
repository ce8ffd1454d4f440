//! `/api/v1/clusters`: job clusters, the versioned templates jobs are submitted from.
//!
//! Creating a cluster that exists adds a version; versions are immutable. A spec is checked
//! in full before anything is stored: its own validity (`squilla_types::JobSpec::validate`,
//! errors carry the path of the problem) and that every stage's artifact is one of the
//! tenant's (by tag or sha256).

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use squilla_types::JobSpec;

use super::artifacts::with_store;
use super::{ApiError, AppState, ErrorBody, PathParams};
use crate::store::ClusterVersion;
use squilla_types::ids::ClusterName;

/// `POST /api/v1/clusters` with a job spec as the body: a new cluster, or a new version.
#[utoipa::path(post, path = "/api/v1/clusters", operation_id = "createCluster", tag = "clusters",
    request_body(content = JobSpec, description = "The job spec (docs/job-spec.md)."),
    responses(
        (status = 201, description = "The new version.", body = ClusterVersion),
        (status = 400, description = "`invalid_spec`: the spec is not valid (the message names the path of the problem); `unknown_artifact`: a stage's artifact is not one of the tenant's.", body = ErrorBody),
    ))]
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<ClusterVersion>), ApiError> {
    let tenant = state.tenants.authenticate(&headers)?.name.clone();
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "invalid_spec", "a job spec is UTF-8 JSON"))?;
    let spec =
        JobSpec::parse(text).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_spec", e.to_string()))?;
    check_source_query(&spec)?;
    let now = crate::control::model::now_ms();
    let created = with_store(&state, move |store| store.put_cluster(&tenant, spec, now)).await?;
    let created = created.map_err(|unknown| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "unknown_artifact",
            format!("stages[{}].artifact: no artifact `{}`; upload it first", unknown.stage, unknown.reference),
        )
    })?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// A job source's query, checked as a subscription's is: 400 `invalid_spec` naming
/// `source.query` and the position of the problem. A stream's `LIMIT` is refused: a job source
/// reads without end (it would read the first results again at every reconnection).
fn check_source_query(spec: &JobSpec) -> Result<(), ApiError> {
    let (text, app) = match &spec.source {
        squilla_types::SourceSpec::Job { query: Some(text), .. } => (text, false),
        squilla_types::SourceSpec::App { query: Some(text), .. } => (text, true),
        _ => return Ok(()),
    };
    let bad =
        |message: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_spec", format!("source.query: {message}"));
    let query = squilla_query::Query::parse(text)
        .map_err(|e| bad(format!("{} (line {}, column {})", e.message, e.line, e.column)))?;
    if query.stream_limit().is_some() {
        return Err(bad("a job source reads without end: LIMIT is for subscriptions".into()));
    }
    if app && !query.selects_events() {
        return Err(bad("an application stream's source query only filters: `SELECT * WHERE …`".into()));
    }
    Ok(())
}

/// `GET /api/v1/clusters`: the latest version of each of the tenant's clusters.
#[utoipa::path(get, path = "/api/v1/clusters", operation_id = "listClusters", tag = "clusters",
    responses((status = 200, description = "The latest version of each cluster.", body = [ClusterVersion])))]
pub async fn list(State(state): State<AppState>, headers: HeaderMap) -> Result<Json<Vec<ClusterVersion>>, ApiError> {
    let tenant = state.tenants.authenticate(&headers)?.name.clone();
    let all = with_store(&state, move |store| store.clusters(&tenant)).await?;
    let mut latest: Vec<ClusterVersion> = Vec::new();
    for cluster in all {
        match latest.last_mut() {
            Some(last) if last.name == cluster.name => *last = cluster,
            _ => latest.push(cluster),
        }
    }
    Ok(Json(latest))
}

/// `GET /api/v1/clusters/{name}`: the latest version.
#[utoipa::path(get, path = "/api/v1/clusters/{name}", operation_id = "getCluster", tag = "clusters",
    params(("name" = ClusterName, Path, description = "The cluster's name.")),
    responses(
        (status = 200, description = "The latest version.", body = ClusterVersion),
        (status = 404, description = "`not_found`: no such cluster of the tenant's.", body = ErrorBody),
    ))]
pub async fn get(
    State(state): State<AppState>,
    headers: HeaderMap,
    PathParams(name): PathParams<String>,
) -> Result<Json<ClusterVersion>, ApiError> {
    versions(&state, &headers, &name)
        .await?
        .pop()
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("job cluster `{name}`")))
}

/// `GET /api/v1/clusters/{name}/versions/{version}`.
#[utoipa::path(get, path = "/api/v1/clusters/{name}/versions/{version}", operation_id = "getClusterVersion", tag = "clusters",
    params(
        ("name" = ClusterName, Path, description = "The cluster's name."),
        ("version" = u32, Path, description = "The version, from 1.", minimum = 1, maximum = 4_294_967_295_u64),
    ),
    responses(
        (status = 200, description = "That version.", body = ClusterVersion),
        (status = 404, description = "`not_found`: no such cluster or version of the tenant's.", body = ErrorBody),
    ))]
pub async fn get_version(
    State(state): State<AppState>,
    headers: HeaderMap,
    PathParams((name, version)): PathParams<(String, String)>,
) -> Result<Json<ClusterVersion>, ApiError> {
    // A version that is not a number names nothing.
    let version: u32 =
        version.parse().map_err(|_| ApiError::not_found(format!("version `{version}` of job cluster `{name}`")))?;
    versions(&state, &headers, &name)
        .await?
        .into_iter()
        .find(|c| c.version == version)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("version {version} of job cluster `{name}`")))
}

async fn versions(state: &AppState, headers: &HeaderMap, name: &str) -> Result<Vec<ClusterVersion>, ApiError> {
    let tenant = state.tenants.authenticate(headers)?.name.clone();
    let name = super::cluster_name(name)?;
    Ok(with_store(state, move |store| store.clusters(&tenant)).await?.into_iter().filter(|c| c.name == name).collect())
}
