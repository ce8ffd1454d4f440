//! Jobs on the agent's data plane: stages chained through bounded queues on the shared
//! thread pool, with routing, backpressure, failure policy and metrics.

use squilla_types::time::now_ms;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use squilla_batch::{BatchBuilder, Event, ValueRef};
use squilla_host::Executor;
use squilla_host::pipeline::{Pipeline, PipelineConfig, PipelineMetrics, StageConfig};
use squilla_host::{Artifact, Limits};
use squilla_types::{Backpressure, Routing};

use crate::{batch, example, runtime};

/// One executor for the test binary, sized to the cores, as an agent has.
pub(crate) fn executor() -> &'static Arc<Executor> {
    static EXECUTOR: OnceLock<Arc<Executor>> = OnceLock::new();
    EXECUTOR.get_or_init(|| Executor::start(0).expect("executor threads"))
}

fn program(name: &str) -> Artifact {
    Artifact::compile(runtime(), &squilla_guests::read(name)).unwrap()
}

pub(crate) fn stage(
    name: &str,
    artifact: Artifact,
    params: &[(&str, &str)],
    workers: usize,
    routing: Routing,
) -> StageConfig {
    StageConfig {
        name: name.into(),
        artifact,
        params: params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        workers,
        routing,
        limits: Limits::default(),
        tick: Duration::from_millis(50),
    }
}

pub(crate) fn start(stages: Vec<StageConfig>, backpressure: Backpressure) -> Pipeline {
    Pipeline::start(runtime(), executor(), PipelineConfig::new("test", stages, backpressure)).unwrap()
}

/// Reads output until `done` says so or `timeout` passes; returns every event read.
fn collect(pipeline: &Pipeline, timeout: Duration, mut done: impl FnMut(&[Event]) -> bool) -> Vec<Event> {
    let deadline = Instant::now() + timeout;
    let mut events = Vec::new();
    while !done(&events) && Instant::now() < deadline {
        if let Some(b) = pipeline.recv(Duration::from_millis(20)) {
            events.extend(b.view().to_events());
        }
    }
    events
}

fn keep_all(workers: usize, routing: Routing) -> StageConfig {
    stage("keep", example("filter"), &[("field", "device-type"), ("op", "exists")], workers, routing)
}

#[test]
fn a_three_stage_job_produces_the_expected_aggregates() {
    // filter → keyed rolling window (2 workers, key-hash) → sink.
    let mut pipeline = start(
        vec![
            stage("parse", example("filter"), &[("field", "status"), ("op", "exists")], 2, Routing::RoundRobin),
            stage(
                "error-rate",
                example("device-errors"),
                &[("window-ms", "60000")],
                2,
                Routing::KeyHash { fields: vec!["device-type".into()] },
            ),
        ],
        Backpressure::Block,
    );
    let now = now_ms();
    // tv: 40 requests, 10 errors; phone: 30, 3; console: 20, 20 — spread over 10 batches.
    let mut expected = BTreeMap::new();
    for (device, requests, errors) in [("tv", 40, 10), ("phone", 30, 3), ("console", 20, 20)] {
        expected.insert(device.to_string(), (requests as i64, errors as i64));
    }
    for b in 0..10 {
        let mut builder = BatchBuilder::new();
        for (device, &(requests, errors)) in &expected {
            for i in 0..requests / 10 {
                let n = b * (requests / 10) + i;
                let status = if n < errors { 500 } else { 200 };
                builder.event(now - 1000 + n).field("device-type", device.as_str()).field("status", status);
            }
        }
        builder.event(now).field("no-status", true);
        assert!(pipeline.push(builder.finish().unwrap()));
    }
    let mut latest: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    collect(&pipeline, Duration::from_secs(10), |events| {
        for e in events {
            let device = e.get("device-type").unwrap().to_string();
            latest.insert(
                device,
                (e.get("requests").unwrap().as_int().unwrap(), e.get("errors").unwrap().as_int().unwrap()),
            );
        }
        latest == expected
    });
    assert_eq!(latest, expected);
    let m = pipeline.metrics();
    assert_eq!(m.stages[0].iter().map(|w| w.events_in).sum::<u64>(), 100);
    assert_eq!(m.stages[0].iter().map(|w| w.events_out).sum::<u64>(), 90);
    assert_eq!(m.stages[1].iter().map(|w| w.events_in).sum::<u64>(), 90);
    assert_eq!(m.dropped(), 0);
    pipeline.stop(Duration::from_secs(1));
}

