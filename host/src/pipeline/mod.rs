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
//!
//! Batches travel as [`BatchBytes`]: validated once where they entered, shared by reference
//! count between stages. Every queue is bounded; what happens when one is full is the job's
//! [`Backpressure`] choice, and every drop is counted on the worker whose queue was full (or
//! on the sink).

mod inbox;
pub mod metrics;
mod route;
mod source;
pub(crate) mod worker;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use squilla_batch::BatchBytes;
use squilla_types::{ArtifactRef, Backpressure, JobSpec, Routing};

use self::inbox::{Inbox, Offer};
use self::metrics::{Counters, WorkerMetrics};
use self::worker::{Target, Worker};
use crate::executor::{self, Executor};
use crate::{Artifact, InstantiateError, Limits, LogLine, Runtime};

pub use source::SyntheticSource;

/// One stage of a pipeline.
#[derive(Debug, Clone)]
pub struct StageConfig {
    /// The stage's name (for metrics and logs).
    pub name: String,
    /// The compiled component.
    pub artifact: Artifact,
    /// The parameters its workers' `init` receives.
    pub params: Vec<(String, String)>,
    /// How many workers (at least 1).
    pub workers: usize,
    /// How input is spread over the workers.
    pub routing: Routing,
    /// Each worker's sandbox limits.
    pub limits: Limits,
    /// Period of the stage's `tick`.
    pub tick: Duration,
}

/// What a pipeline runs. `queue_batches`, `sink_batches` and `max_consecutive_traps` have
/// the defaults documented on them when built by [`PipelineConfig::new`].
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// The job's name.
    pub name: String,
    /// The stages, in order.
    pub stages: Vec<StageConfig>,
    /// What a full queue does.
    pub backpressure: Backpressure,
    /// Capacity of each worker's input queue, in batches (default 64).
    pub queue_batches: usize,
    /// Capacity of the sink, in batches (default 1024).
    pub sink_batches: usize,
    /// Traps in a row that fail a worker (default 3).
    pub max_consecutive_traps: u32,
}

/// Why a job spec could not be turned into a pipeline.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The spec names an artifact the caller could not provide.
    #[error("stage `{stage}`: unknown artifact `{artifact}`")]
    UnknownArtifact {
        /// The stage.
        stage: String,
        /// The reference it holds.
        artifact: String,
    },
    /// A worker could not start.
    #[error("stage `{stage}`: {source}")]
    Start {
        /// The stage.
        stage: String,
        /// Why.
        source: InstantiateError,
    },
    /// A stage index out of range.
    #[error("no stage {0}")]
    NoSuchStage(usize),
}

impl PipelineConfig {
    /// A pipeline of `stages` with the default queue sizes and failure threshold.
    pub fn new(name: impl Into<String>, stages: Vec<StageConfig>, backpressure: Backpressure) -> Self {
        PipelineConfig {
            name: name.into(),
            stages,
            backpressure,
            queue_batches: 64,
            sink_batches: 1024,
            max_consecutive_traps: 3,
        }
    }

    /// The pipeline a job spec describes, with `overrides` for its declared parameters and
    /// `artifacts` to resolve each stage's artifact reference.
    pub fn from_spec(
        spec: &JobSpec,
        overrides: &BTreeMap<String, String>,
        mut artifacts: impl FnMut(&ArtifactRef) -> Option<Artifact>,
    ) -> Result<Self, PipelineError> {
        let mut stages = Vec::with_capacity(spec.stages.len());
        for stage in &spec.stages {
            let artifact = artifacts(&stage.artifact).ok_or_else(|| PipelineError::UnknownArtifact {
                stage: stage.name.clone(),
                artifact: stage.artifact.to_string(),
            })?;
            stages.push(StageConfig {
                name: stage.name.clone(),
                artifact,
                params: spec.stage_params(stage, overrides),
                workers: stage.workers as usize,
                routing: stage.routing.clone(),
                limits: Limits { memory_bytes: stage.resources.memory_mib as usize * 1024 * 1024, ..Limits::default() },
                tick: Duration::from_millis(stage.tick_ms),
            });
        }
        Ok(PipelineConfig::new(spec.name.clone(), stages, spec.backpressure))
    }
}

pub(crate) struct StageShared {
    config: Arc<StageConfig>,
    workers: RwLock<Vec<Arc<Worker>>>,
    next: AtomicUsize,
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
}

impl Shared {
    /// Resolves where `batch`, leaving stage `stage - 1`, goes.
    pub(crate) fn route(&self, stage: usize, batch: BatchBytes, out: &mut impl FnMut(Target, BatchBytes)) {
        match self.stages.get(stage) {
            None => out(Target::Sink, batch),
            Some(s) => {
                let workers = s.workers.read().expect("workers lock");
                route::split(&s.config.routing, &s.next, &workers, batch, &mut |w, b| {
                    out(Target::Worker(w.clone()), b)
                });
            }
        }
    }

