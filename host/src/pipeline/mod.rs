//! A job's workers on this agent, and the data plane between them.
//!
//! The key types:
//!
//! - [`PipelineConfig`] / [`StageConfig`]: what to run — stages in order, each with its
//!   artifact, parameters, worker count, routing, limits and tick period — and the job's
//!   backpressure policy. [`PipelineConfig::from_spec`] builds it from a job spec.
//! - [`Pipeline`]: the running job: [`Pipeline::push`] feeds it (or
//!   [`Pipeline::start_synthetic`] attaches a generator), [`Pipeline::recv`] reads its sink,
//!   [`Pipeline::scale`] changes a stage's worker count, [`Pipeline::metrics`] reports, and
//!   [`Pipeline::stop`] ends it.
//! - A stage's workers are *slots*: on an agent that runs only part of a job, some slots are
//!   [`Outlet`]s towards the agents that run them ([`Pipeline::start_placed`],
//!   [`Pipeline::place`]), and batches arriving from other agents come in through
//!   [`PipelineHandle::deliver`]. Routing treats local and remote slots alike.
//!
//! Batches travel as [`BatchBytes`]: validated once where they entered, shared by reference
//! count between stages. Every queue is bounded; what happens when one is full is the job's
//! [`Backpressure`] choice, and every drop is counted on the worker whose queue was full (or
//! on the sink).

mod config;
mod inbox;
pub mod metrics;
mod outlet;
mod route;
mod source;
mod wanted;
pub(crate) mod worker;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use squilla_batch::BatchBytes;
use squilla_types::Backpressure;

use self::inbox::{Inbox, Offer};
use self::metrics::{Counters, WorkerMetrics};
use self::worker::{Target, Worker};
use crate::Lease;
use crate::executor::{self, Executor};
use crate::{LogLine, Runtime};

pub use config::{PipelineConfig, PipelineError, StageConfig};
pub use metrics::FailureKind;
pub use outlet::Outlet;
pub use source::SyntheticSource;
pub use wanted::Wanted;

/// Where one worker slot of a stage runs, as [`Pipeline::place`] is told.
#[derive(Debug, Clone)]
pub enum SlotPlan {
    /// On this agent. `number` names the incarnation: a different number than the running
    /// worker's replaces it with a fresh one.
    Local {
        /// The worker number.
        number: u64,
    },
    /// On another agent, reached through this outlet.
    Remote(Arc<Outlet>),
}

/// A worker slot of a running stage.
#[derive(Clone)]
pub(crate) enum Slot {
    Local(Arc<Worker>),
    Remote(Arc<Outlet>),
}

impl Slot {
    pub(crate) fn target(&self) -> Target {
        match self {
            Slot::Local(w) => Target::Worker(w.clone()),
            Slot::Remote(o) => Target::Remote(o.clone()),
        }
    }

    fn local(&self) -> Option<&Arc<Worker>> {
        match self {
            Slot::Local(w) => Some(w),
            Slot::Remote(_) => None,
        }
    }
}

pub(crate) struct StageShared {
    config: Arc<StageConfig>,
    slots: RwLock<Vec<Slot>>,
    next: AtomicUsize,
}

impl StageShared {
    fn locals(&self) -> Vec<Arc<Worker>> {
        self.slots.read().unwrap_or_else(PoisonError::into_inner).iter().filter_map(Slot::local).cloned().collect()
    }
}

pub(crate) struct Shared {
    name: String,
    pub runtime: Runtime,
    pub exec: Arc<executor::Shared>,
    pub backpressure: Backpressure,
    pub max_consecutive_failures: u32,
    pub stopped: AtomicBool,
    lease: Arc<Lease>,
    queue_batches: usize,
    stages: Vec<StageShared>,
    sink: Inbox,
    sink_counters: Counters,
    sink_ready: (Mutex<()>, Condvar),
    misrouted: AtomicU64,
    fenced: AtomicU64,
    /// What the owner still wants emitted.
    pub(crate) wanted: Arc<Wanted>,
}

/// What a push into the first stage did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pushed {
    /// Whether every part of the batch was taken (queued, or dropped by a `drop-*` policy).
    pub taken: bool,
    /// Events dropped on the way in: refused or evicted by a `drop-*` policy, or fenced
    /// because the agent's lease had run out.
    pub dropped_events: u64,
}

