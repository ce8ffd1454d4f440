//! Serving one stream's subscribers, Mantis-style: the part of a sink that does not care
//! where the batches come from. An agent's job sink (fed by the job's pipeline) and a
//! gateway's application stream (fed by publishers) both hold a [`Groups`].
//!
//! - **Groups.** Subscribers with the same `clientId` (and the same query and sample rate)
//!   form a group that splits the stream between them, event by event in turn; different
//!   groups each receive all of it. A subscriber without `clientId` is a group of its own.
//! - **On demand.** A group's query (see `squilla_query`) is evaluated on the event read in
//!   place, and only what passes is turned into JSON; events without any query are turned into
//!   JSON once for all groups.
//! - **Sampling.** `sample=N` lets a group receive at most N events per second.
//! - **Whole batches.** A batch is rendered once as server-sent-event frames
//!   ([`squilla_types::sse`]) and handed to each subscriber as one [`Chunk`]: the cost per
//!   subscriber is per batch, not per event, unless its group splits or samples the stream.
//! - **Bounded buffers, in events and bytes.** Each subscriber may have
//!   [`Limits::subscriber_events`] events and [`Limits::subscriber_bytes`] bytes waiting; a
//!   chunk that does not fit is dropped whole for that subscriber — counted, and announced to
//!   it by a `meta` event when it reads again — and never slows the stream or other
//!   subscribers. What all subscribers of one tenant hold is bounded by the budget the groups
//!   are made with: a chunk that would pass it ends that subscription with an `error` event
//!   (`subscriber_memory`) and frees what it held.
//! - **Bounded query state.** A `GROUP BY` query's open window may hold
//!   [`Limits::query_state_bytes`], counted against the tenant's budget as well; past it the
//!   group's subscriptions end with an `error` event (`query_state_limit`), never the process.
//! - **Bounded query time.** Every group shares one thread, so a query that takes more than
//!   [`QUERY_BATCH_BUDGET`] on [`QUERY_SLOW_BATCHES`] batches in a row, or more than
//!   [`QUERY_BATCH_MAX`] on one, ends its group's subscriptions (`query_too_slow`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use squilla_batch::BatchBytes;
use squilla_net::budget::{Budget, Level};
use squilla_net::queue::{self, Offered, StreamEnd};
use squilla_query::{Query, Runner};
use squilla_types::sse;
use squilla_types::time::now_ms;

/// Time one query may take on one batch (or one window's close) before it counts as slow.
pub const QUERY_BATCH_BUDGET: Duration = Duration::from_millis(25);
/// Slow batches in a row that end a query's subscriptions (`query_too_slow`).
pub const QUERY_SLOW_BATCHES: u32 = 3;
/// Time on one batch that ends a query's subscriptions at once.
pub const QUERY_BATCH_MAX: Duration = Duration::from_millis(250);

/// What one subscriber and one query may hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Events one subscriber may have waiting.
    pub subscriber_events: usize,
    /// Bytes one subscriber may have waiting.
    pub subscriber_bytes: usize,
    /// Bytes one running query's open windows may hold.
    pub query_state_bytes: usize,
}

/// What a subscriber asks for.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Subscribers sharing one split the stream.
    pub client_id: Option<String>,
    /// At most this many events per second for the group.
    pub sample_per_second: Option<u32>,
    /// A query evaluated before anything is sent.
    pub query: Option<Arc<Query>>,
}

/// A run of events for one subscriber, framed as server-sent events.
#[derive(Debug, Clone)]
pub struct Chunk {
    /// `data: {...}\n\n` frames.
    pub text: Bytes,
    /// How many events.
    pub events: usize,
}

/// What a subscriber reads next.
pub type Item = queue::Item;

/// One subscriber's end: its chunks, and what it lost.
pub struct Subscription {
    chunks: queue::Receiver,
}

impl Subscription {
    /// The queue this subscriber reads, for a server that streams it itself.
    pub fn into_receiver(self) -> queue::Receiver {
        self.chunks
    }

    /// The next chunk (with how many events were lost before it), or the error that ended the
    /// stream; `None` once the hub has ended.
    pub async fn recv(&mut self) -> Option<Item> {
        self.chunks.recv().await
    }
}

/// A subscriber as the hub sees it.
struct Member {
    tx: queue::Sender,
}

