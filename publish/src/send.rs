//! Sending: every flush interval, the events waiting go to the gateway as one archived batch
//! (`POST {gateway}/api/v1/streams/{app}/{stream}/events`, framed), one request at a time,
//! each within the request timeout. A send that fails drops its events (counted); nothing is
//! retried, so a gateway that is away or slow never makes anything grow. The drops not yet
//! reported ride along in `x-squilla-dropped`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::{Config, Shared};

/// Sends until the publisher stops, then once more.
pub(crate) async fn run(client: reqwest::Client, config: Config, shared: Arc<Shared>) {
    let (app, stream) = config.stream.split_once('/').unwrap_or((&config.stream, ""));
    let url = format!("{}/api/v1/streams/{app}/{stream}/events", config.gateway);
    let mut tick = tokio::time::interval(config.flush_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let stopping = shared.stop.load(Ordering::Relaxed);
        if let Some(batch) = shared.take() {
            send(&client, &url, &config, &shared, batch).await;
        } else if shared.unreported.load(Ordering::Relaxed) > 0 && shared.connected.load(Ordering::Relaxed) {
            // Drops with nothing to send: an empty body reports them.
            send_body(&client, &url, &config, &shared, Vec::new(), 0).await;
        }
        if stopping {
            return;
        }
    }
}

async fn send(client: &reqwest::Client, url: &str, config: &Config, shared: &Shared, batch: squilla_batch::BatchBytes) {
    let events = batch.len() as u64;
    let mut body = Vec::with_capacity(batch.as_bytes().len() + 4);
    if squilla_batch::frames::push(&mut body, batch.as_bytes()).is_err() {
        shared.drop_events(events);
        return;
    }
    send_body(client, url, config, shared, body, events).await;
}

async fn send_body(client: &reqwest::Client, url: &str, config: &Config, shared: &Shared, body: Vec<u8>, events: u64) {
    let reported = shared.unreported.swap(0, Ordering::Relaxed);
    let bytes = body.len() as u64;
    let mut request = client
        .post(url)
        .timeout(config.request_timeout)
        .header(reqwest::header::CONTENT_TYPE, squilla_batch::frames::CONTENT_TYPE)
        .header("x-squilla-dropped", reported.to_string())
        .body(body);
    if let Some(token) = &config.token {
        request = request.bearer_auth(token);
    }
    let ok = match request.send().await {
        Ok(response) if response.status().is_success() => true,
        Ok(response) => {
            tracing::debug!(status = %response.status(), events, "the gateway refused events; dropped");
            false
        }
        Err(e) => {
            tracing::debug!(error = %e, events, "events could not be sent; dropped");
            false
        }
    };
    shared.requests.fetch_add(1, Ordering::Relaxed);
    if ok {
        shared.sent.fetch_add(events, Ordering::Relaxed);
        shared.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
    } else {
        // Not delivered: the events are lost, and the report goes with the next send.
        shared.unreported.fetch_add(reported, Ordering::Relaxed);
        shared.drop_events(events);
    }
}
