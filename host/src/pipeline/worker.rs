//! One worker: a stage instance, its inbox, its output awaiting room downstream, and the
//! failure policy.
//!
//! Failure policy: every failed call is counted, by [`FailureKind`]: a trap or a passed
//! deadline (which also discard the instance — the next call meets a fresh one), a stage
//! error, an invalid output, or a fresh instance that cannot be made. After
//! [`super::config::PipelineConfig::max_consecutive_failures`] failures in a row — stage
//! errors, the stage's own answer about a call, are not part of the count — the worker is
//! *failed* with the last one's message: it stops calling the stage and counts what reaches
//! it as dropped, and whoever owns the pipeline (the master) decides what happens next. Only a
//! successful `process` call starts the count again: a stage whose every batch passes its
//! deadline is failed even if its ticks succeed in between.
//!
//! Status (metrics, the failure, the log) is kept apart from the instance: reading it never
//! waits for a guest call, so a heartbeat is never held up by tenant code.
//!
//! A worker sees its pipeline only through [`Downstream`], a trait defined here and
//! implemented by the pipeline's [`super::dataflow::Dataflow`]; the executor and the inboxes
//! see a worker only as their own traits ([`Task`], [`Waiter`]). So this module depends on
//! them, and none of them on it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use squilla_batch::BatchBytes;

use squilla_types::time::now_ms;
use squilla_types::{Backpressure, Routing};

use super::config::StageConfig;
use super::handoff::{self, Holding, StateParcel};
use super::inbox::{Inbox, Offer, Waiter};
use super::metrics::{self, Counters, FailureKind, WorkerMetrics};
use super::outlet::Outlet;
use super::wanted::Wanted;
use crate::engine::Runtime;
use crate::error::{CallError, InstantiateError};
use crate::executor::{QUANTUM, RunQueue, TURN_BUDGET, Task};
use crate::instance::StageInstance;
use crate::logs::{LogLine, LogRing};

/// A place a batch can be delivered to: a worker slot of a stage — a worker here, or the
/// outlet towards a worker on another agent (or towards none, while it waits for a place) —
/// or, past the last stage, the sink, which is an outlet that the job's reader drains.
#[derive(Clone)]
pub(crate) enum Slot {
    Local(Arc<Worker>),
    Outlet(Arc<Outlet>),
}

impl Slot {
    /// The worker, if the slot holds one here.
    pub(crate) fn local(&self) -> Option<&Arc<Worker>> {
        match self {
            Slot::Local(w) => Some(w),
            Slot::Outlet(_) => None,
        }
    }

    /// The queue in front of the slot.
    pub(crate) fn inbox(&self) -> &Inbox {
        match self {
            Slot::Local(worker) => &worker.inbox,
            Slot::Outlet(outlet) => &outlet.inbox,
        }
    }