impl Member {
    /// Hands `chunk` over if it fits the subscriber's buffer, else counts it lost.
    fn offer(&self, chunk: Chunk) {
        if self.tx.offer(chunk.text, chunk.events) == Offered::Closed {
            // The subscriber left or was ended; the hub forgets it on its next pass.
        }
    }
}

/// Frames being rendered, event by event.
#[derive(Default)]
struct Frames {
    text: Vec<u8>,
    /// Where each event's frame ends in `text`.
    ends: Vec<usize>,
}

impl Frames {
    /// Appends a query result's frame.
    fn push_result(&mut self, result: serde_json::Map<String, serde_json::Value>) {
        // Writing JSON to a `Vec` cannot fail.
        sse::frame_with(&mut self.text, None, |out| drop(serde_json::to_writer(out, &result)));
        self.ends.push(self.text.len());
    }

    /// Appends an event's frame, writing its JSON straight into the text (`nested`: its
    /// batch has dotted names, which nest again).
    fn push_event(&mut self, event: &squilla_batch::EventRef<'_>, nested: bool) {
        sse::frame_with(&mut self.text, None, |out| {
            if nested {
                squilla_batch::json::write_json_nested(event, out);
            } else {
                squilla_batch::json::write_json_flat(event, out);
            }
        });
        self.ends.push(self.text.len());
    }

    fn freeze(self) -> Rendered {
        Rendered { text: Bytes::from(self.text), ends: self.ends }
    }
}

/// One batch (or one window's results) rendered as frames, shared by every group.
#[derive(Default)]
struct Rendered {
    text: Bytes,
    ends: Vec<usize>,
}

impl Rendered {
    fn get(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.text[start..self.ends[i]]
    }
}

struct Group {
    /// Batches in a row on which the query took more than [`QUERY_BATCH_BUDGET`].
    slow: u8,
    client_id: Option<String>,
    query_text: Option<String>,
    query: Option<Arc<Query>>,
    sample: Option<u32>,
    members: Vec<Member>,
    next: usize,
    runner: Option<Runner>,
    /// The query state's budget (under the tenant's) and what is reserved of it.
    state_budget: Arc<Budget>,
    state_reserved: usize,
    tokens: f64,
    refilled: Instant,
}

impl Group {
    fn same(&self, options: &Options) -> bool {
        // A group whose members all left (or were ended) takes no new ones: it is gone next pass.
        !self.members.is_empty()
            && self.client_id.is_some()
            && self.client_id == options.client_id
            && self.query_text.as_deref() == options.query.as_ref().map(|q| q.text())
            && self.sample == options.sample_per_second
    }

    /// Whether the sample's rate limit lets one more event through now.
    fn take_token(&mut self) -> bool {
        let Some(rate) = self.sample else { return true };
        let now = Instant::now();
        let rate = f64::from(rate);
        self.tokens = (self.tokens + now.duration_since(self.refilled).as_secs_f64() * rate).min(rate);
        self.refilled = now;
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }

    /// Hands `frames` to the members: whole to a lone member, else event by event in turn
    /// (after the sample's rate limit).
    fn deliver(&mut self, frames: &Rendered) {
        if frames.ends.is_empty() {
            return;
        }
        if self.sample.is_none() && self.members.len() == 1 {
            self.members[0].offer(Chunk { text: frames.text.clone(), events: frames.ends.len() });
            return;
        }
        let n = self.members.len();
        let mut parts: Vec<(Vec<u8>, usize)> = vec![(Vec::new(), 0); n];
        for i in 0..frames.ends.len() {
            if !self.take_token() {
                continue;
            }
            let part = &mut parts[self.next];
            part.0.extend_from_slice(frames.get(i));
            part.1 += 1;
            self.next = (self.next + 1) % n;
        }
        for (member, (text, events)) in self.members.iter().zip(parts) {
            if events > 0 {
                member.offer(Chunk { text: Bytes::from(text), events });
            }
        }
    }

