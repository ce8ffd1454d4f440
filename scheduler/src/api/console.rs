//! The web console: a page and its script and styles, embedded in the binary and served at
//! `/` (no build step, nothing fetched at run time), and the routes it signs in with
//! (`/console/session`, see [`super::session`]). The console is a client of the same API as
//! everyone else; these routes are not part of the API's OpenAPI document.

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::session::{self, set_cookie};
use super::{ApiError, AppState};

const INDEX: &str = include_str!("../../console/index.html");
const SCRIPT: &str = include_str!("../../console/app.js");
const STYLE: &str = include_str!("../../console/app.css");

/// The console's policy: its own script and styles only; connections to this origin only.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// Largest sign-in body.
const SIGN_IN_BYTES: usize = 4096;

/// Longest a sign-in body may take to arrive.
const SIGN_IN_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// The checks every session route makes before any work: the client address's rate, and for
/// the routes that change something, the console's header (a page of another origin cannot
/// add it: no login CSRF) and a request from the console's own origin.
fn session_guard(state: &AppState, request: &Request, changes: bool) -> Option<Response> {
    if let Some(refusal) = super::guard::client_rate(state, request) {
        return Some(refusal);
    }
    let headers = request.headers();
    let refuse =
        |message: &str| Some(ApiError::new(StatusCode::FORBIDDEN, "console_header_required", message).into_response());
    if changes && !headers.contains_key(session::CONSOLE_HEADER) {
        return refuse("signing in and out is done by the console, with the X-Squilla-Console header");
    }
    if !session::same_origin(headers) {
        return refuse("a console request must come from the console's own origin");
    }
    None
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

/// The console's routes.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", INDEX) }))
        .route("/console/app.js", get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }))
        .route("/console/app.css", get(|| async { asset("text/css; charset=utf-8", STYLE) }))
        .route("/console/session", get(whoami).post(sign_in).delete(sign_out))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SignIn {
    token: String,
}

/// `POST /console/session` with `{"token": "…"}`: a session cookie for the token's tenant.
async fn sign_in(State(state): State<AppState>, request: Request) -> Result<Response, ApiError> {
    if let Some(refusal) = session_guard(&state, &request, true) {
        return Ok(refusal);
    }
    let read = tokio::time::timeout(SIGN_IN_TIME, axum::body::to_bytes(request.into_body(), SIGN_IN_BYTES));
    let body: Bytes = match read.await {
        Ok(Ok(body)) => body,
        Ok(Err(_)) => {
            let message = format!("at most {SIGN_IN_BYTES} bytes");
            return Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", message));
        }
        Err(_) => {
            let message = format!("the body did not arrive within {} s", SIGN_IN_TIME.as_secs());
            return Err(ApiError::new(StatusCode::REQUEST_TIMEOUT, "body_timeout", message));
        }
    };
    let SignIn { token } = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", format!("expected {{\"token\": …}}: {e}"))
    })?;
    let tenant = state.tenants.by_token(squilla_net::auth::TokenHash::of(&token))?.name.clone();
    let id = state.tenants.sessions().open(&tenant).map_err(ApiError::internal)?;
    let mut response = Json(serde_json::json!({ "tenant": tenant })).into_response();
    if let Ok(value) = HeaderValue::from_str(&set_cookie(Some(&id))) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response.extensions_mut().insert(squilla_net::access::Caller::Tenant(tenant.to_string()));
    Ok(response)
}

/// `GET /console/session`: who the cookie (or bearer token) signs in as; 401 if nobody.
async fn whoami(State(state): State<AppState>, request: Request) -> Result<Response, ApiError> {
    if let Some(refusal) = session_guard(&state, &request, false) {
        return Ok(refusal);
    }
    let tenant = state.tenants.authenticate(request.headers())?.name.clone();
    Ok(Json(serde_json::json!({ "tenant": tenant })).into_response())
}

/// `DELETE /console/session`: signs out (ends the session, removes the cookie).
async fn sign_out(State(state): State<AppState>, request: Request) -> Response {
    if let Some(refusal) = session_guard(&state, &request, true) {
        return refusal;
    }
    if let Some(id) = session::cookie(request.headers()) {
        state.tenants.sessions().close(id);
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Ok(value) = HeaderValue::from_str(&set_cookie(None)) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}