impl Shared {
    /// Resolves where `batch`, leaving stage `stage - 1`, goes.
    pub(crate) fn route(&self, stage: usize, batch: BatchBytes, out: &mut impl FnMut(Target, BatchBytes)) {
        match self.stages.get(stage) {
            None => out(Target::Sink, batch),
            Some(s) => {
                let slots = s.slots.read().unwrap_or_else(PoisonError::into_inner);
                route::split(&s.config.routing, &s.next, &slots, batch, &mut |slot, b| out(slot.target(), b));
            }
        }
    }

    /// Whether nothing may leave now (the lease ran out, or the owner fenced the pipeline);
    /// if so, one batch is counted as fenced.
    fn fenced(&self) -> bool {
        if self.wanted.is_stopped() {
            self.fenced.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        if self.lease.is_valid() {
            return false;
        }
        self.lease.count_fenced(1);
        self.fenced.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Offers `batch` to `target`; hands it back if the target is full under `block`.
    pub(crate) fn offer(&self, target: &Target, batch: BatchBytes, exec: &executor::Shared) -> Option<BatchBytes> {
        match self.offer_counted(target, batch, exec) {
            Offer::Full(batch) => Some(batch),
            Offer::Queued { .. } | Offer::Dropped { .. } => None,
        }
    }

    /// Offers `batch` to `target`, saying what was dropped. While the lease has run out,
    /// nothing leaves: the batch is dropped (as `Dropped`) and counted as fenced.
    fn offer_counted(&self, target: &Target, batch: BatchBytes, exec: &executor::Shared) -> Offer {
        if self.fenced() {
            return Offer::Dropped { events: batch.len() };
        }
        match target {
            Target::Worker(worker) => worker.offer(batch, self, exec),
            Target::Remote(outlet) => outlet.offer(batch, self.backpressure),
            Target::Sink => {
                let result = self.sink.offer(batch, self.backpressure, &self.sink_counters);
                let _guard = self.sink_ready.0.lock().unwrap_or_else(PoisonError::into_inner);
                self.sink_ready.1.notify_all();
                result
            }
        }
    }

    /// Whether `target` is still one of stage `stage`'s slots (the master may have moved it).
    pub(crate) fn is_current(&self, stage: usize, target: &Target) -> bool {
        let Some(s) = self.stages.get(stage) else { return matches!(target, Target::Sink) };
        s.slots.read().unwrap_or_else(PoisonError::into_inner).iter().any(|slot| match (slot, target) {
            (Slot::Local(a), Target::Worker(b)) => Arc::ptr_eq(a, b),
            (Slot::Remote(a), Target::Remote(b)) => Arc::ptr_eq(a, b),
            _ => false,
        })
    }

    pub(crate) fn inbox<'a>(&'a self, target: &'a Target) -> &'a Inbox {
        match target {
            Target::Worker(worker) => &worker.inbox,
            Target::Remote(outlet) => &outlet.inbox,
            Target::Sink => &self.sink,
        }
    }

    /// The next output batch, waiting up to `timeout`. Batches that reached the sink before
    /// the lease ran out are not handed out while it has: they are dropped, counted.
    fn recv(&self, timeout: Duration) -> Option<BatchBytes> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(batch) = self.sink.pop() {
                if self.fenced() {
                    continue;
                }
                return Some(batch);
            }
            let now = Instant::now();
            if now >= deadline || self.stopped.load(Ordering::Relaxed) {
                return None;
            }
            let guard = self.sink_ready.0.lock().unwrap_or_else(PoisonError::into_inner);
            if !self.sink.is_empty() {
                continue;
            }
            let wait = (deadline - now).min(Duration::from_millis(5));
            let _unused = self.sink_ready.1.wait_timeout(guard, wait).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Feeds a batch into the first stage; under `block` waits (polling) until it fits, the
    /// pipeline stops, `cancel` is set, or `deadline` passes (parts already queued stay).
    fn push(&self, batch: BatchBytes, deadline: Option<Instant>, cancel: Option<&AtomicBool>) -> Pushed {
        let mut outcome = Pushed { taken: true, dropped_events: 0 };
        if !self.wanted.source() {
            // A source the owner no longer wants here (it moved, or the job stopped) feeds nothing.
            return Pushed { taken: false, dropped_events: batch.len() as u64 };
        }
        let mut parts = Vec::new();
        self.route(0, batch, &mut |target, batch| parts.push((target, batch)));
        while let Some((target, mut batch)) = parts.pop() {
            let mut backoff = Duration::from_micros(10);
            loop {
                match self.offer_counted(&target, batch, &self.exec) {
                    Offer::Queued { evicted } => {
                        outcome.dropped_events += evicted as u64;
                        break;
                    }
                    Offer::Dropped { events } => {
                        outcome.dropped_events += events as u64;
                        break;
                    }
                    Offer::Full(back) => batch = back,
                }
                if !self.is_current(0, &target) {
                    // The slot moved while we waited: route the batch anew.
                    self.route(0, batch, &mut |target, batch| parts.push((target, batch)));
                    break;
                }
                let cancelled = cancel.is_some_and(|c| c.load(Ordering::Relaxed));
                if cancelled || self.stopped.load(Ordering::Relaxed) || deadline.is_some_and(|d| Instant::now() >= d) {
                    outcome.taken = false;
                    return outcome;
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_millis(1));
            }
        }
        outcome
    }
}

impl Shared {
    fn metrics(&self) -> PipelineMetrics {
        let mut outlets = 0;
        for s in &self.stages {
            for slot in s.slots.read().unwrap_or_else(PoisonError::into_inner).iter() {
                if let Slot::Remote(o) = slot {
                    outlets += o.dropped();
                }
            }
        }
        PipelineMetrics {
            stages: self.stages.iter().map(|s| s.locals().iter().map(|w| w.metrics()).collect()).collect(),
            sink_dropped: self.sink_counters.dropped_oldest.load(Ordering::Relaxed)
                + self.sink_counters.dropped_newest.load(Ordering::Relaxed),
            sink_depth: self.sink.len(),
            remote_dropped: outlets + self.misrouted.load(Ordering::Relaxed),
            fenced: self.fenced.load(Ordering::Relaxed),
        }
    }
}

/// What [`PipelineHandle::deliver`] did with a batch.
#[derive(Debug)]
pub enum Delivery {
    /// Queued for the worker (or dropped by a `drop-*` policy, counted on the worker).
    Accepted,
    /// The worker's queue is full under `block`: keep the batch and offer it again later.
    Full(BatchBytes),
    /// No such local worker (the slot moved, or the job is gone): dropped and counted.
    NotHere,
}

/// A weak handle on a running pipeline, for the transport to deliver batches that arrive
/// from other agents.
#[derive(Clone)]
pub struct PipelineHandle(Weak<Shared>);

impl std::fmt::Debug for PipelineHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PipelineHandle")
    }
}

