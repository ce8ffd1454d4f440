//! `GET /metrics`: this agent's per-worker metrics in the Prometheus text exposition format,
//! written with the `prometheus-client` crate from the same snapshots the heartbeats read
//! (relaxed atomics; no lock on any worker). A fresh registry per scrape: the series are the
//! workers running now, so a stopped job's series disappear with it.
//!
//! Labels are `tenant`, `job`, `stage` and `worker` (the index in the stage): at most one
//! series per metric per local worker, so cardinality is bounded by the agent's slots.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Registry, Unit};
use squilla_host::CacheStats;
use squilla_host::pipeline::metrics::HISTOGRAM_BUCKETS;
use squilla_host::pipeline::{FailureKind, PipelineMetrics};
use squilla_types::ids::JobKey;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabels {
    tenant: String,
    job: String,
    stage: String,
    worker: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    tenant: String,
    job: String,
    stage: String,
    worker: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    tenant: String,
    job: String,
    stage: String,
    worker: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    tenant: String,
    job: String,
}

/// A worker's call-time histogram as the pipeline counts it (bucket `i`: under `2^i` µs),
/// exposed as a Prometheus histogram in seconds. Its sum is the worker's guest time, which
/// also counts instantiations.
#[derive(Debug, Default)]
struct CallHistogram {
    sum_nanos: AtomicU64,
    buckets: [AtomicU64; HISTOGRAM_BUCKETS],
}

impl CallHistogram {
    fn set(&self, sum_nanos: u64, buckets: &[u64]) {
        self.sum_nanos.store(sum_nanos, Ordering::Relaxed);
        for (b, n) in self.buckets.iter().zip(buckets) {
            b.store(*n, Ordering::Relaxed);
        }
    }
}

