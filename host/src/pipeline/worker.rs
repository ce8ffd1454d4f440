//! One worker: a stage instance, its inbox, its output awaiting room downstream, and the
//! failure policy.
//!
//! Failure policy: a trap (or a passed deadline) discards the instance and counts the batch
//! as failed; the next batch meets a fresh instance. After
//! [`super::PipelineConfig::max_consecutive_traps`] traps in a row the worker is *failed*
//! with the last trap's message: it stops calling the stage and counts what reaches it as
//! dropped, and whoever owns the pipeline (the master) decides what happens next. A stage
//! error or an invalid output counts as a failed call but keeps the instance.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use squilla_batch::BatchBytes;

use super::inbox::{Inbox, Offer};
use super::metrics::{self, Counters, WorkerMetrics};
use super::{Shared as Pipeline, StageConfig};
use crate::engine::now_ms;
use crate::executor::{self, QUANTUM};
use crate::{CallError, InstantiateError, LogLine, LogRing, StageInstance};

/// Output that could not be delivered yet, and where it goes.
pub(crate) struct Pending {
    pub target: Target,
    pub batch: BatchBytes,
}

/// The inbox a batch is headed for.
#[derive(Clone)]
pub(crate) enum Target {
    Worker(Arc<Worker>),
    Remote(Arc<super::Outlet>),
    Sink,
}

struct State {
    instance: Option<StageInstance>,
    log: LogRing,
    pending: VecDeque<Pending>,
    consecutive_traps: u32,
    failed: Option<String>,
}

pub(crate) struct Worker {
    pub stage: usize,
    pub index: usize,
    /// Which incarnation of the slot this is (the master's worker number; 0 when local-only).
    pub number: u64,
    pub inbox: Inbox,
    pub counters: Counters,
    config: Arc<StageConfig>,
    pipeline: Weak<Pipeline>,
    scheduled: AtomicBool,
    blocked: AtomicBool,
    has_pending: AtomicBool,
    retired: AtomicBool,
    tick_due: AtomicI64,
    state: Mutex<State>,
}

impl Worker {
    /// A worker with a live instance (so that `init` errors surface at start), its tick armed.
    pub fn start(
        pipeline: &Arc<Pipeline>,
        stage: usize,
        (index, number): (usize, u64),
        config: Arc<StageConfig>,
        queue_batches: usize,
    ) -> Result<Arc<Self>, InstantiateError> {
        let instance = config.artifact.instantiate(&pipeline.runtime, &config.limits, &config.params)?;
        let worker = Arc::new(Worker {
            stage,
            index,
            number,
            inbox: Inbox::new(queue_batches),
            counters: Counters::default(),
            pipeline: Arc::downgrade(pipeline),
            scheduled: AtomicBool::new(false),
            blocked: AtomicBool::new(false),
            has_pending: AtomicBool::new(false),
            retired: AtomicBool::new(false),
            tick_due: AtomicI64::new(0),
            state: Mutex::new(State {
                instance: None,
                log: LogRing::with_capacity(config.limits.log_lines),
                pending: VecDeque::new(),
                consecutive_traps: 0,
                failed: None,
            }),
            config,
        });
        Counters::add(&worker.counters.instances, 1);
        worker.counters.memory_bytes.store(instance.memory_bytes() as u64, Ordering::Relaxed);
        worker.state.lock().expect("worker lock").instance = Some(instance);
        pipeline.exec.tick_at(Instant::now() + worker.config.tick, Arc::downgrade(&worker));
        Ok(worker)
    }

    /// Claims the right to be on the run queue; false if already there.
    pub fn try_mark_scheduled(&self) -> bool {
        !self.scheduled.swap(true, Ordering::AcqRel)
    }

    /// Called by a downstream inbox (or outlet) that has room again.
    pub fn unblock(self: &Arc<Self>) {
        self.blocked.store(false, Ordering::SeqCst);
        if let Some(pipeline) = self.pipeline.upgrade() {
            pipeline.exec.schedule(self);
        }
    }

