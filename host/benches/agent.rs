//! The agent benchmark: prints one JSON document with
//!
//! - `throughput`: a 3-stage job (filter `status` exists → filter `status` ≥ 500 →
//!   `device-errors`, key-hashed, 2 workers) fed pre-built batches of 1,024 synthetic events
//!   as fast as it takes them, on the agent's thread pool; and the same three stages called
//!   one after the other on one thread, as Wasm and as the same Rust compiled natively;
//! - `latency`: source→sink p50/p99 through three pass-through stages at 10 % and 50 % of
//!   the measured pass-through rate;
//! - `instantiate`: p50/p99 of creating a worker (instance + `init`) from a cached artifact;
//! - `idle_memory`: memory (PSS) per idle worker with 10,000 workers of 1,000 jobs;
//! - `metrics`: the 3-stage job with per-call timing and frequent metric reads, against neither,
//!   in alternating rounds (`SQUILLA_BENCH=metrics` runs only this, `=idle` only `idle_memory`,
//!   `=instantiate` only `instantiate`,
//!   `=report` all but `latency` and `metrics`);
//! - `epoch`: single-thread Wasm throughput with epoch interruption on and off.
//!
//! Run: `cargo bench --workspace --bench agent` (about a minute). Every loop is bounded.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use squilla_batch::synth::DeviceLogs;
use squilla_batch::{BatchBuilder, BatchBytes};
use squilla_host::pipeline::{Pipeline, PipelineConfig, StageConfig};
use squilla_host::{Artifact, Executor, Limits, Runtime, RuntimeConfig, StageInstance};
use squilla_sdk::{Params, Stage};
use squilla_types::{Backpressure, Routing};

const BATCH: usize = 1024;

fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn stages() -> [(&'static str, Vec<(String, String)>); 3] {
    [
        ("filter", params(&[("field", "status"), ("op", "exists")])),
        ("filter", params(&[("field", "status"), ("op", "ge"), ("value", "500")])),
        ("device-errors", params(&[("window-ms", "30000")])),
    ]
}

fn batches(n: usize) -> Vec<BatchBytes> {
    let mut generator = DeviceLogs::new(42);
    (0..n).map(|i| generator.batch(BATCH, i as i64, 0).unwrap()).collect()
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

/// Events/s through the three stages called in sequence on this thread, in Wasm.
fn wasm_direct(runtime: &Runtime, input: &[BatchBytes]) -> f64 {
    let mut chain: Vec<StageInstance> = stages()
        .iter()
        .map(|(name, p)| {
            let artifact = Artifact::compile(runtime, &squilla_guests::read(name)).unwrap();
            artifact.instantiate(runtime, &Limits::default(), p).unwrap()
        })
        .collect();
    let started = Instant::now();
    for batch in input {
        let mut b = batch.clone();
        for stage in &mut chain {
            b = stage.process(&b).unwrap();
        }
    }
    (input.len() * BATCH) as f64 / started.elapsed().as_secs_f64()
}

/// The same, with the example crates compiled natively and called through the SDK trait the
/// way the SDK's glue calls a guest (input registered, whole pass-through returns the input).
fn native_direct(input: &[BatchBytes]) -> f64 {
    let [(_, p1), (_, p2), (_, p3)] = stages();
    let mut f1 = filter::Filter::init(&Params::new(p1)).unwrap();
    let mut f2 = filter::Filter::init(&Params::new(p2)).unwrap();
    let mut de = device_errors::DeviceErrors::init(&Params::new(p3)).unwrap();
    let started = Instant::now();
    for batch in input {
        let b1 = native(&mut f1, batch);
        let b2 = native(&mut f2, &b1);
        std::hint::black_box(native(&mut de, &b2));
    }
    (input.len() * BATCH) as f64 / started.elapsed().as_secs_f64()
}

fn native(stage: &mut impl squilla_sdk::Stage, batch: &BatchBytes) -> BatchBytes {
    let view = batch.view();
    squilla_batch::live::with_input(batch, || {
        let mut out = BatchBuilder::with_capacity(view.len());
        stage.process(view, &mut out).unwrap();
        if !view.is_empty() && out.is_copy_of(&view) {
            return batch.clone();
        }
        out.finish().unwrap()
    })
}

fn stage_config(
    runtime: &Runtime,
    name: &str,
    p: Vec<(String, String)>,
    workers: usize,
    routing: Routing,
) -> StageConfig {
    StageConfig {
        name: name.into(),
        artifact: Artifact::compile(runtime, &squilla_guests::read(name)).unwrap(),
        params: p,
        workers,
        routing,
        limits: Limits::default(),
        tick: Duration::from_secs(1),
    }
}

/// Events/s through the 3-stage job on the executor.
fn pipeline_throughput(runtime: &Runtime, executor: &Executor, input: &[BatchBytes]) -> f64 {
    pipeline_run(runtime, executor, input, true, false)
}

/// The 3-stage job with per-call timing on or off (`time_calls`), and with `read_metrics` its
/// metrics read after every 16 batches pushed (far more often than heartbeats and scrapes).
fn pipeline_run(
    runtime: &Runtime,
    executor: &Executor,
    input: &[BatchBytes],
    time_calls: bool,
    read_metrics: bool,
) -> f64 {
    let [(n1, p1), (n2, p2), (n3, p3)] = stages();
    let config = PipelineConfig::new(
        "bench",
        vec![
            stage_config(runtime, n1, p1, 2, Routing::RoundRobin),
            stage_config(runtime, n2, p2, 2, Routing::RoundRobin),
            stage_config(runtime, n3, p3, 2, Routing::KeyHash { fields: vec!["device-type".into()] }),
        ],
        Backpressure::Block,
    );
    let config = PipelineConfig { time_calls, ..config };
    let mut pipeline = Pipeline::start(runtime, executor, config).unwrap();
    let started = Instant::now();
    let mut read = 0u64;
    for (i, batch) in input.iter().enumerate() {
        pipeline.push(batch.clone());
        if read_metrics && i % 16 == 0 {
            read += pipeline.metrics().stages.iter().flatten().map(|w| w.events_in).sum::<u64>();
        }
    }
    std::hint::black_box(read);
    assert!(pipeline.drain(Duration::from_secs(60)));
    let rate = (input.len() * BATCH) as f64 / started.elapsed().as_secs_f64();
    pipeline.stop(Duration::ZERO);
    rate
}

/// Pass-through rate and latencies at `fractions` of it, through three keep-all stages.
fn latency(runtime: &Runtime, executor: &Executor, fractions: &[f64]) -> serde_json::Value {
    let keep = || params(&[("field", "device-type"), ("op", "exists")]);
    let make = || {
        let config = PipelineConfig::new(
            "latency",
            vec![
                stage_config(runtime, "filter", keep(), 1, Routing::RoundRobin),
                stage_config(runtime, "filter", keep(), 1, Routing::RoundRobin),
                stage_config(runtime, "filter", keep(), 1, Routing::RoundRobin),
            ],
            Backpressure::Block,
        );
        Pipeline::start(runtime, executor, config).unwrap()
    };
    const SMALL: usize = 64;
    let mut generator = DeviceLogs::new(9);
    let probe = |generator: &mut DeviceLogs, k: i64| {
        let mut builder = BatchBuilder::with_capacity(SMALL);
        builder.event(0).field("device-type", "probe").field("probe", k);
        generator.fill(&mut builder, SMALL - 1, 0, 0);
        builder.finish().unwrap()
    };
    // Capacity: push as fast as possible, read concurrently.
    let pipeline = make();
    let input: Vec<BatchBytes> = (0..3000).map(|k| probe(&mut generator, k)).collect();
    let started = Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| {
            for b in &input {
                pipeline.push(b.clone());
            }
        });
        let mut got = 0;
        while got < input.len() * SMALL && started.elapsed() < Duration::from_secs(30) {
            if let Some(b) = pipeline.recv(Duration::from_millis(100)) {
                got += b.len();
            }
        }
    });
    let capacity = (input.len() * SMALL) as f64 / started.elapsed().as_secs_f64();
    drop(pipeline);

    let mut results = serde_json::Map::new();
    results.insert("passthrough_events_per_s".into(), json!(capacity.round()));
    for &fraction in fractions {
        let pipeline = make();
        let rate = capacity * fraction;
        let interval = Duration::from_secs_f64(SMALL as f64 / rate);
        let count = ((2.0 / interval.as_secs_f64()) as usize).clamp(200, 5000);
        let batches: Vec<BatchBytes> = (0..count).map(|k| probe(&mut generator, k as i64)).collect();
        let mut latencies: Vec<Duration> = std::thread::scope(|s| {
            let pipeline = &pipeline;
            let producer = s.spawn(move || {
                let start = Instant::now();
                let mut sent = Vec::with_capacity(count);
                for (k, b) in batches.into_iter().enumerate() {
                    let due = start + interval * k as u32;
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    sent.push(Instant::now());
                    pipeline.push(b);
                }
                sent
            });
            let mut arrivals = Vec::with_capacity(count);
            let deadline = Instant::now() + Duration::from_secs(30);
            while arrivals.len() < count && Instant::now() < deadline {
                if let Some(b) = pipeline.recv(Duration::from_millis(100)) {
                    let now = Instant::now();
                    for e in b.view().events() {
                        if let Some(k) = e.int("probe") {
                            arrivals.push((k as usize, now));
                        }
                    }
                }
            }
            let sent = producer.join().unwrap();
            arrivals.iter().map(|(k, at)| at.duration_since(sent[*k])).collect()
        });
        latencies.sort();
        results.insert(
            format!("at_{}pct", (fraction * 100.0) as u32),
            json!({
                "events_per_s": rate.round(),
                "batches": latencies.len(),
                "p50_us": percentile(&latencies, 0.5).round(),
                "p99_us": percentile(&latencies, 0.99).round(),
            }),
        );
    }
    serde_json::Value::Object(results)
}

