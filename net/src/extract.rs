//! Extractors whose refusals are the JSON error body.

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::Response;

use crate::error::error_response;

/// Path parameters, as [`axum::extract::Path`] reads them; but a path whose parameters cannot
/// be read (bad percent-encoding, not UTF-8, not the type) names nothing: 404 `not_found` with
/// the JSON error body, never axum's plain-text 400.
#[derive(Debug)]
pub struct PathParams<T>(pub T);

impl<T, S> FromRequestParts<S> for PathParams<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(PathParams(value)),
            Err(_) => Err(error_response(StatusCode::NOT_FOUND, "not_found", "nothing is at this path")),
        }
    }
}

/// The answer to a method a route does not take: 405 `method_not_allowed` with the JSON error
/// body (axum adds the `Allow` header).
pub async fn method_not_allowed() -> Response {
    error_response(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this path does not take that method")
}
