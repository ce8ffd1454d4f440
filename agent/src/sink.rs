//! A job's sink on this agent: what the job's local last-stage workers emit, delivered to
//! subscribers.
//!
//! One thread per job takes output batches off the pipeline's sink and serves every
//! subscription through [`squilla_subscribe::Groups`] (groups by `clientId`, queries,
//! sampling, bounded buffers and query state: see that crate), and every other job pulling
//! the output ([`crate::tap`]). With no subscriber and no puller a batch is only counted
//! (`unheard`). What all subscribers of one tenant, and of the whole agent, hold is bounded
//! by [`SinkLimits::budgets`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use squilla_host::pipeline::PipelineHandle;
use squilla_net::budget::{Budget, Budgets};
pub use squilla_subscribe::{
    Chunk, Item, Options, QUERY_BATCH_BUDGET, QUERY_BATCH_MAX, QUERY_SLOW_BATCHES, Subscription,
};
use squilla_subscribe::{Groups, Limits};
use squilla_types::time::now_ms;

/// Default events one subscriber may have waiting before chunks for it are dropped: four full
/// batches, so that a reader that pauses briefly loses nothing.
pub const SUBSCRIBER_BUFFER: usize = 4096;

/// Memory limits of sinks. `Default` gives the documented values.
#[derive(Debug, Clone)]
pub struct SinkLimits {
    /// Events one subscriber may have waiting (default [`SUBSCRIBER_BUFFER`]).
    pub subscriber_events: usize,
    /// Bytes one subscriber may have waiting (default 16 MiB).
    pub subscriber_bytes: usize,
    /// Bytes one running query's open window may hold (default 64 MiB).
    pub query_state_bytes: usize,
    /// What all subscribers and queries of one tenant, and of the whole agent, may hold
    /// (default 256 MiB per tenant, 1 GiB in all).
    pub budgets: Arc<Budgets>,
}

impl SinkLimits {
    fn groups(&self) -> Limits {
        Limits {
            subscriber_events: self.subscriber_events,
            subscriber_bytes: self.subscriber_bytes,
            query_state_bytes: self.query_state_bytes,
        }
    }
}

impl Default for SinkLimits {
    fn default() -> Self {
        SinkLimits {
            subscriber_events: SUBSCRIBER_BUFFER,
            subscriber_bytes: 16 << 20,
            query_state_bytes: 64 << 20,
            budgets: Arc::new(Budgets::new(1 << 30, 256 << 20)),
        }
    }
}

/// What a sink serves, for metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct SinkStats {
    /// Subscribers connected (SSE streams of the master, gateways or programs).
    pub subscribers: usize,
    /// Other jobs' sources pulling the output as batches.
    pub pullers: usize,
    /// Events dropped for pullers that did not keep up.
    pub pull_dropped: u64,
}

/// The fan-out of one job's sink.
pub struct SinkHub {
    limits: SinkLimits,
    tenant: Arc<Budget>,
    groups: Mutex<Groups>,
    /// Other jobs' sources pulling this output as batches ([`crate::tap`]).
    taps: Mutex<Vec<crate::tap::Tap>>,
    closed: AtomicBool,
    /// Events that reached the sink while nobody listened.
    pub unheard: AtomicU64,
    /// Events delivered to subscribers (or dropped at their full buffers).
    pub published: AtomicU64,
    /// Events dropped for pullers that did not keep up ([`crate::tap`]).
    pub tap_dropped: Arc<AtomicU64>,
}

impl SinkHub {
    /// Starts the thread that drains `pipeline`'s sink, for a job of `tenant`.
    pub fn start(
        job: &str,
        tenant: &str,
        pipeline: PipelineHandle,
        limits: SinkLimits,
    ) -> std::io::Result<Arc<SinkHub>> {
        let tenant = limits.budgets.tenant(tenant);
        let hub = Arc::new(SinkHub {
            groups: Mutex::new(Groups::new(limits.groups(), tenant.clone())),
            tenant,
            limits,
            taps: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
            unheard: AtomicU64::new(0),
            published: AtomicU64::new(0),
            tap_dropped: Arc::new(AtomicU64::new(0)),
        });
        let h = hub.clone();
        std::thread::Builder::new().name(format!("squilla-sink-{job}")).spawn(move || h.run(pipeline))?;
        Ok(hub)
    }

    fn groups(&self) -> std::sync::MutexGuard<'_, Groups> {
        self.groups.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new subscriber, from now on.
    pub fn subscribe(&self, options: Options) -> Subscription {
        let mut groups = self.groups();
        let subscription = groups.subscribe(options);
        if self.closed.load(Ordering::Relaxed) {
            groups.finish();
        }
        subscription
    }

    /// A new puller of the output as batches, after `query` ([`crate::tap`]); `Err` if the
    /// query does not parse or the hub has ended.
    pub fn tap(&self, query: Option<&str>) -> Result<squilla_host::transport::tap::TapFeed, String> {
        let (tap, feed) = crate::tap::Tap::open(query, self.tap_dropped.clone(), self.limits.query_state_bytes)?;
        let mut taps = self.taps.lock().unwrap_or_else(PoisonError::into_inner);
        if self.closed.load(Ordering::Relaxed) {
            return Err("the job's output ended on this agent".into());
        }
        taps.push(tap);
        Ok(feed)
    }

    /// Feeds every puller `batch` (or only closes their due windows); forgets those that ended.
    fn feed_taps(&self, batch: Option<&squilla_batch::BatchBytes>) -> bool {
        let mut taps = self.taps.lock().unwrap_or_else(PoisonError::into_inner);
        let now = now_ms();
        taps.retain_mut(|t| match batch {
            Some(batch) => t.offer(batch, now),
            None => t.tick(now),
        });
        !taps.is_empty()
    }

    fn run(&self, pipeline: PipelineHandle) {
        while !self.closed.load(Ordering::Relaxed) && pipeline.is_alive() {
            let batch = pipeline.recv(Duration::from_millis(100));
            let mut groups = self.groups();
            groups.prune();
            groups.tick(now_ms());
            let pulled = self.feed_taps(batch.as_ref());
            let Some(batch) = batch else { continue };
            if groups.is_empty() && !pulled {
                self.unheard.fetch_add(batch.len() as u64, Ordering::Relaxed);
                continue;
            }
            groups.serve(&batch);
            self.published.fetch_add(batch.len() as u64, Ordering::Relaxed);
        }
        // Every subscriber reads what it has, then the end of its stream.
        self.taps.lock().unwrap_or_else(PoisonError::into_inner).clear();
        self.groups().finish();
    }

    /// Subscribers now, and events dropped for pullers.
    pub fn stats(&self) -> SinkStats {
        SinkStats {
            subscribers: self.groups().subscribers(),
            pullers: self.taps.lock().unwrap_or_else(PoisonError::into_inner).len(),
            pull_dropped: self.tap_dropped.load(Ordering::Relaxed),
        }
    }

    /// Ends the hub (its job stopped here); subscribers see the end of their stream.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
    }

    /// Bytes held for this hub's tenant's streams on this agent (subscriber buffers and
    /// query state, of every job of the tenant here).
    pub fn tenant_bytes(&self) -> usize {
        self.tenant.used()
    }

    /// Whether the hub has ended.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }
}