impl PipelineHandle {
    /// The next output batch at this agent's sink, waiting up to `timeout`; `None` also once
    /// the pipeline is gone.
    pub fn recv(&self, timeout: Duration) -> Option<BatchBytes> {
        self.0.upgrade()?.recv(timeout)
    }

    /// Feeds a batch to the first stage, waiting up to `timeout` for room under `block`;
    /// false if it did not fit in time or the pipeline is gone.
    pub fn push(&self, batch: BatchBytes, timeout: Duration) -> bool {
        self.push_counted(batch, timeout).taken
    }

    /// As [`PipelineHandle::push`], saying how many events were dropped on the way in.
    pub fn push_counted(&self, batch: BatchBytes, timeout: Duration) -> Pushed {
        match self.0.upgrade() {
            Some(s) => s.push(batch, Some(Instant::now() + timeout), None),
            None => Pushed::default(),
        }
    }

    /// A snapshot of every local worker's metrics (see [`Pipeline::metrics`]); `None` once
    /// the pipeline is gone.
    pub fn metrics(&self) -> Option<PipelineMetrics> {
        Some(self.0.upgrade()?.metrics())
    }

    /// Whether `self` and `other` are handles on the same pipeline.
    pub fn same(&self, other: &PipelineHandle) -> bool {
        Weak::ptr_eq(&self.0, &other.0)
    }

    /// Whether the pipeline still runs.
    pub fn is_alive(&self) -> bool {
        self.0.upgrade().is_some_and(|s| !s.stopped.load(Ordering::Relaxed))
    }

