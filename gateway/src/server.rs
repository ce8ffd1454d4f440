//! The standalone gateway (`squilla gateway`): the URL people use, without the master in the
//! data path.
//!
//! - `GET /api/v1/jobs/{id}/sink` (server-sent events or a WebSocket) and
//!   `POST /api/v1/jobs/{id}/ingest` are served here. Each request is first authenticated
//!   with the master: `GET /api/v1/jobs/{id}/endpoints` with the request's own credentials
//!   (bearer token or console cookie) answers whether this caller may use the job, where its
//!   sink and source run, and a capability for those agents. The answer is cached for
//!   [`ENDPOINTS_TTL`] per credentials and job, so a thousand subscribers arriving at once
//!   cost the master one request; the master's refusal (401, 404, …) is passed on as it is.
//!   Bodies are read only after that.
//! - Sink subscribers share upstreams ([`crate::fanout`]): one stream per agent per job and
//!   query string, whatever the number of subscribers.
//! - Every other request is passed through to the master unchanged (streamed both ways), so a
//!   gateway can be the one address a fleet's users know. Several gateways can run side by
//!   side: they hold no state but caches.
//!
//! `GET /gateway/status` (no credentials) tells the upstreams running and subscribers served.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{Path, RawQuery, Request, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::TryStreamExt;
use serde::Deserialize;
use squilla_net::auth::TokenHash;
use squilla_net::budget::{Budgets, Level};
use squilla_net::error::error_response;
use squilla_net::limits::{BodyLimit, buffer_body};
use squilla_net::queue;
use squilla_types::sink::SinkParams;

use crate::fanout::{Fanouts, Join};
use crate::relay::{Follow, Locate, Located, MAX_FRAME_BYTES};

/// How long an answer of the master's endpoints is reused for the same credentials and job.
pub const ENDPOINTS_TTL: Duration = Duration::from_secs(1);

/// Events one subscriber may have waiting at the gateway (on top of its byte share).
const SUBSCRIBER_EVENTS: usize = 16_384;

/// Most cached endpoint answers; past it the cache is emptied.
const MAX_CACHED: usize = 65_536;

/// Settings of a gateway. `Default` gives the documented values.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The master's base URL (`http://host:port`).
    pub master: String,
    /// Sink subscriptions one tenant may hold open at this gateway (default 1,024).
    pub subscriptions_per_tenant: usize,
    /// Bytes one subscriber may have waiting (default 16 MiB).
    pub subscriber_bytes: usize,
    /// Bytes all of one tenant's subscribers may have waiting (default 256 MiB).
    pub tenant_stream_bytes: usize,
    /// Bytes all subscribers may have waiting (default 1 GiB).
    pub total_stream_bytes: usize,
    /// How long an agent may take to take one ingest batch (default 10 s).
    pub agent_timeout: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            master: "http://127.0.0.1:7070".into(),
            subscriptions_per_tenant: 1024,
            subscriber_bytes: 16 << 20,
            tenant_stream_bytes: 256 << 20,
            total_stream_bytes: 1 << 30,
            agent_timeout: Duration::from_secs(10),
        }
    }
}

/// What the master says about a job for the caller ( `GET /api/v1/jobs/{id}/endpoints`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Endpoints {
    job: String,
    state: String,
    ended: bool,
    sinks: Vec<String>,
    source: Option<String>,
    source_fresh: bool,
    ingest: bool,
    capability: Option<String>,
}

/// The master's refusal, passed on as it came.
struct Passed(Response);

struct Inner {
    config: GatewayConfig,
    /// To the master.
    master: reqwest::Client,
    /// To agents.
    http: reqwest::Client,
    fanouts: Arc<Fanouts>,
    streams: Budgets,
    cache: Mutex<HashMap<(TokenHash, String), (Instant, Endpoints)>>,
    subscriptions: Arc<Mutex<HashMap<String, usize>>>,
    served: std::sync::atomic::AtomicU64,
}

/// A gateway's state.
#[derive(Clone)]
pub struct Gateway(Arc<Inner>);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The request headers that carry who is asking, sent with the endpoints request.
const CREDENTIALS: [&str; 5] = ["authorization", "cookie", "origin", "sec-fetch-site", "x-squilla-console"];

/// Headers that belong to one connection and are not passed through.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authenticate",
];

impl Gateway {
    /// A gateway in front of `config.master`, calling the master with `master_client` (which
    /// trusts the master's certificate, when it serves HTTPS) and agents with a client of
    /// its own.
    pub fn new(config: GatewayConfig, master_client: reqwest::Client) -> Result<Gateway, reqwest::Error> {
        let http = reqwest::Client::builder().connect_timeout(Duration::from_secs(2)).build()?;
        Ok(Gateway(Arc::new(Inner {
            master: master_client,
            streams: Budgets::new(config.total_stream_bytes, config.tenant_stream_bytes),
            config,
            http,
            fanouts: Arc::default(),
            cache: Mutex::default(),
            subscriptions: Arc::default(),
            served: Default::default(),
        })))
    }

