//! Per-worker counters, updated with relaxed atomics on the hot path and read as snapshots,
//! and the metrics of a whole pipeline made from them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Buckets of the processing-time histogram: bucket `i` counts calls that took less than
/// `2^i` µs (the last bucket counts the rest), so 1 µs to ~16 s in 25 buckets.
pub const HISTOGRAM_BUCKETS: usize = 25;

/// Why a call into a stage failed, as counted per worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailureKind {
    /// The guest trapped (the instance was discarded).
    Trap,
    /// The call passed its CPU deadline and was interrupted (the instance was discarded).
    Deadline,
    /// The stage returned an error for the call.
    StageError,
    /// The stage returned bytes that are not a valid batch.
    InvalidOutput,
    /// A fresh instance could not be created or its `init` failed.
    Init,
}

impl FailureKind {
    /// Every kind, in the order of [`WorkerMetrics::failures`].
    pub const ALL: [FailureKind; 5] = [
        FailureKind::Trap,
        FailureKind::Deadline,
        FailureKind::StageError,
        FailureKind::InvalidOutput,
        FailureKind::Init,
    ];

    /// The kind's stable name, as the API shows it (`trap`, `deadline`, `stage-error`,
    /// `invalid-output`, `init`).
    pub fn name(self) -> &'static str {
        match self {
            FailureKind::Trap => "trap",
            FailureKind::Deadline => "deadline",
            FailureKind::StageError => "stage-error",
            FailureKind::InvalidOutput => "invalid-output",
            FailureKind::Init => "init",
        }
    }

    fn index(self) -> usize {
        FailureKind::ALL.iter().position(|k| *k == self).unwrap_or(0)
    }
}

#[derive(Default)]
pub(crate) struct Counters {
    pub events_in: AtomicU64,
    pub batches_in: AtomicU64,
    pub bytes_in: AtomicU64,
    pub events_out: AtomicU64,
    pub batches_out: AtomicU64,
    pub bytes_out: AtomicU64,
    pub dropped_oldest: AtomicU64,
    pub dropped_newest: AtomicU64,
    pub dropped_failed: AtomicU64,
    pub dropped_retired: AtomicU64,
    pub dropped_events: AtomicU64,
    pub failed_calls: AtomicU64,
    pub failures: [AtomicU64; 5],
    pub traps: AtomicU64,
    pub instances: AtomicU64,
    pub memory_bytes: AtomicU64,
    pub histogram: [AtomicU64; HISTOGRAM_BUCKETS],
    pub call_nanos: AtomicU64,
    pub held_events: AtomicU64,
    pub forwarded_events: AtomicU64,
    pub handoff_groups_out: AtomicU64,
    pub handoff_bytes_out: AtomicU64,
    pub handoff_groups_in: AtomicU64,
    pub handoff_bytes_in: AtomicU64,
    pub handoff_timeouts: AtomicU64,
    pub handoff_pause_micros: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts one failed call of `kind`.
    pub fn count_failure(&self, kind: FailureKind) {
        Self::add(&self.failed_calls, 1);
        Self::add(&self.failures[kind.index()], 1);
        if matches!(kind, FailureKind::Trap | FailureKind::Deadline) {
            Self::add(&self.traps, 1);
        }
    }

    pub fn record_call(&self, took: Duration) {
        Self::add(&self.call_nanos, u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
        let micros = took.as_micros() as u64;
        let bucket = (u64::BITS - micros.leading_zeros()) as usize;
        self.histogram[bucket.min(HISTOGRAM_BUCKETS - 1)].fetch_add(1, Ordering::Relaxed);
    }
}

/// A snapshot of one worker's metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkerMetrics {
    /// The worker's stage.
    pub stage: String,
    /// Its index in the stage.
    pub index: usize,
    /// Events and batches it received (processed or not).
    pub events_in: u64,
    /// Batches it received.
    pub batches_in: u64,
    /// Bytes of the batches it received (their archived size).
    pub bytes_in: u64,
    /// Events it emitted.
    pub events_out: u64,
    /// Batches it emitted.
    pub batches_out: u64,
    /// Bytes of the batches it emitted.
    pub bytes_out: u64,
    /// Batches dropped from its full input queue to make room (`drop-oldest`).
    pub dropped_oldest: u64,
    /// Batches refused by its full input queue (`drop-newest`).
    pub dropped_newest: u64,
    /// Batches dropped because the worker had failed.
    pub dropped_failed: u64,
    /// Output batches dropped because the worker's incarnation was no longer wanted (the
    /// master had replaced it) before they could be delivered.
    pub dropped_retired: u64,
    /// Events in the batches a full input queue dropped (`drop-oldest`, `drop-newest`).
    pub dropped_events: u64,
    /// Calls that failed (traps, passed deadlines, stage errors, invalid output, failed
    /// re-instantiation).
    pub failed_calls: u64,
    /// Failed calls by [`FailureKind`], in the order of [`FailureKind::ALL`].
    pub failures: [u64; 5],
    /// The last failure: its kind and message.
    pub last_failure: Option<(FailureKind, String)>,
    /// Calls that trapped or passed the deadline (each discarded the instance).
    pub traps: u64,
    /// Instances created (1 plus one per trap replaced).
    pub instances: u64,
    /// Batches waiting in its input queue.
    pub queue_depth: usize,
    /// Linear memory of its current instance, in bytes.
    pub memory_bytes: u64,
    /// Processing-time histogram, see [`HISTOGRAM_BUCKETS`].
    pub call_micros_log2: Vec<u64>,
    /// Time spent in calls into the guest (`init`, `process`, `tick`), ns: the CPU time the
    /// worker's tenant code used, since a call runs on one pool thread from start to end.
    pub call_nanos: u64,
    /// Why the worker failed, if it did.
    pub failed: Option<String>,
    /// What moving key groups' state (see `pipeline::handoff`) did at this worker.
    pub handoff: HandOffMetrics,
    /// The gauges the stage reports about itself (`metrics.gauge` in the WIT), by name.
    pub user: Vec<(String, f64)>,
}

