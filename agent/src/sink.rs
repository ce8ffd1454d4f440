//! A job's sink on this agent: what the job's local last-stage workers emit, delivered to
//! subscribers.
//!
//! One thread per job takes output batches off the pipeline's sink and serves every
//! subscription, Mantis-style:
//!
//! - **Groups.** Subscribers with the same `clientId` (and the same query and sample rate)
//!   form a group that splits the stream between them, event by event in turn; different
//!   groups each receive all of it. A subscriber without `clientId` is a group of its own.
//! - **On demand.** With no subscriber a batch is only counted (`unheard`). A group's query
//!   (see `squilla_query`) is evaluated on the event read in place, and only what passes is
//!   turned into JSON; events without any query are turned into JSON once for all groups.
//! - **Sampling.** `sample=N` lets a group receive at most N events per second.
//! - **Whole batches.** A batch is rendered once as server-sent-event frames
//!   ([`squilla_types::sse`]) and handed to each subscriber as one [`Chunk`]: the cost per
//!   subscriber is per batch, not per event, unless its group splits or samples the stream.
//! - **Bounded buffers.** Each subscriber may have [`SUBSCRIBER_BUFFER`] events waiting; a
//!   chunk that does not fit (unless the buffer is empty) is dropped whole for that
//!   subscriber — counted, and announced to it by a `meta` event when it reads again — and
//!   never slows the job or other subscribers.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use squilla_host::pipeline::PipelineHandle;
use squilla_query::{Query, Runner};
use squilla_types::sse;
use tokio::sync::mpsc;

/// Events one subscriber may have waiting before chunks for it are dropped: four full
/// batches, so that a reader that pauses briefly loses nothing. Chunks of plain output are
/// shared by all subscribers, so this costs little memory per subscriber.
pub const SUBSCRIBER_BUFFER: usize = 4096;

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

/// One subscriber's end: its chunks, and what it lost.
pub struct Subscription {
    chunks: mpsc::UnboundedReceiver<Chunk>,
    counts: Arc<Counts>,
}

impl Subscription {
    /// The next chunk; `None` when the hub has ended (the subscription holds no sender).
    pub async fn recv(&mut self) -> Option<Chunk> {
        let chunk = self.chunks.recv().await?;
        self.counts.pending.fetch_sub(chunk.events, Ordering::Relaxed);
        Some(chunk)
    }

    /// Events lost since last asked.
    pub fn take_dropped(&self) -> u64 {
        self.counts.dropped.swap(0, Ordering::Relaxed)
    }
}

/// A subscriber's buffer accounting, shared by the hub and the subscription.
#[derive(Default)]
struct Counts {
    /// Events sent to it and not yet taken.
    pending: AtomicUsize,
    /// Events lost because its buffer was full, not yet announced.
    dropped: AtomicU64,
}

/// A subscriber as the hub sees it.
struct Member {
    tx: mpsc::UnboundedSender<Chunk>,
    counts: Arc<Counts>,
}