#[test]
fn key_hash_routing_sends_every_event_of_a_key_to_one_worker() {
    // top-titles grouped by country on 4 workers, fed 1,000 events of 5 countries.
    let top = stage(
        "top",
        example("top-titles"),
        &[("n", "1"), ("window-ms", "3600000")],
        4,
        Routing::KeyHash { fields: vec!["country".into()] },
    );
    let mut pipeline = start(vec![top], Backpressure::Block);
    let hour = now_ms() / 3_600_000 * 3_600_000;
    let mut plays: HashMap<String, i64> = HashMap::new();
    for b in 0..20 {
        let mut builder = BatchBuilder::new();
        for i in 0..50 {
            let country = squilla_batch::synth::COUNTRIES[(b * 7 + i) % 5];
            builder.event(hour - 1).field("country", country).field("title", "Dark");
            *plays.entry(country.to_string()).or_default() += 1;
        }
        pipeline.push(builder.finish().unwrap());
    }
    assert!(pipeline.drain(Duration::from_secs(5)));
    let per_worker: Vec<u64> = pipeline.metrics().stages[0].iter().map(|w| w.events_in).collect();
    assert_eq!(per_worker.iter().sum::<u64>(), 1000);
    // Each country's 200 events landed whole on one worker: every worker count is a sum of
    // whole countries' totals.
    let totals: Vec<u64> = plays.values().map(|&p| p as u64).collect();
    for count in per_worker {
        let fits = (0..1u32 << totals.len()).any(|mask| {
            totals.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, t)| t).sum::<u64>() == count
        });
        assert!(fits, "a worker received {count} events, which splits a key");
    }
    pipeline.stop(Duration::from_secs(1));
}

#[test]
fn broadcast_reaches_every_worker() {
    let mut pipeline = start(vec![keep_all(3, Routing::Broadcast)], Backpressure::Block);
    pipeline.push(batch(&(0..10).map(|i| Event::new(i).with("device-type", "tv")).collect::<Vec<_>>()));
    let events = collect(&pipeline, Duration::from_secs(5), |e| e.len() >= 30);
    assert_eq!(events.len(), 30);
    assert!(pipeline.metrics().stages[0].iter().all(|w| w.events_in == 10));
    pipeline.stop(Duration::from_secs(1));
}

#[test]
fn a_slow_stage_under_block_loses_nothing_and_queues_stay_bounded() {
    let slow = stage("slow", program("slow"), &[("delay-us", "2000")], 1, Routing::RoundRobin);
    let config = PipelineConfig {
        queue_batches: 4,
        sink_batches: 4,
        ..PipelineConfig::new("slow", vec![slow], Backpressure::Block)
    };
    let pipeline = Arc::new(Pipeline::start(runtime(), executor(), config).unwrap());
    let producer = {
        let pipeline = pipeline.clone();
        std::thread::spawn(move || {
            let mut generator = squilla_batch::synth::DeviceLogs::new(3);
            for i in 0..100 {
                assert!(pipeline.push(generator.batch(10, i, 1).unwrap()));
            }
        })
    };
    let mut received = 0;
    let mut deepest = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while received < 1000 && Instant::now() < deadline {
        let m: PipelineMetrics = pipeline.metrics();
        deepest = deepest.max(m.stages[0][0].queue_depth).max(m.sink_depth);
        std::thread::sleep(Duration::from_millis(1)); // a slowish reader
        if let Some(b) = pipeline.recv(Duration::from_millis(10)) {
            received += b.len();
        }
    }
    producer.join().unwrap();
    assert_eq!(received, 1000, "block must lose nothing");
    assert_eq!(pipeline.metrics().dropped(), 0);
    assert!(deepest <= 4, "a queue held {deepest} batches past its capacity of 4");
}

