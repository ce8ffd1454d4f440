//! A job's sink as a WebSocket: the same stream as the server-sent events of
//! `GET /api/v1/jobs/{id}/sink`, for clients that prefer WebSocket.
//!
//! Framing, one text message per event:
//!
//! - an output event is its JSON object, as is;
//! - a `meta` event (drops of a slow subscriber, the end of the job) is the object
//!   `{"$meta": {...}}` — its only key starts with `$`, so it cannot be mistaken for output
//!   unless a stage emits such a field;
//! - keep-alive is a WebSocket ping frame after `ping` seconds (default 15) without a message;
//!   agents' `ping` events are not forwarded;
//! - when the job ends the server sends `{"$meta":{"ended":true}}` and closes with code 1000.
//!
//! Messages from the client are read only to notice that it closed. A client that reads slower
//! than the job produces loses events at the agents' per-subscriber buffers, as with SSE, and
//! is told by a `$meta` message; it never slows the job.

use std::time::Duration;

use axum::extract::WebSocketUpgrade;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use axum::response::Response;
use futures_util::SinkExt;
use squilla_net::queue::{self, Item};
use tokio::time::Instant;

/// Largest message a client may send (they are only read to notice a close).
const MAX_CLIENT_MESSAGE: usize = 64 * 1024;

/// Answers the upgrade and serves `events` on the socket until either side ends.
/// `held` lives as long as the socket.
pub fn serve(
    upgrade: WebSocketUpgrade,
    events: queue::Receiver,
    ping: Duration,
    held: impl Send + 'static,
) -> Response {
    upgrade.max_message_size(MAX_CLIENT_MESSAGE).on_upgrade(move |socket| async move {
        let _held = held;
        if let Err(err) = pump(socket, events, ping).await {
            tracing::debug!(error = %err, "websocket sink ended");
        }
    })
}

async fn pump(mut socket: WebSocket, mut chunks: queue::Receiver, ping: Duration) -> Result<(), axum::Error> {
    let mut quiet_since = Instant::now();
    let mut parser = squilla_types::sse::Parser::new();
    let mut messages = Vec::new();
    // The code of an `error` event an agent ended the stream with: the close says it too.
    let mut ended_by: Option<String> = None;
    loop {
        tokio::select! {
            chunk = chunks.recv() => {
                let (chunk, dropped) = match chunk {
                    None => {
                        let frame = match ended_by.take() {
                            // An agent's limit ended the subscription: a policy violation, as
                            // for the master's own limits.
                            Some(code) => CloseFrame { code: 1008, reason: code.into() },
                            None => CloseFrame { code: 1000, reason: "sink ended".into() },
                        };
                        let _ = socket.send(Message::Close(Some(frame))).await;
                        return Ok(());
                    }
                    Some(Item::End(end)) => {
                        // A limit ended the stream: say which, then close as a policy violation.
                        let body = serde_json::json!({"$meta": {"error": {"code": end.code, "message": end.message}}});
                        let _ = socket.send(Message::Text(body.to_string().into())).await;
                        let frame = CloseFrame { code: 1008, reason: end.code.into() };
                        let _ = socket.send(Message::Close(Some(frame))).await;
                        return Ok(());
                    }
                    Some(Item::Chunk { bytes, dropped }) => (bytes, dropped),
                };
                if dropped > 0 {
                    messages.push(format!("{{\"$meta\":{{\"dropped\":{dropped},\"reason\":\"subscriber too slow\"}}}}"));
                }
                parser.feed(&chunk, |event| match event.name.as_deref() {
                    None => messages.push(event.data),
                    Some("meta") => messages.push(format!("{{\"$meta\":{}}}", event.data)),
                    Some("error") => {
                        ended_by = serde_json::from_str::<serde_json::Value>(&event.data)
                            .ok()
                            .and_then(|v| v["code"].as_str().map(str::to_owned))
                            .or(Some("error".to_owned()));
                        messages.push(format!("{{\"$meta\":{{\"error\":{}}}}}", event.data));
                    }
                    Some(_) => {}
                });
                // Agents' pings are not forwarded, and do not count as the client hearing something.
                if messages.is_empty() {
                    continue;
                }
                for text in messages.drain(..) {
                    socket.feed(Message::Text(text.into())).await?;
                }
                socket.flush().await?;
                quiet_since = Instant::now();
            }
            message = socket.recv() => match message {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return Ok(()),
                Some(Ok(_)) => {}
            },
            () = tokio::time::sleep_until(quiet_since + ping) => {
                socket.send(Message::Ping(Default::default())).await?;
                quiet_since = Instant::now();
            }
        }
    }
}
