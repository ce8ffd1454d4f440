//! What a standby master answers: reads of what the store holds, and where the leader is.
//!
//! With masters sharing an etcd store, one leads (see `squilla_store::etcd::election`) and
//! serves the whole API; the others stand by. A standby answers reads of stored objects
//! itself ([`is_read`]: artifacts, clusters, jobs), from the store and from a copy of the
//! jobs that follows the leader's writes, marked `X-Squilla-Standby: true`. Every other
//! request gets **307** `not_leader` and a `Location` at the same path on the leader (clients
//! that know the list of masters go there), or **503** `no_leader` while no leader is known
//! (during an election). `GET /healthz` answers 200 with `status: standby`: the process is
//! alive and ready to lead.

use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::StreamExt;

/// Most bytes of a request body a standby reads (and drops) before answering: a client
/// still sending a body it is not read would stall or see its connection reset instead of
/// the answer. Past it — or after [`DRAIN_TIMEOUT`] — the answer closes the connection.
const DRAIN_BYTES: usize = 64 << 20;

/// How long a standby reads a request body before answering.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether a request is a read a standby answers itself: `GET` or `HEAD` of the artifacts,
/// clusters and jobs of a tenant, which the store holds. (Metrics, logs, sinks, endpoints
/// and agents come from agents' heartbeats and connections, which only the leader has.)
pub fn is_read(method: &axum::http::Method, path: &str) -> bool {
    if method != axum::http::Method::GET && method != axum::http::Method::HEAD {
        return false;
    }
    let Some(rest) = path.strip_prefix("/api/v1/") else { return false };
    let parts: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    matches!(
        parts.as_slice(),
        ["artifacts"]
            | ["artifacts", _]
            | ["artifacts", _, "wasm"]
            | ["clusters"]
            | ["clusters", _]
            | ["clusters", _, "versions", _]
            | ["jobs"]
            | ["jobs", _]
            | ["openapi.json"]
    )
}

/// The router of a standby that answers reads with `reads` (the API's router over the
/// standby's own state) and everything else as [`router`] does. Its reads name the leader
/// (`X-Squilla-Leader`), where clients of the fleet go next for fresher answers.
pub fn with_reads(leader: Option<String>, reads: Router) -> Router {
    let named = leader.as_deref().and_then(|l| header::HeaderValue::from_str(l).ok());
    let elsewhere = router(leader);
    Router::new().fallback(move |request: Request| {
        let read = is_read(request.method(), request.uri().path());
        let (reads, elsewhere, named) = (reads.clone(), elsewhere.clone(), named.clone());
        async move {
            use tower::ServiceExt;
            if !read {
                return elsewhere.oneshot(request).await.into_response();
            }
            let mut response = reads.oneshot(request).await.into_response();
            response.headers_mut().insert("x-squilla-standby", header::HeaderValue::from_static("true"));
            if let Some(leader) = named {
                response.headers_mut().insert("x-squilla-leader", leader);
            }
            response
        }
    })
}

/// The router of a standby master that knows `leader` (its advertised URL) or none.
pub fn router(leader: Option<String>) -> Router {
    let health = leader.clone();
    Router::new()
        .route(
            "/healthz",
            get(move || async move { axum::Json(serde_json::json!({"status": "standby", "leader": health})) }),
        )
        .fallback(move |request: Request| async move {
            let uri = request.uri().clone();
            let drained = drain(request).await;
            let mut response = answer(leader.as_deref(), &uri);
            if !drained {
                response.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
            }
            response
        })
}

/// Reads `request`'s body to its end, within the limits; whether it got there.
async fn drain(request: Request) -> bool {
    let mut body = request.into_body().into_data_stream();
    let mut read = 0usize;
    let all = async {
        while let Some(chunk) = body.next().await {
            let Ok(chunk) = chunk else { return false };
            read += chunk.len();
            if read > DRAIN_BYTES {
                return false;
            }
        }
        true
    };
    tokio::time::timeout(DRAIN_TIMEOUT, all).await.unwrap_or(false)
}

fn answer(leader: Option<&str>, uri: &Uri) -> Response {
    let Some(leader) = leader else {
        let body = serde_json::json!({
            "code": "no_leader",
            "message": "no master leads right now (an election is under way); retry in a second",
        });
        return (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "1")], axum::Json(body)).into_response();
    };
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let location = format!("{}{path}", leader.trim_end_matches('/'));
    let body = serde_json::json!({
        "code": "not_leader",
        "message": format!("this master stands by; the leader is {leader}"),
        "leader": leader,
    });
    (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, location)], axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use axum::http::Method;

    use super::is_read;

    #[test]
    fn a_standby_reads_stored_objects_only() {
        for path in [
            "/api/v1/artifacts",
            "/api/v1/artifacts/abc",
            "/api/v1/artifacts/abc/wasm",
            "/api/v1/clusters/",
            "/api/v1/clusters/errors",
            "/api/v1/clusters/errors/versions/2",
            "/api/v1/jobs",
            "/api/v1/jobs/errors-1",
        ] {
            assert!(is_read(&Method::GET, path), "{path}");
            assert!(is_read(&Method::HEAD, path), "{path}");
            assert!(!is_read(&Method::POST, path), "{path}");
            assert!(!is_read(&Method::DELETE, path), "{path}");
        }
        for path in [
            "/api/v1/jobs/errors-1/metrics",
            "/api/v1/jobs/errors-1/sink",
            "/api/v1/jobs/errors-1/endpoints",
            "/api/v1/agents",
            "/api/v1/agent/artifacts/abc",
            "/healthz",
            "/",
            "/api/v2/jobs",
        ] {
            assert!(!is_read(&Method::GET, path), "{path}");
        }
    }
}
