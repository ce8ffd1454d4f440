//! Serving a followed stream to one subscriber: as server-sent events, or as a WebSocket
//! ([`crate::ws`]).

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::response::{IntoResponse, Response};
use squilla_net::queue::{self, Item, StreamEnd};

/// How long a server-sent event stream may be silent before a comment is sent.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The frames that tell a subscriber it lost `dropped` events on the way.
fn dropped_frame(out: &mut Vec<u8>, dropped: u64) {
    let meta = serde_json::json!({"dropped": dropped, "reason": "subscriber too slow"}).to_string();
    squilla_types::sse::frame(out, Some("meta"), &meta);
}

/// The frame of an error that ended a stream.
pub fn error_frame(end: &StreamEnd) -> Bytes {
    let mut out = Vec::new();
    let body = serde_json::json!({"code": end.code, "message": end.message}).to_string();
    squilla_types::sse::frame(&mut out, Some("error"), &body);
    Bytes::from(out)
}

/// Frames proxied sink chunks as a `text/event-stream` response, with a keep-alive comment
/// after 15 s of silence; a stream ended by a limit ends with an `error` event. `held` (e.g.
/// the subscriber's place among its tenant's subscriptions) lives as long as the stream.
pub fn sse(chunks: queue::Receiver, held: impl Send + Sync + 'static) -> Response {
    let held = std::sync::Arc::new(held);
    let stream = futures_util::stream::unfold(Some(chunks), move |rx| {
        let held = held.clone();
        async move {
            let _held = held;
            let mut rx = rx?;
            let item = match tokio::time::timeout(KEEP_ALIVE, rx.recv()).await {
                Ok(item) => item?,
                Err(_) => return Some((Ok::<_, Infallible>(Bytes::from_static(b": keep-alive\n\n")), Some(rx))),
            };
            match item {
                Item::Chunk { bytes, dropped: 0 } => Some((Ok(bytes), Some(rx))),
                Item::Chunk { bytes, dropped } => {
                    let mut out = Vec::with_capacity(bytes.len() + 64);
                    dropped_frame(&mut out, dropped);
                    out.extend_from_slice(&bytes);
                    Some((Ok(Bytes::from(out)), Some(rx)))
                }
                Item::End(end) => Some((Ok(error_frame(&end)), None)),
            }
        }
    });
    (
        [(axum::http::header::CONTENT_TYPE, "text/event-stream"), (axum::http::header::CACHE_CONTROL, "no-cache")],
        Body::from_stream(stream),
    )
        .into_response()
}