    /// Offers a batch that arrived for worker `index` of stage `stage`.
    pub fn deliver(&self, stage: usize, index: usize, batch: BatchBytes) -> Delivery {
        let Some(shared) = self.0.upgrade() else { return Delivery::NotHere };
        let worker = shared.stages.get(stage).and_then(|s| {
            s.slots.read().unwrap_or_else(PoisonError::into_inner).get(index).and_then(Slot::local).cloned()
        });
        match worker {
            Some(worker) if !shared.stopped.load(Ordering::Relaxed) => {
                match shared.offer(&Target::Worker(worker), batch, &shared.exec) {
                    None => Delivery::Accepted,
                    Some(batch) => Delivery::Full(batch),
                }
            }
            _ => {
                shared.misrouted.fetch_add(1, Ordering::Relaxed);
                Delivery::NotHere
            }
        }
    }
}

/// Metrics of a whole pipeline.
#[derive(Debug, Clone, Default)]
pub struct PipelineMetrics {
    /// Per stage, per local worker.
    pub stages: Vec<Vec<WorkerMetrics>>,
    /// Batches dropped at the sink because nobody read them in time (`drop-*` policies).
    pub sink_dropped: u64,
    /// Batches waiting at the sink.
    pub sink_depth: usize,
    /// Batches dropped on the way to other agents (full outlets under `drop-*`, broken
    /// connections) or arriving for a worker no longer here.
    pub remote_dropped: u64,
    /// Batches dropped because the agent's lease had run out (see [`crate::Lease`]).
    pub fenced: u64,
}

impl PipelineMetrics {
    /// Batches dropped anywhere in the pipeline.
    pub fn dropped(&self) -> u64 {
        self.sink_dropped
            + self.remote_dropped
            + self.fenced
            + self.stages.iter().flatten().map(WorkerMetrics::dropped).sum::<u64>()
    }
}

/// How long stopping a source waits for its thread to notice before leaving it behind.
pub const SOURCE_STOP_WAIT: Duration = Duration::from_secs(2);

/// A running job on this agent.
pub struct Pipeline {
    shared: Arc<Shared>,
    source: Option<(JoinHandle<()>, Arc<AtomicBool>)>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline").field("stages", &self.shared.stages.len()).finish()
    }
}

impl Pipeline {
    /// Starts every worker of every stage here (calling `init`), on `executor`'s threads.
    pub fn start(runtime: &Runtime, executor: &Executor, config: PipelineConfig) -> Result<Self, PipelineError> {
        let plan = config
            .stages
            .iter()
            .map(|s| (0..s.workers.max(1)).map(|_| SlotPlan::Local { number: 0 }).collect())
            .collect();
        Self::start_placed(runtime, executor, config, plan)
    }

    /// Starts the part of a job that runs on this agent: `plan[stage][index]` says where each
    /// worker slot runs (`config`'s worker counts are not used).
    pub fn start_placed(
        runtime: &Runtime,
        executor: &Executor,
        config: PipelineConfig,
        plan: Vec<Vec<SlotPlan>>,
    ) -> Result<Self, PipelineError> {
        let stages = config
            .stages
            .into_iter()
            .map(|c| StageShared { config: Arc::new(c), slots: RwLock::new(Vec::new()), next: AtomicUsize::new(0) })
            .collect();
        let shared = Arc::new(Shared {
            name: config.name.clone(),
            runtime: runtime.clone(),
            exec: executor.handle(),
            backpressure: config.backpressure,
            max_consecutive_failures: config.max_consecutive_failures.max(1),
            stopped: AtomicBool::new(false),
            lease: config.lease.clone(),
            queue_batches: config.queue_batches,
            stages,
            sink: Inbox::new(config.sink_batches),
            sink_counters: Counters::default(),
            sink_ready: (Mutex::new(()), Condvar::new()),
            misrouted: AtomicU64::new(0),
            fenced: AtomicU64::new(0),
            wanted: config.wanted.clone(),
        });
        let pipeline = Pipeline { shared, source: None };
        for (stage, plan) in plan.into_iter().enumerate() {
            pipeline.place(stage, plan)?;
        }
        Ok(pipeline)
    }