#[test]
fn drop_oldest_counts_its_drops_and_keeps_up() {
    let slow = stage("slow", program("slow"), &[("delay-us", "5000")], 1, Routing::RoundRobin);
    let config =
        PipelineConfig { queue_batches: 4, ..PipelineConfig::new("drop", vec![slow], Backpressure::DropOldest) };
    let pipeline = Pipeline::start(runtime(), executor(), config).unwrap();
    let started = Instant::now();
    let mut generator = squilla_batch::synth::DeviceLogs::new(4);
    for i in 0..200 {
        pipeline.push(generator.batch(10, i, 1).unwrap());
    }
    let pushing = started.elapsed();
    // 200 batches at 5 ms each would take a second; the source must not have waited for them.
    assert!(pushing < Duration::from_millis(500), "pushing took {pushing:?}");
    assert!(pipeline.drain(Duration::from_secs(5)));
    let mut received = 0;
    while let Some(b) = pipeline.recv(Duration::from_millis(100)) {
        received += b.len() as u64 / 10;
    }
    let m = pipeline.metrics();
    let worker = &m.stages[0][0];
    assert!(worker.dropped_oldest > 0);
    assert_eq!(received + worker.dropped_oldest, 200, "every batch is either delivered or counted as dropped");
}

/// Runs a neighbour job while `hostile` traps on every batch: the neighbour's output stays
/// complete and in order, and the hostile worker ends failed after 5 failures in a row (the
/// default policy) with `reason`; what reaches it after that is dropped, counted.
fn contained_beside_a_neighbour(hostile: StageConfig, reason: &str) {
    let mut bad = start(vec![hostile], Backpressure::Block);
    let mut good = start(vec![keep_all(1, Routing::RoundRobin)], Backpressure::Block);
    for i in 0..7 {
        bad.push(batch(&[Event::new(i).with("spin", true)]));
        good.push(batch(&[Event::new(i).with("device-type", "tv")]));
    }
    let events = collect(&good, Duration::from_secs(10), |e| e.len() >= 7);
    assert_eq!(events.iter().map(|e| e.timestamp_ms).collect::<Vec<_>>(), [0, 1, 2, 3, 4, 5, 6]);
    assert!(bad.drain(Duration::from_secs(10)));
    let worker = bad.metrics().stages[0][0].clone();
    assert_eq!((worker.traps, worker.dropped_failed), (5, 2), "{worker:?}");
    let failed = worker.failed.expect("the worker failed");
    assert!(failed.starts_with("5 failed calls in a row; last (") && failed.contains(reason), "{failed}");
    assert_eq!(good.metrics().stages[0][0].failed_calls, 0);
    bad.stop(Duration::ZERO);
    good.stop(Duration::from_secs(1));
}

#[test]
fn an_endless_loop_is_contained_beside_a_neighbour() {
    let mut spin = stage("spin", program("spin"), &[], 1, Routing::RoundRobin);
    spin.limits.call_deadline = Duration::from_millis(50);
    contained_beside_a_neighbour(spin, "stage exceeded its 50 ms CPU deadline");
}

#[test]
fn a_memory_bomb_is_contained_beside_a_neighbour() {
    let mut bomb = stage("bomb", program("memory-bomb"), &[], 1, Routing::RoundRobin);
    bomb.limits.memory_bytes = 16 << 20;
    contained_beside_a_neighbour(bomb, "stage trapped: worker memory limit of 16 MiB exceeded");
}

#[test]
fn deep_recursion_is_contained_beside_a_neighbour() {
    let deep = stage("deep", program("deep-recursion"), &[], 1, Routing::RoundRobin);
    contained_beside_a_neighbour(deep, "stage trapped: wasm trap: call stack exhausted");
}

#[test]
fn a_workers_log_outlives_its_instances() {
    let errors = stage("rate", example("device-errors"), &[], 1, Routing::RoundRobin);
    let mut pipeline = start(vec![errors], Backpressure::Block);
    pipeline.push(batch(&[Event::new(now_ms()).with("no-status", true)]));
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut lines = Vec::new();
    while lines.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        lines = pipeline.log(0, 0).unwrap().0;
    }
    assert_eq!(lines[0].message, "skipped 1 events without `device-type` and `status`");
    pipeline.stop(Duration::from_secs(1));
}

