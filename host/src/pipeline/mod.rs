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
pub(crate) mod worker;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use squilla_batch::BatchBytes;
use squilla_types::Backpressure;

use self::inbox::{Inbox, Offer};
use self::metrics::{Counters, WorkerMetrics};
use self::worker::{Target, Worker};
use crate::executor::{self, Executor};
use crate::{LogLine, Runtime};

pub use config::{PipelineConfig, PipelineError, StageConfig};
pub use outlet::Outlet;
pub use source::SyntheticSource;

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
        self.slots.read().expect("slots lock").iter().filter_map(Slot::local).cloned().collect()
    }
}

pub(crate) struct Shared {
    pub runtime: Runtime,
    pub exec: Arc<executor::Shared>,
    pub backpressure: Backpressure,
    pub max_consecutive_traps: u32,
    pub stopped: AtomicBool,
    queue_batches: usize,
    stages: Vec<StageShared>,
    sink: Inbox,
    sink_counters: Counters,
    sink_ready: (Mutex<()>, Condvar),
    misrouted: AtomicU64,
}

impl Shared {
    /// Resolves where `batch`, leaving stage `stage - 1`, goes.
    pub(crate) fn route(&self, stage: usize, batch: BatchBytes, out: &mut impl FnMut(Target, BatchBytes)) {
        match self.stages.get(stage) {
            None => out(Target::Sink, batch),
            Some(s) => {
                let slots = s.slots.read().expect("slots lock");
                route::split(&s.config.routing, &s.next, &slots, batch, &mut |slot, b| out(slot.target(), b));
            }
        }
    }

    /// Offers `batch` to `target`; hands it back if the target is full under `block`.
    pub(crate) fn offer(&self, target: &Target, batch: BatchBytes, exec: &executor::Shared) -> Option<BatchBytes> {
        match target {
            Target::Worker(worker) => worker.offer(batch, self, exec),
            Target::Remote(outlet) => outlet.offer(batch, self.backpressure),
            Target::Sink => {
                let result = match self.sink.offer(batch, self.backpressure, &self.sink_counters) {
                    Offer::Queued | Offer::Dropped => None,
                    Offer::Full(batch) => Some(batch),
                };
                let _guard = self.sink_ready.0.lock().expect("sink lock");
                self.sink_ready.1.notify_all();
                result
            }
        }
    }

    /// Whether `target` is still one of stage `stage`'s slots (the master may have moved it).
    pub(crate) fn is_current(&self, stage: usize, target: &Target) -> bool {
        let Some(s) = self.stages.get(stage) else { return matches!(target, Target::Sink) };
        s.slots.read().expect("slots lock").iter().any(|slot| match (slot, target) {
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

    /// The next output batch, waiting up to `timeout`.
    fn recv(&self, timeout: Duration) -> Option<BatchBytes> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(batch) = self.sink.pop() {
                return Some(batch);
            }
            let now = Instant::now();
            if now >= deadline || self.stopped.load(Ordering::Relaxed) {
                return None;
            }
            let guard = self.sink_ready.0.lock().expect("sink lock");
            if !self.sink.is_empty() {
                continue;
            }
            let wait = (deadline - now).min(Duration::from_millis(5));
            let _unused = self.sink_ready.1.wait_timeout(guard, wait).expect("sink lock");
        }
    }

    /// Feeds a batch into the first stage; under `block` waits (polling) until it fits or the
    /// pipeline stops. Returns whether the pipeline took it.
    fn push(&self, batch: BatchBytes) -> bool {
        self.push_until(batch, None)
    }

    /// As [`Shared::push`], giving up (false) at `deadline`; parts already queued stay.
    fn push_until(&self, batch: BatchBytes, deadline: Option<Instant>) -> bool {
        let mut parts = Vec::new();
        self.route(0, batch, &mut |target, batch| parts.push((target, batch)));
        while let Some((target, mut batch)) = parts.pop() {
            let mut backoff = Duration::from_micros(10);
            loop {
                match self.offer(&target, batch, &self.exec) {
                    None => break,
                    Some(back) => batch = back,
                }
                if !self.is_current(0, &target) {
                    // The slot moved while we waited: route the batch anew.
                    self.route(0, batch, &mut |target, batch| parts.push((target, batch)));
                    break;
                }
                if self.stopped.load(Ordering::Relaxed) || deadline.is_some_and(|d| Instant::now() >= d) {
                    return false;
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_millis(1));
            }
        }
        true
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
        self.0.upgrade().is_some_and(|s| s.push_until(batch, Some(Instant::now() + timeout)))
    }

    /// Whether the pipeline still runs.
    pub fn is_alive(&self) -> bool {
        self.0.upgrade().is_some_and(|s| !s.stopped.load(Ordering::Relaxed))
    }

    /// Offers a batch that arrived for worker `index` of stage `stage`.
    pub fn deliver(&self, stage: usize, index: usize, batch: BatchBytes) -> Delivery {
        let Some(shared) = self.0.upgrade() else { return Delivery::NotHere };
        let worker = shared
            .stages
            .get(stage)
            .and_then(|s| s.slots.read().expect("slots lock").get(index).and_then(Slot::local).cloned());
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
}

impl PipelineMetrics {
    /// Batches dropped anywhere in the pipeline.
    pub fn dropped(&self) -> u64 {
        self.sink_dropped + self.remote_dropped + self.stages.iter().flatten().map(WorkerMetrics::dropped).sum::<u64>()
    }
}

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
            runtime: runtime.clone(),
            exec: executor.handle(),
            backpressure: config.backpressure,
            max_consecutive_traps: config.max_consecutive_traps.max(1),
            stopped: AtomicBool::new(false),
            queue_batches: config.queue_batches,
            stages,
            sink: Inbox::new(config.sink_batches),
            sink_counters: Counters::default(),
            sink_ready: (Mutex::new(()), Condvar::new()),
            misrouted: AtomicU64::new(0),
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
        self.shared.push(batch)
    }

