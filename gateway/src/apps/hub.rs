//! One application stream at this gateway: its subscribers, what its publishers are told to
//! send, and the jobs it feeds.
//!
//! Every subscription's query joins the stream's *interest*: the distinct queries (and jobs'
//! source filters) publishers test their events against before sending (a superset: the
//! full queries run here, on what arrives). A change reaches every publisher's control
//! connection at once, through a `watch` channel. A maintenance task closes windows, forgets
//! subscribers that left, and every [`CONSUMERS_EVERY`] asks the master which jobs read the
//! stream; each such job gets a bounded queue and a task that forwards its matches to the
//! job's source agent as ingest.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use squilla_batch::{BatchBuilder, BatchBytes};
use squilla_query::{Query, Runner};
use squilla_subscribe::Groups;
use tokio::sync::{mpsc, watch};

use crate::server::{Gateway, lock};

/// How often a stream asks the master which jobs read it.
pub const CONSUMERS_EVERY: Duration = Duration::from_secs(2);
/// Batches waiting for one reading job; past it they are dropped (counted).
pub const CONSUMER_QUEUE: usize = 256;

/// What publishers of a stream are asked to send: every event some subscription could want.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interest {
    /// One entry per distinct query; `null`: a subscription that wants every event.
    pub subscriptions: Vec<Wanted>,
}

/// One distinct query subscribed to a stream.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Wanted {
    /// The query's text (`None`: every event).
    pub query: Option<String>,
    /// A reading job's filter, not a subscriber's query: a publisher connected to several
    /// gateways sends what it selects to one of them only (docs/publish.md).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub job: bool,
}

/// A job reading the stream, as the master names it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) struct ConsumerInfo {
    pub job: String,
    pub id: String,
    pub query: Option<String>,
}

/// The master's answer about a stream.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct StreamInfo {
    pub tenant: String,
    #[allow(dead_code)]
    pub stream: String,
    pub consumers: Vec<ConsumerInfo>,
}

/// A job reading the stream: its filter and the queue of its forwarder.
struct Consumer {
    query: Option<String>,
    runner: Option<Runner>,
    tx: mpsc::Sender<BatchBytes>,
}

/// Counters of a stream, for `/gateway/status` and `/gateway/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Events publishers sent.
    pub events: AtomicU64,
    /// Events publishers reported dropping before sending (their buffers were full, or a
    /// send failed).
    pub publisher_dropped: AtomicU64,
    /// Events sent on to reading jobs.
    pub forwarded: AtomicU64,
    /// Events reading jobs did not take (queue full, agent unreachable or refusing).
    pub consumer_dropped: AtomicU64,
}

/// One application stream at this gateway.
pub struct Hub {
    /// `tenant.app/stream`.
    pub key: String,
    /// Whose stream it is.
    pub tenant: String,
    /// `app/stream`.
    pub stream: String,
    pub(crate) groups: Mutex<Groups>,
    interest: watch::Sender<Arc<Interest>>,
    /// Publishers connected for subscriptions.
    pub publishers: AtomicUsize,
    consumers: Mutex<HashMap<String, Consumer>>,
    /// Credentials of the last publisher or subscriber: the master is asked about the stream's
    /// readers, and their endpoints, with them (all are the stream's tenant's).
    credentials: Mutex<Option<HeaderMap>>,
    /// What went through.
    pub counters: Counters,
    /// When anyone last used the stream.
    used: Mutex<Instant>,
}

impl Hub {
    pub(crate) fn new(key: String, tenant: String, stream: String, groups: Groups) -> Arc<Hub> {
        Arc::new(Hub {
            key,
            tenant,
            stream,
            groups: Mutex::new(groups),
            interest: watch::channel(Arc::new(Interest::default())).0,
            publishers: AtomicUsize::new(0),
            consumers: Mutex::default(),
            credentials: Mutex::default(),
            counters: Counters::default(),
            used: Mutex::new(Instant::now()),
        })
    }

    /// Notes the credentials of someone using the stream.
    pub(crate) fn touch(&self, headers: &HeaderMap) {
        let mut kept = HeaderMap::new();
        for name in crate::server::CREDENTIALS {
            if let Some(v) = headers.get(name) {
                kept.insert(name, v.clone());
            }
        }
        *lock(&self.credentials) = Some(kept);
        *lock(&self.used) = Instant::now();
    }

    /// Follows the interest as it changes.
    pub fn interest(&self) -> watch::Receiver<Arc<Interest>> {
        self.interest.subscribe()
    }

    /// Subscribers connected.
    pub fn subscribers(&self) -> usize {
        lock(&self.groups).subscribers()
    }

    /// Jobs reading the stream.
    pub fn consumers(&self) -> usize {
        lock(&self.consumers).len()
    }

    /// Works out the interest again and tells publishers if it changed.
    pub(crate) fn refresh(&self) {
        let mut wanted: Vec<Wanted> = {
            let mut groups = lock(&self.groups);
            groups.prune();
            groups.queries().map(|q| Wanted { query: q.map(|q| q.text().to_owned()), job: false }).collect()
        };
        wanted.extend(lock(&self.consumers).values().map(|c| Wanted { query: c.query.clone(), job: true }));
        wanted.sort();
        wanted.dedup();
        self.interest.send_if_modified(|now| {
            if now.subscriptions == wanted {
                return false;
            }
            *now = Arc::new(Interest { subscriptions: wanted });
            true
        });
    }

