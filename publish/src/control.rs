//! The control connection to one gateway: `GET {gateway}/api/v1/streams/{app}/{stream}/subscriptions`,
//! one JSON line per change of what is subscribed there (and a repeat every 10 s). Each line
//! becomes the gateway's [`Prefilter`] (with the jobs' filters if it is the primary: see the
//! `link` module). A connection silent for [`SILENT`] is taken for dead; while there is none,
//! nothing is matched for that gateway (the subscriptions it served are gone with it), and it
//! is tried again after a pause that doubles from 100 ms to [`MAX_PAUSE`].

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use serde::Deserialize;
use squilla_query::Query;

use crate::link::Link;
use crate::{Config, Shared};

/// How long the control connection may stay silent before it is taken for dead (three of the
/// gateway's keep-alive repeats).
pub const SILENT: Duration = Duration::from_secs(30);
/// The longest pause between attempts to connect.
pub const MAX_PAUSE: Duration = Duration::from_secs(5);
/// Longest line of the control connection, bytes.
const MAX_LINE: usize = 1 << 20;

#[derive(Deserialize)]
struct Interest {
    subscriptions: Vec<Wanted>,
}

#[derive(Deserialize)]
struct Wanted {
    query: Option<String>,
    /// A job's source filter rather than a subscriber's query.
    #[serde(default)]
    job: bool,
}

/// Follows gateway `index`'s subscriptions until the publisher stops.
pub(crate) async fn run(client: reqwest::Client, config: Config, shared: Arc<Shared>, index: usize) {
    let link = &shared.links[index];
    let (app, stream) = config.stream.split_once('/').unwrap_or((&config.stream, ""));
    let url = format!("{}/api/v1/streams/{app}/{stream}/subscriptions", link.gateway);
    let mut pause = Duration::from_millis(100);
    while !shared.stop.load(Ordering::Relaxed) {
        // Stopping ends a connection at once, even one still being made.
        let outcome = tokio::select! {
            outcome = follow(&client, &url, config.token.as_deref(), &shared, link) => outcome,
            () = stopped(&shared) => Ok(()),
        };
        if let Err(Failure { why, refused }) = outcome
            && !shared.stop.load(Ordering::Relaxed)
        {
            tracing::debug!(gateway = %link.gateway, %why, "the control connection to a gateway failed");
            *link.failure.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some((why, refused));
        }
        // Pauses start again only after a connection that said something: a gateway that
        // answers and hangs up at once is not asked again and again.
        if link.connected.load(Ordering::Relaxed) {
            pause = Duration::from_millis(100);
        }
        link.connected.store(false, Ordering::Relaxed);
        link.wanted.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
        shared.changed();
        sleep_unless_stopped(&shared, pause).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// Sleeps `pause`, waking early if the publisher stops.
async fn sleep_unless_stopped(shared: &Shared, pause: Duration) {
    let until = tokio::time::Instant::now() + pause;
    while tokio::time::Instant::now() < until && !shared.stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(20).min(pause)).await;
    }
}

/// Returns once the publisher stops.
async fn stopped(shared: &Shared) {
    while !shared.stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Why a control connection ended.
struct Failure {
    why: String,
    /// The gateway answered an error status (it refused), rather than the network failing.
    refused: bool,
}

impl From<String> for Failure {
    fn from(why: String) -> Failure {
        Failure { why, refused: false }
    }
}

impl From<&str> for Failure {
    fn from(why: &str) -> Failure {
        Failure { why: why.to_owned(), refused: false }
    }
}

/// One control connection, until it ends or falls silent.
async fn follow(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    shared: &Shared,
    link: &Link,
) -> Result<(), Failure> {
    let mut request = client.get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    link.last_line.store(crate::now_ms(), Ordering::Relaxed);
    let response = tokio::time::timeout(SILENT, request.send())
        .await
        .map_err(|_| "no answer".to_owned())?
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        let status = response.status();
        let body = tokio::time::timeout(Duration::from_secs(2), response.text()).await.ok().and_then(Result::ok);
        return Err(Failure {
            why: format!("the gateway answered {status}: {}", body.unwrap_or_default()),
            refused: true,
        });
    }
    let mut body = response.bytes_stream();
    let mut line = Vec::new();
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        let chunk = match tokio::time::timeout(Duration::from_millis(200), body.next()).await {
            Err(_) => {
                if line_age(link) >= SILENT {
                    return Err("the gateway fell silent".into());
                }
                continue;
            }
            Ok(None) => return Ok(()),
            Ok(Some(chunk)) => chunk.map_err(|e| e.to_string())?,
        };
        for &b in chunk.iter() {
            if b != b'\n' {
                line.push(b);
                if line.len() > MAX_LINE {
                    return Err("a control line is too long".into());
                }
                continue;
            }
            apply(&line, shared, link)?;
            line.clear();
        }
    }
}

/// How long since the last control line (the time is kept by [`apply`]).
fn line_age(link: &Link) -> Duration {
    let last = link.last_line.load(Ordering::Relaxed);
    Duration::from_millis((crate::now_ms() - last).max(0) as u64)
}

/// Applies one control line.
fn apply(line: &[u8], shared: &Shared, link: &Link) -> Result<(), String> {
    link.last_line.store(crate::now_ms(), Ordering::Relaxed);
    let interest: Interest = serde_json::from_slice(line).map_err(|e| format!("a control line: {e}"))?;
    let wanted = interest.subscriptions.into_iter().map(|w| crate::link::Wanted {
        query: match w.query {
            None => None,
            // A query the gateway accepted parses here too (same crate); one that does not (a
            // newer gateway's) becomes `None`: every event goes, and the gateway filters.
            Some(text) => Query::parse(&text).ok().map(Arc::new),
        },
        job: w.job,
    });
    *link.wanted.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = wanted.collect();
    link.connected.store(true, Ordering::Relaxed);
    *link.failure.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    shared.changed();
    Ok(())
}
