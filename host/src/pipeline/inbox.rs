//! A bounded, lock-free queue of batches with a backpressure policy and wake-ups.
//!
//! Every worker's input is an `Inbox`, and so is the job's sink. Producers never block on
//! it: under `block` a full inbox refuses the batch and the producer keeps it as pending
//! output, registers as a *waiter*, and stops taking input; the inbox's consumer wakes its
//! waiters each time it takes a batch out. Under `drop-oldest` / `drop-newest` a full inbox
//! makes room or refuses, and the drop is counted against the inbox's owner.
//!
//! Waiters are [`Waiter`]s, a trait defined here and implemented by the workers, so that an
//! inbox knows nothing of them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crossbeam_queue::ArrayQueue;
use squilla_batch::BatchBytes;
use squilla_types::Backpressure;

use super::metrics::Counters;

/// A producer that waits for room in an inbox (a worker holding output for it).
pub(crate) trait Waiter: Send + Sync + 'static {
    /// The inbox it waited on had a batch taken out: it may offer again.
    fn wake(self: Arc<Self>);
}

/// What happened to an offered batch.
pub(crate) enum Offer {
    /// Queued, after dropping the oldest queued batch of `evicted` events (`drop-oldest`,
    /// counted) when the inbox was full.
    Queued {
        /// Events of the batch dropped to make room (0: none was).
        evicted: usize,
    },
    /// Refused and dropped (`drop-newest`, counted): it held `events` events.
    Dropped {
        /// Events of the refused batch.
        events: usize,
    },
    /// Refused and handed back (`block`): the producer must keep it and wait.
    Full(BatchBytes),
}

pub(crate) struct Inbox {
    queue: ArrayQueue<BatchBytes>,
    waiters: Mutex<Vec<Weak<dyn Waiter>>>,
    has_waiters: AtomicBool,
}

impl Inbox {
    pub fn new(capacity: usize) -> Self {
        Inbox {
            queue: ArrayQueue::new(capacity.max(1)),
            waiters: Mutex::new(Vec::new()),
            has_waiters: AtomicBool::new(false),
        }
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Offers `batch` under `policy`, counting drops in `counters`.
    pub fn offer(&self, batch: BatchBytes, policy: Backpressure, counters: &Counters) -> Offer {
        match policy {
            Backpressure::Block => match self.queue.push(batch) {
                Ok(()) => Offer::Queued { evicted: 0 },
                Err(batch) => Offer::Full(batch),
            },
            Backpressure::DropOldest => match self.queue.force_push(batch) {
                Some(old) => {
                    Counters::add(&counters.dropped_oldest, 1);
                    Counters::add(&counters.dropped_events, old.len() as u64);
                    Offer::Queued { evicted: old.len() }
                }
                None => Offer::Queued { evicted: 0 },
            },
            Backpressure::DropNewest => match self.queue.push(batch) {
                Ok(()) => Offer::Queued { evicted: 0 },
                Err(batch) => {
                    Counters::add(&counters.dropped_newest, 1);
                    Counters::add(&counters.dropped_events, batch.len() as u64);
                    Offer::Dropped { events: batch.len() }
                }
            },
        }
    }

    /// Takes the oldest batch, waking producers waiting for room.
    pub fn pop(&self) -> Option<BatchBytes> {
        let batch = self.queue.pop()?;
        self.wake();
        Some(batch)
    }

    /// Registers `waiter` to be woken when a batch is taken out.
    pub fn wait<W: Waiter>(&self, waiter: &Arc<W>) {
        let mut waiters = self.waiters.lock().expect("waiters lock");
        if !waiters.iter().any(|w| std::ptr::addr_eq(w.as_ptr(), Arc::as_ptr(waiter))) {
            let weak: Weak<dyn Waiter> = Arc::downgrade(waiter) as Weak<W>;
            waiters.push(weak);
        }
        self.has_waiters.store(true, Ordering::SeqCst);
    }

    /// Wakes every waiting producer (a worker is then scheduled on its own pipeline's
    /// executor).
    pub fn wake(&self) {
        if !self.has_waiters.load(Ordering::SeqCst) {
            return;
        }
        let waiters = {
            let mut waiters = self.waiters.lock().expect("waiters lock");
            self.has_waiters.store(false, Ordering::SeqCst);
            std::mem::take(&mut *waiters)
        };
        for waiter in waiters.iter().filter_map(Weak::upgrade) {
            waiter.wake();
        }
    }
}
