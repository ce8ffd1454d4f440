//! A running job's data flow on this agent: its stages' slots, its sink, and the routing and
//! offering of batches between them, shared by the [`super::Pipeline`], its workers (as their
//! [`Downstream`]) and every [`super::PipelineHandle`].

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use squilla_batch::BatchBytes;
use squilla_types::Backpressure;

use super::config::StageConfig;
use super::handoff::StateParcel;
use super::inbox::Offer;
use super::metrics::PipelineMetrics;
use super::outlet::Outlet;
use super::route;
use super::wanted::Wanted;
use super::worker::{Downstream, Slot, Worker};
use crate::engine::Runtime;
use crate::executor::RunQueue;
use crate::lease::Lease;

/// A stage of a running job: its config, its worker slots, and the round-robin cursor.
pub(crate) struct Stage {
    pub(super) config: Arc<StageConfig>,
    pub(super) slots: RwLock<Vec<Slot>>,
    next: AtomicUsize,
}

impl Stage {
    pub(super) fn new(config: StageConfig) -> Self {
        Stage { config: Arc::new(config), slots: RwLock::new(Vec::new()), next: AtomicUsize::new(0) }
    }

    /// The stage's slots, read-locked.
    pub(super) fn slots(&self) -> std::sync::RwLockReadGuard<'_, Vec<Slot>> {
        self.slots.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the stage's keyed state moves with its key groups when it is rescaled: it is
    /// routed by key and its artifact exports `keyed-state`.
    pub(super) fn hands_off(&self) -> bool {
        matches!(self.config.routing, squilla_types::Routing::KeyHash { .. }) && self.config.artifact.hands_off_state()
    }

    /// The workers of the stage that run here.
    pub(super) fn locals(&self) -> Vec<Arc<Worker>> {
        self.slots().iter().filter_map(Slot::local).cloned().collect()
    }
}

