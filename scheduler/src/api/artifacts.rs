//! `/api/v1/artifacts`: upload, list, get, download, delete.

use axum::Json;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{ApiError, AppState, ErrorBody, PathParams};
use crate::store::{ArtifactMeta, Delete, Put, Store, StoreError};
use squilla_types::ids::Sha256;

/// Query of an upload: an optional tag (both or neither).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// The tag's name: 1 to 63 of a-z, 0-9 and '-', starting with a letter.
    #[param(pattern = "^[a-z][a-z0-9-]{0,62}$")]
    name: Option<String>,
    /// The tag's version: 1 to 64 of letters, digits, '.', '-', '+' and '_'.
    #[param(pattern = "^[A-Za-z0-9.+_-]{1,64}$")]
    version: Option<String>,
}

use squilla_types::ids::is_name as valid_name;
use squilla_types::is_tag_version as valid_version;

/// `POST /api/v1/artifacts[?name=N&version=V]`: the body is the component.
#[utoipa::path(
    post,
    path = "/api/v1/artifacts",
    operation_id = "uploadArtifact",
    tag = "artifacts",
    params(UploadQuery),
    request_body(content = super::openapi::Wasm, content_type = "application/wasm", description = "The component's bytes (at most 64 MiB by default)."),
    responses(
        (status = 201, description = "Stored.", body = ArtifactMeta),
        (status = 200, description = "The tenant already holds these bytes (with the same tag, if one was given).", body = ArtifactMeta),
        (status = 400, description = "`invalid_artifact`: not a Squilla component (the message says why); `bad_request`: a tag needs both `name` and `version`.", body = ErrorBody),
        (status = 403, description = "`quota_exceeded`: over the tenant's artifact bytes.", body = ErrorBody),
        (status = 409, description = "`tag_conflict`: the tag names other bytes.", body = ErrorBody),
        (status = 408, description = "`body_timeout`: the body did not arrive in time.", body = ErrorBody),
        (status = 413, description = "`artifact_too_large`.", body = ErrorBody),
        (status = 503, description = "`busy`: too many bodies are being read; retry.", body = ErrorBody),
    )
)]
pub async fn upload(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    budget: Option<axum::Extension<squilla_net::limits::BodyBudget>>,
    body: Body,
) -> Result<Response, ApiError> {
    let tenant = state.tenants.authenticate(&headers)?.name.clone();
    let query: UploadQuery = serde_urlencoded::from_str(query.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", format!("query string: {e}")))?;
    let (name, version) = match (query.name, query.version) {
        (None, None) => (None, None),
        (Some(n), Some(v)) if valid_name(&n) && valid_version(&v) => (Some(n), Some(v)),
        (Some(_), Some(_)) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "a tag is a name (1 to 63 of a-z, 0-9, '-', starting with a letter) and a version (1 to 64 of letters, digits, '.', '-', '+', '_')",
            ));
        }
        _ => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "give both `name` and `version`, or neither",
            ));
        }
    };
    let limit = state.limits.max_artifact_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "artifact_too_large",
            format!("an artifact is at most {limit} bytes"),
        )
    };
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let limit_of = squilla_net::limits::BodyLimit::bytes(limit);
    let (bytes, _held) = match squilla_net::limits::read_capped(body, limit_of, budget.as_ref().map(|b| &b.0)).await {
        Ok(read) => read,
        Err(squilla_net::limits::BodyError::TooLarge { .. }) => return Err(too_large()),
        Err(e) => return Ok(e.response()),
    };
    let (bytes, inspection) = tokio::task::spawn_blocking(move || {
        let inspection = squilla_component::inspect(&bytes, limit);
        (bytes, inspection)
    })
    .await
    .map_err(ApiError::internal)?;
    let inspection =
        inspection.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_artifact", e.to_string()))?;
    let meta = ArtifactMeta {
        sha256: squilla_types::ids::Sha256::of(&bytes),
        size: bytes.len() as u64,
        flavour: inspection.flavour.name().into(),
        name,
        version,
        created_at_ms: squilla_types::time::now_ms(),
    };
    let quota = state.limits.artifact_bytes_per_tenant;
    let who = tenant.clone();
    // The tag, the quota and the write are one transaction (see `Store::put_artifact`); a
    // taken tag is the more specific answer, so it is checked first.
    let result = with_store(&state, move |store| store.put_artifact(&tenant, meta, &bytes, quota)).await?;
    match result {
        Put::OverQuota { would_hold, quota } => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "quota_exceeded",
            format!("tenant `{who}` would hold {would_hold} bytes of artifacts, over its quota of {quota}"),
        )),
        Put::Created(meta) => Ok((StatusCode::CREATED, Json(meta)).into_response()),
        Put::Existing(meta) => Ok((StatusCode::OK, Json(meta)).into_response()),
        Put::TagTaken { sha256: other } => Err(ApiError::new(
            StatusCode::CONFLICT,
            "tag_conflict",
            format!("this tag already names artifact {other}; tags are immutable, upload under a new version"),
        )),
    }
}