    /// The shared upstreams.
    pub fn fanouts(&self) -> &Arc<Fanouts> {
        &self.0.fanouts
    }

    /// What the master says of job `id` to these credentials (cached for [`ENDPOINTS_TTL`]).
    async fn endpoints(&self, headers: &HeaderMap, id: &str) -> Result<Endpoints, Passed> {
        let who = CREDENTIALS
            .iter()
            .map(|h| headers.get(*h).and_then(|v| v.to_str().ok()).unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
        let key = (TokenHash::of(&who), id.to_owned());
        if let Some((at, e)) = lock(&self.0.cache).get(&key)
            && at.elapsed() < ENDPOINTS_TTL
        {
            return Ok(e.clone());
        }
        let url = format!("{}/api/v1/jobs/{}/endpoints", self.0.config.master.trim_end_matches('/'), encode(id));
        let mut request = self.0.master.get(url).timeout(Duration::from_secs(5));
        for name in CREDENTIALS.iter().chain(&["host"]) {
            if let Some(value) = headers.get(*name) {
                request = request.header(*name, value);
            }
        }
        let response = request.send().await.map_err(|e| {
            Passed(error_response(
                StatusCode::BAD_GATEWAY,
                "master_unavailable",
                &format!("the gateway cannot reach the master: {e}"),
            ))
        })?;
        if !response.status().is_success() {
            return Err(Passed(pass_back(response)));
        }
        let bad = |e: String| {
            Passed(error_response(StatusCode::BAD_GATEWAY, "master_unavailable", &format!("the master's answer: {e}")))
        };
        let bytes = response.bytes().await.map_err(|e| bad(e.to_string()))?;
        let endpoints: Endpoints = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        let mut cache = lock(&self.0.cache);
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(key, (Instant::now(), endpoints.clone()));
        Ok(endpoints)
    }
}

/// A path segment, percent-encoded where it must be.
fn encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The master's answer, streamed back as it is (without its hop-by-hop headers).
fn pass_back(response: reqwest::Response) -> Response {
    let mut builder = Response::builder().status(response.status().as_u16());
    for (name, value) in response.headers() {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            builder = builder.header(name.as_str(), value.as_bytes());
        }
    }
    let body = Body::from_stream(response.bytes_stream());
    builder.body(body).unwrap_or_else(|e| {
        error_response(StatusCode::BAD_GATEWAY, "master_unavailable", &format!("the master's answer: {e}"))
    })
}

/// The gateway's routes.
pub fn router(gateway: Gateway) -> Router {
    Router::new()
        .route("/gateway/status", get(status))
        .route("/api/v1/jobs/{id}/sink", get(sink))
        .route(
            "/api/v1/jobs/{id}/ingest",
            post(ingest)
                .layer(axum::middleware::from_fn_with_state(
                    BodyLimit::bytes(crate::ingest::MAX_INGEST_BYTES).code("ingest_too_large"),
                    buffer_body,
                ))
                .layer(axum::middleware::from_fn_with_state(gateway.clone(), authenticate)),
        )
        .fallback(forward)
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn(squilla_net::access::log))
        .with_state(gateway)
}

async fn status(State(gw): State<Gateway>) -> Response {
    axum::Json(serde_json::json!({
        "upstreams": gw.0.fanouts.upstreams(),
        "upstreams-started": gw.0.fanouts.started(),
        "subscribers-served": gw.0.served.load(std::sync::atomic::Ordering::Relaxed),
        "subscribers": lock(&gw.0.subscriptions).values().sum::<usize>(),
    }))
    .into_response()
}

/// A subscriber's place among its tenant's subscriptions at this gateway.
struct Place {
    counts: Arc<Mutex<HashMap<String, usize>>>,
    tenant: String,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut counts = lock(&self.counts);
        if let Some(n) = counts.get_mut(&self.tenant) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.tenant);
            }
        }
    }
}

