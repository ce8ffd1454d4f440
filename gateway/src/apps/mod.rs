//! Application streams (`<app>/<stream>` of a tenant), served by the gateway without the
//! master in the data path. `docs/publish.md` is the reference.
//!
//! - `GET /api/v1/streams/{app}/{stream}/subscriptions`: a publisher's control connection,
//!   newline-delimited JSON ([`Interest`]): the distinct queries subscribed right now, sent at
//!   once, on every change, and again every [`INTEREST_REPEAT`] as a keep-alive.
//! - `POST /api/v1/streams/{app}/{stream}/events`: what a publisher sends: archived batches
//!   (framed, `application/vnd.squilla.batches`) or JSON events (lines or an array), at most
//!   [`MAX_PUBLISH_BYTES`]. The header `x-squilla-dropped` adds to the events the publisher
//!   reports it dropped.
//! - `GET /api/v1/streams/{app}/{stream}/sink`: a subscription, with the same parameters as a
//!   job's sink (`query`, `clientId`, `sample`, `ping`; server-sent events or a WebSocket).
//!
//! - `GET /gateway/metrics`: each stream's figures for Prometheus, with the operator token
//!   ([`metrics`]).
//!
//! Every request is first authenticated with the master (`GET /api/v1/streams/{app}/{stream}`,
//! cached like a job's endpoints for the same credentials): a stream belongs to the caller's
//! tenant. Publishers of many processes meet in one [`Hub`] per stream; each subscription's
//! query runs once, on the union of what they send.

mod hub;
pub(crate) mod metrics;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{Path, RawQuery, Request, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use squilla_batch::BatchBytes;
use squilla_net::error::error_response;
use squilla_net::limits::BodyBudget;
use squilla_net::server::ClientAddr;
use squilla_subscribe::{Groups, Limits, Options};
use squilla_types::sink::SinkParams;

use hub::StreamInfo;
pub use hub::{CONSUMER_QUEUE, CONSUMERS_EVERY, Hub, Interest, Wanted};

use crate::ingest::Refusal;
use crate::server::{Gateway, Place, Refused, lock};

/// Largest publish body, bytes.
pub const MAX_PUBLISH_BYTES: usize = 8 << 20;
/// How often a publisher's control connection repeats the interest when nothing changed.
pub const INTEREST_REPEAT: Duration = Duration::from_secs(10);
/// How long a stream nobody publishes to or subscribes to is kept.
pub const STREAM_IDLE: Duration = Duration::from_secs(60);
/// Events one subscriber of a stream may have waiting.
const SUBSCRIBER_EVENTS: usize = 16_384;
/// Bytes one subscription's query state may hold.
const QUERY_STATE_BYTES: usize = 64 << 20;

/// An answer of the master's about a stream, and when it came.
type CachedInfo = (Instant, Result<StreamInfo, Refused>);

/// The streams of this gateway.
#[derive(Default)]
pub struct Apps {
    hubs: std::sync::Mutex<HashMap<String, Arc<Hub>>>,
    /// Control connections per tenant.
    publishers: Arc<std::sync::Mutex<HashMap<String, usize>>>,
    /// The master's answers about streams, per credentials and stream.
    cache: std::sync::Mutex<HashMap<(squilla_net::auth::TokenHash, String), CachedInfo>>,
    rates: std::sync::OnceLock<squilla_net::rate::RateLimiter>,
}

impl Apps {
    /// Every stream now.
    pub fn hubs(&self) -> Vec<Arc<Hub>> {
        lock(&self.hubs).values().cloned().collect()
    }

    /// Forgets `hub` if it is still the one of its key and has been idle for `idle` (checked
    /// under the lock [`Gateway::hub`] hands hubs out under, which marks them used).
    fn forget(&self, hub: &Arc<Hub>, idle: Duration) -> bool {
        let mut hubs = lock(&self.hubs);
        if hub.idle(idle) && hubs.get(&hub.key).is_some_and(|h| Arc::ptr_eq(h, hub)) {
            hubs.remove(&hub.key);
            return true;
        }
        false
    }
}

/// Application streams alone, for a process that serves them beside its own API (a master
/// serving plain HTTP has them built in, asking itself who callers are).
pub fn router(gateway: Gateway) -> axum::Router {
    routes(gateway.clone())
        // A gateway's own status holds more; a master serving streams itself tells them only.
        .route("/gateway/status", axum::routing::get(metrics::streams_status))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn(squilla_net::access::log))
        .with_state(gateway)
}

