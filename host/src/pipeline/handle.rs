//! A weak handle on a running pipeline: what the transport, the sink's reader and ingest hold.

use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use squilla_batch::BatchBytes;

use super::dataflow::{Dataflow, Pushed};
use super::handoff::StateParcel;
use super::metrics::PipelineMetrics;
use super::worker::{Downstream, Slot};

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
pub struct PipelineHandle(pub(super) Weak<Dataflow>);

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

    /// The log lines of stage `stage`'s local worker `index` (kept across its instances), and
    /// how many older lines its ring dropped, and its incarnation; `None` if that worker does
    /// not run here.
    pub fn log(&self, stage: usize, index: usize) -> Option<(Vec<crate::logs::LogLine>, u64, u64)> {
        let flow = self.0.upgrade()?;
        let worker = flow.stages.get(stage)?.slots().get(index).and_then(Slot::local).cloned()?;
        Some(worker.log())
    }

    /// A snapshot of every local worker's metrics (see [`super::Pipeline::metrics`]); `None` once
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

    /// Offers a batch that arrived for worker `index` of stage `stage`. For a stage whose
    /// state moves with its key groups, a batch for a worker no longer here (its sender had
    /// not applied a rescale yet) is routed to the owners of its keys instead.
    pub fn deliver(&self, stage: usize, index: usize, batch: BatchBytes) -> Delivery {
        let Some(flow) = self.0.upgrade() else { return Delivery::NotHere };
        let Some(s) = flow.stages.get(stage) else { return Delivery::NotHere };
        let worker = s.slots().get(index).and_then(Slot::local).cloned();
        if flow.stopped.load(Ordering::Relaxed) {
            flow.misrouted.fetch_add(1, Ordering::Relaxed);
            return Delivery::NotHere;
        }
        match worker {
            Some(worker) => match flow.offer(&Slot::Local(worker), batch) {
                None => Delivery::Accepted,
                Some(batch) => Delivery::Full(batch),
            },
            None if s.hands_off() => {
                let mut parts = Vec::new();
                flow.route(stage, batch, &mut |slot, b| parts.push((slot, b)));
                let full: Vec<BatchBytes> = parts.into_iter().filter_map(|(slot, b)| flow.offer(&slot, b)).collect();
                match rejoin(full) {
                    None => Delivery::Accepted,
                    Some(batch) => Delivery::Full(batch),
                }
            }
            None => {
                flow.misrouted.fetch_add(1, Ordering::Relaxed);
                Delivery::NotHere
            }
        }
    }

    /// Takes key-group state that arrived for worker `index` of stage `stage` (see
    /// [`super::handoff`]); state for groups whose owner is elsewhere goes on to it.
    pub fn deliver_state(&self, stage: usize, index: usize, parcel: StateParcel) {
        let Some(flow) = self.0.upgrade() else { return };
        flow.send_state(stage, index, parcel);
    }
}

/// The parts of a batch that did not fit, as one batch to offer again (re-split then).
fn rejoin(parts: Vec<BatchBytes>) -> Option<BatchBytes> {
    if parts.len() <= 1 {
        return parts.into_iter().next();
    }
    let mut builder = squilla_batch::BatchBuilder::new();
    for part in &parts {
        for event in part.view().events() {
            builder.push_ref(event);
        }
    }
    // Archiving events of valid batches cannot fail short of the 2 GiB limit.
    builder.finish().ok()
}