async fn sink(
    State(gw): State<Gateway>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let endpoints = match gw.endpoints(&headers, &id).await {
        Ok(e) => e,
        Err(Passed(response)) => return response,
    };
    let params = match SinkParams::parse(query.as_deref()) {
        Ok(p) => p,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()),
    };
    let mut limit = None;
    if let Some(q) = &params.query {
        match squilla_query::Query::parse(q) {
            Ok(query) => limit = query.stream_limit(),
            Err(e) => {
                let message = format!("{} (line {}, column {})", e.message, e.line, e.column);
                return error_response(StatusCode::BAD_REQUEST, "invalid_query", &message);
            }
        }
    }
    let tenant = endpoints.job.split_once('.').map_or(endpoints.job.as_str(), |(t, _)| t).to_owned();
    let place = {
        let mut counts = lock(&gw.0.subscriptions);
        let n = counts.entry(tenant.clone()).or_default();
        if *n >= gw.0.config.subscriptions_per_tenant {
            return error_response(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_subscriptions",
                &format!("tenant `{tenant}` has {n} subscriptions open at this gateway, its limit; close one first"),
            );
        }
        *n += 1;
        Place { counts: gw.0.subscriptions.clone(), tenant: tenant.clone() }
    };
    gw.0.served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let budget = || gw.0.streams.tenant(&tenant).child(Level::Subscriber, gw.0.config.subscriber_bytes);
    let (member, rx) = queue::channel(budget(), SUBSCRIBER_EVENTS);
    // The upstream follows the job with the credentials of the subscriber that started it
    // (every member is of the same tenant: the key holds the job, and so its tenant).
    let (me, credentials, first) = (gw.clone(), headers.clone(), endpoints.clone());
    let first = Arc::new(Mutex::new(Some(first)));
    let locate: Locate = Arc::new(move || {
        let (me, credentials, id, first) = (me.clone(), credentials.clone(), id.clone(), first.clone());
        Box::pin(async move {
            let known = lock(&first).take();
            let e = match known {
                Some(e) => e,
                None => me.endpoints(&credentials, &id).await.ok()?,
            };
            Some(Located { ended: e.ended, agents: e.sinks, bearer: e.capability })
        })
    });
    let follow = Follow {
        locate,
        job: endpoints.job.clone(),
        query,
        limit,
        ping: params.ping_interval(),
        client: gw.0.http.clone(),
        max_frame: MAX_FRAME_BYTES.min(gw.0.config.subscriber_bytes),
    };
    gw.0.fanouts.join(Join { follow, member, split: params.client_id.is_some(), budget: budget() });
    match upgrade {
        Ok(upgrade) => crate::ws::serve(upgrade, rx, params.ping_interval(), place),
        Err(_) => crate::respond::sse(rx, place),
    }
}

/// Middleware: the master says who may ingest into the job before its body is read.
async fn authenticate(State(gw): State<Gateway>, Path(id): Path<String>, mut request: Request, next: Next) -> Response {
    match gw.endpoints(request.headers(), &id).await {
        Ok(endpoints) => {
            request.extensions_mut().insert(endpoints);
            next.run(request).await
        }
        Err(Passed(response)) => response,
    }
}

async fn ingest(
    State(gw): State<Gateway>,
    Path(id): Path<String>,
    axum::Extension(endpoints): axum::Extension<Endpoints>,
    body: axum::body::Bytes,
) -> Response {
    let target = crate::ingest::Target {
        state: &endpoints.state,
        ended: endpoints.ended,
        ingest: endpoints.ingest,
        source: endpoints.source.as_deref(),
        fresh: endpoints.source_fresh,
    };
    if let Err(r) = crate::ingest::takes_events(&id, &target) {
        return error_response(r.status, r.code, &r.message);
    }
    let now = squilla_types::time::now_ms();
    let archived = match tokio::task::spawn_blocking(move || crate::ingest::batches(&body, now)).await {
        Ok(Ok(archived)) => archived,
        Ok(Err(e)) => {
            let r = e.refusal();
            return error_response(r.status, r.code, &r.message);
        }
        Err(e) => return error_response(StatusCode::INTERNAL_SERVER_ERROR, "internal", &e.to_string()),
    };
    let agent = match crate::ingest::source(&id, &target) {
        Ok(agent) => agent,
        Err(r) => return error_response(r.status, r.code, &r.message),
    };
    let bearer = endpoints.capability.as_deref();
    match crate::ingest::forward(&gw.0.http, agent, &endpoints.job, bearer, gw.0.config.agent_timeout, archived).await {
        Ok(fed) => axum::Json(serde_json::json!({"events": fed.events, "dropped": fed.dropped})).into_response(),
        Err(r) => error_response(r.status, r.code, &r.message),
    }
}

/// Any other request: passed through to the master, both bodies streamed.
async fn forward(State(gw): State<Gateway>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let url = format!("{}{path}", gw.0.config.master.trim_end_matches('/'));
    let mut out = gw.0.master.request(parts.method.clone(), url);
    for (name, value) in &parts.headers {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            out = out.header(name, value);
        }
    }
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    out = out.body(reqwest::Body::wrap_stream(stream));
    match out.send().await {
        Ok(response) => pass_back(response),
        Err(e) => error_response(
            StatusCode::BAD_GATEWAY,
            "master_unavailable",
            &format!("the gateway cannot reach the master: {e}"),
        ),
    }
}
