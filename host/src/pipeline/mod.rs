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
//!   [`Pipeline::set_slots`]), and batches arriving from other agents come in through
//!   [`PipelineHandle::deliver`]. Routing treats local and remote slots alike, and the sink
//!   too: it is an outlet past the last stage, drained by [`Pipeline::recv`].
//!
//! Inside, the modules depend on each other one way only: [`metrics`], `wanted`, `config`,
//! `inbox` and `outlet` at the bottom; `worker` (a worker, and the `Slot`s a batch goes
//! to) above them, seeing its pipeline only through its own `Downstream` trait;
//! `route` and `dataflow` (the running job's stages and sink, which implements
//! `Downstream`) above it; `handle` and this module on top.
//!
//! Batches travel as [`BatchBytes`]: validated once where they entered, shared by reference
//! count between stages. Every queue is bounded; what happens when one is full is the job's
//! [`Backpressure`] choice, and every drop is counted on the worker whose queue was full (or
//! on the sink).

mod config;
mod dataflow;
mod handle;
pub mod handoff;
mod inbox;
pub mod metrics;
mod outlet;
mod route;
mod source;
mod wanted;
mod worker;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use squilla_batch::BatchBytes;

use self::dataflow::{Dataflow, Stage};
use self::metrics::Counters;
use self::worker::{Downstream, Slot, Worker};
use crate::engine::Runtime;
use crate::executor::Executor;
use crate::logs::LogLine;

pub use config::{PipelineConfig, PipelineError, StageConfig};
pub use dataflow::Pushed;
pub use handle::{Delivery, PipelineHandle};
pub use handoff::{HOLD_LIMIT, StateParcel};
pub use metrics::{FailureKind, HandOffMetrics, PipelineMetrics, WorkerMetrics};
pub use outlet::Outlet;
pub use source::SyntheticSource;
pub use wanted::Wanted;

/// Where one worker slot of a stage runs, as [`Pipeline::set_slots`] is told.
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

/// How long stopping a source waits for its thread to notice before leaving it behind.
pub const SOURCE_STOP_WAIT: Duration = Duration::from_secs(2);