    /// Attaches a synthetic source on its own thread (replacing any previous one).
    pub fn start_synthetic(&mut self, source: SyntheticSource) {
        self.stop_source();
        let stop = Arc::new(AtomicBool::new(false));
        let (shared, flag) = (self.shared.clone(), stop.clone());
        let handle = std::thread::Builder::new()
            .name("squilla-source".into())
            .spawn(move || source.run(&flag, |batch| shared.push(batch)))
            .expect("spawn source thread");
        self.source = Some((handle, stop));
    }

    /// Attaches a source of the caller's making on its own thread (replacing any previous
    /// one): `run` feeds the pipeline (through a [`PipelineHandle`]) until its flag is set.
    pub fn start_source(&mut self, name: &str, run: impl FnOnce(Arc<AtomicBool>) + Send + 'static) {
        self.stop_source();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name(format!("squilla-source-{name}"))
            .spawn(move || run(flag))
            .expect("spawn source thread");
        self.source = Some((handle, stop));
    }

    /// Detaches the source, if any.
    pub fn stop_source(&mut self) {
        if let Some((handle, stop)) = self.source.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = handle.join();
        }
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
            .expect("slots lock")
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
        let current: Vec<Slot> = s.slots.read().expect("slots lock").clone();
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
        let old = std::mem::replace(&mut *s.slots.write().expect("slots lock"), next);
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
        self.shared.stages.get(stage).map_or(0, |s| s.slots.read().expect("slots lock").len())
    }

    /// A snapshot of every local worker's metrics and the sink's.
    pub fn metrics(&self) -> PipelineMetrics {
        let outlets: u64 = self
            .shared
            .stages
            .iter()
            .flat_map(|s| {
                s.slots
                    .read()
                    .expect("slots lock")
                    .iter()
                    .map(|slot| match slot {
                        Slot::Remote(o) => o.dropped(),
                        Slot::Local(_) => 0,
                    })
                    .collect::<Vec<_>>()
            })
            .sum();
        PipelineMetrics {
            stages: self.shared.stages.iter().map(|s| s.locals().iter().map(|w| w.metrics()).collect()).collect(),
            sink_dropped: self.shared.sink_counters.dropped_oldest.load(Ordering::Relaxed)
                + self.shared.sink_counters.dropped_newest.load(Ordering::Relaxed),
            sink_depth: self.shared.sink.len(),
            remote_dropped: outlets + self.shared.misrouted.load(Ordering::Relaxed),
        }
    }

    /// The log of local worker `index` of stage `stage` (lines kept across instances, oldest
    /// first) and how many lines it dropped.
    pub fn log(&self, stage: usize, index: usize) -> Option<(Vec<LogLine>, u64)> {
        let s = self.shared.stages.get(stage)?;
        let slots = s.slots.read().expect("slots lock");
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
                s.slots.read().expect("slots lock").iter().all(|slot| match slot {
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