    /// Serves published `batches` to subscribers, and to reading jobs if `jobs` (blocking:
    /// call it off the runtime's threads).
    pub(crate) fn feed(&self, batches: &[BatchBytes], jobs: bool) {
        {
            let mut groups = lock(&self.groups);
            for batch in batches {
                groups.serve(batch);
            }
        }
        if !jobs {
            return;
        }
        let mut consumers = lock(&self.consumers);
        for consumer in consumers.values_mut() {
            for batch in batches {
                let out = match &mut consumer.runner {
                    None => batch.clone(),
                    Some(runner) => {
                        let mut builder = BatchBuilder::new();
                        for event in batch.view().events() {
                            if runner.matches(&event) {
                                builder.push_ref(event);
                            }
                        }
                        if builder.is_empty() {
                            continue;
                        }
                        match builder.finish() {
                            Ok(out) => out,
                            Err(e) => {
                                tracing::warn!(error = %e, "a reading job's batch cannot be built");
                                continue;
                            }
                        }
                    }
                };
                let events = out.len() as u64;
                if consumer.tx.try_send(out).is_err() {
                    self.counters.consumer_dropped.fetch_add(events, Ordering::Relaxed);
                }
            }
        }
    }

    /// Marks the stream used now.
    pub(crate) fn keep(&self) {
        *lock(&self.used) = Instant::now();
    }

    /// Whether nobody has used the stream for `idle`: no publisher, no subscriber.
    pub(crate) fn idle(&self, idle: Duration) -> bool {
        self.publishers.load(Ordering::Relaxed) == 0
            && lock(&self.groups).is_empty()
            && lock(&self.used).elapsed() >= idle
    }

    /// Sets the jobs reading the stream to `infos`: new ones get a forwarder, gone ones stop.
    fn set_consumers(self: &Arc<Self>, gw: &Gateway, infos: Vec<ConsumerInfo>) {
        let mut consumers = lock(&self.consumers);
        consumers.retain(|job, _| infos.iter().any(|i| &i.job == job));
        for info in infos {
            if consumers.contains_key(&info.job) {
                continue;
            }
            let runner = match info.query.as_deref().map(Query::parse) {
                None => None,
                Some(Ok(q)) => Some(Runner::new(Arc::new(q), squilla_types::time::now_ms(), 1)),
                Some(Err(e)) => {
                    tracing::warn!(job = %info.job, error = %e, "a reading job's query does not parse; skipped");
                    continue;
                }
            };
            let (tx, rx) = mpsc::channel(CONSUMER_QUEUE);
            tokio::spawn(forward(gw.clone(), self.clone(), info.id.clone(), rx));
            consumers.insert(info.job, Consumer { query: info.query, runner, tx });
        }
    }
}

/// Sends what a reading job matched to its source agent, batches coalesced into few requests,
/// until the job stops reading (its queue's sender is dropped).
async fn forward(gw: Gateway, hub: Arc<Hub>, id: String, mut rx: mpsc::Receiver<BatchBytes>) {
    while let Some(first) = rx.recv().await {
        let mut batches = vec![first];
        while batches.len() < 64
            && let Ok(more) = rx.try_recv()
        {
            batches.push(more);
        }
        let events: usize = batches.iter().map(BatchBytes::len).sum();
        let Some(credentials) = lock(&hub.credentials).clone() else { continue };
        let sent = async {
            let endpoints = gw.endpoints(&credentials, None, &id).await.map_err(|_| "the master refused or is away")?;
            let target = endpoints.target();
            let agent = crate::ingest::source(&id, &target).map_err(|_| "the job's source is not running")?;
            let archived = crate::ingest::Archived {
                batches: batches
                    .into_iter()
                    .map(|b| {
                        let n = b.len();
                        (b.into_vec(), n)
                    })
                    .collect(),
                events,
            };
            let client = gw.agent_client(endpoints.ca.as_deref());
            let bearer = endpoints.capability.as_deref();
            crate::ingest::forward(&client, agent, &endpoints.job, bearer, gw.0.config.agent_timeout, archived)
                .await
                .map_err(|_| "the job's source agent did not take them")
        };
        match sent.await {
            Ok(fed) => {
                hub.counters.forwarded.fetch_add(fed.events, Ordering::Relaxed);
            }
            Err(why) => {
                hub.counters.consumer_dropped.fetch_add(events as u64, Ordering::Relaxed);
                tracing::debug!(job = %id, events, why, "events for a reading job dropped");
            }
        }
    }
}

/// Keeps `hub` going: windows closed, subscribers that left forgotten, the interest current,
/// the reading jobs asked for; ends (and forgets the hub) once it has been idle for `idle`.
pub(crate) async fn maintain(gw: Gateway, hub: Arc<Hub>, idle: Duration) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut asked = Instant::now() - CONSUMERS_EVERY;
    loop {
        tick.tick().await;
        lock(&hub.groups).tick(squilla_types::time::now_ms());
        hub.refresh();
        if asked.elapsed() >= CONSUMERS_EVERY && hub.publishers.load(Ordering::Relaxed) > 0 {
            asked = Instant::now();
            let credentials = lock(&hub.credentials).clone();
            if let Some(credentials) = credentials {
                let (app, stream) = hub.stream.split_once('/').unwrap_or((&hub.stream, ""));
                let path = format!("/api/v1/streams/{}/{}", crate::server::encode(app), crate::server::encode(stream));
                match gw.ask::<StreamInfo>(&credentials, None, &path).await {
                    Ok(info) if info.tenant == hub.tenant => hub.set_consumers(&gw, info.consumers),
                    Ok(_) => {}
                    Err(_) => tracing::debug!(stream = %hub.key, "the master could not say who reads the stream"),
                }
            }
        }
        if gw.0.apps.forget(&hub, idle) {
            lock(&hub.consumers).clear();
            lock(&hub.groups).finish();
            return;
        }
    }
}