    /// A handle for delivering batches from other agents.
    pub fn handle(&self) -> PipelineHandle {
        PipelineHandle(Arc::downgrade(&self.shared))
    }

    /// Feeds one batch to the first stage, honouring the backpressure policy (under `block`
    /// this waits for room). Returns false if the pipeline has stopped.
    pub fn push(&self, batch: BatchBytes) -> bool {
        self.shared.push(batch, None, None).taken
    }

    /// Attaches a synthetic source on its own thread (replacing any previous one).
    pub fn start_synthetic(&mut self, source: SyntheticSource) -> Result<(), PipelineError> {
        let shared = self.shared.clone();
        self.start_source("synthetic", move |flag| {
            source.run(&flag, |batch| shared.push(batch, None, Some(&flag)).taken);
        })
    }

    /// Attaches a source of the caller's making on its own thread (replacing any previous
    /// one): `run` feeds the pipeline (through a [`PipelineHandle`]) until its flag is set,
    /// and must look at the flag at least every [`SOURCE_STOP_WAIT`].
    pub fn start_source(
        &mut self,
        name: &str,
        run: impl FnOnce(Arc<AtomicBool>) + Send + 'static,
    ) -> Result<(), PipelineError> {
        self.stop_source();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name(format!("squilla-source-{name}"))
            .spawn(move || run(flag))
            .map_err(PipelineError::Thread)?;
        self.source = Some((handle, stop));
        Ok(())
    }

    /// Detaches the source, if any: sets its flag and waits up to [`SOURCE_STOP_WAIT`] for
    /// its thread to end. A thread that does not is left to end by itself (it holds only a
    /// handle on the pipeline, which refuses its batches once stopped), so stopping a job
    /// never waits on it without a bound.
    pub fn stop_source(&mut self) {
        if let Some((handle, stop)) = self.source.take() {
            stop.store(true, Ordering::SeqCst);
            let deadline = Instant::now() + SOURCE_STOP_WAIT;
            while !handle.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            if handle.is_finished() {
                let _ = handle.join();
            } else {
                tracing::warn!(
                    job = %self.shared.name,
                    "the source did not stop within {SOURCE_STOP_WAIT:?}; leaving its thread to end by itself"
                );
            }
        }
    }

    /// The attached source's stop flag: setting it stops the source soon, without waiting.
    pub fn source_flag(&self) -> Option<Arc<AtomicBool>> {
        self.source.as_ref().map(|(_, flag)| flag.clone())
    }

    /// Whether a source is attached.
    pub fn has_source(&self) -> bool {
        self.source.is_some()
    }

    /// The next output batch, waiting up to `timeout`.
    pub fn recv(&self, timeout: Duration) -> Option<BatchBytes> {
        self.shared.recv(timeout)
    }

