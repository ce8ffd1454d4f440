//! Following a job's sink: the merge of the SSE sinks of every agent that runs the job's last
//! stage, re-reading where they are every second.
//!
//! The relay does not parse what it passes on: agents send whole frames
//! ([`squilla_types::sse`]), usually a batch's worth per read, and every complete frame is
//! forwarded as it came, so that a stream costs a few copies per batch rather than work per
//! event.
//!
//! Only agents that run the job's last stage now are relayed: once a worker moves away from an
//! agent (or the agent is lost), the relay from it is dropped within a second, so output of a
//! replaced worker incarnation never reaches a subscriber. An `error` event from an agent (its
//! own limits ended the subscription) ends the whole stream. Where the job is, and what to
//! present to its agents, comes from a [`Locate`]: the master answers from its own state
//! (with the agent token); a gateway asks the master (and presents a capability). When that
//! cannot be told for a while, the stream keeps what it has; when the caller may no longer
//! read the job, the stream ends with an `error` event.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use squilla_net::queue::{self, Offered};

/// Largest frame (one event's JSON) relayed; an agent sending a longer one is disconnected
/// (and reconnected within a second).
pub const MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;

/// Where a followed job's output is now.
#[derive(Debug, Clone, Default)]
pub struct Located {
    /// The job has ended: the stream ends with a `meta` event `{"ended":true}`.
    pub ended: bool,
    /// `host:port` of the HTTP servers of the agents that run its last stage.
    pub agents: Vec<String>,
    /// The bearer token to present to them (the agent token, or a capability).
    pub bearer: Option<String>,
}

/// What finding a job's output gave.
#[derive(Debug, Clone)]
pub enum Location {
    /// Where it is now.
    Found(Located),
    /// It cannot be told now (the master is unreachable or busy): the stream keeps the agents
    /// it has and asks again a second later.
    Unknown,
    /// It is no longer the caller's to read (the credentials were refused, the job is gone):
    /// the stream ends with this `error` event.
    Gone(squilla_net::queue::StreamEnd),
}

/// Finds a job's output.
pub type Locate = Arc<dyn Fn() -> BoxFuture<'static, Location> + Send + Sync>;

/// What to follow, and how.
#[derive(Clone)]
pub struct Follow {
    /// Where the job is.
    pub locate: Locate,
    /// The job as agents name it (`tenant.job`).
    pub job: String,
    /// The subscription's query string, passed to the agents as it is.
    pub query: Option<String>,
    /// A stream `LIMIT`: the first `limit` results from all agents together, then the end.
    pub limit: Option<u64>,
    /// The `ping` interval agents use when idle.
    pub ping: Duration,
    /// The HTTP client to agents.
    pub client: reqwest::Client,
    /// Largest frame accepted from an agent.
    pub max_frame: usize,
}

/// How a relay ended.
enum RelayEnd {
    /// The agent's stream ended or broke (the proxy connects again if the agent still runs
    /// the job).
    Agent(String),
    /// The subscriber is gone, or a limit ended its stream.
    Subscriber,
    /// The agent ended the subscription with an `error` event, passed on: the stream is over.
    Error,
    /// A stream's `LIMIT` was reached: the stream is over.
    Limit,
    /// The agent ended a stream with a `LIMIT` normally: it sent its first results, and is
    /// not asked again.
    Done,
}

