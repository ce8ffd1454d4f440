//! Stages in Rust, Python and JavaScript on the same input: events/s through `process`,
//! instantiate time (p50/p99), and the linear memory of a fresh instance. Prints JSON.
//!
//! - `sentiment`: Rust (raw flavour) against Python (componentize-py, typed flavour), on
//!   batches of 1,024 short texts, two thirds of which mention the keyword;
//! - `filter`: Rust (raw) against JavaScript (componentize-js, typed), on batches of 1,024
//!   synthetic device-log events, keeping status ≥ 500.
//!
//! - `cold_start_ms`: Python and JavaScript from nothing to the first batch processed, as an
//!   agent with an empty compiled-code cache does it (compile, instantiate, `init`, `process`).
//!
//! Run: `cargo bench --workspace --bench languages` (about a minute once the Python and
//! JavaScript components are compiled; compiled code is cached on disk beside the guests).

use std::time::{Duration, Instant};

use serde_json::json;
use squilla_batch::synth::DeviceLogs;
use squilla_batch::{BatchBuilder, BatchBytes};
use squilla_host::{Artifact, ArtifactCache, Limits, Runtime, RuntimeConfig};

fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn measure(runtime: &Runtime, artifact: &Artifact, p: &[(String, String)], input: &[BatchBytes]) -> serde_json::Value {
    let limits = Limits { memory_bytes: 512 << 20, call_deadline: Duration::from_secs(10), ..Limits::default() };
    let mut times = Vec::new();
    let mut memory = 0;
    for _ in 0..50 {
        let started = Instant::now();
        let instance = artifact.instantiate(runtime, &limits, p).unwrap();
        times.push(started.elapsed());
        memory = instance.memory_bytes();
    }
    times.sort();
    let mut stage = artifact.instantiate(runtime, &limits, p).unwrap();
    let events: usize = input.iter().map(|b| b.len()).sum();
    let started = Instant::now();
    let mut out = 0;
    for batch in input {
        out += stage.process(batch).unwrap().len();
    }
    let elapsed = started.elapsed();
    let _ = stage.tick(i64::MAX / 2).unwrap();
    json!({
        "component_bytes": artifact.size_bytes(),
        "events_per_s": (events as f64 / elapsed.as_secs_f64()).round(),
        "events_out": out,
        "instantiate_p50_us": times[times.len() / 2].as_secs_f64() * 1e6,
        "instantiate_p99_us": times[times.len() * 99 / 100].as_secs_f64() * 1e6,
        "instance_memory_mib": memory as f64 / (1 << 20) as f64,
    })
}

/// A cold start as an agent with an empty cache makes it: compile the component, instantiate
/// and `init` it, and process the first batch. Milliseconds.
fn cold_start_ms(runtime: &Runtime, path: &str, p: &[(String, String)], first: &BatchBytes) -> f64 {
    let bytes = std::fs::read(path).unwrap();
    let limits = Limits { memory_bytes: 512 << 20, call_deadline: Duration::from_secs(10), ..Limits::default() };
    let started = Instant::now();
    let artifact = Artifact::compile(runtime, &bytes).unwrap();
    let mut stage = artifact.instantiate(runtime, &limits, p).unwrap();
    stage.process(first).unwrap();
    started.elapsed().as_secs_f64() * 1e3
}

fn main() {
    let runtime = Runtime::new(RuntimeConfig::default()).unwrap();
    let cache = ArtifactCache::on_disk(&runtime, &std::path::Path::new(squilla_guests::GUEST_TARGET_DIR).join("cwasm"))
        .unwrap();
    let load = |path: &str| {
        let started = Instant::now();
        let artifact = cache.get_or_compile(&std::fs::read(path).unwrap()).unwrap();
        (artifact, started.elapsed())
    };
    let (rust_sentiment, rust_sentiment_load) = load(squilla_guests::SENTIMENT);
    let (python, python_load) = load(squilla_guests::SENTIMENT_PY);
    let (rust_filter, rust_filter_load) = load(squilla_guests::FILTER);
    let (js, js_load) = load(squilla_guests::FILTER_JS);

    let phrases = ["I love the show, great acting", "the show is boring and slow", "watching tonight", "meh show"];
    let texts: Vec<BatchBytes> = (0..20)
        .map(|b| {
            let mut builder = BatchBuilder::with_capacity(1024);
            for i in 0..1024 {
                builder.event(b * 10_000 + i).field("text", phrases[(i % 4) as usize]);
            }
            builder.finish().unwrap()
        })
        .collect();
    let mut generator = DeviceLogs::new(5);
    let logs: Vec<BatchBytes> = (0..20).map(|b| generator.batch(1024, b, 1).unwrap()).collect();

    let sentiment = params(&[("keyword", "show"), ("window-ms", "10000")]);
    let filter = params(&[("field", "status"), ("op", "ge"), ("value", "500")]);
    let report = json!({
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "sentiment": {
            "rust": measure(&runtime, &rust_sentiment, &sentiment, &texts),
            "python": measure(&runtime, &python, &sentiment, &texts),
        },
        "filter": {
            "rust": measure(&runtime, &rust_filter, &filter, &logs),
            "javascript": measure(&runtime, &js, &filter, &logs),
        },
        "load_from_cache_or_compile_ms": {
            "rust_sentiment": rust_sentiment_load.as_secs_f64() * 1e3,
            "rust_filter": rust_filter_load.as_secs_f64() * 1e3,
            "python": python_load.as_secs_f64() * 1e3,
            "javascript": js_load.as_secs_f64() * 1e3,
            "cache": format!("{:?}", cache.stats()),
        },
        "cold_start_ms": {
            "python": cold_start_ms(&runtime, squilla_guests::SENTIMENT_PY, &sentiment, &texts[0]),
            "javascript": cold_start_ms(&runtime, squilla_guests::FILTER_JS, &filter, &logs[0]),
        },
    });
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
}