    /// Sets stage `stage` to `workers` workers here (at least 1). New workers start with
    /// `init`; removed ones stop ticking, and what they had queued is routed to the remaining
    /// ones. Key-hash routing then maps keys over the new count: keyed state does not move.
    pub fn scale(&self, stage: usize, workers: usize) -> Result<(), PipelineError> {
        let s = self.shared.stages.get(stage).ok_or(PipelineError::NoSuchStage(stage))?;
        let mut plan: Vec<SlotPlan> = s
            .slots
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|slot| match slot {
                Slot::Local(w) => SlotPlan::Local { number: w.number },
                Slot::Remote(o) => SlotPlan::Remote(o.clone()),
            })
            .collect();
        plan.resize_with(workers.max(1), || SlotPlan::Local { number: 0 });
        self.place(stage, plan)
    }

    /// Sets where each worker slot of stage `stage` runs. Local slots whose number is
    /// unchanged keep their worker (and its state); new local slots start a worker (`init`
    /// errors surface here, before anything changes); local workers no longer in the plan
    /// stop, and what they had queued is routed anew.
    pub fn place(&self, stage: usize, plan: Vec<SlotPlan>) -> Result<(), PipelineError> {
        let s = self.shared.stages.get(stage).ok_or(PipelineError::NoSuchStage(stage))?;
        let current: Vec<Slot> = s.slots.read().unwrap_or_else(PoisonError::into_inner).clone();
        let mut next = Vec::with_capacity(plan.len());
        for (index, slot) in plan.into_iter().enumerate() {
            next.push(match (slot, current.get(index)) {
                (SlotPlan::Local { number }, Some(Slot::Local(w))) if w.number == number => Slot::Local(w.clone()),
                (SlotPlan::Local { number }, _) => Slot::Local(
                    Worker::start(&self.shared, stage, (index, number), s.config.clone(), self.shared.queue_batches)
                        .map_err(|source| PipelineError::Start { stage: s.config.name.clone(), source })?,
                ),
                (SlotPlan::Remote(outlet), _) => Slot::Remote(outlet),
            });
        }
        let kept: Vec<*const Worker> = next.iter().filter_map(Slot::local).map(Arc::as_ptr).collect();
        let old = std::mem::replace(&mut *s.slots.write().unwrap_or_else(PoisonError::into_inner), next);
        // Workers of the stage before may wait on a slot that just moved: let them re-route.
        if let Some(before) = stage.checked_sub(1).and_then(|b| self.shared.stages.get(b)) {
            for worker in before.locals() {
                worker.unblock();
            }
        }
        for worker in old.iter().filter_map(Slot::local).filter(|w| !kept.contains(&Arc::as_ptr(w))) {
            worker.retire();
            while let Some(batch) = worker.inbox.pop() {
                let mut parts = Vec::new();
                self.shared.route(stage, batch, &mut |t, b| parts.push((t, b)));
                for (target, batch) in parts {
                    if self.shared.offer(&target, batch, &self.shared.exec).is_some() {
                        Counters::add(&worker.counters.dropped_newest, 1);
                    }
                }
            }
        }
        Ok(())
    }

    /// How many worker slots stage `stage` has (here and elsewhere).
    pub fn workers(&self, stage: usize) -> usize {
        self.shared.stages.get(stage).map_or(0, |s| s.slots.read().unwrap_or_else(PoisonError::into_inner).len())
    }

    /// A snapshot of every local worker's metrics and the sink's. Never waits for a guest
    /// call.
    pub fn metrics(&self) -> PipelineMetrics {
        self.shared.metrics()
    }

    /// The log of local worker `index` of stage `stage` (lines kept across instances, oldest
    /// first) and how many lines it dropped.
    pub fn log(&self, stage: usize, index: usize) -> Option<(Vec<LogLine>, u64)> {
        let s = self.shared.stages.get(stage)?;
        let slots = s.slots.read().unwrap_or_else(PoisonError::into_inner);
        slots.get(index).and_then(Slot::local).map(|w| w.log())
    }

    /// Ticks every local worker of stage `stage` at `now_ms` right away (stages tick on their
    /// own timers otherwise). Used to flush windows when a finite input has ended.
    pub fn tick_stage(&self, stage: usize, now_ms: i64) {
        if let Some(s) = self.shared.stages.get(stage) {
            for worker in s.locals() {
                worker.tick_now(&self.shared.exec, now_ms);
            }
        }
    }

    /// How many stages the pipeline has.
    pub fn stages(&self) -> usize {
        self.shared.stages.len()
    }

    /// Waits until every queue inside the pipeline is empty (the sink excepted), up to
    /// `timeout`; returns whether it got there.
    pub fn drain(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let idle = self.shared.stages.iter().all(|s| {
                s.slots.read().unwrap_or_else(PoisonError::into_inner).iter().all(|slot| match slot {
                    Slot::Local(w) => w.inbox.is_empty() && !w.has_pending(),
                    Slot::Remote(o) => o.is_empty(),
                })
            });
            if idle {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(worker::DRAIN_POLL);
        }
    }

    /// Stops the source, lets in-flight batches drain (up to `timeout`), and stops the
    /// workers. Output already at the sink can still be read until the pipeline is dropped.
    pub fn stop(&mut self, timeout: Duration) {
        self.stop_source();
        self.drain(timeout);
        self.shared.stopped.store(true, Ordering::SeqCst);
        for s in &self.shared.stages {
            for worker in s.locals() {
                worker.retire();
            }
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.stop_source();
        self.shared.stopped.store(true, Ordering::SeqCst);
        for s in &self.shared.stages {
            for worker in s.locals() {
                worker.retire();
            }
        }
    }
}
