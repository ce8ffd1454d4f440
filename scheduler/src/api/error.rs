//! The API's one error type: a status, a stable `code` and a message for the client (the body
//! every Squilla server answers with, `squilla_net::error`); the full detail of internal
//! failures goes to the log, not to the client.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// An API error, answered as `{"code": "...", "message": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable, machine-readable code (documented in docs/api.md).
    pub code: &'static str,
    /// What went wrong, for a person.
    pub message: String,
}

impl ApiError {
    /// An error with the given status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into() }
    }

    /// 401: no or unknown bearer token.
    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", "a valid bearer token is required")
    }

    /// 404 for `what` (also what another tenant's object answers).
    pub fn not_found(what: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", format!("{what} not found"))
    }

    /// 500; `detail` is logged, the client sees a generic message.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(%detail, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; see the master's log")
    }
}

/// The JSON body of every error answer (written by `squilla_net::error::error_response`; this
/// type describes it in the OpenAPI document).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// A stable, machine-readable code (see docs/api.md).
    pub code: String,
    /// What went wrong, for a person.
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        squilla_net::error::error_response(self.status, self.code, &self.message)
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(err: crate::store::StoreError) -> Self {
        match err {
            crate::store::StoreError::NotLeader => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_leader",
                "this master is no longer the leader; nothing was changed, retry at the leader",
            ),
            err => ApiError::internal(err),
        }
    }
}