    /// Matches what the budget holds for the query state to what the runner holds; ends the
    /// group's subscriptions with `query_state_limit` if the tenant or agent cannot hold it.
    fn account_state(&mut self, now: usize) -> bool {
        if now < self.state_reserved {
            self.state_budget.release(self.state_reserved - now);
            self.state_reserved = now;
        } else if now > self.state_reserved {
            match self.state_budget.try_reserve(now - self.state_reserved) {
                Ok(()) => self.state_reserved = now,
                Err(e) => {
                    self.end(StreamEnd {
                        code: "query_state_limit",
                        message: format!(
                            "the query's window state would pass the {} limit of {} bytes",
                            e.level.name(),
                            e.limit
                        ),
                    });
                    return false;
                }
            }
        }
        true
    }

    /// Ends every member's stream with `end`.
    fn end(&mut self, end: StreamEnd) {
        for m in self.members.drain(..) {
            m.tx.end(end.clone());
        }
    }

    /// Renders the runner's outputs in `out` and delivers them.
    fn deliver_results(&mut self, out: &mut Vec<serde_json::Map<String, serde_json::Value>>, max_bytes: usize) {
        if out.is_empty() {
            return;
        }
        // Results go out in chunks of at most a quarter of a subscriber's buffer, so that a
        // window with many results is delivered as far as the buffer allows, not dropped
        // whole; one result larger than the whole buffer can never be, and ends the stream.
        let chunk = (max_bytes / 4).max(1);
        let mut frames = Frames::default();
        for map in std::mem::take(out) {
            let before = frames.text.len();
            frames.push_result(map);
            let size = frames.text.len() - before;
            if size > max_bytes {
                self.end(StreamEnd {
                    code: "result_too_large",
                    message: format!(
                        "one query result is {size} bytes, more than a subscriber's buffer of {max_bytes} bytes; \
                         select less (e.g. fewer values in list(…))"
                    ),
                });
                return;
            }
            if frames.text.len() >= chunk {
                self.deliver(&std::mem::take(&mut frames).freeze());
            }
        }
        self.deliver(&frames.freeze());
    }
}

impl Group {
    /// Runs `work` on the group's query. A panic in it (a bug: the query compiler refuses what
    /// the evaluator cannot run) ends only this group's subscriptions, with `query_failed`,
    /// and leaves the hub, its lock and every other group as they were. A stream whose
    /// `LIMIT` is reached ends normally.
    fn guarded(&mut self, work: impl FnOnce(&mut Group, &mut Runner)) {
        let Some(mut runner) = self.runner.take() else { return };
        let started = Instant::now();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(self, &mut runner)));
        // Every group of the job shares the hub's thread: a query that takes too long on
        // batch after batch ends, rather than delaying every other subscriber of the job.
        let took = started.elapsed();
        self.slow = if took > QUERY_BATCH_BUDGET { self.slow.saturating_add(1) } else { 0 };
        if result.is_ok() && (took > QUERY_BATCH_MAX || u32::from(self.slow) >= QUERY_SLOW_BATCHES) {
            self.end(StreamEnd {
                code: "query_too_slow",
                message: format!(
                    "the query took {} ms on one batch (at most {} ms, or {} ms on {} batches in a row); \
                     every subscriber of the job shares this work: simplify the query or filter earlier",
                    took.as_millis(),
                    QUERY_BATCH_MAX.as_millis(),
                    QUERY_BATCH_BUDGET.as_millis(),
                    QUERY_SLOW_BATCHES
                ),
            });
            return;
        }
        match result {
            Ok(()) if runner.finished() => {
                for m in self.members.drain(..) {
                    m.tx.finish();
                }
            }
            Ok(()) => self.runner = Some(runner),
            Err(panic) => {
                let reason = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(query = %runner.query().text(), %reason, "a query failed; its subscriptions end");
                self.end(StreamEnd {
                    code: "query_failed",
                    message: format!("the query failed while running and its subscription ended: {reason}"),
                });
            }
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.state_budget.release(self.state_reserved);
    }
}

/// Every subscriber of one stream, in their groups.
pub struct Groups {
    limits: Limits,
    tenant: Arc<Budget>,
    groups: Vec<Group>,
}

impl Groups {
    /// No subscribers yet; their buffers and query state count against `tenant`.
    pub fn new(limits: Limits, tenant: Arc<Budget>) -> Groups {
        Groups { limits, tenant, groups: Vec::new() }
    }