    /// Whether `self` and `other` are the same slot (not merely equal ones).
    pub(crate) fn same(&self, other: &Slot) -> bool {
        match (self, other) {
            (Slot::Local(a), Slot::Local(b)) => Arc::ptr_eq(a, b),
            (Slot::Outlet(a), Slot::Outlet(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

/// What a worker needs of its pipeline: the runtime and executor it runs on, whether it may
/// still emit, and where its output goes.
pub(crate) trait Downstream: Send + Sync + 'static {
    /// The runtime that makes the worker's instances.
    fn runtime(&self) -> &Runtime;
    /// The executor's run queue the pipeline's workers are scheduled on.
    fn run_queue(&self) -> &RunQueue;
    /// Whether the pipeline has stopped.
    fn is_stopped(&self) -> bool;
    /// What the owner still wants emitted.
    fn wanted(&self) -> &Wanted;
    /// Failed calls in a row that fail a worker.
    fn max_consecutive_failures(&self) -> u32;
    /// Whether calls are timed (see [`super::PipelineConfig::time_calls`]).
    fn time_calls(&self) -> bool {
        true
    }
    /// Resolves where `batch`, leaving stage `stage - 1`, goes, part by part.
    fn route(&self, stage: usize, batch: BatchBytes, out: &mut dyn FnMut(Slot, BatchBytes));
    /// Offers `batch` to `slot`; hands it back if the slot is full under `block`.
    fn offer(&self, slot: &Slot, batch: BatchBytes) -> Option<BatchBytes>;
    /// Whether `slot` is still one of stage `stage`'s slots (the master may have moved it).
    fn is_current(&self, stage: usize, slot: &Slot) -> bool;
    /// How many worker slots stage `stage` has now.
    fn workers(&self, stage: usize) -> usize;
    /// Sends state of key groups of stage `stage` to its worker slot `owner` (see
    /// [`super::handoff`]).
    fn send_state(&self, stage: usize, owner: usize, parcel: StateParcel);
}

/// Output that could not be delivered yet, and where it goes: a slot of stage `stage` (the
/// next stage, or the worker's own for input it forwards to the owner of its key groups).
pub(crate) struct Pending {
    pub stage: usize,
    pub slot: Slot,
    pub batch: BatchBytes,
}

/// What a turn works on; locked for the length of a guest call.
struct State {
    instance: Option<StageInstance>,
    pending: VecDeque<Pending>,
    consecutive_failures: u32,
}

/// What the worker tells about itself; locked only briefly, never across a guest call.
struct Status {
    failed: Option<String>,
    last_failure: Option<(FailureKind, String)>,
    log: LogRing,
    /// The stage's own gauges, as its latest instance reported them.
    gauges: Vec<(String, f64)>,
}

pub(crate) struct Worker {
    pub stage: usize,
    pub index: usize,
    /// Which incarnation of the slot this is (the master's worker number; 0 when local-only).
    pub number: u64,
    pub inbox: Inbox,
    pub counters: Counters,
    config: Arc<StageConfig>,
    pipeline: Weak<dyn Downstream>,
    scheduled: AtomicBool,
    blocked: AtomicBool,
    has_pending: AtomicBool,
    retired: AtomicBool,
    failed: AtomicBool,
    tick_due: AtomicI64,
    state: Mutex<State>,
    status: Mutex<Status>,
    /// The stage's key fields, if its state moves with its key groups (see [`handoff`]).
    keyed: Option<Vec<String>>,
    holding: Mutex<Holding>,
    /// State parcels that arrived for this worker; `true` once it is retired (none is taken).
    parcels: Mutex<(bool, VecDeque<StateParcel>)>,
    /// Input forwarded to the owners of its key groups on other agents that did not fit yet.
    /// The worker does not wait for it (two workers forwarding to each other would wait on
    /// each other): it is retried on every turn, and the worker is woken when there is room.
    outgoing: Mutex<VecDeque<Pending>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Worker {
    /// A worker with a live instance (so that `init` errors surface at start), its tick armed.
    pub fn start<D: Downstream>(
        pipeline: &Arc<D>,
        stage: usize,
        (index, number): (usize, u64),
        config: Arc<StageConfig>,
        queue_batches: usize,
    ) -> Result<Arc<Self>, InstantiateError> {
        let instance = config.artifact.instantiate(pipeline.runtime(), &config.limits, &config.params)?;
        let downstream: Weak<dyn Downstream> = Arc::downgrade(pipeline) as Weak<D>;
        let keyed = match &config.routing {
            Routing::KeyHash { fields } if config.artifact.hands_off_state() => Some(fields.clone()),
            _ => None,
        };
        let worker = Arc::new(Worker {
            stage,
            index,
            number,
            inbox: Inbox::new(queue_batches),
            counters: Counters::default(),
            pipeline: downstream,
            scheduled: AtomicBool::new(false),
            blocked: AtomicBool::new(false),
            has_pending: AtomicBool::new(false),
            retired: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            tick_due: AtomicI64::new(0),
            state: Mutex::new(State { instance: None, pending: VecDeque::new(), consecutive_failures: 0 }),
            status: Mutex::new(Status {
                failed: None,
                last_failure: None,
                log: LogRing::with_capacity(config.limits.log_lines),
                gauges: Vec::new(),
            }),
            config,
            keyed,
            holding: Mutex::new(Holding::default()),
            parcels: Mutex::new((false, VecDeque::new())),
            outgoing: Mutex::new(VecDeque::new()),
        });
        Counters::add(&worker.counters.instances, 1);
        worker.counters.memory_bytes.store(instance.memory_bytes() as u64, Ordering::Relaxed);
        let mut instance = instance;
        instance.take_log(&mut lock(&worker.status).log);
        lock(&worker.state).instance = Some(instance);
        pipeline.run_queue().tick_at(Instant::now() + worker.config.tick, &worker);
        Ok(worker)
    }

    /// Called by a downstream inbox (or outlet) that has room again, or by the owner when a
    /// slot downstream moved.
    pub fn unblock(self: &Arc<Self>) {
        self.blocked.store(false, Ordering::SeqCst);
        if let Some(pipeline) = self.pipeline.upgrade() {
            pipeline.run_queue().schedule(self);
        }
    }

    /// Makes a tick at `now_ms` due now, outside the stage's timer (e.g. to close windows at
    /// the end of a finite input).
    pub fn tick_now(self: &Arc<Self>, exec: &RunQueue, now_ms: i64) {
        self.tick_due.store(now_ms.max(1), Ordering::Relaxed);
        exec.schedule(self);
    }

    /// Stops the worker (a scale-down, or a local replacement): no more ticks and no more calls
    /// into the stage; output it already made is still delivered (unless its incarnation is
    /// no longer wanted, see [`Wanted`]), and its inbox is for the owner to route anew.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::SeqCst);
    }

    /// Whether the worker has been retired.
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::SeqCst)
    }

    /// Whether a turn is queued or running (a batch it popped may still be on its way).
    pub fn is_busy(&self) -> bool {
        self.scheduled.load(Ordering::SeqCst)
    }

    pub fn has_pending(&self) -> bool {
        self.has_pending.load(Ordering::SeqCst)
    }

    fn has_work(&self) -> bool {
        !self.blocked.load(Ordering::SeqCst)
            && (self.has_pending()
                || (!self.is_retired()
                    && (!self.inbox.is_empty()
                        || self.tick_due.load(Ordering::Relaxed) != 0
                        || (self.keyed.is_some() && self.has_keyed_work()))))
    }

    /// One turn: deliver held output, a due tick, then input batches until [`QUANTUM`]
    /// batches or [`TURN_BUDGET`] of time, whichever comes first, so that a slow stage holds
    /// a pool thread for at most one call past the budget.
    fn turn(self: &Arc<Self>, state: &mut State, pipeline: &dyn Downstream) {
        if self.failed.load(Ordering::Relaxed) {
            self.tick_due.store(0, Ordering::Relaxed);
            while self.inbox.pop().is_some() {
                Counters::add(&self.counters.dropped_failed, 1);
            }
            return;
        }
        if !pipeline.wanted().worker(self.stage, self.index, self.number) {
            // An unwanted incarnation emits nothing more (the master replaced it).
            self.drop_pending(state);
            self.tick_due.store(0, Ordering::Relaxed);
            return;
        }
        if self.keyed.is_some() {
            // Also once retired: what it passes on to its groups' owners must still leave.
            self.flush_forwards(pipeline);
        }
        if !self.flush(state, pipeline) || self.is_retired() {
            return;
        }
        if self.keyed.is_some() {
            self.receive_parcels(state, pipeline);
        }
        let started = Instant::now();
        let now = self.tick_due.swap(0, Ordering::Relaxed);
        if now != 0 {
            self.call(state, pipeline, false, |instance| instance.tick(now));
            if !self.flush(state, pipeline) {
                return;
            }
        }
        for _ in 0..QUANTUM {
            if self.is_retired() || started.elapsed() >= TURN_BUDGET {
                return;
            }
            let released = self.keyed.as_ref().and_then(|_| lock(&self.holding).ready.pop_front());
            let batch = match released {
                Some(batch) => batch,
                None => {
                    let Some(batch) = self.inbox.pop() else { return };
                    Counters::add(&self.counters.batches_in, 1);
                    Counters::add(&self.counters.events_in, batch.len() as u64);
                    Counters::add(&self.counters.bytes_in, batch.as_bytes().len() as u64);
                    batch
                }
            };
            if self.failed.load(Ordering::Relaxed) {
                Counters::add(&self.counters.dropped_failed, 1);
                continue;
            }
            let Some(batch) = self.admit(pipeline, batch) else { continue };
            self.call(state, pipeline, true, |instance| instance.process(&batch));
            if !self.flush(state, pipeline) {
                return;
            }
        }
    }

    /// Runs one call on the instance (creating one if the last trapped), applies the failure
    /// policy, and queues the output for delivery. `process` says whether this is a
    /// `process` call (whose success starts the failure count again).
    fn call(
        &self,
        state: &mut State,
        pipeline: &dyn Downstream,
        process: bool,
        f: impl FnOnce(&mut StageInstance) -> Result<BatchBytes, CallError>,
    ) {
        if self.failed.load(Ordering::Relaxed) || !self.ensure_instance(state, pipeline) {
            return;
        }
        let Some(instance) = state.instance.as_mut() else { return };
        let result = if pipeline.time_calls() {
            let started = Instant::now();
            let result = f(instance);
            self.counters.record_call(started.elapsed());
            result
        } else {
            f(instance)
        };
        {
            let mut status = lock(&self.status);
            instance.take_log(&mut status.log);
            if !instance.gauges().is_empty() && status.gauges.as_slice() != instance.gauges() {
                status.gauges = instance.gauges().to_vec();
            }
        }
        self.counters.memory_bytes.store(instance.memory_bytes() as u64, Ordering::Relaxed);
        match result {
            Ok(output) => {
                if process {
                    state.consecutive_failures = 0;
                }
                if !output.is_empty() {
                    Counters::add(&self.counters.batches_out, 1);
                    Counters::add(&self.counters.events_out, output.len() as u64);
                    Counters::add(&self.counters.bytes_out, output.as_bytes().len() as u64);
                    let stage = self.stage + 1;
                    pipeline.route(stage, output, &mut |slot, batch| {
                        state.pending.push_back(Pending { stage, slot, batch })
                    });
                }
            }
            Err(err) => {
                let kind = match &err {
                    CallError::Trap { .. } | CallError::Poisoned => FailureKind::Trap,
                    CallError::Deadline { .. } => FailureKind::Deadline,
                    CallError::Stage { .. } => FailureKind::StageError,
                    CallError::InvalidOutput(_) => FailureKind::InvalidOutput,
                };
                if err.is_fatal() {
                    state.instance = None;
                }
                self.failure(state, pipeline, kind, err.to_string());
            }
        }
    }

    /// Makes a fresh instance if the last one was discarded; false (the failure counted) if
    /// none can be made.
    fn ensure_instance(&self, state: &mut State, pipeline: &dyn Downstream) -> bool {
        if state.instance.is_some() {
            return true;
        }
        let started = Instant::now();
        let instance = self.config.artifact.instantiate(pipeline.runtime(), &self.config.limits, &self.config.params);
        Counters::add(&self.counters.call_nanos, u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX));
        match instance {
            Ok(instance) => {
                Counters::add(&self.counters.instances, 1);
                state.instance = Some(instance);
                true
            }
            Err(err) => {
                let kind = match err {
                    InstantiateError::Trap(CallError::Deadline { .. }) => FailureKind::Deadline,
                    InstantiateError::Trap(_) => FailureKind::Trap,
                    _ => FailureKind::Init,
                };
                self.failure(state, pipeline, kind, err.to_string());
                false
            }
        }
    }

    /// Counts a failed call of the hand-off (`snapshot`, `restore`), discarding the instance
    /// if it trapped.
    fn handoff_failure(&self, state: &mut State, pipeline: &dyn Downstream, err: CallError) {
        let kind = match &err {
            CallError::Deadline { .. } => FailureKind::Deadline,
            CallError::Stage { .. } => FailureKind::StageError,
            _ => FailureKind::Trap,
        };
        if err.is_fatal() {
            state.instance = None;
        }
        self.failure(state, pipeline, kind, format!("state hand-off: {err}"));
    }

    /// Whether the worker holds no input and no state parcel (it has nothing left to do once
    /// its inbox is empty and its output delivered).
    pub fn holds_nothing(&self) -> bool {
        self.keyed.is_none()
            || (lock(&self.parcels).1.is_empty() && lock(&self.outgoing).is_empty() && {
                let holding = lock(&self.holding);
                holding.held.is_empty() && holding.ready.is_empty()
            })
    }

    /// Whether parcels or released input wait (hand-off stages only).
    fn has_keyed_work(&self) -> bool {
        !lock(&self.parcels).1.is_empty() || {
            let holding = lock(&self.holding);
            !holding.ready.is_empty() || holding.timed_out()
        }
    }

    /// Whether the worker's stage hands its keyed state over (see [`handoff`]).
    pub fn is_keyed(&self) -> bool {
        self.keyed.is_some()
    }

    /// Marks the key groups this worker gains when its stage goes to `workers` workers as
    /// pending (their input is held until their state arrives), and stops waiting for groups it
    /// no longer owns (their state, when it arrives, goes on to their owner).
    pub fn expect_groups(&self, groups: impl Iterator<Item = u32>, workers: usize) {
        if self.keyed.is_some() {
            let mut holding = lock(&self.holding);
            holding.keep_owned(self.index, workers);
            holding.expect(groups);
        }
    }

    /// Takes a state parcel for this worker; hands it back once the worker is retired.
    pub fn give_parcel(self: &Arc<Self>, parcel: StateParcel, exec: &RunQueue) -> Result<(), StateParcel> {
        let mut parcels = lock(&self.parcels);
        if parcels.0 {
            return Err(parcel);
        }
        parcels.1.push_back(parcel);
        drop(parcels);
        exec.schedule(self);
        Ok(())
    }

    /// Sorts an input batch by key group (hand-off stages only): what this worker owns and
    /// holds is returned to process; what it owns but waits for is held; the rest goes on to
    /// its owner.
    fn admit(self: &Arc<Self>, pipeline: &dyn Downstream, batch: BatchBytes) -> Option<BatchBytes> {
        let Some(fields) = &self.keyed else { return Some(batch) };
        let workers = pipeline.workers(self.stage);
        let mut holding = lock(&self.holding);
        let sorted = handoff::sort(batch, fields, self.index, workers, &holding.pending);
        if let Some(hold) = sorted.hold {
            Counters::add(&self.counters.held_events, hold.len() as u64);
            holding.held.push_back(hold);
        }
        drop(holding);
        if let Some(forward) = sorted.forward {
            Counters::add(&self.counters.forwarded_events, forward.len() as u64);
            self.forward(pipeline, forward);
        }
        sorted.now
    }

    /// Passes input on to the owners of its key groups: straight to the released input of a
    /// worker here (never refused, so that workers forwarding to each other never wait on
    /// each other), through [`Worker::flush_forwards`] to one elsewhere.
    pub(crate) fn forward(self: &Arc<Self>, pipeline: &dyn Downstream, batch: BatchBytes) {
        let stage = self.stage;
        let mut outgoing = Vec::new();
        pipeline.route(stage, batch, &mut |slot, batch| match &slot {
            Slot::Local(worker) => {
                if let Err(batch) = worker.give_forward(batch, pipeline.run_queue()) {
                    outgoing.push(Pending { stage, slot, batch });
                }
            }
            Slot::Outlet(_) => outgoing.push(Pending { stage, slot, batch }),
        });
        lock(&self.outgoing).extend(outgoing);
        self.flush_forwards(pipeline);
    }

    /// Takes input another worker of the stage forwards (its key group is this worker's now)
    /// ahead of the inbox; hands it back once the worker is retired.
    fn give_forward(self: &Arc<Self>, batch: BatchBytes, exec: &RunQueue) -> Result<(), BatchBytes> {
        let parcels = lock(&self.parcels);
        if parcels.0 {
            return Err(batch);
        }
        lock(&self.holding).ready.push_back(batch);
        drop(parcels);
        exec.schedule(self);
        Ok(())
    }

    /// Offers forwarded input that waits for room elsewhere, in order, without waiting: what
    /// does not fit stays, and the worker is woken when its slot has room.
    fn flush_forwards(self: &Arc<Self>, pipeline: &dyn Downstream) {
        let mut outgoing = lock(&self.outgoing);
        while let Some(Pending { stage, slot, batch }) = outgoing.pop_front() {
            if !pipeline.is_current(stage, &slot) {
                // The slot moved or its worker retired: route the batch anew.
                drop(outgoing);
                self.forward(pipeline, batch);
                return;
            }
            let Some(batch) = pipeline.offer(&slot, batch) else { continue };
            slot.inbox().wait(self);
            match pipeline.offer(&slot, batch) {
                None => continue,
                Some(batch) => {
                    outgoing.push_front(Pending { stage, slot, batch });
                    return;
                }
            }
        }
    }

    /// Restores the state parcels that arrived for groups this worker owns, forwards the rest,
    /// and releases the input held for groups whose state has arrived — or that waited past
    /// [`handoff::HOLD_LIMIT`].
    fn receive_parcels(&self, state: &mut State, pipeline: &dyn Downstream) {
        let parcels: Vec<StateParcel> = lock(&self.parcels).1.drain(..).collect();
        let workers = pipeline.workers(self.stage);
        let mut released = false;
        for parcel in parcels {
            for (owner, part) in parcel.split_by_owner(workers) {
                if owner != self.index {
                    pipeline.send_state(self.stage, owner, part);
                    continue;
                }
                Counters::add(&self.counters.handoff_groups_in, part.groups.len() as u64);
                Counters::add(&self.counters.handoff_bytes_in, part.state_bytes() as u64);
                if !part.parts.is_empty() && self.ensure_instance(state, pipeline) {
                    let restored = state.instance.as_mut().map(|i| i.restore(&part.parts));
                    if let Some(Err(err)) = restored {
                        self.handoff_failure(state, pipeline, err);
                    }
                }
                let mut holding = lock(&self.holding);
                let since = holding.since;
                for group in &part.groups {
                    released |= holding.arrived(*group);
                }
                if let (Some(since), true) = (since, holding.pending.is_empty()) {
                    let pause = u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX);
                    self.counters.handoff_pause_micros.store(pause, Ordering::Relaxed);
                }
            }
        }
        let mut holding = lock(&self.holding);
        if holding.timed_out() {
            let groups = holding.release_all();
            Counters::add(&self.counters.handoff_timeouts, groups as u64);
            tracing::warn!(
                stage = %self.config.name,
                worker = self.index,
                groups,
                "the state of {groups} key group(s) did not arrive within {:?}; processing their input without it",
                handoff::HOLD_LIMIT
            );
            released = true;
        }
        if released {
            let held: Vec<BatchBytes> = holding.held.drain(..).collect();
            holding.ready.extend(held);
        }
    }

