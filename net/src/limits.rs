//! Request bodies read under a byte cap and a read timeout, before a handler sees them.
//!
//! [`buffer_body`] is a middleware for routes whose handlers take the whole body: it refuses a
//! declared `Content-Length` over the cap at once (413, nothing read), reads the body frame by
//! frame giving each frame [`BodyLimit::read_timeout`] to arrive (408 past it) and stopping at
//! the cap (413), and hands the handler the bytes. [`read_capped`] does the same for handlers
//! that read a streamed body themselves. Put these after authentication: a request without
//! credentials is refused before any of its body is read.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use http_body_util::BodyExt;

use crate::budget::Budget;
use crate::error::error_response;

/// The memory budget a request's body is read into (its tenant's share of what all requests
/// being read may hold), put in the request's extensions by authentication.
#[derive(Debug, Clone)]
pub struct BodyBudget(pub Arc<Budget>);

/// Bytes of a body held in a budget; given back when dropped.
#[derive(Debug, Default)]
pub struct Held {
    budget: Option<Arc<Budget>>,
    bytes: usize,
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(budget) = &self.budget {
            budget.release(self.bytes);
        }
    }
}

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
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Over the cap (declared or read).
    #[error("the request body is over this route's limit of {limit} bytes")]
    TooLarge {
        /// The cap.
        limit: usize,
        /// The route's code for it.
        code: &'static str,
    },
    /// A part did not arrive in time.
    #[error("the request body stopped arriving")]
    Timeout,
    /// The bodies being read for the tenant (or in all) hold their share of memory.
    #[error("the request bodies being read hold the {level}'s share of memory")]
    Busy {
        /// `tenant` or `process`.
        level: &'static str,
    },
    /// The connection failed while reading (the transport's error, as text: it is not
    /// `Clone`).
    #[error("reading the body: {0}")]
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
            BodyError::Busy { level } => error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                &format!("the request bodies being read hold the {level}'s share of memory; retry shortly"),
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

/// Reads `body` up to `limit.max_bytes`, each part within `limit.read_timeout`, holding what
/// it read in `budget` (if any) until the returned [`Held`] is dropped.
pub async fn read_capped(
    body: Body,
    limit: BodyLimit,
    budget: Option<&BodyBudget>,
) -> Result<(Vec<u8>, Held), BodyError> {
    let mut body = body;
    // Room for what the body says it holds (within the cap), so that it is not copied as the
    // buffer grows.
    let declared = axum::body::HttpBody::size_hint(&body).exact().unwrap_or(0);
    let mut bytes = Vec::with_capacity((declared as usize).min(limit.max_bytes));
    let mut held = Held { budget: budget.map(|b| b.0.clone()), bytes: 0 };
    loop {
        let frame = match tokio::time::timeout(limit.read_timeout, body.frame()).await {
            Err(_) => return Err(BodyError::Timeout),
            Ok(None) => return Ok((bytes, held)),
            Ok(Some(frame)) => frame.map_err(|e| BodyError::Broken(e.to_string()))?,
        };
        if let Some(data) = frame.data_ref() {
            if bytes.len() + data.len() > limit.max_bytes {
                return Err(BodyError::TooLarge { limit: limit.max_bytes, code: limit.code });
            }
            if let Some(budget) = &held.budget {
                budget.try_reserve(data.len()).map_err(|e| BodyError::Busy { level: e.level.name() })?;
                held.bytes += data.len();
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
    let budget = request.extensions().get::<BodyBudget>().cloned();
    let (parts, body) = request.into_parts();
    match read_capped(body, limit, budget.as_ref()).await {
        Ok((bytes, held)) => {
            let response = next.run(Request::from_parts(parts, Body::from(Bytes::from(bytes)))).await;
            drop(held);
            response
        }
        Err(e) => e.response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_body_is_read_up_to_its_cap_and_a_stalled_one_times_out() {
        let ok = read_capped(Body::from("hello"), BodyLimit::bytes(5), None).await;
        assert_eq!(ok.unwrap().0, b"hello");
        let over = read_capped(Body::from("hello!"), BodyLimit::bytes(5).code("x_too_large"), None).await;
        assert_eq!(over.unwrap_err(), BodyError::TooLarge { limit: 5, code: "x_too_large" });
        // What is read is held in the budget while the caller keeps it, and no longer.
        let budgets = crate::budget::Budgets::new(100, 8);
        let budget = BodyBudget(budgets.tenant("t"));
        let (_, held) = read_capped(Body::from("hello"), BodyLimit::bytes(64), Some(&budget)).await.unwrap();
        assert_eq!(budgets.total().used(), 5);
        let busy = read_capped(Body::from("world"), BodyLimit::bytes(64), Some(&budget)).await;
        assert_eq!(busy.unwrap_err(), BodyError::Busy { level: "tenant" });
        drop(held);
        assert_eq!(budgets.total().used(), 0);
        let stalled = Body::from_stream(futures_stall());
        let limit = BodyLimit { read_timeout: Duration::from_millis(100), ..BodyLimit::bytes(1 << 20) };
        let started = std::time::Instant::now();
        assert_eq!(read_capped(stalled, limit, None).await.unwrap_err(), BodyError::Timeout);
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
