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
//! `GET /gateway/status` (no credentials) tells the upstreams running and subscribers served;
//! with the operator token, also each application stream's figures.

use std::collections::HashMap;
use std::net::IpAddr;
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
use squilla_net::budget::{Budget, Budgets, Level};
use squilla_net::error::error_response;
use squilla_net::limits::{BodyBudget, BodyLimit, buffer_body};
use squilla_net::queue::{self, StreamEnd};
use squilla_net::server::ClientAddr;
use squilla_types::sink::SinkParams;

use crate::fanout::{Fanouts, Join};
use crate::relay::{Follow, Locate, Located, Location, MAX_FRAME_BYTES};

/// How long an answer of the master's endpoints is reused for the same credentials and job.
pub const ENDPOINTS_TTL: Duration = Duration::from_secs(1);

/// Events one subscriber may have waiting at the gateway (on top of its byte share).
const SUBSCRIBER_EVENTS: usize = 16_384;

/// Most cached endpoint answers; past it the cache is emptied.
const MAX_CACHED: usize = 65_536;

/// Settings of a gateway. `Default` gives the documented values.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The masters' base URLs (`http://host:port`, several for a fleet of masters: the
    /// gateway follows the one that leads).
    pub master: squilla_net::masters::Masters,
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
    /// Requests per second from one client address, before anything else (default 500/s,
    /// bursts of 1,000); 429 `rate_limited` beyond.
    pub client_rate: squilla_net::rate::Rate,
    /// Bytes of ingest bodies being read for one tenant at once / in all (default 192 MiB /
    /// 768 MiB); past it, 503 `busy`.
    pub tenant_body_bytes: usize,
    /// See `tenant_body_bytes`.
    pub total_body_bytes: usize,
    /// Publishers (control connections) one tenant may have at this gateway (default 1,024);
    /// 429 `too_many_publishers` beyond.
    pub publishers_per_tenant: usize,
    /// Events one tenant's publishers may send to this gateway (default 1,000,000/s, bursts of
    /// 2,000,000); 429 `rate_limited` beyond, the whole request refused.
    pub publish_rate: squilla_net::rate::Rate,
    /// The operator's token: it opens `/gateway/metrics` and the `streams` of
    /// `/gateway/status`, which name tenants (default none: neither is served).
    pub operator_token: Option<TokenHash>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            master: squilla_net::masters::Masters::new("http://127.0.0.1:7070"),
            subscriptions_per_tenant: 1024,
            subscriber_bytes: 16 << 20,
            tenant_stream_bytes: 256 << 20,
            total_stream_bytes: 1 << 30,
            agent_timeout: Duration::from_secs(10),
            client_rate: squilla_net::rate::Rate { per_second: 500.0, burst: 1000.0 },
            tenant_body_bytes: 192 << 20,
            total_body_bytes: 768 << 20,
            publishers_per_tenant: 1024,
            publish_rate: squilla_net::rate::Rate { per_second: 1_000_000.0, burst: 2_000_000.0 },
            operator_token: None,
        }
    }
}

/// What the master says about a job for the caller ( `GET /api/v1/jobs/{id}/endpoints`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) struct Endpoints {
    pub(crate) job: String,
    pub(crate) state: String,
    pub(crate) ended: bool,
    pub(crate) sinks: Vec<String>,
    pub(crate) source: Option<String>,
    pub(crate) source_fresh: bool,
    pub(crate) ingest: bool,
    pub(crate) capability: Option<String>,
    #[serde(default)]
    pub(crate) ca: Option<String>,
}

/// Why the master's endpoints could not be had.
#[derive(Clone)]
pub(crate) enum Refused {
    /// The master refused these credentials for this job (its status and body, passed on as
    /// they came, and cached like an answer).
    Master { status: StatusCode, body: axum::body::Bytes },
    /// The master could not be asked, or answered something else (not cached).
    Unavailable { status: StatusCode, message: String },
}

impl Refused {
    pub(crate) fn response(&self) -> Response {
        match self {
            Refused::Master { status, body } => {
                (*status, [(axum::http::header::CONTENT_TYPE, "application/json")], body.clone()).into_response()
            }
            Refused::Unavailable { status, message } => error_response(*status, "master_unavailable", message),
        }
    }
}

/// An answer of the master's endpoints, and when it came.
type Cached = (Instant, Result<Endpoints, Refused>);