    /// Offers `batch` to `target`; hands it back if the target is full under `block`.
    pub(crate) fn offer(&self, target: &Target, batch: BatchBytes, exec: &executor::Shared) -> Option<BatchBytes> {
        match target {
            Target::Worker(worker) => worker.offer(batch, self, exec),
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

    pub(crate) fn inbox<'a>(&'a self, target: &'a Target) -> &'a Inbox {
        match target {
            Target::Worker(worker) => &worker.inbox,
            Target::Sink => &self.sink,
        }
    }

    /// Feeds a batch into the first stage; under `block` waits (polling) until it fits or the
    /// pipeline stops. Returns whether the pipeline took it.
    fn push(&self, batch: BatchBytes) -> bool {
        let mut parts = Vec::new();
        self.route(0, batch, &mut |target, batch| parts.push((target, batch)));
        for (target, mut batch) in parts {
            let mut backoff = Duration::from_micros(10);
            loop {
                match self.offer(&target, batch, &self.exec) {
                    None => break,
                    Some(back) => batch = back,
                }
                if self.stopped.load(Ordering::Relaxed) {
                    return false;
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_millis(1));
            }
        }
        true
    }
}

/// Metrics of a whole pipeline.
#[derive(Debug, Clone, Default)]
pub struct PipelineMetrics {
    /// Per stage, per worker.
    pub stages: Vec<Vec<WorkerMetrics>>,
    /// Batches dropped at the sink because nobody read them in time (`drop-*` policies).
    pub sink_dropped: u64,
    /// Batches waiting at the sink.
    pub sink_depth: usize,
}

impl PipelineMetrics {
    /// Batches dropped anywhere in the pipeline.
    pub fn dropped(&self) -> u64 {
        self.sink_dropped + self.stages.iter().flatten().map(WorkerMetrics::dropped).sum::<u64>()
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
    /// Starts every worker of every stage (calling `init`), on `executor`'s threads.
    pub fn start(runtime: &Runtime, executor: &Executor, config: PipelineConfig) -> Result<Self, PipelineError> {
        let stages = config
            .stages
            .into_iter()
            .map(|c| StageShared { config: Arc::new(c), workers: RwLock::new(Vec::new()), next: AtomicUsize::new(0) })
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
        });
        let pipeline = Pipeline { shared, source: None };
        for stage in 0..pipeline.shared.stages.len() {
            let workers = pipeline.shared.stages[stage].config.workers.max(1);
            pipeline.scale(stage, workers)?;
        }
        Ok(pipeline)
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

    fn stop_source(&mut self) {
        if let Some((handle, stop)) = self.source.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = handle.join();
        }
    }

    /// The next output batch, waiting up to `timeout`.
    pub fn recv(&self, timeout: Duration) -> Option<BatchBytes> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(batch) = self.shared.sink.pop(&self.shared.exec) {
                return Some(batch);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            let guard = self.shared.sink_ready.0.lock().expect("sink lock");
            if !self.shared.sink.is_empty() {
                continue;
            }
            let wait = (deadline - now).min(Duration::from_millis(5));
            let _unused = self.shared.sink_ready.1.wait_timeout(guard, wait).expect("sink lock");
        }
    }

    /// Sets stage `stage` to `workers` workers (at least 1). New workers start with `init`;
    /// removed ones stop ticking, and what they had queued is routed to the remaining ones.
    /// Key-hash routing then maps keys over the new count: keyed state does not move.
    pub fn scale(&self, stage: usize, workers: usize) -> Result<(), PipelineError> {
        let s = self.shared.stages.get(stage).ok_or(PipelineError::NoSuchStage(stage))?;
        let workers = workers.max(1);
        let current = s.workers.read().expect("workers lock").len();
        let mut added = Vec::new();
        for index in current..workers {
            let worker = Worker::start(&self.shared, stage, index, s.config.clone(), self.shared.queue_batches)
                .map_err(|source| PipelineError::Start { stage: s.config.name.clone(), source })?;
            added.push(worker);
        }
        let removed = {
            let mut list = s.workers.write().expect("workers lock");
            list.extend(added);
            if workers < list.len() { list.split_off(workers) } else { Vec::new() }
        };
        for worker in removed {
            worker.retire();
            while let Some(batch) = worker.inbox.pop(&self.shared.exec) {
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

    /// How many workers stage `stage` has.
    pub fn workers(&self, stage: usize) -> usize {
        self.shared.stages.get(stage).map_or(0, |s| s.workers.read().expect("workers lock").len())
    }

    /// A snapshot of every worker's metrics and the sink's.
    pub fn metrics(&self) -> PipelineMetrics {
        PipelineMetrics {
            stages: self
                .shared
                .stages
                .iter()
                .map(|s| s.workers.read().expect("workers lock").iter().map(|w| w.metrics()).collect())
                .collect(),
            sink_dropped: self.shared.sink_counters.dropped_oldest.load(Ordering::Relaxed)
                + self.shared.sink_counters.dropped_newest.load(Ordering::Relaxed),
            sink_depth: self.shared.sink.len(),
        }
    }

    /// The log of worker `index` of stage `stage` (lines kept across instances, oldest first)
    /// and how many lines it dropped.
    pub fn log(&self, stage: usize, index: usize) -> Option<(Vec<LogLine>, u64)> {
        let s = self.shared.stages.get(stage)?;
        let workers = s.workers.read().expect("workers lock");
        workers.get(index).map(|w| w.log())
    }

    /// Ticks every worker of stage `stage` at `now_ms` right away (stages tick on their own
    /// timers otherwise). Used to flush windows when a finite input has ended.
    pub fn tick_stage(&self, stage: usize, now_ms: i64) {
        if let Some(s) = self.shared.stages.get(stage) {
            for worker in s.workers.read().expect("workers lock").iter() {
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
                s.workers.read().expect("workers lock").iter().all(|w| w.inbox.is_empty() && !w.has_pending())
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
            for worker in s.workers.read().expect("workers lock").iter() {
                worker.retire();
            }
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.stop_source();
        self.shared.stopped.store(true, Ordering::SeqCst);
    }
}
