//! The agent's HTTP server: job sinks for the master (and gateways), ingest, health.
//!
//! Every route under `/jobs/` takes the agent token, checked before any body is read — or, for
//! one job's `sink` and `ingest`, a capability the master signed for that job and verb
//! ([`squilla_net::capability`]; gateways and programs that connect to agents directly
//! present one): a forged, expired or other job's capability answers 403
//! `capability_refused`. The
//! ingest body is read under a byte cap and a read timeout before the handler sees it. The
//! server itself bounds connections and header and idle times ([`squilla_net::server`]).
//!
//! - `GET /jobs/{id}/sink`: this agent's part of a job's output as server-sent events:
//!   `data` frames, `meta` frames (events lost by a slow reader), `ping` frames after `ping`
//!   seconds of silence, and an `error` frame (`{"code", "message"}`) when a limit ended the
//!   stream.
//! - `POST /jobs/{id}/ingest`: one archived batch for the job's first stage, or several framed
//!   in one body ([`squilla_batch::frames`]), all validated before any is fed; answers
//!   `{"fed": true, "batches", "events", "dropped"}`, 404 `not_here` when the job does not run
//!   here (it ended or moved), 503 `backpressure` when it had no room in [`INGEST_WAIT`] (both
//!   with the counts of what was fed before).
//! - `GET /healthz`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use squilla_batch::{BatchBytes, frames};
use squilla_net::auth::{TokenHash, bearer};
use squilla_net::error::error_response;
use squilla_net::extract::PathParams;
use squilla_net::limits::{BodyLimit, buffer_body};
use squilla_net::queue::Item;
use squilla_types::ids::JobKey;
use squilla_types::sink::SinkParams;
use squilla_types::sse;

use crate::jobs::{Ingested, Jobs};
use crate::sink;

/// How long an ingested batch may wait for room in the job's first stage (under `block`).
pub const INGEST_WAIT: Duration = Duration::from_secs(5);

/// Largest ingest body (one archived batch), bytes.
pub const INGEST_MAX_BYTES: usize = 16 << 20;

/// Ingest requests an agent serves at once: each may hold a thread for up to
/// [`INGEST_WAIT`]; past this many the agent answers 503 `backpressure` at once.
pub const MAX_CONCURRENT_INGESTS: usize = 64;

#[derive(Clone)]
struct HttpState {
    jobs: Arc<Jobs>,
    token: TokenHash,
    /// The key capabilities are signed with.
    capability_key: [u8; 32],
    ingests: Arc<tokio::sync::Semaphore>,
}

/// The agent's routes.
pub(crate) fn router(jobs: Arc<Jobs>, token: &str) -> Router {
    let state = HttpState {
        jobs,
        token: TokenHash::of(token),
        capability_key: squilla_net::capability::key_from_token(token),
        ingests: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_INGESTS)),
    };
    let jobs_routes = Router::new()
        .route("/jobs/{id}/sink", get(sink))
        .route("/metrics", get(prometheus))
        .route("/jobs/{id}/stages/{stage}/workers/{index}/logs", get(logs))
        .route(
            "/jobs/{id}/ingest",
            post(ingest).layer(axum::middleware::from_fn_with_state(
                BodyLimit::bytes(INGEST_MAX_BYTES).code("ingest_too_large"),
                buffer_body,
            )),
        )
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }))
        .merge(jobs_routes)
        .fallback(|| async { error_response(StatusCode::NOT_FOUND, "not_found", "route not found") })
        .method_not_allowed_fallback(squilla_net::extract::method_not_allowed)
        // The ingest body is capped by its own middleware.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn(squilla_net::access::log))
        .with_state(state)
}

/// Middleware: the agent token (or a capability for this job and verb), before anything else
/// of the request is read.
async fn require_token(State(state): State<HttpState>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(squilla_net::auth::bearer_text);
    if let Some(text) = presented.filter(|t| t.starts_with(squilla_net::capability::PREFIX)) {
        return match capability_allows(&state, text, &request) {
            Ok(()) => next.run(request).await,
            Err(why) => error_response(StatusCode::FORBIDDEN, "capability_refused", &why),
        };
    }
    match bearer(request.headers()) {
        Some(hash) if hash.matches(&state.token) => {
            let mut response = next.run(request).await;
            response.extensions_mut().insert(squilla_net::access::Caller::Agent);
            response
        }
        _ => error_response(StatusCode::UNAUTHORIZED, "unauthorized", "the agent token is required"),
    }
}

