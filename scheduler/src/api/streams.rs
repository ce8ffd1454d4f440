//! `GET /api/v1/streams/{app}/{stream}`: an application stream of the caller's tenant, and the
//! jobs reading it.
//!
//! Application streams live at gateways: publishers (`squilla-publish`) and subscribers meet
//! there, without the master in the path. A gateway asks this to learn whose the caller's
//! stream is (the answer is for the caller's credentials) and which running jobs take the
//! stream as their source (`source.kind: app`), whose events it then sends to each job's
//! source, as ingest.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use serde::Serialize;

use super::{ApiError, AppState, ErrorBody, PathParams};

/// A job that reads an application stream.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub struct Consumer {
    /// The job, as agents name it (`tenant.job`).
    pub job: String,
    /// The job's id (`<cluster>-<n>`), for `GET /api/v1/jobs/{id}/endpoints`.
    pub id: String,
    /// Its source's filter (`SELECT * WHERE …`), if any.
    pub query: Option<String>,
}

/// An application stream of the caller's tenant.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub struct StreamInfo {
    /// The tenant the stream belongs to (the caller's).
    pub tenant: String,
    /// `<app>/<stream>`.
    pub stream: String,
    /// The tenant's jobs that have not ended and read this stream.
    pub consumers: Vec<Consumer>,
}

/// `GET /api/v1/streams/{app}/{stream}`.
#[utoipa::path(get, path = "/api/v1/streams/{app}/{stream}", operation_id = "getStream", tag = "streams",
    params(("app" = String, Path, description = "The application."), ("stream" = String, Path, description = "The stream.")),
    responses(
        (status = 200, description = "The stream and the jobs reading it (docs/publish.md).", body = StreamInfo),
        (status = 404, description = "`not_found`: not a valid stream name.", body = ErrorBody),
    ))]
pub async fn get(
    State(state): State<AppState>,
    headers: HeaderMap,
    PathParams((app, stream)): PathParams<(String, String)>,
) -> Result<Json<StreamInfo>, ApiError> {
    let tenant = state.tenants.authenticate(&headers)?.name.clone();
    let name = format!("{app}/{stream}");
    if !squilla_types::valid_stream(&name) {
        return Err(ApiError::not_found(format!("stream `{name}` (streams are `<app>/<stream>`, each a name)")));
    }
    let consumers = state
        .control
        .jobs(&tenant)
        .into_iter()
        .filter(|job| !job.state.is_terminal())
        .filter_map(|job| match &job.spec.source {
            squilla_types::SourceSpec::App { stream, query } if *stream == name => {
                Some(Consumer { job: job.key().to_string(), id: job.id.to_string(), query: query.clone() })
            }
            _ => None,
        })
        .collect();
    Ok(Json(StreamInfo { tenant: tenant.to_string(), stream: name, consumers }))
}