/// Routes of application streams.
pub(crate) fn routes(gateway: Gateway) -> axum::Router<Gateway> {
    use axum::routing::{get, post};
    use squilla_net::limits::{BodyLimit, buffer_body};
    axum::Router::new()
        .route("/gateway/metrics", get(metrics::metrics))
        .route("/api/v1/streams/{app}/{stream}/subscriptions", get(subscriptions))
        .route("/api/v1/streams/{app}/{stream}/sink", get(sink))
        .route(
            "/api/v1/streams/{app}/{stream}/events",
            post(events)
                .layer(axum::middleware::from_fn_with_state(
                    BodyLimit::bytes(MAX_PUBLISH_BYTES).code("publish_too_large"),
                    buffer_body,
                ))
                .layer(axum::middleware::from_fn_with_state(gateway, authenticate)),
        )
}

impl Gateway {
    /// The master's answer about stream `app/stream` for these credentials (cached for
    /// [`crate::server::ENDPOINTS_TTL`], refusals too).
    async fn stream_info(
        &self,
        headers: &HeaderMap,
        client: Option<std::net::IpAddr>,
        app: &str,
        stream: &str,
    ) -> Result<StreamInfo, Refused> {
        let apps = &self.0.apps;
        let key = (crate::server::who(headers), format!("{app}/{stream}"));
        if let Some((at, answer)) = lock(&apps.cache).get(&key)
            && at.elapsed() < crate::server::ENDPOINTS_TTL
        {
            return answer.clone();
        }
        let path = format!("/api/v1/streams/{}/{}", crate::server::encode(app), crate::server::encode(stream));
        let answer = self.ask::<StreamInfo>(headers, client, &path).await;
        if matches!(&answer, Ok(_) | Err(Refused::Master { .. })) {
            let mut cache = lock(&apps.cache);
            if cache.len() >= 65_536 {
                cache.clear();
            }
            cache.insert(key, (Instant::now(), answer.clone()));
        }
        answer
    }

    /// The hub of `info`'s stream, made (with its maintenance task) if there is none.
    fn hub(&self, info: &StreamInfo) -> Arc<Hub> {
        let key = format!("{}.{}", info.tenant, info.stream);
        let mut hubs = lock(&self.0.apps.hubs);
        if let Some(hub) = hubs.get(&key) {
            hub.keep();
            return hub.clone();
        }
        let limits = Limits {
            subscriber_events: SUBSCRIBER_EVENTS,
            subscriber_bytes: self.0.config.subscriber_bytes,
            query_state_bytes: QUERY_STATE_BYTES,
        };
        let groups = Groups::new(limits, self.0.streams.tenant(&info.tenant));
        let hub = Hub::new(key.clone(), info.tenant.clone(), info.stream.clone(), groups);
        hubs.insert(key, hub.clone());
        tokio::spawn(hub::maintain(self.clone(), hub.clone(), STREAM_IDLE));
        hub
    }

    fn publish_rates(&self) -> &squilla_net::rate::RateLimiter {
        self.0.apps.rates.get_or_init(|| squilla_net::rate::RateLimiter::new(self.0.config.publish_rate))
    }
}

