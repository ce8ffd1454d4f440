//! Sending: every flush interval, the events waiting for a gateway go to it as one archived
//! batch (`POST {gateway}/api/v1/streams/{app}/{stream}/events`, framed), one request at a
//! time per gateway, each within the request timeout. A send that fails drops its events
//! (counted); nothing is retried, so a gateway that is away or slow never makes anything grow.
//! The drops not yet reported ride along in `x-squilla-dropped`; a gateway that is not the
//! primary is told `x-squilla-jobs: false` (see the `link` module).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::link::Link;
use crate::{Config, Shared};

/// Sends gateway `index`'s events until the publisher stops, then once more.
pub(crate) async fn run(client: reqwest::Client, config: Config, shared: Arc<Shared>, index: usize) {
    let link = &shared.links[index];
    let (app, stream) = config.stream.split_once('/').unwrap_or((&config.stream, ""));
    let url = format!("{}/api/v1/streams/{app}/{stream}/events", link.gateway);
    let mut tick = tokio::time::interval(config.flush_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let stopping = shared.stop.load(Ordering::Relaxed);
        let to = To { client: &client, url: &url, config: &config, shared: &shared, link };
        if let Some(batch) = shared.take(link) {
            send(&to, batch).await;
        } else if link.unreported.load(Ordering::Relaxed) > 0 && link.connected.load(Ordering::Relaxed) {
            // Drops with nothing to send: an empty body reports them.
            send_body(&to, Vec::new(), 0).await;
        }
        if stopping {
            return;
        }
    }
}

/// Where a send goes.
struct To<'a> {
    client: &'a reqwest::Client,
    url: &'a str,
    config: &'a Config,
    shared: &'a Shared,
    link: &'a Link,
}

async fn send(to: &To<'_>, batch: squilla_batch::BatchBytes) {
    let events = batch.len() as u64;
    let mut body = Vec::with_capacity(batch.as_bytes().len() + 4);
    if squilla_batch::frames::push(&mut body, batch.as_bytes()).is_err() {
        to.shared.drop_events(to.link, events);
        return;
    }
    send_body(to, body, events).await;
}

async fn send_body(to: &To<'_>, body: Vec<u8>, events: u64) {
    let To { client, url, config, shared, link } = *to;
    let reported = link.unreported.swap(0, Ordering::Relaxed);
    let bytes = body.len() as u64;
    let mut request = client
        .post(url)
        .timeout(config.request_timeout)
        .header(reqwest::header::CONTENT_TYPE, squilla_batch::frames::CONTENT_TYPE)
        .header("x-squilla-dropped", reported.to_string())
        .body(body);
    if !link.primary.load(Ordering::Relaxed) {
        request = request.header("x-squilla-jobs", "false");
    }
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
    if events > 0 {
        shared.requests.fetch_add(1, Ordering::Relaxed);
    }
    if ok {
        shared.sent.fetch_add(events, Ordering::Relaxed);
        shared.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
    } else {
        // Not delivered: the events are lost, and the report goes with the next send.
        link.unreported.fetch_add(reported, Ordering::Relaxed);
        shared.drop_events(link, events);
    }
}