/// Whether capability `text` allows this request: `GET /jobs/{key}/sink` or
/// `POST /jobs/{key}/ingest` of the job it names, before it expires.
fn capability_allows(state: &HttpState, text: &str, request: &Request) -> Result<(), String> {
    use squilla_net::capability::{Capability, Verb};
    let cap =
        Capability::verify(text, &state.capability_key, squilla_types::time::now_ms()).map_err(|e| e.to_string())?;
    let path = request.uri().path();
    let (job, verb) = match (request.method().as_str(), path.strip_prefix("/jobs/").and_then(|p| p.split_once('/'))) {
        ("GET", Some((job, "sink"))) => (job, Verb::Sink),
        ("POST", Some((job, "ingest"))) => (job, Verb::Ingest),
        _ => return Err("a capability allows only a job's sink or ingest".into()),
    };
    cap.allows(job, verb).map_err(|e| e.to_string())
}

/// `POST /jobs/{id}/ingest` (from the master or a gateway): one archived batch for the job's
/// first stage, or several in one body of [`frames`] (content type [`frames::CONTENT_TYPE`]).
/// Every batch is validated before any is fed; they are fed in order, all within
/// [`INGEST_WAIT`]. The answer counts what was fed (`batches`, `events`, `dropped`), also when
/// it is a 404 or 503 partway.
async fn ingest(
    State(state): State<HttpState>,
    PathParams(id): PathParams<String>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Ok(id) = id.parse::<JobKey>() else {
        return error_response(StatusCode::NOT_FOUND, "not_here", "the job does not run here");
    };
    if !state.jobs.takes_ingest(&id) {
        return error_response(StatusCode::NOT_FOUND, "not_here", "the job's source does not run here");
    }
    let framed = headers.get(axum::http::header::CONTENT_TYPE).is_some_and(|t| t == frames::CONTENT_TYPE);
    let parts = if framed { frames::split(&body) } else { Some(vec![&body[..]]) };
    let batches: Option<Vec<BatchBytes>> =
        parts.and_then(|parts| parts.into_iter().map(|p| BatchBytes::validate(p.to_vec()).ok()).collect());
    let Some(batches) = batches else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "invalid_batch",
            "the body is not an archived batch (built with the squilla-batch crate; see docs/contract.md) — \
             programs that have JSON events post them to the master's or a gateway's ingest instead",
        );
    };
    let Ok(permit) = state.ingests.clone().try_acquire_owned() else {
        return error_response(StatusCode::SERVICE_UNAVAILABLE, "backpressure", "too many ingests in progress here");
    };
    let jobs = state.jobs.clone();
    let fed = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let deadline = std::time::Instant::now() + INGEST_WAIT;
        let mut fed = Fed::default();
        for batch in batches {
            let events = batch.len() as u64;
            let wait = deadline.saturating_duration_since(std::time::Instant::now());
            match jobs.ingest(&id, batch, wait) {
                Ingested::Taken { dropped_events } => {
                    fed.batches += 1;
                    fed.events += events;
                    fed.dropped += dropped_events;
                }
                stopped => return (stopped, fed),
            }
        }
        (Ingested::Taken { dropped_events: fed.dropped }, fed)
    })
    .await;
    let (outcome, fed) = fed.unwrap_or((Ingested::Full, Fed::default()));
    let mut body = serde_json::json!({"batches": fed.batches, "events": fed.events, "dropped": fed.dropped});
    let (status, code, message) = match outcome {
        Ingested::Taken { .. } => {
            body["fed"] = true.into();
            return axum::Json(body).into_response();
        }
        Ingested::NotHere => (StatusCode::NOT_FOUND, "not_here", "the job does not run here"),
        Ingested::Full => (StatusCode::SERVICE_UNAVAILABLE, "backpressure", "the job had no room in time"),
    };
    // The error's code and message, with the counts of what was fed before it.
    body["code"] = code.into();
    body["message"] = message.into();
    (status, axum::Json(body)).into_response()
}

/// What one ingest request fed.
#[derive(Debug, Default, Clone, Copy)]
struct Fed {
    batches: u64,
    events: u64,
    dropped: u64,
}