impl TypedMetric for CallHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for CallHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        let buckets: Vec<(f64, u64)> = counts
            .iter()
            .enumerate()
            .map(|(i, n)| (if i + 1 == HISTOGRAM_BUCKETS { f64::MAX } else { (1u64 << i) as f64 / 1e6 }, *n))
            .collect();
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, counts.iter().sum(), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// The exposition of `jobs`' metrics and the agent's compile cache's.
pub(crate) fn render(
    jobs: &[(JobKey, PipelineMetrics)],
    sinks: &[(JobKey, crate::sink::SinkStats)],
    cache: CacheStats,
) -> String {
    let mut registry = Registry::with_prefix("squilla");
    let counter = |registry: &mut Registry, name: &str, help: &str| {
        let family = Family::<WorkerLabels, Counter>::default();
        registry.register(name, help, family.clone());
        family
    };
    let events_in = counter(&mut registry, "worker_events_in", "Events a worker received");
    let events_out = counter(&mut registry, "worker_events_out", "Events a worker emitted");
    let batches_in = counter(&mut registry, "worker_batches_in", "Batches a worker received");
    let batches_out = counter(&mut registry, "worker_batches_out", "Batches a worker emitted");
    let bytes_in = counter(&mut registry, "worker_bytes_in", "Bytes of the batches a worker received");
    let bytes_out = counter(&mut registry, "worker_bytes_out", "Bytes of the batches a worker emitted");
    let dropped_events = counter(
        &mut registry,
        "worker_dropped_events",
        "Events in the batches a worker's full input queue dropped (drop-oldest, drop-newest)",
    );
    let traps = counter(&mut registry, "worker_traps", "Calls that trapped or passed their deadline");
    let failed_calls = counter(&mut registry, "worker_failed_calls", "Calls into a worker's stage that failed");
    let guest_cpu = Family::<WorkerLabels, Counter<f64, AtomicU64>>::default();
    registry.register_with_unit(
        "worker_guest_cpu",
        "Time a worker's tenant code ran (instantiation and calls)",
        Unit::Seconds,
        guest_cpu.clone(),
    );
    let calls = Family::<WorkerLabels, CallHistogram>::default();
    registry.register_with_unit(
        "worker_call_duration",
        "Time per call into a worker's stage (process, tick)",
        Unit::Seconds,
        calls.clone(),
    );
    let instances =
        counter(&mut registry, "worker_instances_created", "Instances created for a worker (1 plus one per trap)");
    let handoff_groups = counter(
        &mut registry,
        "worker_handoff_groups_out",
        "Key groups a worker handed to other workers when its stage was rescaled",
    );
    let handoff_bytes =
        counter(&mut registry, "worker_handoff_state_bytes_out", "Bytes of key-group state a worker handed over");
    let held = counter(&mut registry, "worker_held_events", "Events held while their key group's state travelled");
    let forwarded = counter(
        &mut registry,
        "worker_forwarded_events",
        "Events a worker passed on to the owner of their key group (sent by a sender behind a rescale)",
    );
    let handoff_timeouts = counter(
        &mut registry,
        "worker_handoff_timeouts",
        "Key groups a worker stopped waiting for after the hold limit (their state was lost)",
    );
    let dropped = Family::<DropLabels, Counter>::default();
    registry.register("worker_dropped_batches", "Batches dropped on the way into a worker, by reason", dropped.clone());
    let failures = Family::<FailureLabels, Counter>::default();
    registry.register("worker_failures", "Failed calls into a worker's stage, by kind", failures.clone());
    let queue = Family::<WorkerLabels, Gauge>::default();
    registry.register("worker_queue_batches", "Batches waiting in a worker's input queue", queue.clone());
    let memory = Family::<WorkerLabels, Gauge>::default();
    registry.register("worker_memory_bytes", "Linear memory of a worker's current instance", memory.clone());
    let sink_dropped = Family::<JobLabels, Counter>::default();
    registry.register(
        "job_sink_dropped_batches",
        "Batches dropped at a job's sink on this agent",
        sink_dropped.clone(),
    );
    let remote_dropped = Family::<JobLabels, Counter>::default();
    registry.register(
        "job_remote_dropped_batches",
        "Batches dropped on the way to or from other agents",
        remote_dropped.clone(),
    );
    let pulls = Family::<JobLabels, Counter>::default();
    registry.register(
        "job_pull_dropped_events",
        "Events of a job's output here dropped for other jobs' sources that did not keep up",
        pulls.clone(),
    );
    let subscribers = Family::<JobLabels, Gauge>::default();
    registry.register(
        "job_sink_subscribers",
        "Streams of a job's output served here (to the master, gateways or programs)",
        subscribers.clone(),
    );
    let pullers = Family::<JobLabels, Gauge>::default();
    registry.register("job_sink_pullers", "Other jobs' sources pulling a job's output here", pullers.clone());
    for (key, stats) in sinks {
        let labels = JobLabels { tenant: key.tenant.to_string(), job: key.job.to_string() };
        pulls.get_or_create(&labels).inc_by(stats.pull_dropped);
        subscribers.get_or_create(&labels).set(i64::try_from(stats.subscribers).unwrap_or(i64::MAX));
        pullers.get_or_create(&labels).set(i64::try_from(stats.pullers).unwrap_or(i64::MAX));
    }
    let workers = Gauge::<i64>::default();
    registry.register("agent_workers", "Workers running on this agent", workers.clone());
    let cache_hits = Counter::<u64>::default();
    registry.register(
        "agent_compile_cache_hits",
        "Components answered from the compile cache (memory or disk)",
        cache_hits.clone(),
    );
    cache_hits.inc_by(cache.hits + cache.loaded);
    let compiled = Counter::<u64>::default();
    registry.register("agent_compiled", "Components compiled from wasm", compiled.clone());
    compiled.inc_by(cache.compiled);

    let mut count = 0i64;
    for (key, metrics) in jobs {
        let (tenant, job) = (key.tenant.to_string(), key.job.to_string());
        let job_labels = JobLabels { tenant: tenant.clone(), job: job.clone() };
        sink_dropped.get_or_create(&job_labels).inc_by(metrics.sink_dropped);
        remote_dropped.get_or_create(&job_labels).inc_by(metrics.remote_dropped + metrics.fenced);
        for w in metrics.stages.iter().flatten() {
            count += 1;
            let labels = WorkerLabels {
                tenant: tenant.clone(),
                job: job.clone(),
                stage: w.stage.clone(),
                worker: w.index.to_string(),
            };
            events_in.get_or_create(&labels).inc_by(w.events_in);
            events_out.get_or_create(&labels).inc_by(w.events_out);
            batches_in.get_or_create(&labels).inc_by(w.batches_in);
            batches_out.get_or_create(&labels).inc_by(w.batches_out);
            bytes_in.get_or_create(&labels).inc_by(w.bytes_in);
            bytes_out.get_or_create(&labels).inc_by(w.bytes_out);
            traps.get_or_create(&labels).inc_by(w.traps);
            dropped_events.get_or_create(&labels).inc_by(w.dropped_events);
            failed_calls.get_or_create(&labels).inc_by(w.failed_calls);
            guest_cpu.get_or_create(&labels).inc_by(w.call_nanos as f64 / 1e9);
            calls.get_or_create(&labels).set(w.call_nanos, &w.call_micros_log2);
            instances.get_or_create(&labels).inc_by(w.instances);
            queue.get_or_create(&labels).set(i64::try_from(w.queue_depth).unwrap_or(i64::MAX));
            memory.get_or_create(&labels).set(i64::try_from(w.memory_bytes).unwrap_or(i64::MAX));
            handoff_groups.get_or_create(&labels).inc_by(w.handoff.groups_out);
            handoff_bytes.get_or_create(&labels).inc_by(w.handoff.bytes_out);
            held.get_or_create(&labels).inc_by(w.handoff.held_events);
            forwarded.get_or_create(&labels).inc_by(w.handoff.forwarded_events);
            handoff_timeouts.get_or_create(&labels).inc_by(w.handoff.timeouts);
            for (reason, n) in [
                ("oldest", w.dropped_oldest),
                ("newest", w.dropped_newest),
                ("failed", w.dropped_failed),
                ("retired", w.dropped_retired),
            ] {
                let l = DropLabels {
                    tenant: tenant.clone(),
                    job: job.clone(),
                    stage: w.stage.clone(),
                    worker: labels.worker.clone(),
                    reason,
                };
                dropped.get_or_create(&l).inc_by(n);
            }
            for (kind, n) in FailureKind::ALL.iter().zip(w.failures) {
                let l = FailureLabels {
                    tenant: tenant.clone(),
                    job: job.clone(),
                    stage: w.stage.clone(),
                    worker: labels.worker.clone(),
                    kind: kind.name(),
                };
                failures.get_or_create(&l).inc_by(n);
            }
        }
    }
    workers.set(count);
    let mut text = String::new();
    // Writing to a `String` cannot fail.
    let _ = encode(&mut text, &registry);
    text
}