/// Runs `f` on the store on tokio's blocking pool.
pub(super) async fn with_store<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    let store = state.store.clone();
    Ok(tokio::task::spawn_blocking(move || f(&store)).await.map_err(ApiError::internal)??)
}

/// `GET /api/v1/artifacts`: the tenant's artifacts.
#[utoipa::path(get, path = "/api/v1/artifacts", operation_id = "listArtifacts", tag = "artifacts",
    responses((status = 200, description = "The tenant's artifacts.", body = [ArtifactMeta])))]
pub async fn list(State(state): State<AppState>, headers: HeaderMap) -> Result<Json<Vec<ArtifactMeta>>, ApiError> {
    let tenant = state.tenants.authenticate(&headers)?.name.clone();
    Ok(Json(with_store(&state, move |store| store.artifacts(&tenant)).await?))
}

/// `GET /api/v1/artifacts/{sha256}`.
#[utoipa::path(get, path = "/api/v1/artifacts/{sha256}", operation_id = "getArtifact", tag = "artifacts",
    params(("sha256" = Sha256, Path, description = "The artifact's sha256.")),
    responses(
        (status = 200, description = "The artifact.", body = ArtifactMeta),
        (status = 404, description = "`not_found`: no such artifact of the tenant's.", body = ErrorBody),
    ))]
pub async fn get(
    State(state): State<AppState>,
    headers: HeaderMap,
    PathParams(sha256): PathParams<String>,
) -> Result<Json<ArtifactMeta>, ApiError> {
    let tenant = state.tenants.authenticate(&headers)?.name.clone();
    let key = super::sha256(&sha256)?;
    let meta = with_store(&state, move |store| store.artifact(&tenant, &key)).await?;
    meta.map(Json).ok_or_else(|| ApiError::not_found(format!("artifact {sha256}")))
}

/// `GET /api/v1/artifacts/{sha256}/wasm`: the component's bytes.
#[utoipa::path(get, path = "/api/v1/artifacts/{sha256}/wasm", operation_id = "downloadArtifact", tag = "artifacts",
    params(("sha256" = Sha256, Path, description = "The artifact's sha256.")),
    responses(
        (status = 200, description = "The component.", body = super::openapi::Wasm, content_type = "application/wasm"),
        (status = 404, description = "`not_found`: no such artifact of the tenant's.", body = ErrorBody),
    ))]
pub async fn download(
    State(state): State<AppState>,
    headers: HeaderMap,
    PathParams(sha256): PathParams<String>,
) -> Result<Response, ApiError> {
    let tenant = state.tenants.authenticate(&headers)?.name.clone();
    let key = super::sha256(&sha256)?;
    let bytes = with_store(&state, move |store| store.artifact_bytes(&tenant, &key)).await?;
    let bytes = bytes.ok_or_else(|| ApiError::not_found(format!("artifact {sha256}")))?;
    Ok(([(header::CONTENT_TYPE, "application/wasm")], bytes).into_response())
}

/// `DELETE /api/v1/artifacts/{sha256}`.
#[utoipa::path(delete, path = "/api/v1/artifacts/{sha256}", operation_id = "deleteArtifact", tag = "artifacts",
    params(("sha256" = Sha256, Path, description = "The artifact's sha256.")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 404, description = "`not_found`: no such artifact of the tenant's.", body = ErrorBody),
        (status = 409, description = "`artifact_in_use`: a cluster version uses it.", body = ErrorBody),
    ))]
pub async fn delete(
    State(state): State<AppState>,
    headers: HeaderMap,
    PathParams(sha256): PathParams<String>,
) -> Result<StatusCode, ApiError> {
    let tenant = state.tenants.authenticate(&headers)?.name.clone();
    let key = super::sha256(&sha256)?;
    match with_store(&state, move |store| store.delete_artifact(&tenant, &key)).await? {
        Delete::Deleted => Ok(StatusCode::NO_CONTENT),
        Delete::Missing => Err(ApiError::not_found(format!("artifact {sha256}"))),
        Delete::InUse { cluster, version } => Err(ApiError::new(
            StatusCode::CONFLICT,
            "artifact_in_use",
            format!("artifact {sha256} is used by version {version} of job cluster `{cluster}`"),
        )),
    }
}