    /// Hands the state of key groups `groups` (which this worker no longer owns) to their
    /// owners, between two of its calls. Groups whose own state has not reached this worker
    /// yet are left out: their parcel is forwarded when it arrives.
    pub fn hand_over(&self, pipeline: &dyn Downstream, groups: &[u32]) {
        if self.keyed.is_none() || groups.is_empty() {
            return;
        }
        let mut state = lock(&self.state);
        let groups: Vec<u32> = {
            let holding = lock(&self.holding);
            groups.iter().copied().filter(|g| !holding.pending.contains(*g)).collect()
        };
        let mut parts = Vec::new();
        if !self.failed.load(Ordering::Relaxed) && self.ensure_instance(&mut state, pipeline) {
            let taken = state.instance.as_mut().map(|i| i.snapshot(&groups));
            match taken {
                Some(Ok(taken)) => parts = taken,
                Some(Err(err)) => self.handoff_failure(&mut state, pipeline, err),
                None => {}
            }
        }
        // Only groups asked for leave, whatever the stage returned.
        parts.retain(|(g, _)| groups.contains(g));
        let parcel = StateParcel { groups, parts };
        Counters::add(&self.counters.handoff_groups_out, parcel.groups.len() as u64);
        Counters::add(&self.counters.handoff_bytes_out, parcel.state_bytes() as u64);
        for (owner, part) in parcel.split_by_owner(pipeline.workers(self.stage)) {
            pipeline.send_state(self.stage, owner, part);
        }
    }