    /// A new subscriber, from now on.
    pub fn subscribe(&mut self, options: Options) -> Subscription {
        let budget = self.tenant.child(Level::Subscriber, self.limits.subscriber_bytes);
        let (tx, chunks) = queue::channel(budget, self.limits.subscriber_events);
        let member = Member { tx };
        match self.groups.iter_mut().find(|g| g.same(&options)) {
            Some(group) => group.members.push(member),
            None => self.groups.push(Group {
                client_id: options.client_id.clone(),
                query_text: options.query.as_ref().map(|q| q.text().to_owned()),
                query: options.query.clone(),
                sample: options.sample_per_second,
                members: vec![member],
                next: 0,
                runner: options
                    .query
                    .map(|q| Runner::new(q, now_ms(), seed()).with_state_limit(self.limits.query_state_bytes)),
                state_budget: self.tenant.child(Level::Subscriber, usize::MAX),
                state_reserved: 0,
                tokens: options.sample_per_second.map_or(0.0, f64::from),
                slow: 0,
                refilled: Instant::now(),
            }),
        }
        Subscription { chunks }
    }

    /// Forgets the subscribers that left, and groups left empty.
    pub fn prune(&mut self) {
        for g in self.groups.iter_mut() {
            g.members.retain(|m| !m.tx.is_closed());
            g.next = g.next.min(g.members.len().saturating_sub(1));
        }
        self.groups.retain(|g| !g.members.is_empty());
    }

    /// Whether nobody subscribes.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Subscribers connected.
    pub fn subscribers(&self) -> usize {
        self.groups.iter().map(|g| g.members.iter().filter(|m| !m.tx.is_closed()).count()).sum()
    }

    /// Each group's query (`None`: a group that takes every event).
    pub fn queries(&self) -> impl Iterator<Item = Option<Arc<Query>>> + '_ {
        self.groups.iter().filter(|g| !g.members.is_empty()).map(|g| g.query.clone())
    }

    /// Closes the processing-time windows due at `now` and delivers their results.
    pub fn tick(&mut self, now: i64) {
        let mut out = Vec::new();
        let subscriber_bytes = self.limits.subscriber_bytes;
        for g in self.groups.iter_mut().filter(|g| g.runner.is_some()) {
            g.guarded(|g, runner| {
                runner.tick(now, &mut out);
                g.deliver_results(&mut out, subscriber_bytes);
                g.account_state(runner.state_bytes());
            });
        }
    }

    /// Serves `batch` to every group.
    pub fn serve(&mut self, batch: &BatchBytes) {
        if self.groups.is_empty() {
            return;
        }
        let mut out = Vec::new();
        let subscriber_bytes = self.limits.subscriber_bytes;
        // The frames of each event, made once and only if some group takes events unfiltered.
        let mut plain = Frames::default();
        // Whether any name is dotted: checked once per batch, in its table of names.
        let nested = batch.view().names().any(|n| n.contains('.'));
        if self.groups.iter().any(|g| g.runner.is_none()) {
            plain.text.reserve(batch.as_bytes().len() * 2);
            for event in batch.view().events() {
                plain.push_event(&event, nested);
            }
        }
        let plain = plain.freeze();
        for g in self.groups.iter_mut() {
            if g.runner.is_none() {
                g.deliver(&plain);
                continue;
            }
            g.guarded(|g, runner| {
                // A filter's matches are written straight from the batch, like plain events.
                if runner.query().selects_events() {
                    let mut frames = Frames::default();
                    for event in batch.view().events() {
                        if runner.matches(&event) {
                            frames.push_event(&event, nested);
                        }
                    }
                    g.deliver(&frames.freeze());
                    return;
                }
                let mut limit = None;
                for event in batch.view().events() {
                    if let Err(e) = runner.push(&event, &mut out) {
                        limit = Some(e);
                        break;
                    }
                }
                g.deliver_results(&mut out, subscriber_bytes);
                if let Some(e) = limit {
                    g.end(StreamEnd { code: "query_state_limit", message: e.to_string() });
                } else {
                    g.account_state(runner.state_bytes());
                }
            });
        }
    }

    /// Every subscriber reads what it has, then the end of its stream.
    pub fn finish(&mut self) {
        for g in self.groups.drain(..) {
            for m in &g.members {
                m.tx.finish();
            }
        }
    }

    /// Ends every subscriber's stream with `end`.
    pub fn end(&mut self, end: StreamEnd) {
        for mut g in self.groups.drain(..) {
            g.end(end.clone());
        }
    }
}

fn seed() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
}
