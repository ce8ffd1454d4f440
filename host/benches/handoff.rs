//! The state hand-off benchmark: prints one JSON document with, for a key-hashed
//! `window-count` stage holding `keys` keys in each of 4 open windows, rescaled 2 → 5 and then
//! 5 → 3 on this agent:
//!
//! - `apply_ms`: how long applying the new count took (new workers started, the losing
//!   workers' `snapshot`s taken and the state sent);
//! - `first_event_ms`: from the decision (the call) until every worker has its groups' state
//!   and has processed the batch sent right after it — the new workers included;
//! - `pause_ms`: the longest time a moved group's input was held (`last_pause_micros`);
//! - `state_bytes` and `state_mb_per_s`: state moved, and how fast (bytes over `first_event_ms`).
//!
//! Run: `cargo bench --workspace --bench handoff` (a few seconds). Every loop is bounded.

use std::time::{Duration, Instant};

use serde_json::json;
use squilla_batch::{BatchBuilder, BatchBytes};
use squilla_host::pipeline::{Pipeline, PipelineConfig, StageConfig};
use squilla_host::{Artifact, Executor, Limits, Runtime, RuntimeConfig};
use squilla_types::{Backpressure, Routing};

const WINDOWS: i64 = 4;
const WINDOW_MS: i64 = 1_000;

fn batch(keys: std::ops::Range<usize>, window: i64) -> BatchBytes {
    let mut b = BatchBuilder::with_capacity(keys.len());
    for k in keys {
        b.event(window * WINDOW_MS + (k % 997) as i64).field("key", format!("key-{k}").as_str());
    }
    b.finish().unwrap()
}

fn pipeline(runtime: &Runtime, executor: &Executor, artifact: &Artifact) -> Pipeline {
    let stage = StageConfig {
        name: "count".into(),
        artifact: artifact.clone(),
        params: [("window-ms", "1000"), ("grace-ms", "86400000"), ("key", "key")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        workers: 2,
        routing: Routing::KeyHash { fields: vec!["key".into()] },
        limits: Limits { memory_bytes: 1 << 30, call_deadline: Duration::from_secs(10), ..Limits::default() },
        tick: Duration::from_secs(3600),
    };
    Pipeline::start(runtime, executor, PipelineConfig::new("handoff", vec![stage], Backpressure::Block)).unwrap()
}

/// Rescales to `to`, sends one batch of every key group's keys, and measures.
fn rescale(pipeline: &Pipeline, keys: usize, to: usize) -> serde_json::Value {
    let before: Vec<(u64, u64)> =
        pipeline.metrics().stages[0].iter().map(|w| (w.handoff.bytes_out, w.events_in)).collect();
    let bytes_before: u64 = before.iter().map(|b| b.0).sum();
    let started = Instant::now();
    pipeline.scale(0, to).unwrap();
    let applied = started.elapsed();
    assert!(pipeline.push(batch(0..keys.min(20_000), WINDOWS - 1)));
    assert!(pipeline.drain(Duration::from_secs(60)), "the hand-off did not finish");
    let done = started.elapsed();
    let metrics = pipeline.metrics();
    let workers = &metrics.stages[0];
    let bytes: u64 = workers.iter().map(|w| w.handoff.bytes_out).sum::<u64>() - bytes_before;
    let pause = workers.iter().map(|w| w.handoff.last_pause_micros).max().unwrap_or(0);
    assert!(workers.iter().all(|w| w.handoff.timeouts == 0));
    json!({
        "to": to,
        "apply_ms": (applied.as_secs_f64() * 1e3 * 100.0).round() / 100.0,
        "first_event_ms": (done.as_secs_f64() * 1e3 * 100.0).round() / 100.0,
        "pause_ms": (pause as f64 / 10.0).round() / 100.0,
        "state_bytes": bytes,
        "state_mb_per_s": ((bytes as f64 / done.as_secs_f64() / 1e6) * 10.0).round() / 10.0,
    })
}

fn main() {
    let executor = Executor::start(0).expect("executor threads");
    let runtime = Runtime::new(RuntimeConfig::default()).unwrap();
    let artifact = Artifact::compile(&runtime, &squilla_guests::read("window-count")).unwrap();
    let mut runs = Vec::new();
    for keys in [10_000usize, 100_000, 400_000] {
        let mut p = pipeline(&runtime, &executor, &artifact);
        for window in 0..WINDOWS {
            for start in (0..keys).step_by(4096) {
                assert!(p.push(batch(start..(start + 4096).min(keys), window)));
            }
        }
        assert!(p.drain(Duration::from_secs(120)));
        let up = rescale(&p, keys, 5);
        let down = rescale(&p, keys, 3);
        runs.push(json!({ "keys": keys, "open_windows": WINDOWS, "up_2_to_5": up, "down_5_to_3": down }));
        p.stop(Duration::from_secs(5));
    }
    let report = json!({
        "machine": { "cores": std::thread::available_parallelism().map_or(0, |n| n.get()), "pool_threads": executor.threads() },
        "same_agent": runs,
    });
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
}