    /// Retires a hand-off worker's inputs: takes its parcels, held and released input away (for
    /// the owner to send on) and refuses parcels from now on.
    pub fn take_keyed_leftovers(&self) -> (Vec<StateParcel>, Vec<BatchBytes>) {
        let parcels: Vec<StateParcel> = {
            let mut parcels = lock(&self.parcels);
            parcels.0 = true;
            parcels.1.drain(..).collect()
        };
        let mut holding = lock(&self.holding);
        let mut batches: Vec<BatchBytes> = holding.ready.drain(..).collect();
        batches.extend(holding.held.drain(..));
        holding.release_all();
        batches.extend(lock(&self.outgoing).drain(..).map(|p| p.batch));
        (parcels, batches)
    }

    /// Counts a failed call and fails the worker once the policy says so. A stage error is
    /// the stage's own, deliberate answer about one call: it is counted and shown, but does not
    /// count towards failing the worker.
    fn failure(&self, state: &mut State, pipeline: &dyn Downstream, kind: FailureKind, message: String) {
        self.counters.count_failure(kind);
        if kind != FailureKind::StageError {
            state.consecutive_failures += 1;
        }
        let level_warn = matches!(kind, FailureKind::Trap | FailureKind::Deadline | FailureKind::Init);
        if level_warn {
            tracing::warn!(stage = %self.config.name, worker = self.index, kind = kind.name(), %message, "stage call failed");
        } else {
            tracing::debug!(stage = %self.config.name, worker = self.index, kind = kind.name(), %message, "stage call failed");
        }
        let mut status = lock(&self.status);
        if state.consecutive_failures >= pipeline.max_consecutive_failures() {
            status.failed = Some(format!(
                "{} failed calls in a row; last ({}): {message}",
                state.consecutive_failures,
                kind.name()
            ));
            self.failed.store(true, Ordering::SeqCst);
        }
        status.last_failure = Some((kind, message));
    }