/// What state hand-off did at one worker (zero for stages that do not hand state over).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HandOffMetrics {
    /// Events held while their key group's state was on its way here.
    pub held_events: u64,
    /// Events passed on to the worker that owns their key group (sent here by a sender that had
    /// not applied the latest rescale yet).
    pub forwarded_events: u64,
    /// Key groups handed to other workers, and bytes of their state.
    pub groups_out: u64,
    /// Bytes of state handed to other workers.
    pub bytes_out: u64,
    /// Key groups received from other workers.
    pub groups_in: u64,
    /// Bytes of state received.
    pub bytes_in: u64,
    /// Key groups given up on after waiting [`crate::pipeline::HOLD_LIMIT`] for their state.
    pub timeouts: u64,
    /// How long the last hand-off into this worker held its groups' input, µs.
    pub last_pause_micros: u64,
}

impl WorkerMetrics {
    /// Every batch dropped on the way into this worker, whatever the reason.
    pub fn dropped(&self) -> u64 {
        self.dropped_oldest + self.dropped_newest + self.dropped_failed + self.dropped_retired
    }

    /// The upper bound, in µs, under which `quantile` (0 to 1) of the calls finished.
    pub fn call_micros_quantile(&self, quantile: f64) -> u64 {
        let total: u64 = self.call_micros_log2.iter().sum();
        let target = (total as f64 * quantile).ceil() as u64;
        let mut seen = 0;
        for (i, n) in self.call_micros_log2.iter().enumerate() {
            seen += n;
            if seen >= target && *n > 0 {
                return 1 << i;
            }
        }
        0
    }
}

/// Metrics of a whole pipeline.
#[derive(Debug, Clone, Default)]
pub struct PipelineMetrics {
    /// Per stage, per local worker.
    pub stages: Vec<Vec<WorkerMetrics>>,
    /// Batches dropped at the sink because nobody read them in time (`drop-*` policies).
    pub sink_dropped: u64,
    /// Batches waiting at the sink.
    pub sink_depth: usize,
    /// Batches dropped on the way to other agents (full outlets under `drop-*`, broken
    /// connections) or arriving for a worker no longer here.
    pub remote_dropped: u64,
    /// Batches dropped because the agent's lease had run out (see [`crate::Lease`]).
    pub fenced: u64,
}

impl PipelineMetrics {
    /// Batches dropped anywhere in the pipeline.
    pub fn dropped(&self) -> u64 {
        self.sink_dropped
            + self.remote_dropped
            + self.fenced
            + self.stages.iter().flatten().map(WorkerMetrics::dropped).sum::<u64>()
    }
}

pub(crate) fn snapshot(counters: &Counters) -> WorkerMetrics {
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    WorkerMetrics {
        events_in: get(&counters.events_in),
        batches_in: get(&counters.batches_in),
        bytes_in: get(&counters.bytes_in),
        events_out: get(&counters.events_out),
        batches_out: get(&counters.batches_out),
        bytes_out: get(&counters.bytes_out),
        dropped_oldest: get(&counters.dropped_oldest),
        dropped_newest: get(&counters.dropped_newest),
        dropped_failed: get(&counters.dropped_failed),
        dropped_retired: get(&counters.dropped_retired),
        dropped_events: get(&counters.dropped_events),
        failed_calls: get(&counters.failed_calls),
        failures: std::array::from_fn(|i| get(&counters.failures[i])),
        traps: get(&counters.traps),
        instances: get(&counters.instances),
        memory_bytes: get(&counters.memory_bytes),
        call_micros_log2: counters.histogram.iter().map(get).collect(),
        call_nanos: get(&counters.call_nanos),
        handoff: HandOffMetrics {
            held_events: get(&counters.held_events),
            forwarded_events: get(&counters.forwarded_events),
            groups_out: get(&counters.handoff_groups_out),
            bytes_out: get(&counters.handoff_bytes_out),
            groups_in: get(&counters.handoff_groups_in),
            bytes_in: get(&counters.handoff_bytes_in),
            timeouts: get(&counters.handoff_timeouts),
            last_pause_micros: get(&counters.handoff_pause_micros),
        },
        ..WorkerMetrics::default()
    }
}