/// Follows the job into `tx` until `tx`'s reader leaves, the job ends, or an agent's `error`
/// or the `LIMIT` ends the stream. An agent connection that brings nothing for three `ping`
/// intervals (agents ping every `ping` when idle) is dropped and made again; an agent whose
/// own limited stream ended is not asked again.
pub fn follow(follow: Follow, tx: queue::Sender) -> tokio::task::JoinHandle<()> {
    let silence = follow.ping * 3 + Duration::from_secs(5);
    let remaining = follow.limit.map(|n| Arc::new(std::sync::atomic::AtomicU64::new(n)));
    tokio::spawn(async move {
        // Agents whose limited stream ended normally.
        let mut done: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
        // Relays by agent: dropping one aborts it.
        let mut relays: BTreeMap<String, tokio::task::JoinHandle<RelayEnd>> = BTreeMap::new();
        let abort_all = |relays: &mut BTreeMap<String, tokio::task::JoinHandle<RelayEnd>>| {
            for (_, relay) in std::mem::take(relays) {
                relay.abort();
            }
        };
        loop {
            let mut over = false;
            relays.retain(|name, relay| {
                if !relay.is_finished() {
                    return true;
                }
                match relay_result(relay) {
                    Some(Ok(RelayEnd::Error | RelayEnd::Subscriber | RelayEnd::Limit)) => over = true,
                    Some(Ok(RelayEnd::Done)) => {
                        done.insert(name.clone());
                    }
                    _ => {}
                }
                false
            });
            if over || tx.is_closed() {
                abort_all(&mut relays);
                tx.finish();
                return;
            }
            let located = match (follow.locate)().await {
                Location::Found(located) => located,
                Location::Unknown => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                Location::Gone(end) => {
                    abort_all(&mut relays);
                    tx.end(end);
                    return;
                }
            };
            if located.ended {
                abort_all(&mut relays);
                let mut ended = Vec::new();
                squilla_types::sse::frame(&mut ended, Some("meta"), r#"{"ended":true}"#);
                tx.offer(Bytes::from(ended), 1);
                tx.finish();
                return;
            }
            let Located { agents, bearer, .. } = located;
            // Fencing: a relay from an agent that no longer runs the job's last stage ends now.
            relays.retain(|name, relay| {
                let keep = agents.contains(name);
                if !keep {
                    relay.abort();
                }
                keep
            });
            for agent in agents {
                if relays.contains_key(&agent) || done.contains(&agent) {
                    continue;
                }
                let mut url = format!("{}/jobs/{}/sink", squilla_net::tls::agent_base(&agent), follow.job);
                if let Some(q) = &follow.query {
                    url.push('?');
                    url.push_str(q);
                }
                let (tx, client, token, remaining) =
                    (tx.clone(), follow.client.clone(), bearer.clone(), remaining.clone());
                let max_frame = follow.max_frame;
                let relay = tokio::spawn(async move {
                    let end =
                        relay(&client, &url, token.as_deref(), &tx, silence, max_frame, remaining.as_deref()).await;
                    if let RelayEnd::Agent(err) = &end {
                        tracing::debug!(%url, error = %err, "sink relay ended");
                    }
                    end
                });
                relays.insert(agent, relay);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}

/// The result of a finished relay, without waiting.
fn relay_result(relay: &mut tokio::task::JoinHandle<RelayEnd>) -> Option<Result<RelayEnd, tokio::task::JoinError>> {
    futures_util::FutureExt::now_or_never(relay)
}

/// Whether `chunk` holds an `error` event (an agent ended the subscription).
fn has_error_event(chunk: &[u8]) -> bool {
    chunk.starts_with(b"event: error\n") || chunk.windows(14).any(|w| w == b"\nevent: error\n")
}

/// Keeps of `chunk` (complete frames) the data frames that `remaining` still allows, with
/// every other frame before the first refused one; returns them, and whether the limit is
/// now reached.
fn within_limit(chunk: &[u8], remaining: &std::sync::atomic::AtomicU64) -> (Vec<u8>, bool) {
    use std::sync::atomic::Ordering;
    let mut kept = Vec::with_capacity(chunk.len());
    let mut reached = false;
    for frame in squilla_types::sse::frames(chunk) {
        if frame.starts_with(b"data:") {
            let took = remaining.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1)).is_ok();
            if !took {
                reached = true;
                break;
            }
        }
        kept.extend_from_slice(frame);
    }
    (kept, reached || remaining.load(Ordering::Acquire) == 0)
}

/// Reads one agent's SSE sink and forwards its complete frames until either side ends.
async fn relay(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    tx: &queue::Sender,
    silence: Duration,
    max_frame: usize,
    remaining: Option<&std::sync::atomic::AtomicU64>,
) -> RelayEnd {
    let mut request = client.get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = match tokio::time::timeout(Duration::from_secs(5), request.send()).await {
        Err(_) => return RelayEnd::Agent("the agent did not answer in 5 s".into()),
        Ok(Err(e)) => return RelayEnd::Agent(e.to_string()),
        Ok(Ok(r)) => r,
    };
    if !response.status().is_success() {
        return RelayEnd::Agent(format!("agent answered {}", response.status()));
    }
    let mut body = response.bytes_stream();
    let mut carry = Vec::new();
    loop {
        let chunk = match tokio::time::timeout(silence, body.next()).await {
            Err(_) => return RelayEnd::Agent(format!("the agent sent nothing for {silence:?}")),
            Ok(None) if remaining.is_some() => return RelayEnd::Done,
            Ok(None) => return RelayEnd::Agent("the agent ended the stream".into()),
            Ok(Some(Err(e))) => return RelayEnd::Agent(e.to_string()),
            Ok(Some(Ok(chunk))) => chunk,
        };
        // Usually a read ends on a frame's end: pass it on as it is.
        let whole = if carry.is_empty() && chunk.ends_with(b"\n\n") {
            chunk
        } else {
            // No frame ended in `carry` before: look only where one can end now.
            let from = carry.len().saturating_sub(1);
            carry.extend_from_slice(&chunk);
            let end = squilla_types::sse::complete_from(&carry, from);
            if end == 0 {
                if carry.len() > max_frame {
                    return RelayEnd::Agent(format!("a frame over {max_frame} bytes"));
                }
                continue;
            }
            let rest = carry.split_off(end);
            Bytes::from(std::mem::replace(&mut carry, rest))
        };
        let (whole, reached) = match remaining {
            Some(remaining) => {
                let (kept, reached) = within_limit(&whole, remaining);
                (Bytes::from(kept), reached)
            }
            None => (whole, false),
        };
        let error = has_error_event(&whole);
        let events = squilla_types::sse::frame_count(&whole);
        if !whole.is_empty() && tx.offer(whole, events) == Offered::Closed {
            return RelayEnd::Subscriber;
        }
        if error {
            return RelayEnd::Error;
        }
        if reached {
            return RelayEnd::Limit;
        }
    }
}