#[test]
fn scaling_a_stage_adds_and_removes_workers_without_losing_input() {
    let mut pipeline = start(vec![keep_all(1, Routing::RoundRobin)], Backpressure::Block);
    pipeline.scale(0, 3).unwrap();
    assert_eq!(pipeline.workers(0), 3);
    for i in 0..30 {
        pipeline.push(batch(&[Event::new(i).with("device-type", "tv")]));
    }
    pipeline.scale(0, 1).unwrap();
    assert_eq!(pipeline.workers(0), 1);
    for i in 30..40 {
        pipeline.push(batch(&[Event::new(i).with("device-type", "tv")]));
    }
    let events = collect(&pipeline, Duration::from_secs(5), |e| e.len() >= 40);
    let mut seen: Vec<i64> = events.iter().map(|e| e.timestamp_ms).collect();
    seen.sort();
    assert_eq!(seen, (0..40).collect::<Vec<_>>());
    pipeline.stop(Duration::from_secs(1));
}

#[test]
fn a_synthetic_source_feeds_a_job_at_its_rate() {
    let mut pipeline = start(vec![keep_all(2, Routing::RoundRobin)], Backpressure::Block);
    let mut source = squilla_host::pipeline::SyntheticSource::at_rate(20_000);
    source.limit = Some(5_000);
    pipeline.start_synthetic(source).unwrap();
    let started = Instant::now();
    let events = collect(&pipeline, Duration::from_secs(5), |e| e.len() >= 5_000);
    assert_eq!(events.len(), 5_000);
    // 5,000 events at 20,000/s: about a quarter of a second, not all at once.
    assert!(started.elapsed() >= Duration::from_millis(200), "{:?}", started.elapsed());
    assert!(events.iter().all(|e| matches!(e.get("device-type"), Some(ValueRef::Text(_)))));
    pipeline.stop(Duration::from_secs(1));
}

#[test]
fn stage_metrics_count_batches_and_call_times() {
    let mut pipeline = start(vec![keep_all(1, Routing::RoundRobin)], Backpressure::Block);
    for i in 0..10 {
        pipeline.push(batch(&[Event::new(i).with("device-type", "tv"), Event::new(i).with("x", 1i64)]));
    }
    collect(&pipeline, Duration::from_secs(5), |e| e.len() >= 10);
    let w = &pipeline.metrics().stages[0][0];
    assert_eq!((w.batches_in, w.events_in, w.batches_out, w.events_out), (10, 20, 10, 10));
    assert_eq!(w.instances, 1);
    assert!(w.memory_bytes > 0);
    assert!(w.call_micros_log2.iter().sum::<u64>() >= 10);
    assert!(w.call_micros_quantile(0.5) > 0);
    pipeline.stop(Duration::from_secs(1));
}

#[test]
fn an_incarnation_no_longer_wanted_emits_nothing_not_even_its_running_call() {
    let wanted = Arc::new(squilla_host::pipeline::Wanted::everything());
    let slow = stage("slow", program("slow"), &[("delay-us", "300000")], 1, Routing::RoundRobin);
    let config =
        PipelineConfig { wanted: wanted.clone(), ..PipelineConfig::new("fenced", vec![slow], Backpressure::Block) };
    let pipeline = Pipeline::start(runtime(), executor(), config).unwrap();
    pipeline.push(batch(&[Event::new(1).with("device-type", "tv")]));
    assert!(pipeline.recv(Duration::from_secs(5)).is_some(), "a wanted worker emits");
    pipeline.push(batch(&[Event::new(2).with("device-type", "tv")]));
    // The call is running (300 ms) when the owner learns that the master replaced the worker.
    std::thread::sleep(Duration::from_millis(100));
    wanted.set(HashMap::new(), vec![1], true);
    assert!(pipeline.recv(Duration::from_secs(1)).is_none(), "output of the replaced incarnation was emitted");
    assert!(pipeline.metrics().stages[0][0].dropped_retired >= 1);
    // A slot past its stage's count (a scale-down removed it) may still deliver what it made.
    wanted.set(HashMap::new(), vec![0], true);
    assert!(wanted.worker(0, 0, 1));
    wanted.set(HashMap::new(), vec![1], true);
    // A stopped pipeline takes nothing from its source either.
    wanted.stop();
    assert!(!pipeline.push(batch(&[Event::new(3)])));
}
