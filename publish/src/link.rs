//! One gateway a publisher is connected to: what its subscribers want, the events waiting
//! for it, and whether it feeds the jobs reading the stream.
//!
//! A publisher with several gateways sends each the events *its* subscribers want, so a
//! subscriber at any gateway sees every publisher's events. Jobs reading the stream are known
//! to every gateway, but each publisher feeds them through one gateway only, its *primary*
//! (the first connected one in an order rotated per publisher, so that publishers spread
//! over the gateways): its filter adds the jobs' filters, and its sends leave
//! `x-squilla-jobs` unset; the others' sends say `x-squilla-jobs: false`, and those gateways
//! give those events to their subscribers only. A job then gets each event once while the
//! primary stays; when it changes, the events of one flush interval may reach a job twice or
//! not at all.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use squilla_batch::BatchBuilder;
use squilla_query::{Prefilter, Query};

/// One query a gateway announced.
#[derive(Debug, Clone)]
pub(crate) struct Wanted {
    /// `None`: every event.
    pub query: Option<Arc<Query>>,
    /// A job's source filter (taken only by the primary), not a subscriber's query.
    pub job: bool,
}

/// One gateway.
pub(crate) struct Link {
    /// The gateway's base URL.
    pub gateway: String,
    /// The source named in the batches sent.
    source: String,
    /// Whether this gateway wants any event now.
    pub active: AtomicBool,
    pub filter: RwLock<Prefilter>,
    pub pending: Mutex<BatchBuilder>,
    /// Whether the control connection has said what is subscribed.
    pub connected: AtomicBool,
    /// What the gateway last announced.
    pub wanted: Mutex<Vec<Wanted>>,
    /// Whether this gateway feeds the reading jobs (see the module's docs).
    pub primary: AtomicBool,
    /// Distinct queries in the filter now.
    pub subscriptions: AtomicU64,
    /// When the control connection last said something, Unix ms.
    pub last_line: AtomicI64,
    /// Drops not yet reported to this gateway.
    pub unreported: AtomicU64,
    /// Why the control connection last failed, and whether the gateway refused (answered an
    /// error status) rather than the network failing; cleared by the next line.
    pub failure: Mutex<Option<(String, bool)>>,
}

impl Link {
    pub(crate) fn new(gateway: String, stream: &str) -> Link {
        let source = format!("publish:{stream}");
        Link {
            gateway,
            active: AtomicBool::new(false),
            filter: RwLock::new(Prefilter::default()),
            pending: Mutex::new(BatchBuilder::new().source(source.clone())),
            source,
            connected: AtomicBool::new(false),
            wanted: Mutex::default(),
            primary: AtomicBool::new(false),
            subscriptions: AtomicU64::new(0),
            last_line: AtomicI64::new(0),
            unreported: AtomicU64::new(0),
            failure: Mutex::default(),
        }
    }

    /// An empty batch for this gateway.
    pub(crate) fn builder(&self) -> BatchBuilder {
        BatchBuilder::new().source(self.source.clone())
    }

    /// Builds the filter again from what the gateway announced and whether it is the primary;
    /// whether it wants anything.
    pub(crate) fn rebuild(&self) -> bool {
        let primary = self.primary.load(Ordering::Relaxed);
        let wanted = self.wanted.lock().unwrap_or_else(PoisonError::into_inner);
        let taken: Vec<Option<Arc<Query>>> =
            wanted.iter().filter(|w| primary || !w.job).map(|w| w.query.clone()).collect();
        let n = taken.len();
        let filter = Prefilter::new(taken);
        let active = !filter.is_empty();
        *self.filter.write().unwrap_or_else(PoisonError::into_inner) = filter;
        self.subscriptions.store(n as u64, Ordering::Relaxed);
        self.active.store(active, Ordering::Release);
        active
    }
}
