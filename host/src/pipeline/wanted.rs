//! What the pipeline's owner still wants to emit: which worker incarnations, whether the
//! source, whether anything at all.
//!
//! The master's plan reaches an agent's dispatcher at once but reaches the job's own thread
//! (which starts, replaces and stops workers) only when that thread is free — it may be in a
//! stage's `init`, or compiling. So the dispatcher writes the plan's verdict here, before the
//! agent's lease is renewed, and the pipeline consults it on every exit: a worker whose
//! incarnation is no longer wanted emits nothing (its output, even of a call already running,
//! is dropped and counted), a source no longer wanted feeds nothing, and a stopped pipeline
//! emits nothing at all. A pipeline without an owner that cares wants everything
//! ([`Wanted::everything`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{PoisonError, RwLock};

/// The plan's verdict on workers: the wanted number of each local `(stage, index)`, and how
/// many slots each stage has.
type Plan = (HashMap<(usize, usize), u64>, Vec<usize>);

/// The incarnations, source and liveness a pipeline's owner still wants; see the module docs.
#[derive(Debug)]
pub struct Wanted {
    /// `None`: every worker; else the wanted number of each local `(stage, index)`, and how
    /// many slots each stage has in the plan.
    slots: RwLock<Option<Plan>>,
    source: AtomicBool,
    stopped: AtomicBool,
}

impl Wanted {
    /// Everything wanted, for ever (until [`Wanted::stop`]).
    pub fn everything() -> Self {
        Wanted { slots: RwLock::new(None), source: AtomicBool::new(true), stopped: AtomicBool::new(false) }
    }

    /// Wants exactly these local incarnations (`(stage, index) -> number`) of the plan's
    /// slots (`counts[stage]` per stage) and, if `source`, the source. A worker whose slot is
    /// past its stage's count was removed by a scale-down, not replaced: what it made before it
    /// stops may still go (its keyed state moved on; its last windows did not).
    pub fn set(&self, slots: HashMap<(usize, usize), u64>, counts: Vec<usize>, source: bool) {
        *self.slots.write().unwrap_or_else(PoisonError::into_inner) = Some((slots, counts));
        self.source.store(source, Ordering::SeqCst);
    }

    /// Wants nothing more from the pipeline, for good.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
    }

    /// Whether the pipeline was stopped.
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// Whether worker incarnation `number` of slot `(stage, index)` may emit.
    pub fn worker(&self, stage: usize, index: usize, number: u64) -> bool {
        if self.is_stopped() {
            return false;
        }
        match &*self.slots.read().unwrap_or_else(PoisonError::into_inner) {
            None => true,
            Some((slots, counts)) => {
                slots.get(&(stage, index)) == Some(&number) || counts.get(stage).is_some_and(|n| index >= *n)
            }
        }
    }

    /// Whether the source may feed the pipeline.
    pub fn source(&self) -> bool {
        !self.is_stopped() && self.source.load(Ordering::SeqCst)
    }
}

impl Default for Wanted {
    fn default() -> Self {
        Self::everything()
    }
}