/// `GET /jobs/{key}/stages/{stage}/workers/{index}/logs`: a local worker's log lines,
/// `{"lines": [{"at-ms", "level", "message", "seq"}], "dropped": N, "number": INCARNATION}` (with `?after=N` only the
/// lines numbered above `N`); 404 `not_here` if that worker
/// does not run here.
async fn logs(
    State(state): State<HttpState>,
    PathParams((id, stage, index)): PathParams<(String, usize, usize)>,
    axum::extract::Query(after): axum::extract::Query<After>,
) -> Response {
    let Ok(key) = id.parse::<squilla_types::ids::JobKey>() else {
        return error_response(StatusCode::NOT_FOUND, "not_here", "no such job here");
    };
    match state.jobs.log(&key, stage, index) {
        None => error_response(StatusCode::NOT_FOUND, "not_here", "that worker does not run here"),
        Some((lines, dropped, number)) => {
            let lines: Vec<serde_json::Value> = lines
                .into_iter()
                .filter(|l| after.after.is_none_or(|a| l.seq > a))
                .map(|l| {
                    serde_json::json!({"at-ms": l.at_ms, "level": format!("{:?}", l.level).to_lowercase(), "message": l.message, "seq": l.seq})
                })
                .collect();
            axum::Json(serde_json::json!({"lines": lines, "dropped": dropped, "number": number})).into_response()
        }
    }
}

/// `?after=N`: only lines numbered above `N`.
#[derive(serde::Deserialize)]
struct After {
    after: Option<u64>,
}