impl Member {
    /// Hands `chunk` over if it fits the buffer (or the buffer is empty), else counts it lost.
    fn offer(&self, chunk: Chunk) {
        let pending = self.counts.pending.load(Ordering::Relaxed);
        if pending > 0 && pending + chunk.events > SUBSCRIBER_BUFFER {
            self.counts.dropped.fetch_add(chunk.events as u64, Ordering::Relaxed);
            return;
        }
        self.counts.pending.fetch_add(chunk.events, Ordering::Relaxed);
        if let Err(lost) = self.tx.send(chunk) {
            self.counts.pending.fetch_sub(lost.0.events, Ordering::Relaxed);
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

    /// Appends an event's frame, writing its JSON straight into the text.
    fn push_event(&mut self, event: &squilla_batch::EventRef<'_>) {
        sse::frame_with(&mut self.text, None, |out| squilla_batch::json::write_json(event, out));
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
    client_id: Option<String>,
    query_text: Option<String>,
    sample: Option<u32>,
    members: Vec<Member>,
    next: usize,
    runner: Option<Runner>,
    tokens: f64,
    refilled: Instant,
}

impl Group {
    fn same(&self, options: &Options) -> bool {
        self.client_id.is_some()
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

    /// Renders the runner's outputs in `out` and delivers them.
    fn deliver_results(&mut self, out: &mut Vec<serde_json::Map<String, serde_json::Value>>) {
        if out.is_empty() {
            return;
        }
        let mut frames = Frames::default();
        for map in out.drain(..) {
            frames.push_result(map);
        }
        self.deliver(&frames.freeze());
    }
}

/// The fan-out of one job's sink.
pub struct SinkHub {
    groups: Mutex<Vec<Group>>,
    closed: AtomicBool,
    /// Events that reached the sink while nobody listened.
    pub unheard: AtomicU64,
    /// Events delivered to subscribers (or dropped at their full buffers).
    pub published: AtomicU64,
}

impl SinkHub {
    /// Starts the thread that drains `pipeline`'s sink.
    pub fn start(job: &str, pipeline: PipelineHandle) -> Arc<SinkHub> {
        let hub = Arc::new(SinkHub {
            groups: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
            unheard: AtomicU64::new(0),
            published: AtomicU64::new(0),
        });
        let h = hub.clone();
        std::thread::Builder::new()
            .name(format!("squilla-sink-{job}"))
            .spawn(move || h.run(pipeline))
            .expect("spawn sink thread");
        hub
    }

    /// A new subscriber, from now on.
    pub fn subscribe(&self, options: Options) -> Subscription {
        let (tx, chunks) = mpsc::unbounded_channel();
        let counts = Arc::new(Counts::default());
        let member = Member { tx, counts: counts.clone() };
        let mut groups = self.groups.lock().expect("groups lock");
        match groups.iter_mut().find(|g| g.same(&options)) {
            Some(group) => group.members.push(member),
            None => groups.push(Group {
                client_id: options.client_id.clone(),
                query_text: options.query.as_ref().map(|q| q.text().to_owned()),
                sample: options.sample_per_second,
                members: vec![member],
                next: 0,
                runner: options.query.map(|q| Runner::new(q, now_ms(), seed())),
                tokens: options.sample_per_second.map_or(0.0, f64::from),
                refilled: Instant::now(),
            }),
        }
        Subscription { chunks, counts }
    }

    fn run(&self, pipeline: PipelineHandle) {
        let mut out = Vec::new();
        while !self.closed.load(Ordering::Relaxed) && pipeline.is_alive() {
            let batch = pipeline.recv(Duration::from_millis(100));
            let mut groups = self.groups.lock().expect("groups lock");
            for g in groups.iter_mut() {
                g.members.retain(|m| !m.tx.is_closed());
                g.next = g.next.min(g.members.len().saturating_sub(1));
            }
            groups.retain(|g| !g.members.is_empty());
            let now = now_ms();
            for g in groups.iter_mut() {
                if let Some(runner) = &mut g.runner {
                    runner.tick(now, &mut out);
                    g.deliver_results(&mut out);
                }
            }
            let Some(batch) = batch else { continue };
            if groups.is_empty() {
                self.unheard.fetch_add(batch.len() as u64, Ordering::Relaxed);
                continue;
            }
            // The frames of each event, made once and only if some group takes events unfiltered.
            let mut plain = Frames::default();
            if groups.iter().any(|g| g.runner.is_none()) {
                plain.text.reserve(batch.as_bytes().len() * 2);
                for event in batch.view().events() {
                    plain.push_event(&event);
                }
            }
            let plain = plain.freeze();
            for g in groups.iter_mut() {
                match &mut g.runner {
                    None => g.deliver(&plain),
                    // A filter's matches are written straight from the batch, like plain events.
                    Some(runner) if runner.query().selects_events() => {
                        let mut frames = Frames::default();
                        for event in batch.view().events() {
                            if runner.matches(&event) {
                                frames.push_event(&event);
                            }
                        }
                        g.deliver(&frames.freeze());
                    }
                    Some(runner) => {
                        for event in batch.view().events() {
                            runner.push(&event, &mut out);
                        }
                        g.deliver_results(&mut out);
                    }
                }
            }
            self.published.fetch_add(batch.len() as u64, Ordering::Relaxed);
        }
        // Dropping the groups closes every subscriber's stream.
        self.groups.lock().expect("groups lock").clear();
    }

    /// Ends the hub (its job stopped here); subscribers see the end of their stream.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
    }

    /// Whether the hub has ended.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn seed() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
}
