//! What operators see of application streams: `GET /gateway/metrics` (Prometheus text) and
//! the `streams` of `GET /gateway/status`. Both name tenants and their streams, so both take
//! the operator token (`--operator-token` of a gateway; a master's agent token for the streams
//! it serves itself): without it the metrics answer 401 and the status leaves streams out.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use squilla_net::error::error_response;

use crate::server::Gateway;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamLabels {
    tenant: String,
    stream: String,
}

/// Whether `headers` carry the operator token this gateway was given.
pub(crate) fn operator(gw: &Gateway, headers: &HeaderMap) -> bool {
    match (&gw.0.config.operator_token, squilla_net::auth::bearer(headers)) {
        (Some(token), Some(given)) => token.matches(&given),
        _ => false,
    }
}

/// `GET /gateway/metrics`: each stream's publishers, subscribers, reading jobs and counters.
pub(crate) async fn metrics(State(gw): State<Gateway>, headers: HeaderMap) -> Response {
    if gw.0.config.operator_token.is_none() {
        return error_response(
            StatusCode::FORBIDDEN,
            "no_operator_token",
            "this gateway has no operator token (--operator-token): its metrics are not served",
        );
    }
    if !operator(&gw, &headers) {
        return error_response(StatusCode::UNAUTHORIZED, "unauthorized", "the operator token is required");
    }
    let mut registry = Registry::with_prefix("squilla_gateway_stream");
    let gauges = |registry: &mut Registry, name: &str, help: &str| {
        let f = Family::<StreamLabels, Gauge>::default();
        registry.register(name, help, f.clone());
        f
    };
    let counters = |registry: &mut Registry, name: &str, help: &str| {
        let f = Family::<StreamLabels, Counter>::default();
        registry.register(name, help, f.clone());
        f
    };
    let publishers = gauges(&mut registry, "publishers", "Publishers' control connections open");
    let subscribers = gauges(&mut registry, "subscribers", "Subscriptions open");
    let jobs = gauges(&mut registry, "reading_jobs", "Jobs reading the stream, as the master last said");
    let events = counters(&mut registry, "events", "Events publishers sent");
    let publisher_dropped =
        counters(&mut registry, "publisher_dropped", "Events publishers reported dropping before sending");
    let forwarded = counters(&mut registry, "forwarded", "Events sent on to reading jobs");
    let consumer_dropped =
        counters(&mut registry, "consumer_dropped", "Events reading jobs did not take (queue full, agent away)");
    for hub in gw.0.apps.hubs() {
        let labels = StreamLabels { tenant: hub.tenant.clone(), stream: hub.stream.clone() };
        let c = &hub.counters;
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        publishers.get_or_create(&labels).set(gauge(hub.publishers.load(Ordering::Relaxed)));
        subscribers.get_or_create(&labels).set(gauge(hub.subscribers()));
        jobs.get_or_create(&labels).set(gauge(hub.consumers()));
        events.get_or_create(&labels).inc_by(c.events.load(Ordering::Relaxed));
        publisher_dropped.get_or_create(&labels).inc_by(c.publisher_dropped.load(Ordering::Relaxed));
        forwarded.get_or_create(&labels).inc_by(c.forwarded.load(Ordering::Relaxed));
        consumer_dropped.get_or_create(&labels).inc_by(c.consumer_dropped.load(Ordering::Relaxed));
    }
    let mut text = String::new();
    // Writing to a `String` cannot fail.
    let _ = encode(&mut text, &registry);
    ([(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
        .into_response()
}

/// `GET /gateway/status` of a master serving streams itself: `{"streams": [...]}` for the
/// operator, `{}` for anyone else.
pub(crate) async fn streams_status(State(gw): State<Gateway>, headers: HeaderMap) -> Response {
    let mut body = serde_json::json!({});
    if operator(&gw, &headers) {
        body["streams"] = status(&gw);
    }
    axum::Json(body).into_response()
}

/// Each stream's figures, for `/gateway/status` (only for the operator).
pub(crate) fn status(gw: &Gateway) -> serde_json::Value {
    let streams: Vec<serde_json::Value> =
        gw.0.apps
            .hubs()
            .iter()
            .map(|hub| {
                let c = &hub.counters;
                serde_json::json!({
                    "tenant": hub.tenant,
                    "stream": hub.stream,
                    "publishers": hub.publishers.load(Ordering::Relaxed),
                    "subscribers": hub.subscribers(),
                    "consumers": hub.consumers(),
                    "events": c.events.load(Ordering::Relaxed),
                    "publisher-dropped": c.publisher_dropped.load(Ordering::Relaxed),
                    "forwarded": c.forwarded.load(Ordering::Relaxed),
                    "consumer-dropped": c.consumer_dropped.load(Ordering::Relaxed),
                })
            })
            .collect();
    serde_json::Value::Array(streams)
}