/// `GET /metrics`: the agent's per-worker metrics for Prometheus (see `crate::metrics`).
async fn prometheus(State(state): State<HttpState>) -> Response {
    let text = crate::metrics::render(&state.jobs.metrics(), &state.jobs.sinks(), state.jobs.cache_stats());
    ([(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
        .into_response()
}

/// The subscription a sink request asks for, or why its query is not one.
fn options(params: &SinkParams) -> Result<sink::Options, squilla_query::QueryError> {
    let query = match &params.query {
        None => None,
        Some(text) => Some(Arc::new(squilla_query::Query::parse(text)?)),
    };
    Ok(sink::Options { client_id: params.client_id.clone(), sample_per_second: params.sample, query })
}

/// `GET /jobs/{id}/sink`: this agent's part of a job's output, as server-sent events.
async fn sink(
    State(state): State<HttpState>,
    PathParams(id): PathParams<String>,
    axum::extract::RawQuery(raw): axum::extract::RawQuery,
) -> Response {
    let params = match SinkParams::parse(raw.as_deref()) {
        Ok(p) => p,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()),
    };
    let options = match options(&params) {
        Ok(o) => o,
        Err(e) => {
            let body =
                serde_json::json!({"code": "invalid_query", "message": e.message, "line": e.line, "column": e.column});
            return (StatusCode::BAD_REQUEST, axum::Json(body)).into_response();
        }
    };
    let hub = id.parse::<JobKey>().ok().and_then(|key| state.jobs.hub(&key));
    let Some(hub) = hub else {
        return error_response(StatusCode::NOT_FOUND, "not_found", &format!("job `{id}` not found on this agent"));
    };
    let subscription = hub.subscribe(options);
    drop(hub);
    let ping = params.ping_interval();
    // Chunks of frames as the hub rendered them; a `meta` frame first when some were lost;
    // a `ping` frame after `ping` of silence; an `error` frame, last, when a limit ended it.
    let stream = futures_util::stream::unfold(Some(subscription), move |sub| async move {
        let mut sub = sub?;
        let item = match tokio::time::timeout(ping, sub.recv()).await {
            Err(_) => {
                let mut text = Vec::new();
                sse::frame(&mut text, Some("ping"), "{}");
                return Some((Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(text)), Some(sub)));
            }
            Ok(item) => item?,
        };
        match item {
            Item::Chunk { bytes, dropped: 0 } => Some((Ok(bytes), Some(sub))),
            Item::Chunk { bytes, dropped } => {
                let mut text = Vec::with_capacity(bytes.len() + 64);
                let meta = serde_json::json!({"dropped": dropped, "reason": "subscriber too slow"}).to_string();
                sse::frame(&mut text, Some("meta"), &meta);
                text.extend_from_slice(&bytes);
                Some((Ok(axum::body::Bytes::from(text)), Some(sub)))
            }
            Item::End(end) => {
                let mut text = Vec::new();
                let body = serde_json::json!({"code": end.code, "message": end.message}).to_string();
                sse::frame(&mut text, Some("error"), &body);
                Some((Ok(axum::body::Bytes::from(text)), None))
            }
        }
    });
    (
        [(axum::http::header::CONTENT_TYPE, "text/event-stream"), (axum::http::header::CACHE_CONTROL, "no-cache")],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use crate::jobs::Jobs;

    const TOKEN: &str = "agent-token-0123456789";

    fn jobs() -> Arc<Jobs> {
        let runtime = squilla_host::Runtime::new(squilla_host::RuntimeConfig::default()).unwrap();
        let cache = squilla_host::ArtifactCache::in_memory(&runtime);
        let lease = squilla_host::Lease::expired();
        let transport = squilla_host::transport::Transport::bind(
            "127.0.0.1:0".parse().unwrap(),
            squilla_host::transport::TransportConfig { lease: lease.clone(), ..Default::default() },
        )
        .unwrap();
        let master = crate::master::MasterClient {
            url: squilla_net::masters::Masters::new("http://127.0.0.1:9"),
            token: TOKEN.into(),
            client: reqwest::Client::new(),
            cache: Arc::new(cache),
            runtime: tokio::runtime::Handle::current(),
        };
        Arc::new(Jobs::new(crate::job::Context {
            agent: "a1".parse().unwrap(),
            runtime,
            executor: squilla_host::Executor::start(1).unwrap(),
            transport: Arc::new(transport),
            master,
            lease,
            sink_limits: crate::sink::SinkLimits::default(),
        }))
    }

    async fn call(
        jobs: &Arc<Jobs>,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Vec<u8>,
    ) -> (StatusCode, String) {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let response =
            super::router(jobs.clone(), TOKEN).oneshot(request.body(Body::from(body)).unwrap()).await.unwrap();
        let status = response.status();
        (status, String::from_utf8_lossy(&response.into_body().collect().await.unwrap().to_bytes()).into_owned())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_route_answers_as_documented() {
        let jobs = jobs();
        let (status, body) = call(&jobs, "GET", "/healthz", None, vec![]).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, r#"{"status":"ok"}"#));
        for (method, uri) in
            [("GET", "/jobs/acme.errors-1/sink"), ("POST", "/jobs/acme.errors-1/ingest"), ("GET", "/metrics")]
        {
            for token in [None, Some("agent-token-wrong-0000")] {
                let (status, body) = call(&jobs, method, uri, token, vec![]).await;
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}");
                assert!(body.contains(r#""code":"unauthorized""#), "{body}");
            }
        }
        let (status, body) = call(&jobs, "GET", "/jobs/acme.errors-1/sink", Some(TOKEN), vec![]).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        let (status, body) = call(&jobs, "GET", "/jobs/acme.errors-1/sink?sample=0", Some(TOKEN), vec![]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let (status, body) =
            call(&jobs, "GET", "/jobs/acme.errors-1/sink?query=SELECT%20nope(", Some(TOKEN), vec![]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains(r#""code":"invalid_query""#) && body.contains(r#""line""#), "{body}");
        // A job whose source is not here is refused before its body is looked at.
        let (status, body) =
            call(&jobs, "POST", "/jobs/acme.errors-1/ingest", Some(TOKEN), b"not a batch".to_vec()).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.contains("not_here"), "{body}");
        let batch = squilla_batch::synth::DeviceLogs::new(1).batch(3, 0, 1).unwrap().as_bytes().to_vec();
        let (status, body) = call(&jobs, "POST", "/jobs/acme.errors-1/ingest", Some(TOKEN), batch).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.contains("not_here"), "{body}");
        let (status, body) = call(&jobs, "POST", "/jobs/acme.errors-1/ingest", Some(TOKEN), vec![0; 17 << 20]).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(body.contains("ingest_too_large"), "{body}");
        let (status, body) = call(&jobs, "GET", "/metrics", Some(TOKEN), vec![]).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("squilla_agent_workers 0") && body.ends_with("# EOF\n"), "{body}");
        let (status, _) = call(&jobs, "GET", "/nothing", Some(TOKEN), vec![]).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
}
