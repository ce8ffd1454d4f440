//! Request bodies read under a byte cap and a read timeout, before a handler sees them.
//!
//! [`buffer_body`] is a middleware for routes whose handlers take the whole body: it refuses a
//! declared `Content-Length` over the cap at once (413, nothing read), reads the body frame by
//! frame giving each frame [`BodyLimit::read_timeout`] to arrive (408 past it) and stopping at
//! the cap (413), and hands the handler the bytes. [`read_capped`] does the same for handlers
//! that read a streamed body themselves. Put these after authentication: a request without
//! credentials is refused before any of its body is read.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use http_body_util::BodyExt;

use crate::error::error_response;

/// Default time for each part of a request body to arrive.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A route's body cap and read timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimit {
    /// Largest body, bytes.
    pub max_bytes: usize,
    /// Longest wait for the next part of the body.
    pub read_timeout: Duration,
    /// The error code of a body over the cap (default `body_too_large`).
    pub code: &'static str,
}

impl BodyLimit {
    /// A cap of `max_bytes` with the default read timeout.
    pub const fn bytes(max_bytes: usize) -> Self {
        BodyLimit { max_bytes, read_timeout: BODY_READ_TIMEOUT, code: "body_too_large" }
    }

    /// The same cap, answering `code` when passed.
    pub const fn code(self, code: &'static str) -> Self {
        BodyLimit { code, ..self }
    }
}

/// Why a body was not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// Over the cap (declared or read).
    TooLarge {
        /// The cap.
        limit: usize,
        /// The route's code for it.
        code: &'static str,
    },
    /// A part did not arrive in time.
    Timeout,
    /// The connection failed while reading.
    Broken(String),
}

impl BodyError {
    /// The error as an HTTP answer: 413 with the route's code (`body_too_large` unless it
    /// says otherwise), 408 `body_timeout`, 400 `bad_request`.
    pub fn response(&self) -> Response {
        match self {
            BodyError::TooLarge { limit, code } => error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                code,
                &format!("the request body is over this route's limit of {limit} bytes"),
            ),
            BodyError::Timeout => error_response(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                "the request body stopped arriving; send it without pauses",
            ),
            BodyError::Broken(e) => {
                error_response(StatusCode::BAD_REQUEST, "bad_request", &format!("reading the body: {e}"))
            }
        }
    }
}

/// The declared length of a request, if it says.
pub fn declared_length(request: &Request) -> Option<u64> {
    request.headers().get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// Reads `body` up to `limit.max_bytes`, each part within `limit.read_timeout`.
pub async fn read_capped(body: Body, limit: BodyLimit) -> Result<Vec<u8>, BodyError> {
    let mut body = body;
    let mut bytes = Vec::new();
    loop {
        let frame = match tokio::time::timeout(limit.read_timeout, body.frame()).await {
            Err(_) => return Err(BodyError::Timeout),
            Ok(None) => return Ok(bytes),
            Ok(Some(frame)) => frame.map_err(|e| BodyError::Broken(e.to_string()))?,
        };
        if let Some(data) = frame.data_ref() {
            if bytes.len() + data.len() > limit.max_bytes {
                return Err(BodyError::TooLarge { limit: limit.max_bytes, code: limit.code });
            }
            bytes.extend_from_slice(data);
        }
    }
}

/// Middleware: reads the whole body under `limit` before the handler runs (see the module
/// docs).
pub async fn buffer_body(State(limit): State<BodyLimit>, request: Request, next: Next) -> Response {
    if declared_length(&request).is_some_and(|n| n > limit.max_bytes as u64) {
        return BodyError::TooLarge { limit: limit.max_bytes, code: limit.code }.response();
    }
    let (parts, body) = request.into_parts();
    match read_capped(body, limit).await {
        Ok(bytes) => next.run(Request::from_parts(parts, Body::from(Bytes::from(bytes)))).await,
        Err(e) => e.response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_body_is_read_up_to_its_cap_and_a_stalled_one_times_out() {
        let ok = read_capped(Body::from("hello"), BodyLimit::bytes(5)).await;
        assert_eq!(ok.unwrap(), b"hello");
        let over = read_capped(Body::from("hello!"), BodyLimit::bytes(5).code("x_too_large")).await;
        assert_eq!(over.unwrap_err(), BodyError::TooLarge { limit: 5, code: "x_too_large" });
        let stalled = Body::from_stream(futures_stall());
        let limit = BodyLimit { read_timeout: Duration::from_millis(100), ..BodyLimit::bytes(1 << 20) };
        let started = std::time::Instant::now();
        assert_eq!(read_capped(stalled, limit).await.unwrap_err(), BodyError::Timeout);
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    /// A body stream that sends one chunk and then never another.
    fn futures_stall() -> impl futures_core::Stream<Item = Result<Bytes, std::io::Error>> + Send {
        struct Stall(bool);
        impl futures_core::Stream for Stall {
            type Item = Result<Bytes, std::io::Error>;
            fn poll_next(
                mut self: std::pin::Pin<&mut Self>,
                _cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<Option<Self::Item>> {
                if self.0 {
                    return std::task::Poll::Pending;
                }
                self.0 = true;
                std::task::Poll::Ready(Some(Ok(Bytes::from_static(b"partial"))))
            }
        }
        Stall(false)
    }
}
