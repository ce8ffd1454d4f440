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
//! - **Bounded buffers.** Each subscriber has its own buffer of [`SUBSCRIBER_BUFFER`] events;
//!   a subscriber that falls behind loses events — counted, and announced to it by a `meta`
//!   event when it reads again — and never slows the job or other subscribers.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use squilla_host::pipeline::PipelineHandle;
use squilla_query::{Query, Runner};
use tokio::sync::mpsc;

/// Events one subscriber may have waiting before it loses the newest.
pub const SUBSCRIBER_BUFFER: usize = 1024;

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

/// One subscriber's end: its events, and what it lost.
pub struct Subscription {
    /// Events as JSON text.
    pub events: mpsc::Receiver<Arc<str>>,
    /// Events lost because its buffer was full, not yet announced. (The subscription holds
    /// no sender: when the hub ends, `events` ends.)
    pub dropped: Arc<AtomicU64>,
}

/// A subscriber as the hub sees it.
struct Member {
    tx: mpsc::Sender<Arc<str>>,
    dropped: Arc<AtomicU64>,
}

struct Group {
    client_id: Option<String>,
    query_text: Option<String>,
    sample: Option<u32>,
    members: Vec<Arc<Member>>,
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

    /// Hands `json` to the next live member in turn (after the sample's rate limit).
    fn deliver(&mut self, json: &Arc<str>) {
        if let Some(rate) = self.sample {
            let now = Instant::now();
            self.tokens =
                (self.tokens + now.duration_since(self.refilled).as_secs_f64() * f64::from(rate)).min(f64::from(rate));
            self.refilled = now;
            if self.tokens < 1.0 {
                return;
            }
            self.tokens -= 1.0;
        }
        let n = self.members.len();
        for k in 0..n {
            let member = &self.members[(self.next + k) % n];
            if member.tx.is_closed() {
                continue;
            }
            self.next = (self.next + k + 1) % n;
            if member.tx.try_send(json.clone()).is_err() {
                member.dropped.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
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
        let (tx, events) = mpsc::channel(SUBSCRIBER_BUFFER);
        let dropped = Arc::new(AtomicU64::new(0));
        let member = Arc::new(Member { tx, dropped: dropped.clone() });
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
        Subscription { events, dropped }
    }

    fn run(&self, pipeline: PipelineHandle) {
        let mut out = Vec::new();
        while !self.closed.load(Ordering::Relaxed) && pipeline.is_alive() {
            let batch = pipeline.recv(Duration::from_millis(100));
            let mut groups = self.groups.lock().expect("groups lock");
            for g in groups.iter_mut() {
                g.members.retain(|m| !m.tx.is_closed());
            }
            groups.retain(|g| !g.members.is_empty());
            let now = now_ms();
            for g in groups.iter_mut() {
                if let Some(runner) = &mut g.runner {
                    runner.tick(now, &mut out);
                    for map in out.drain(..) {
                        g.deliver(&Arc::from(serde_json::Value::Object(map).to_string()));
                    }
                }
            }
            let Some(batch) = batch else { continue };
            if groups.is_empty() {
                self.unheard.fetch_add(batch.len() as u64, Ordering::Relaxed);
                continue;
            }
            // JSON of each event, made once and only if some group takes events unfiltered.
            let plain: Vec<Arc<str>> = if groups.iter().any(|g| g.runner.is_none()) {
                batch.view().events().map(|e| Arc::from(squilla_batch::json::to_json(&e).to_string())).collect()
            } else {
                Vec::new()
            };
            for g in groups.iter_mut() {
                match &mut g.runner {
                    None => plain.iter().for_each(|json| g.deliver(json)),
                    Some(runner) => {
                        for event in batch.view().events() {
                            runner.push(&event, &mut out);
                        }
                        for map in out.drain(..) {
                            g.deliver(&Arc::from(serde_json::Value::Object(map).to_string()));
                        }
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