    fn drop_pending(&self, state: &mut State) {
        let held = state.pending.len() as u64;
        state.pending.clear();
        Counters::add(&self.counters.dropped_retired, held);
    }

    /// Delivers pending output in order; false (and registered as a waiter) if a slot is
    /// full under `block`. Output of an incarnation no longer wanted — also of a call that was
    /// running when it stopped being wanted — is dropped instead.
    fn flush(self: &Arc<Self>, state: &mut State, pipeline: &dyn Downstream) -> bool {
        if !pipeline.wanted().worker(self.stage, self.index, self.number) {
            self.drop_pending(state);
            return true;
        }
        while let Some(Pending { stage, slot, batch }) = state.pending.pop_front() {
            let batch = match pipeline.offer(&slot, batch) {
                None => continue,
                Some(batch) => batch,
            };
            if !pipeline.is_current(stage, &slot) {
                // The slot moved (the master re-placed its worker): route the batch anew.
                pipeline
                    .route(stage, batch, &mut |slot, batch| state.pending.push_front(Pending { stage, slot, batch }));
                continue;
            }
            // Register before retrying once, so that room made in between is not missed.
            self.blocked.store(true, Ordering::SeqCst);
            slot.inbox().wait(self);
            match pipeline.offer(&slot, batch) {
                None => self.blocked.store(false, Ordering::SeqCst),
                Some(batch) => {
                    state.pending.push_front(Pending { stage, slot, batch });
                    return false;
                }
            }
        }
        true
    }