fn instantiate(runtime: &Runtime) -> serde_json::Value {
    let artifact = Artifact::compile(runtime, &squilla_guests::read("filter")).unwrap();
    let p = params(&[("field", "status"), ("op", "exists")]);
    let mut times = Vec::with_capacity(2000);
    for _ in 0..2000 {
        let started = Instant::now();
        let instance = artifact.instantiate(runtime, &Limits::default(), &p).unwrap();
        times.push(started.elapsed());
        drop(instance);
    }
    times.sort();
    json!({ "p50_us": percentile(&times, 0.5), "p99_us": percentile(&times, 0.99), "pooling": runtime.is_pooling() })
}

/// Resident and proportional set sizes of this process, in bytes. Idle workers are counted by
/// PSS: each maps its stage's copy-on-write image, whose shared pages RSS would count again for
/// every worker (16 KiB a worker for `filter`) though they are in memory once.
fn memory_bytes() -> (u64, u64) {
    let rollup = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap_or_default();
    let field = |name: &str| -> u64 {
        let line = rollup.lines().find(|l| l.starts_with(name)).unwrap_or_default();
        line.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()).unwrap_or(0) * 1024
    };
    (field("Rss:"), field("Pss:"))
}

/// Jobs of 10 workers each started for `idle_memory` (10,000 workers).
const IDLE_JOBS: usize = 1_000;