/// A publisher's place among its tenant's control connections; it also counts on its hub.
struct Publisher {
    _place: Place,
    hub: Arc<Hub>,
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.hub.publishers.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn subscriptions(
    State(gw): State<Gateway>,
    headers: HeaderMap,
    axum::Extension(ClientAddr(client)): axum::Extension<ClientAddr>,
    Path((app, stream)): Path<(String, String)>,
) -> Response {
    let info = match gw.stream_info(&headers, Some(client.ip()), &app, &stream).await {
        Ok(info) => info,
        Err(refused) => return refused.response(),
    };
    let hub = gw.hub(&info);
    let place = match Place::take(&gw.0.apps.publishers, &info.tenant, gw.0.config.publishers_per_tenant) {
        Ok(place) => {
            hub.publishers.fetch_add(1, Ordering::Relaxed);
            Publisher { _place: place, hub: hub.clone() }
        }
        Err(n) => {
            return error_response(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_publishers",
                &format!("tenant `{}` has {n} publishers connected to this gateway, its limit", info.tenant),
            );
        }
    };
    hub.touch(&headers);
    hub.refresh();
    let interest = hub.interest();
    let stream = futures_util::stream::unfold((interest, place, true), |(mut rx, place, first)| async move {
        if !first {
            // A change, or the same again as a keep-alive; the hub gone ends the stream.
            if let Ok(Err(_)) = tokio::time::timeout(INTEREST_REPEAT, rx.changed()).await {
                return None;
            }
        }
        let mut line = serde_json::to_vec(&**rx.borrow_and_update()).unwrap_or_default();
        line.push(b'\n');
        Some((Ok::<_, std::convert::Infallible>(Bytes::from(line)), (rx, place, false)))
    });
    (
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson"), (axum::http::header::CACHE_CONTROL, "no-store")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// Middleware: the master says whose the stream is before a publish body is read.
async fn authenticate(
    State(gw): State<Gateway>,
    Path((app, stream)): Path<(String, String)>,
    mut request: Request,
    next: Next,
) -> Response {
    let client = crate::server::client_of(request.extensions());
    match gw.stream_info(request.headers(), client, &app, &stream).await {
        Ok(info) => {
            request.extensions_mut().insert(BodyBudget(gw.0.bodies.tenant(&info.tenant)));
            request.extensions_mut().insert(info);
            next.run(request).await
        }
        Err(refused) => refused.response(),
    }
}

/// A publish body as validated batches.
fn batches(headers: &HeaderMap, body: &[u8]) -> Result<Vec<BatchBytes>, Refusal> {
    let framed =
        headers.get(axum::http::header::CONTENT_TYPE).is_some_and(|t| t == squilla_batch::frames::CONTENT_TYPE);
    if framed {
        let invalid = || Refusal {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_batch",
            message: "the body is not framed archived batches (application/vnd.squilla.batches; see docs/publish.md)"
                .into(),
        };
        let parts = squilla_batch::frames::split(body).ok_or_else(invalid)?;
        return parts.into_iter().map(|p| BatchBytes::validate(p.to_vec()).map_err(|_| invalid())).collect();
    }
    let archived = crate::ingest::batches(body, squilla_types::time::now_ms()).map_err(|e| e.refusal())?;
    archived
        .batches
        .into_iter()
        .map(|(b, _)| {
            BatchBytes::validate(b).map_err(|e| Refusal {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                code: "internal",
                message: e.to_string(),
            })
        })
        .collect()
}

async fn events(
    State(gw): State<Gateway>,
    headers: HeaderMap,
    axum::Extension(info): axum::Extension<StreamInfo>,
    body: Bytes,
) -> Response {
    let parsed = tokio::task::spawn_blocking({
        let headers = headers.clone();
        move || batches(&headers, &body)
    })
    .await;
    let batches = match parsed {
        Ok(Ok(b)) => b,
        Ok(Err(r)) => return error_response(r.status, r.code, &r.message),
        Err(e) => return error_response(StatusCode::INTERNAL_SERVER_ERROR, "internal", &e.to_string()),
    };
    let events: usize = batches.iter().map(BatchBytes::len).sum();
    if let Err(wait) = gw.publish_rates().take(&info.tenant, events as f64) {
        return error_response(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            &format!(
                "tenant `{}` publishes more than {} events per second at this gateway; none of these {events} were taken; retry in {} ms",
                info.tenant,
                gw.0.config.publish_rate.per_second,
                wait.as_millis().max(1)
            ),
        );
    }
    let hub = gw.hub(&info);
    hub.touch(&headers);
    let reported =
        headers.get("x-squilla-dropped").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    hub.counters.publisher_dropped.fetch_add(reported, Ordering::Relaxed);
    hub.counters.events.fetch_add(events as u64, Ordering::Relaxed);
    // A publisher connected to several gateways feeds reading jobs through one of them.
    let jobs = headers.get("x-squilla-jobs").is_none_or(|v| !v.as_bytes().eq_ignore_ascii_case(b"false"));
    let fed = hub.clone();
    if let Err(e) = tokio::task::spawn_blocking(move || fed.feed(&batches, jobs)).await {
        return error_response(StatusCode::INTERNAL_SERVER_ERROR, "internal", &e.to_string());
    }
    axum::Json(serde_json::json!({"events": events, "subscribers": hub.subscribers(), "consumers": hub.consumers()}))
        .into_response()
}

async fn sink(
    State(gw): State<Gateway>,
    method: axum::http::Method,
    headers: HeaderMap,
    axum::Extension(ClientAddr(client)): axum::Extension<ClientAddr>,
    Path((app, stream)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let info = match gw.stream_info(&headers, Some(client.ip()), &app, &stream).await {
        Ok(info) => info,
        Err(refused) => return refused.response(),
    };
    let params = match SinkParams::parse(query.as_deref()) {
        Ok(p) => p,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()),
    };
    let query = match params.query.as_deref().map(squilla_query::Query::parse).transpose() {
        Ok(q) => q.map(Arc::new),
        Err(e) => {
            let message = format!("{} (line {}, column {})", e.message, e.line, e.column);
            return error_response(StatusCode::BAD_REQUEST, "invalid_query", &message);
        }
    };
    if method == axum::http::Method::HEAD {
        return ([(axum::http::header::CONTENT_TYPE, "text/event-stream")], ()).into_response();
    }
    let place = match gw.subscription_place(&info.tenant) {
        Ok(place) => place,
        Err(refused) => return *refused,
    };
    gw.0.served.fetch_add(1, Ordering::Relaxed);
    let hub = gw.hub(&info);
    hub.touch(&headers);
    let options = Options { client_id: params.client_id.clone(), sample_per_second: params.sample, query };
    let rx = lock(&hub.groups).subscribe(options).into_receiver();
    // Publishers learn of the new query now, not at the next tick.
    hub.refresh();
    match upgrade {
        Ok(upgrade) => crate::ws::serve(upgrade, rx, params.ping_interval(), place),
        Err(_) => crate::respond::sse(rx, place),
    }
}