pub(crate) struct Inner {
    pub(crate) config: GatewayConfig,
    /// To the master.
    master: reqwest::Client,
    /// To agents: a client for plain HTTP, and one trusting the fleet CA the master last
    /// named (rebuilt if it names another).
    http: reqwest::Client,
    agents_tls: Mutex<Option<(String, reqwest::Client)>>,
    pub(crate) fanouts: Arc<Fanouts>,
    pub(crate) streams: Budgets,
    cache: Mutex<HashMap<(TokenHash, String), Cached>>,
    rates: squilla_net::rate::RateLimiter,
    pub(crate) bodies: Budgets,
    pub(crate) subscriptions: Arc<Mutex<HashMap<String, usize>>>,
    pub(crate) served: std::sync::atomic::AtomicU64,
    /// Application streams served here.
    pub(crate) apps: crate::apps::Apps,
}

/// A gateway's state.
#[derive(Clone)]
pub struct Gateway(pub(crate) Arc<Inner>);

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The request headers that carry who is asking, sent with the endpoints request.
pub(crate) const CREDENTIALS: [&str; 5] = ["authorization", "cookie", "origin", "sec-fetch-site", "x-squilla-console"];

/// Who is asking, as a cache key: a hash of the request's credential headers.
pub(crate) fn who(headers: &HeaderMap) -> TokenHash {
    let who = CREDENTIALS
        .iter()
        .map(|h| headers.get(*h).and_then(|v| v.to_str().ok()).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    TokenHash::of(&who)
}

/// Headers that belong to one connection and are not passed through.
const HOP_BY_HOP: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
    "x-forwarded-for",
];

/// Whether header `name` is passed on: not hop-by-hop, and not named by `Connection`.
fn passed_on(name: &str, headers: &HeaderMap) -> bool {
    !HOP_BY_HOP.contains(&name)
        && !headers
            .get_all(axum::http::header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case(name))
}

impl Gateway {
    /// A gateway in front of `config.master`, calling the master with `master_client` (which
    /// trusts the master's certificate, when it serves HTTPS) and agents with a client of
    /// its own.
    pub fn new(config: GatewayConfig, master_client: reqwest::Client) -> Result<Gateway, reqwest::Error> {
        let http = reqwest::Client::builder().connect_timeout(Duration::from_secs(2)).build()?;
        Ok(Gateway(Arc::new(Inner {
            master: master_client,
            streams: Budgets::new(config.total_stream_bytes, config.tenant_stream_bytes),
            rates: squilla_net::rate::RateLimiter::new(config.client_rate),
            bodies: Budgets::new(config.total_body_bytes, config.tenant_body_bytes),
            config,
            http,
            agents_tls: Mutex::default(),
            fanouts: Arc::default(),
            cache: Mutex::default(),
            subscriptions: Arc::default(),
            served: Default::default(),
            apps: crate::apps::Apps::default(),
        })))
    }