/// A running job on this agent.
pub struct Pipeline {
    flow: Arc<Dataflow>,
    source: Option<(JoinHandle<()>, Arc<AtomicBool>)>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline").field("stages", &self.flow.stages.len()).finish()
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
        let (sink, sink_ready) = Dataflow::sink(config.sink_batches);
        let flow = Arc::new(Dataflow {
            name: config.name.clone(),
            runtime: runtime.clone(),
            exec: executor.run_queue(),
            backpressure: config.backpressure,
            max_consecutive_failures: config.max_consecutive_failures.max(1),
            stopped: AtomicBool::new(false),
            lease: config.lease.clone(),
            queue_batches: config.queue_batches,
            time_calls: config.time_calls,
            rescaled_from: config.rescaled_from.clone(),
            stages: config.stages.into_iter().map(Stage::new).collect(),
            sink,
            sink_ready,
            misrouted: AtomicU64::new(0),
            fenced: AtomicU64::new(0),
            wanted: config.wanted.clone(),
        });
        let pipeline = Pipeline { flow, source: None };
        for (stage, plan) in plan.into_iter().enumerate() {
            pipeline.set_slots(stage, plan)?;
        }
        Ok(pipeline)
    }

    /// A handle for delivering batches from other agents.
    pub fn handle(&self) -> PipelineHandle {
        PipelineHandle(Arc::downgrade(&self.flow))
    }

    /// Feeds one batch to the first stage, honouring the backpressure policy (under `block`
    /// this waits for room). Returns false if the pipeline has stopped.
    pub fn push(&self, batch: BatchBytes) -> bool {
        self.flow.push(batch, None, None).taken
    }

    /// Attaches a synthetic source on its own thread (replacing any previous one).
    pub fn start_synthetic(&mut self, source: SyntheticSource) -> Result<(), PipelineError> {
        let flow = self.flow.clone();
        self.start_source("synthetic", move |flag| {
            source.run(&flag, |batch| flow.push(batch, None, Some(&flag)).taken);
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
                    job = %self.flow.name,
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
        self.flow.recv(timeout)
    }

    /// Sets stage `stage` to `workers` workers here (at least 1). New workers start with
    /// `init`; removed ones stop ticking, and what they had queued is routed to the remaining
    /// ones. Key-hash routing then maps keys over the new count; the keyed state of a stage
    /// that exports `keyed-state` moves with its key groups (see [`handoff`]), any other
    /// stage's stays where it is.
    pub fn scale(&self, stage: usize, workers: usize) -> Result<(), PipelineError> {
        let s = self.flow.stages.get(stage).ok_or(PipelineError::NoSuchStage(stage))?;
        let mut plan: Vec<SlotPlan> = s
            .slots()
            .iter()
            .map(|slot| match slot {
                Slot::Local(w) => SlotPlan::Local { number: w.number },
                Slot::Outlet(o) => SlotPlan::Remote(o.clone()),
            })
            .collect();
        plan.resize_with(workers.max(1), || SlotPlan::Local { number: 0 });
        self.set_slots(stage, plan)
    }

    /// Sets where each worker slot of stage `stage` runs. Local slots whose number is
    /// unchanged keep their worker (and its state); new local slots start a worker (`init`
    /// errors surface here, before anything changes); local workers no longer in the plan
    /// stop, and what they had queued is routed anew.
    pub fn set_slots(&self, stage: usize, plan: Vec<SlotPlan>) -> Result<(), PipelineError> {
        let s = self.flow.stages.get(stage).ok_or(PipelineError::NoSuchStage(stage))?;
        let current: Vec<Slot> = s.slots().clone();
        // A pipeline starting just after its stage was rescaled elsewhere starts from the count
        // before, so that its workers wait for the state of the groups they gain.
        let from = match current.len() {
            0 => self.flow.rescaled_from.get(stage).copied().unwrap_or(0),
            n => n,
        };
        let to = plan.len();
        // Key groups move only when the count changes (a replaced worker starts afresh).
        let handoff = s.hands_off() && from > 0 && from != to;
        let mut next = Vec::with_capacity(plan.len());
        for (index, slot) in plan.into_iter().enumerate() {
            next.push(match (slot, current.get(index)) {
                (SlotPlan::Local { number }, Some(Slot::Local(w))) if w.number == number => Slot::Local(w.clone()),
                (SlotPlan::Local { number }, _) => Slot::Local(
                    Worker::start(&self.flow, stage, (index, number), s.config.clone(), self.flow.queue_batches)
                        .map_err(|source| PipelineError::Start { stage: s.config.name.clone(), source })?,
                ),
                (SlotPlan::Remote(outlet), _) => Slot::Outlet(outlet),
            });
        }
        if handoff {
            // Before any input can reach them under the new count, workers hold what they gain.
            for worker in next.iter().filter_map(Slot::local) {
                worker.expect_groups(handoff::gained(worker.index, from, to), to);
            }
        }
        let kept: Vec<*const Worker> = next.iter().filter_map(Slot::local).map(Arc::as_ptr).collect();
        let old = std::mem::replace(&mut *s.slots.write().unwrap_or_else(PoisonError::into_inner), next);
        // Workers of the stage before may wait on a slot that just moved: let them re-route.
        if let Some(before) = stage.checked_sub(1).and_then(|b| self.flow.stages.get(b)) {
            for worker in before.locals() {
                worker.unblock();
            }
        }
        if handoff {
            for worker in old.iter().filter_map(Slot::local) {
                worker.hand_over(&*self.flow, &handoff::lost(worker.index, from, to));
            }
        }
        for worker in old.iter().filter_map(Slot::local).filter(|w| !kept.contains(&Arc::as_ptr(w))) {
            worker.retire();
            let (parcels, held) = worker.take_keyed_leftovers();
            for parcel in parcels {
                for (owner, part) in parcel.split_by_owner(to) {
                    self.flow.send_state(stage, owner, part);
                }
            }
            let queued = std::iter::from_fn(|| worker.inbox.pop());
            if worker.is_keyed() {
                // Passed on, never refused nor dropped: to workers here directly, to others
                // through the retired worker's own retried buffer.
                for batch in held.into_iter().chain(queued) {
                    worker.forward(&*self.flow, batch);
                }
                continue;
            }
            for batch in held.into_iter().chain(queued) {
                let mut parts = Vec::new();
                self.flow.route(stage, batch, &mut |slot, b| parts.push((slot, b)));
                for (slot, batch) in parts {
                    let events = batch.len() as u64;
                    if self.flow.offer(&slot, batch).is_some() {
                        Counters::add(&worker.counters.dropped_newest, 1);
                        Counters::add(&worker.counters.dropped_events, events);
                    }
                }
            }
        }
        Ok(())
    }

    /// How many worker slots stage `stage` has (here and elsewhere).
    pub fn workers(&self, stage: usize) -> usize {
        self.flow.stages.get(stage).map_or(0, |s| s.slots().len())
    }

    /// A snapshot of every local worker's metrics and the sink's. Never waits for a guest
    /// call.
    pub fn metrics(&self) -> PipelineMetrics {
        self.flow.metrics()
    }

    /// The log of local worker `index` of stage `stage` (lines kept across instances, oldest
    /// first), how many lines it dropped, and the worker's incarnation (whose log it is).
    pub fn log(&self, stage: usize, index: usize) -> Option<(Vec<LogLine>, u64, u64)> {
        let s = self.flow.stages.get(stage)?;
        s.slots().get(index).and_then(Slot::local).map(|w| w.log())
    }

    /// Ticks every local worker of stage `stage` at `now_ms` right away (stages tick on their
    /// own timers otherwise). Used to flush windows when a finite input has ended.
    pub fn tick_stage(&self, stage: usize, now_ms: i64) {
        if let Some(s) = self.flow.stages.get(stage) {
            for worker in s.locals() {
                worker.tick_now(&self.flow.exec, now_ms);
            }
        }
    }

    /// How many stages the pipeline has.
    pub fn stages(&self) -> usize {
        self.flow.stages.len()
    }

    /// Waits until every queue inside the pipeline is empty (the sink excepted), no worker is
    /// in a turn, and none holds input for a key group whose state is on its way, up to
    /// `timeout`; returns whether it got there.
    pub fn drain(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let idle = self.flow.stages.iter().all(|s| {
                s.slots().iter().all(|slot| match slot {
                    Slot::Local(w) => w.inbox.is_empty() && !w.has_pending() && w.holds_nothing() && !w.is_busy(),
                    Slot::Outlet(o) => o.is_empty(),
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
        self.flow.stopped.store(true, Ordering::SeqCst);
        for s in &self.flow.stages {
            for worker in s.locals() {
                worker.retire();
            }
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.stop_source();
        self.flow.stopped.store(true, Ordering::SeqCst);
        for s in &self.flow.stages {
            for worker in s.locals() {
                worker.retire();
            }
        }
    }
}