    /// Called by the clock when the stage timer fires.
    pub fn tick_fired(self: &Arc<Self>, exec: &executor::Shared, due: Instant) {
        if self.retired.load(Ordering::Relaxed) || self.pipeline.strong_count() == 0 {
            return;
        }
        self.tick_due.store(now_ms().max(1), Ordering::Relaxed);
        exec.schedule(self);
        // Re-arm from the previous due time, so ticks do not drift; skip missed ones.
        let mut next = due + self.config.tick;
        let now = Instant::now();
        while next <= now {
            next += self.config.tick;
        }
        exec.tick_at(next, Arc::downgrade(self));
    }

    /// Makes a tick at `now_ms` due now, outside the stage's timer (e.g. to close windows at
    /// the end of a finite input).
    pub fn tick_now(self: &Arc<Self>, exec: &executor::Shared, now_ms: i64) {
        self.tick_due.store(now_ms.max(1), Ordering::Relaxed);
        exec.schedule(self);
    }

    /// Stops ticks; the worker keeps draining what it holds.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
    }

    pub fn has_pending(&self) -> bool {
        self.has_pending.load(Ordering::SeqCst)
    }

    fn has_work(&self) -> bool {
        !self.blocked.load(Ordering::SeqCst)
            && (self.has_pending() || !self.inbox.is_empty() || self.tick_due.load(Ordering::Relaxed) != 0)
    }

    /// One turn on a pool thread.
    pub fn run(self: &Arc<Self>, exec: &Arc<executor::Shared>) {
        let Some(pipeline) = self.pipeline.upgrade() else {
            self.scheduled.store(false, Ordering::Release);
            return;
        };
        if !pipeline.stopped.load(Ordering::Relaxed) {
            let mut state = self.state.lock().expect("worker lock");
            self.turn(&mut state, &pipeline, exec);
            self.has_pending.store(!state.pending.is_empty(), Ordering::SeqCst);
        }
        self.scheduled.store(false, Ordering::SeqCst);
        if self.has_work() && !pipeline.stopped.load(Ordering::Relaxed) {
            exec.schedule(self);
        }
    }

    fn turn(self: &Arc<Self>, state: &mut State, pipeline: &Pipeline, exec: &executor::Shared) {
        if state.failed.is_some() {
            self.tick_due.store(0, Ordering::Relaxed);
            while self.inbox.pop().is_some() {
                Counters::add(&self.counters.dropped_failed, 1);
            }
            return;
        }
        if !self.flush(state, pipeline, exec) {
            return;
        }
        let now = self.tick_due.swap(0, Ordering::Relaxed);
        if now != 0 {
            self.call(state, pipeline, |instance| instance.tick(now));
            if !self.flush(state, pipeline, exec) {
                return;
            }
        }
        for _ in 0..QUANTUM {
            let Some(batch) = self.inbox.pop() else { return };
            Counters::add(&self.counters.batches_in, 1);
            Counters::add(&self.counters.events_in, batch.len() as u64);
            if state.failed.is_some() {
                Counters::add(&self.counters.dropped_failed, 1);
                continue;
            }
            self.call(state, pipeline, |instance| instance.process(&batch));
            if !self.flush(state, pipeline, exec) {
                return;
            }
        }
    }

    /// Runs one call on the instance (creating one if the last trapped), applies the failure
    /// policy, and queues the output for delivery.
    fn call(
        &self,
        state: &mut State,
        pipeline: &Pipeline,
        f: impl FnOnce(&mut StageInstance) -> Result<BatchBytes, CallError>,
    ) {
        if state.failed.is_some() {
            return;
        }
        if state.instance.is_none() {
            match self.config.artifact.instantiate(&pipeline.runtime, &self.config.limits, &self.config.params) {
                Ok(instance) => {
                    Counters::add(&self.counters.instances, 1);
                    state.instance = Some(instance);
                }
                Err(InstantiateError::Trap(err)) => return self.trapped(state, pipeline, err.to_string()),
                Err(err) => {
                    state.failed = Some(err.to_string());
                    return;
                }
            }
        }
        let instance = state.instance.as_mut().expect("created above");
        let started = Instant::now();
        let result = f(instance);
        self.counters.record_call(started.elapsed());
        instance.take_log(&mut state.log);
        self.counters.memory_bytes.store(instance.memory_bytes() as u64, Ordering::Relaxed);
        match result {
            Ok(output) => {
                state.consecutive_traps = 0;
                if !output.is_empty() {
                    Counters::add(&self.counters.batches_out, 1);
                    Counters::add(&self.counters.events_out, output.len() as u64);
                    pipeline.route(self.stage + 1, output, &mut |target, batch| {
                        state.pending.push_back(Pending { target, batch })
                    });
                }
            }
            Err(err) if err.is_fatal() => {
                state.instance = None;
                self.trapped(state, pipeline, err.to_string());
            }
            Err(err) => {
                Counters::add(&self.counters.failed_calls, 1);
                tracing::debug!(stage = %self.config.name, worker = self.index, error = %err, "stage call failed");
            }
        }
    }

    fn trapped(&self, state: &mut State, pipeline: &Pipeline, message: String) {
        Counters::add(&self.counters.failed_calls, 1);
        Counters::add(&self.counters.traps, 1);
        state.consecutive_traps += 1;
        tracing::warn!(stage = %self.config.name, worker = self.index, %message, "stage trapped; instance discarded");
        if state.consecutive_traps >= pipeline.max_consecutive_traps {
            state.failed = Some(format!("{} traps in a row; last: {message}", state.consecutive_traps));
        }
    }

    /// Delivers pending output in order; false (and registered as a waiter) if a target is
    /// full under `block`.
    fn flush(self: &Arc<Self>, state: &mut State, pipeline: &Pipeline, exec: &executor::Shared) -> bool {
        while let Some(Pending { target, batch }) = state.pending.pop_front() {
            let batch = match pipeline.offer(&target, batch, exec) {
                None => continue,
                Some(batch) => batch,
            };
            if !pipeline.is_current(self.stage + 1, &target) {
                // The slot moved (the master re-placed its worker): route the batch anew.
                pipeline.route(self.stage + 1, batch, &mut |target, batch| {
                    state.pending.push_front(Pending { target, batch })
                });
                continue;
            }
            // Register before retrying once, so that room made in between is not missed.
            self.blocked.store(true, Ordering::SeqCst);
            pipeline.inbox(&target).wait(self);
            match pipeline.offer(&target, batch, exec) {
                None => self.blocked.store(false, Ordering::SeqCst),
                Some(batch) => {
                    state.pending.push_front(Pending { target, batch });
                    return false;
                }
            }
        }
        true
    }

    /// A snapshot of the worker's metrics.
    pub fn metrics(&self) -> WorkerMetrics {
        let mut m = metrics::snapshot(&self.counters);
        m.stage = self.config.name.clone();
        m.index = self.index;
        m.queue_depth = self.inbox.len();
        m.failed = self.state.lock().expect("worker lock").failed.clone();
        m
    }

    /// The worker's log: what its stage wrote, across instances, and how many lines were
    /// dropped.
    pub fn log(&self) -> (Vec<LogLine>, u64) {
        let state = self.state.lock().expect("worker lock");
        (state.log.lines().cloned().collect(), state.log.dropped())
    }

    /// Offers `batch` to this worker's inbox and schedules it.
    pub fn offer(
        self: &Arc<Self>,
        batch: BatchBytes,
        pipeline: &Pipeline,
        exec: &executor::Shared,
    ) -> Option<BatchBytes> {
        let result = match self.inbox.offer(batch, pipeline.backpressure, &self.counters) {
            Offer::Queued | Offer::Dropped => None,
            Offer::Full(batch) => Some(batch),
        };
        exec.schedule(self);
        result
    }
}

/// How long `Pipeline::drain` sleeps between checks.
pub(crate) const DRAIN_POLL: Duration = Duration::from_millis(1);