fn idle_memory(executor: &Executor) -> serde_json::Value {
    let max_instances = (IDLE_JOBS * 10 + 100) as u32;
    let runtime = Runtime::new(RuntimeConfig { max_instances, ..Default::default() }).unwrap();
    let artifact = Artifact::compile(&runtime, &squilla_guests::read("filter")).unwrap();
    let (rss_before, before) = memory_bytes();
    let started = Instant::now();
    let jobs: Vec<Pipeline> = (0..IDLE_JOBS)
        .map(|t| {
            let stage = StageConfig {
                name: format!("tenant-{t}"),
                artifact: artifact.clone(),
                params: params(&[("field", "status"), ("op", "exists")]),
                workers: 10,
                routing: Routing::RoundRobin,
                limits: Limits::default(),
                tick: Duration::from_secs(60),
            };
            Pipeline::start(
                &runtime,
                executor,
                PipelineConfig::new(format!("job-{t}"), vec![stage], Backpressure::Block),
            )
            .unwrap()
        })
        .collect();
    let start_seconds = started.elapsed().as_secs_f64();
    let (rss_after, after) = memory_bytes();
    let workers: usize = jobs.iter().map(|j| j.workers(0)).sum();
    let per_worker = after.saturating_sub(before) / workers as u64;
    let rss_per_worker = rss_after.saturating_sub(rss_before) / workers as u64;
    drop(jobs);
    json!({ "workers": workers, "jobs": IDLE_JOBS, "pss_delta_bytes": after.saturating_sub(before),
            "per_worker_bytes": per_worker, "per_worker_kib": per_worker as f64 / 1024.0,
            "rss_per_worker_kib": rss_per_worker as f64 / 1024.0,
            "pooling": runtime.is_pooling(), "start_seconds": start_seconds })
}

/// Throughput with metrics on (calls timed, metrics read often) against off (neither), in
/// alternating rounds so that drift in the machine hits both alike; medians and their ratio.
fn metrics_cost(runtime: &Runtime, executor: &Executor, input: &[BatchBytes]) -> serde_json::Value {
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for _ in 0..7 {
        on.push(pipeline_run(runtime, executor, input, true, true));
        off.push(pipeline_run(runtime, executor, input, false, false));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (on, off) = (median(&mut on), median(&mut off));
    json!({ "on_events_per_s": on.round(), "off_events_per_s": off.round(), "cost_pct": (off / on - 1.0) * 100.0, "rounds": 7 })
}

fn main() {
    let executor = Executor::start(0).expect("executor threads");
    let runtime = Runtime::new(RuntimeConfig::default()).unwrap();
    let input = batches(2000);
    if let Ok(part @ ("idle" | "instantiate")) = std::env::var("SQUILLA_BENCH").as_deref() {
        let report = match part {
            "idle" => json!({ "idle_memory": idle_memory(&executor) }),
            _ => json!({ "instantiate": instantiate(&runtime) }),
        };
        println!("{}", serde_json::to_string_pretty(&report).unwrap());
        return;
    }

    let native = native_direct(&input);
    let wasm = wasm_direct(&runtime, &input);
    let pipeline = pipeline_throughput(&runtime, &executor, &input);
    let no_epoch_runtime = Runtime::new(RuntimeConfig { epoch_interruption: false, ..Default::default() }).unwrap();
    let wasm_no_epoch = wasm_direct(&no_epoch_runtime, &input);

    if std::env::var("SQUILLA_BENCH").as_deref() == Ok("metrics") {
        let report = json!({ "metrics": metrics_cost(&runtime, &executor, &input) });
        println!("{}", serde_json::to_string_pretty(&report).unwrap());
        return;
    }
    // `SQUILLA_BENCH=report` leaves out what `--bench report` does not show (latency, metrics).
    let full = std::env::var("SQUILLA_BENCH").as_deref() != Ok("report");
    let report = json!({
        "machine": { "cores": std::thread::available_parallelism().map_or(0, |n| n.get()), "pool_threads": executor.threads() },
        "event_bytes": input[0].as_bytes().len() / BATCH,
        "throughput": {
            "pipeline_3_stage_wasm_events_per_s": pipeline.round(),
            "direct_3_stage_wasm_one_thread_events_per_s": wasm.round(),
            "direct_3_stage_native_one_thread_events_per_s": native.round(),
            "native_over_wasm": native / wasm,
        },
        "latency": if full { latency(&runtime, &executor, &[0.1, 0.5]) } else { Value::Null },
        "instantiate": instantiate(&runtime),
        "idle_memory": idle_memory(&executor),
        "metrics": if full { metrics_cost(&runtime, &executor, &input) } else { Value::Null },
        "epoch": {
            "on_events_per_s": wasm.round(),
            "off_events_per_s": wasm_no_epoch.round(),
            "overhead_pct": (wasm_no_epoch / wasm - 1.0) * 100.0,
        },
    });
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
}