    /// The client for the agents of an endpoints answer: one that trusts the fleet CA when
    /// the master names one (agents then serve HTTPS), the plain one otherwise.
    pub(crate) fn agent_client(&self, ca: Option<&str>) -> reqwest::Client {
        let Some(ca) = ca else { return self.0.http.clone() };
        let mut cached = lock(&self.0.agents_tls);
        if let Some((pem, client)) = &*cached
            && pem == ca
        {
            return client.clone();
        }
        let built = squilla_net::tls::agent_client_config(ca).map_err(|e| e.to_string()).and_then(|config| {
            reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(2))
                .use_preconfigured_tls(config)
                .build()
                .map_err(|e| e.to_string())
        });
        match built {
            Ok(client) => {
                *cached = Some((ca.to_owned(), client.clone()));
                client
            }
            Err(err) => {
                tracing::warn!(error = %err, "the master's CA cannot be used; calling agents without it");
                self.0.http.clone()
            }
        }
    }

    /// The shared upstreams.
    pub fn fanouts(&self) -> &Arc<Fanouts> {
        &self.0.fanouts
    }

    /// What the master says of job `id` to these credentials, for the caller at `client`
    /// (cached for [`ENDPOINTS_TTL`], refusals too).
    pub(crate) async fn endpoints(
        &self,
        headers: &HeaderMap,
        client: Option<IpAddr>,
        id: &str,
    ) -> Result<Endpoints, Refused> {
        let key = (who(headers), id.to_owned());
        if let Some((at, answer)) = lock(&self.0.cache).get(&key)
            && at.elapsed() < ENDPOINTS_TTL
        {
            return answer.clone();
        }
        let answer = self.ask_endpoints(headers, client, id).await;
        if matches!(&answer, Ok(_) | Err(Refused::Master { .. })) {
            let mut cache = lock(&self.0.cache);
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
            cache.insert(key, (Instant::now(), answer.clone()));
        }
        answer
    }

    async fn ask_endpoints(&self, headers: &HeaderMap, client: Option<IpAddr>, id: &str) -> Result<Endpoints, Refused> {
        self.ask(headers, client, &format!("/api/v1/jobs/{}/endpoints", encode(id))).await
    }

    /// `GET path` of the master with the caller's credentials: its answer, or why not.
    pub(crate) async fn ask<T: serde::de::DeserializeOwned>(
        &self,
        headers: &HeaderMap,
        client: Option<IpAddr>,
        path: &str,
    ) -> Result<T, Refused> {
        let unavailable = |message: String| Refused::Unavailable { status: StatusCode::BAD_GATEWAY, message };
        let build = |base: &str| {
            let mut request = self.0.master.get(format!("{base}{path}")).timeout(Duration::from_secs(5));
            for name in CREDENTIALS.iter().chain(&["host"]) {
                if let Some(value) = headers.get(*name) {
                    request = request.header(*name, value);
                }
            }
            if let Some(ip) = client {
                request = request.header("x-forwarded-for", ip.to_string());
            }
            request
        };
        let response = self.0.config.master.send(build).await.map_err(|e| {
            tracing::warn!(error = %e, "cannot reach the master");
            unavailable("the gateway cannot reach the master; retry shortly".into())
        })?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| unavailable(format!("the master's answer: {e}")))?;
        match status.as_u16() {
            200 => serde_json::from_slice(&body).map_err(|e| unavailable(format!("the master's answer: {e}"))),
            400..=499 if status != StatusCode::TOO_MANY_REQUESTS && status != StatusCode::REQUEST_TIMEOUT => {
                Err(Refused::Master { status, body })
            }
            _ => Err(Refused::Unavailable {
                status: if status == StatusCode::TOO_MANY_REQUESTS { status } else { StatusCode::BAD_GATEWAY },
                message: format!("the master answered {status}: {}", String::from_utf8_lossy(&body)),
            }),
        }
    }
}

/// A path segment, percent-encoded where it must be.
pub(crate) fn encode(segment: &str) -> String {
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
        if passed_on(name.as_str(), response.headers()) {
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
        .merge(crate::apps::routes(gateway.clone()))
        .fallback(forward)
        .method_not_allowed_fallback(squilla_net::extract::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(gateway.clone(), client_rate))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn(squilla_net::access::log))
        .with_state(gateway)
}

/// The caller's address, as the server saw it.
pub(crate) fn client_of(request_extensions: &axum::http::Extensions) -> Option<IpAddr> {
    request_extensions.get::<ClientAddr>().map(|ClientAddr(addr)| addr.ip())
}

/// Middleware: every request counts against its client address's rate first.
async fn client_rate(State(gw): State<Gateway>, request: Request, next: Next) -> Response {
    if let Some(ip) = client_of(request.extensions())
        && let Err(wait) = gw.0.rates.check(&squilla_net::rate::client_key(ip))
    {
        let mut response = error_response(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            &format!("too many requests from this address; retry in {} ms", wait.as_millis().max(1)),
        );
        if let Ok(value) = axum::http::HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, value);
        }
        return response;
    }
    next.run(request).await
}

async fn status(State(gw): State<Gateway>, headers: HeaderMap) -> Response {
    let mut status = serde_json::json!({
        "upstreams": gw.0.fanouts.upstreams(),
        "upstreams-started": gw.0.fanouts.started(),
        "subscribers-served": gw.0.served.load(std::sync::atomic::Ordering::Relaxed),
        "subscribers": lock(&gw.0.subscriptions).values().sum::<usize>(),
    });
    // Streams name tenants: only the operator sees them.
    if crate::apps::metrics::operator(&gw, &headers) {
        status["streams"] = crate::apps::metrics::status(&gw);
    }
    axum::Json(status).into_response()
}

/// A subscriber's place among its tenant's subscriptions at this gateway.
pub(crate) struct Place {
    counts: Arc<Mutex<HashMap<String, usize>>>,
    tenant: String,
}

