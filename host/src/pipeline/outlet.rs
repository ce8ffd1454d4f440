//! An outlet: a bounded queue that something other than a local worker drains — the
//! transport, for a worker slot that runs on another agent, or the job's reader, for the
//! pipeline's sink.
//!
//! To the workers of the stage before, an outlet is one more inbox: they offer batches to it
//! under the job's backpressure policy and, under `block`, wait on it until it has room. On
//! the other side the transport takes batches out when the receiving agent has granted
//! credit, so a slow receiver fills the outlet and slows (or, under `drop-*`, thins) the
//! sender exactly as a slow local worker would; a slow reader of the sink does the same.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use squilla_batch::BatchBytes;
use squilla_types::Backpressure;

use super::handoff::StateParcel;
use super::inbox::{Inbox, Offer};
use super::metrics::Counters;

/// The sending end of a remote worker slot (or of the pipeline, at its sink).
pub struct Outlet {
    pub(crate) inbox: Inbox,
    pub(crate) counters: Counters,
    /// Key-group state on its way to the worker (see `pipeline::handoff`): sent ahead of
    /// batches, outside the credit that paces them.
    states: std::sync::Mutex<std::collections::VecDeque<StateParcel>>,
    notify: Box<dyn Fn() + Send + Sync>,
}

impl std::fmt::Debug for Outlet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outlet").field("queued", &self.inbox.len()).finish()
    }
}

impl Outlet {
    /// An outlet holding up to `capacity` batches; `notify` is called after every offer (the
    /// transport uses it to wake its sender, the sink to wake its reader).
    pub fn new(capacity: usize, notify: impl Fn() + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(Outlet {
            inbox: Inbox::new(capacity),
            counters: Counters::default(),
            states: Default::default(),
            notify: Box::new(notify),
        })
    }

    /// An outlet nobody drains: the slot of a worker that waits for a place. Under `block` the
    /// stage before waits for it; under `drop-*` what it would get is dropped, counted.
    pub fn detached(capacity: usize) -> Arc<Self> {
        Self::new(capacity, || {})
    }

    /// Queues key-group state for the worker behind the outlet.
    pub fn send_state(&self, parcel: StateParcel) {
        self.states.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push_back(parcel);
        (self.notify)();
    }

    /// Takes the oldest key-group state waiting to be sent.
    pub fn take_state(&self) -> Option<StateParcel> {
        self.states.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pop_front()
    }

    /// Takes the oldest batch, waking producers that wait for room.
    pub fn take(&self) -> Option<BatchBytes> {
        self.inbox.pop()
    }

    /// Whether nothing waits to be sent.
    pub fn is_empty(&self) -> bool {
        self.inbox.is_empty()
    }

    /// Batches waiting to be sent.
    pub fn len(&self) -> usize {
        self.inbox.len()
    }

    /// Batches dropped here (full under `drop-*`, or lost with a broken connection).
    pub fn dropped(&self) -> u64 {
        self.counters.dropped_oldest.load(Ordering::Relaxed) + self.counters.dropped_newest.load(Ordering::Relaxed)
    }

    /// Counts `n` batches lost on the way (a connection that broke while they were in flight).
    pub fn count_lost(&self, n: u64) {
        Counters::add(&self.counters.dropped_newest, n);
    }

    /// Offers `batch` under `policy`.
    pub(crate) fn offer(&self, batch: BatchBytes, policy: Backpressure) -> Offer {
        let result = self.inbox.offer(batch, policy, &self.counters);
        (self.notify)();
        result
    }
}