/// A running job's data flow (see the module docs).
pub(crate) struct Dataflow {
    pub(super) name: String,
    pub(super) runtime: Runtime,
    pub(super) exec: Arc<RunQueue>,
    pub(super) backpressure: Backpressure,
    pub(super) max_consecutive_failures: u32,
    pub(super) stopped: AtomicBool,
    pub(super) lease: Arc<Lease>,
    pub(super) queue_batches: usize,
    pub(super) time_calls: bool,
    /// See [`super::PipelineConfig::rescaled_from`].
    pub(super) rescaled_from: Vec<usize>,
    pub(super) stages: Vec<Stage>,
    /// Where the last stage's output goes: an outlet that [`Dataflow::recv`] drains.
    pub(super) sink: Arc<Outlet>,
    /// Notified on every offer to the sink, for [`Dataflow::recv`] to wait on.
    pub(super) sink_ready: Arc<(Mutex<()>, Condvar)>,
    pub(super) misrouted: AtomicU64,
    pub(super) fenced: AtomicU64,
    /// What the owner still wants emitted.
    pub(super) wanted: Arc<Wanted>,
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

impl Dataflow {
    /// The sink's outlet, and what it notifies on every offer (for [`Dataflow::recv`]).
    pub(super) fn sink(capacity: usize) -> (Arc<Outlet>, Arc<(Mutex<()>, Condvar)>) {
        let ready = Arc::new((Mutex::new(()), Condvar::new()));
        let notify = ready.clone();
        let sink = Outlet::new(capacity, move || {
            let _guard = notify.0.lock().unwrap_or_else(PoisonError::into_inner);
            notify.1.notify_all();
        });
        (sink, ready)
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

    /// Offers `batch` to `slot`, saying what was dropped. While the lease has run out,
    /// nothing leaves: the batch is dropped (as `Dropped`) and counted as fenced.
    fn offer_counted(&self, slot: &Slot, batch: BatchBytes) -> Offer {
        if self.fenced() {
            return Offer::Dropped { events: batch.len() };
        }
        match slot {
            Slot::Local(worker) => worker.offer(batch, self.backpressure, &self.exec),
            Slot::Outlet(outlet) => outlet.offer(batch, self.backpressure),
        }
    }

    /// The next output batch, waiting up to `timeout`. Batches that reached the sink before
    /// the lease ran out are not handed out while it has: they are dropped, counted.
    pub(super) fn recv(&self, timeout: Duration) -> Option<BatchBytes> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(batch) = self.sink.take() {
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
    pub(super) fn push(&self, batch: BatchBytes, deadline: Option<Instant>, cancel: Option<&AtomicBool>) -> Pushed {
        let mut outcome = Pushed { taken: true, dropped_events: 0 };
        if !self.wanted.source() {
            // A source the owner no longer wants here (it moved, or the job stopped) feeds nothing.
            return Pushed { taken: false, dropped_events: batch.len() as u64 };
        }
        let mut parts = Vec::new();
        self.route(0, batch, &mut |slot, batch| parts.push((slot, batch)));
        while let Some((slot, mut batch)) = parts.pop() {
            let mut backoff = Duration::from_micros(10);
            loop {
                match self.offer_counted(&slot, batch) {
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
                if !self.is_current(0, &slot) {
                    // The slot moved while we waited: route the batch anew.
                    self.route(0, batch, &mut |slot, batch| parts.push((slot, batch)));
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

    /// A snapshot of every local worker's metrics and the sink's.
    pub(super) fn metrics(&self) -> PipelineMetrics {
        let mut outlets = 0;
        for s in &self.stages {
            for slot in s.slots().iter() {
                if let Slot::Outlet(o) = slot {
                    outlets += o.dropped();
                }
            }
        }
        PipelineMetrics {
            stages: self.stages.iter().map(|s| s.locals().iter().map(|w| w.metrics()).collect()).collect(),
            sink_dropped: self.sink.dropped(),
            sink_depth: self.sink.len(),
            remote_dropped: outlets + self.misrouted.load(Ordering::Relaxed),
            fenced: self.fenced.load(Ordering::Relaxed),
        }
    }
}

impl Downstream for Dataflow {
    fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    fn run_queue(&self) -> &RunQueue {
        &self.exec
    }

    fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    fn wanted(&self) -> &Wanted {
        &self.wanted
    }

    fn max_consecutive_failures(&self) -> u32 {
        self.max_consecutive_failures
    }

    fn time_calls(&self) -> bool {
        self.time_calls
    }

    fn route(&self, stage: usize, batch: BatchBytes, out: &mut dyn FnMut(Slot, BatchBytes)) {
        match self.stages.get(stage) {
            None => out(Slot::Outlet(self.sink.clone()), batch),
            Some(s) => route::split(&s.config.routing, &s.next, &s.slots(), batch, &mut |slot, b| out(slot.clone(), b)),
        }
    }

    fn offer(&self, slot: &Slot, batch: BatchBytes) -> Option<BatchBytes> {
        match self.offer_counted(slot, batch) {
            Offer::Full(batch) => Some(batch),
            Offer::Queued { .. } | Offer::Dropped { .. } => None,
        }
    }

    fn is_current(&self, stage: usize, slot: &Slot) -> bool {
        match self.stages.get(stage) {
            None => matches!(slot, Slot::Outlet(o) if Arc::ptr_eq(o, &self.sink)),
            Some(s) => s.slots().iter().any(|current| current.same(slot)),
        }
    }

    fn workers(&self, stage: usize) -> usize {
        self.stages.get(stage).map_or(0, |s| s.slots().len())
    }

    fn send_state(&self, stage: usize, owner: usize, parcel: StateParcel) {
        let Some(s) = self.stages.get(stage) else { return };
        let slot = s.slots().get(owner).cloned();
        let parcel = match slot {
            Some(Slot::Local(worker)) => match worker.give_parcel(parcel, &self.exec) {
                Ok(()) => return,
                // Retired since the slot was read: send it by the current slots.
                Err(parcel) => parcel,
            },
            Some(Slot::Outlet(outlet)) => return outlet.send_state(parcel),
            None => parcel,
        };
        let workers = self.workers(stage);
        if workers == 0 {
            return;
        }
        for (owner, part) in parcel.split_by_owner(workers) {
            let lost = match s.slots().get(owner).cloned() {
                Some(Slot::Local(worker)) => worker.give_parcel(part, &self.exec).is_err(),
                Some(Slot::Outlet(outlet)) => {
                    outlet.send_state(part);
                    false
                }
                None => false,
            };
            if lost {
                tracing::warn!(job = %self.name, stage, owner, "key-group state lost: its worker retired twice while it travelled");
            }
        }
    }
}