impl Place {
    /// A place for `tenant` among `counts`, if it holds fewer than `limit`; else how many it
    /// holds.
    pub(crate) fn take(
        counts: &Arc<Mutex<HashMap<String, usize>>>,
        tenant: &str,
        limit: usize,
    ) -> Result<Place, usize> {
        let mut held = lock(counts);
        let n = held.entry(tenant.to_owned()).or_default();
        if *n >= limit {
            return Err(*n);
        }
        *n += 1;
        Ok(Place { counts: counts.clone(), tenant: tenant.to_owned() })
    }
}

impl Gateway {
    /// A subscriber's place among its tenant's subscriptions here, or the 429 that refuses it.
    pub(crate) fn subscription_place(&self, tenant: &str) -> Result<Place, Box<Response>> {
        Place::take(&self.0.subscriptions, tenant, self.0.config.subscriptions_per_tenant).map_err(|n| {
            Box::new(error_response(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_subscriptions",
                &format!("tenant `{tenant}` has {n} subscriptions open at this gateway, its limit; close one first"),
            ))
        })
    }
}

impl Endpoints {
    /// The job as ingest sees it.
    pub(crate) fn target(&self) -> crate::ingest::Target<'_> {
        crate::ingest::Target {
            state: &self.state,
            ended: self.ended,
            ingest: self.ingest,
            source: self.source.as_deref(),
            fresh: self.source_fresh,
        }
    }
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
    method: axum::http::Method,
    headers: HeaderMap,
    axum::Extension(ClientAddr(client)): axum::Extension<ClientAddr>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let client = Some(client.ip());
    let endpoints = match gw.endpoints(&headers, client, &id).await {
        Ok(e) => e,
        Err(refused) => return refused.response(),
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
    if method == axum::http::Method::HEAD {
        // What a GET would answer, without following anything.
        return ([(axum::http::header::CONTENT_TYPE, "text/event-stream")], ()).into_response();
    }
    let tenant = endpoints.job.split_once('.').map_or(endpoints.job.as_str(), |(t, _)| t).to_owned();
    let place = match gw.subscription_place(&tenant) {
        Ok(place) => place,
        Err(refused) => return *refused,
    };
    gw.0.served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let hold = gw.0.streams.tenant(&tenant);
    let upstream = hold.child(Level::Subscriber, gw.0.config.subscriber_bytes);
    let (member, rx) = queue::channel(Budget::root(Level::Subscriber, gw.0.config.subscriber_bytes), SUBSCRIBER_EVENTS);
    // The upstream follows the job with the credentials of the subscriber that started it
    // (every member is of the same tenant: the key holds the job, and so its tenant).
    let (me, credentials, first) = (gw.clone(), headers.clone(), endpoints.clone());
    let first = Arc::new(Mutex::new(Some(first)));
    let locate: Locate = Arc::new(move || {
        let (me, credentials, id, first) = (me.clone(), credentials.clone(), id.clone(), first.clone());
        Box::pin(async move {
            let known = lock(&first).take();
            let answer = match known {
                Some(e) => Ok(e),
                None => me.endpoints(&credentials, client, &id).await,
            };
            match answer {
                Ok(e) => Location::Found(Located { ended: e.ended, agents: e.sinks, bearer: e.capability }),
                Err(Refused::Unavailable { .. }) => Location::Unknown,
                Err(Refused::Master { status, .. }) => Location::Gone(StreamEnd {
                    code: match status {
                        StatusCode::UNAUTHORIZED => "unauthorized",
                        StatusCode::NOT_FOUND => "not_found",
                        _ => "forbidden",
                    },
                    message: format!("the master no longer lets this stream's credentials read the job ({status})"),
                }),
            }
        })
    });
    let follow = Follow {
        locate,
        job: endpoints.job.clone(),
        query,
        limit,
        ping: params.ping_interval(),
        client: gw.agent_client(endpoints.ca.as_deref()),
        max_frame: MAX_FRAME_BYTES.min(gw.0.config.subscriber_bytes),
    };
    let share = Some(format!("{}\n{params:?}", endpoints.job));
    let split = params.client_id.is_some();
    gw.0.fanouts.join(Join { share, follow, member, split, budget: upstream, hold });
    match upgrade {
        Ok(upgrade) => crate::ws::serve(upgrade, rx, params.ping_interval(), place),
        Err(_) => crate::respond::sse(rx, place),
    }
}