    /// A snapshot of the worker's metrics. Never waits for a guest call.
    pub fn metrics(&self) -> WorkerMetrics {
        let mut m = metrics::snapshot(&self.counters);
        m.stage = self.config.name.clone();
        m.index = self.index;
        m.queue_depth = self.inbox.len();
        let status = lock(&self.status);
        m.failed = status.failed.clone();
        m.last_failure = status.last_failure.clone();
        m.user = status.gauges.clone();
        m
    }

    /// The worker's log: what its stage wrote, across instances, and how many lines were
    /// dropped. Never waits for a guest call.
    pub fn log(&self) -> (Vec<LogLine>, u64, u64) {
        let status = lock(&self.status);
        (status.log.lines().cloned().collect(), status.log.dropped(), self.number)
    }

    /// Offers `batch` to this worker's inbox under `policy` and schedules it.
    pub fn offer(self: &Arc<Self>, batch: BatchBytes, policy: Backpressure, exec: &RunQueue) -> Offer {
        let result = self.inbox.offer(batch, policy, &self.counters);
        exec.schedule(self);
        result
    }
}

impl Task for Worker {
    fn try_mark_scheduled(&self) -> bool {
        !self.scheduled.swap(true, Ordering::AcqRel)
    }

    fn run(self: Arc<Self>, exec: &RunQueue) {
        let Some(pipeline) = self.pipeline.upgrade() else {
            self.scheduled.store(false, Ordering::Release);
            return;
        };
        if !pipeline.is_stopped() {
            let mut state = lock(&self.state);
            self.turn(&mut state, &*pipeline);
            self.has_pending.store(!state.pending.is_empty(), Ordering::SeqCst);
        }
        self.scheduled.store(false, Ordering::SeqCst);
        if self.has_work() && !pipeline.is_stopped() {
            exec.schedule(&self);
        }
    }

    fn tick_fired(self: Arc<Self>, exec: &RunQueue, due: Instant) {
        if self.retired.load(Ordering::Relaxed) || self.pipeline.strong_count() == 0 {
            return;
        }
        self.tick_due.store(now_ms().max(1), Ordering::Relaxed);
        exec.schedule(&self);
        // Re-arm from the previous due time, so ticks do not drift; skip missed ones.
        let mut next = due + self.config.tick;
        let now = Instant::now();
        while next <= now {
            next += self.config.tick;
        }
        exec.tick_at(next, &self);
    }
}

impl Waiter for Worker {
    fn wake(self: Arc<Self>) {
        self.unblock();
    }
}

/// How long `Pipeline::drain` sleeps between checks.
pub(crate) const DRAIN_POLL: Duration = Duration::from_millis(1);