/// Middleware: the master says who may ingest into the job before its body is read.
async fn authenticate(State(gw): State<Gateway>, Path(id): Path<String>, mut request: Request, next: Next) -> Response {
    let client = client_of(request.extensions());
    match gw.endpoints(request.headers(), client, &id).await {
        Ok(endpoints) => {
            let tenant = endpoints.job.split_once('.').map_or(endpoints.job.as_str(), |(t, _)| t);
            request.extensions_mut().insert(BodyBudget(gw.0.bodies.tenant(tenant)));
            request.extensions_mut().insert(endpoints);
            next.run(request).await
        }
        Err(refused) => refused.response(),
    }
}

async fn ingest(
    State(gw): State<Gateway>,
    Path(id): Path<String>,
    axum::Extension(endpoints): axum::Extension<Endpoints>,
    body: axum::body::Bytes,
) -> Response {
    let target = endpoints.target();
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
    let client = gw.agent_client(endpoints.ca.as_deref());
    match crate::ingest::forward(&client, agent, &endpoints.job, bearer, gw.0.config.agent_timeout, archived).await {
        Ok(fed) => axum::Json(serde_json::json!({"events": fed.events, "dropped": fed.dropped})).into_response(),
        Err(r) => error_response(r.status, r.code, &r.message),
    }
}

/// A master's 307 or 503 to a request the gateway cannot send again: if it is about
/// leadership, the gateway follows it for the next request and tells the client to retry;
/// otherwise it is the master's own answer, passed back.
async fn leadership_answer(
    masters: &squilla_net::masters::Masters,
    base: &str,
    response: reqwest::Response,
) -> Response {
    let (status, headers) = (response.status(), response.headers().clone());
    let body = response.bytes().await.unwrap_or_default();
    match squilla_net::masters::Masters::leadership(status, &body) {
        Some(leader) => {
            match leader {
                Some(leader) => masters.follow(&leader),
                None => masters.skip(base),
            }
            let mut answer = error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_leader",
                "the master the gateway called no longer leads; nothing was applied, retry",
            );
            answer.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
            answer
        }
        None => {
            let mut rebuilt = axum::http::Response::new(body);
            *rebuilt.status_mut() = status;
            *rebuilt.headers_mut() = headers;
            pass_back(reqwest::Response::from(rebuilt))
        }
    }
}

/// Any other request: passed through to the master, both bodies streamed.
async fn forward(State(gw): State<Gateway>, request: Request) -> Response {
    let client = client_of(request.extensions());
    let (parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    if !path.starts_with('/') {
        return error_response(StatusCode::BAD_REQUEST, "bad_request", "the request target must be a path");
    }
    let masters = &gw.0.config.master;
    let build = |base: &str| {
        let mut out = gw.0.master.request(parts.method.clone(), format!("{base}{path}"));
        for (name, value) in &parts.headers {
            if passed_on(name.as_str(), &parts.headers) {
                out = out.header(name, value);
            }
        }
        if let Some(ip) = client {
            out = out.header("x-forwarded-for", ip.to_string());
        }
        out
    };
    // A request without a body may be sent again, at the leader a standby names; one with
    // a body is streamed through once (the gateway keeps no copy) and, if it met a master
    // that does not lead, answered with where to retry — the gateway goes to the leader
    // next time.
    let bodiless = matches!(parts.method, axum::http::Method::GET | axum::http::Method::HEAD)
        && !parts.headers.contains_key(axum::http::header::CONTENT_LENGTH)
        && !parts.headers.contains_key(axum::http::header::TRANSFER_ENCODING);
    let sent = if bodiless {
        masters.send(build).await
    } else {
        let base = masters.current();
        let stream = body.into_data_stream().map_err(std::io::Error::other);
        match build(&base).body(reqwest::Body::wrap_stream(stream)).send().await {
            Err(e) => {
                masters.skip(&base);
                Err(squilla_net::masters::Failover::Request(e))
            }
            Ok(response) => match response.status() {
                StatusCode::TEMPORARY_REDIRECT | StatusCode::SERVICE_UNAVAILABLE => {
                    return leadership_answer(masters, &base, response).await;
                }
                _ => Ok(response),
            },
        }
    };
    match sent {
        Ok(response) => pass_back(response),
        Err(e) => {
            tracing::warn!(error = %e, "cannot reach the master");
            error_response(
                StatusCode::BAD_GATEWAY,
                "master_unavailable",
                "the gateway cannot reach the master; retry shortly",
            )
        }
    }
}
