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
//! `across_agents`: the same state, 2 workers on agent A rescaled to 5 with the three new ones
//! on agent B (both in this process, each with its own transport, TLS between them as agents
//! use): `state_ms` from the call on A until B's workers have received all their groups'
//! state, and `state_mb_per_s`.
//!
//! Run: `cargo bench --workspace --bench handoff` (a few seconds). Every loop is bounded.

use std::time::{Duration, Instant};

use serde_json::json;
use squilla_batch::{BatchBuilder, BatchBytes};
use squilla_host::pipeline::{Pipeline, PipelineConfig, SlotPlan, StageConfig};
use squilla_host::transport::{Auth, DataTls, Transport, TransportConfig};
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

fn config(artifact: &Artifact) -> PipelineConfig {
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
    PipelineConfig::new("handoff", vec![stage], Backpressure::Block)
}

fn pipeline(runtime: &Runtime, executor: &Executor, artifact: &Artifact) -> Pipeline {
    Pipeline::start(runtime, executor, config(artifact)).unwrap()
}

fn fill(p: &Pipeline, keys: usize) {
    for window in 0..WINDOWS {
        for start in (0..keys).step_by(4096) {
            assert!(p.push(batch(start..(start + 4096).min(keys), window)));
        }
    }
    assert!(p.drain(Duration::from_secs(120)));
}

/// Two agents in this process: A runs 2 workers, then 5 with the three new ones on B.
fn across_agents(runtime: &Runtime, executor: &Executor, artifact: &Artifact, keys: usize) -> serde_json::Value {
    let ca = squilla_net::ca::Authority::generate().unwrap();
    let transport = |agent: &str| {
        let (key, csr) = squilla_net::ca::request(agent).unwrap();
        let issued = ca.issue(&csr, agent, squilla_net::ca::LIFETIME).unwrap();
        let tls = DataTls::new();
        tls.install(ca.certificate_pem(), &issued.certificate, &key).unwrap();
        let config = TransportConfig { agent: agent.into(), auth: Auth::Tls(tls), ..Default::default() };
        Transport::bind("127.0.0.1:0".parse().unwrap(), config).unwrap()
    };
    let (a, b) = (transport("a"), transport("b"));
    let local = |n: u64| SlotPlan::Local { number: n };
    let on_a = Pipeline::start_placed(runtime, executor, config(artifact), vec![vec![local(1), local(2)]]).unwrap();
    a.register("handoff", on_a.handle());
    fill(&on_a, keys);
    // B starts its part first (as an agent does when the plan reaches it), then A applies it.
    let to_a = |i: u32| SlotPlan::Remote(b.outlet(a.local_addr(), "handoff", 0, i).unwrap());
    let on_b = Pipeline::start_placed(
        runtime,
        executor,
        config(artifact),
        vec![vec![to_a(0), to_a(1), local(3), local(4), local(5)]],
    )
    .unwrap();
    b.register("handoff", on_b.handle());
    let to_b = |i: u32| SlotPlan::Remote(a.outlet(b.local_addr(), "handoff", 0, i).unwrap());
    let plan = vec![local(1), local(2), to_b(2), to_b(3), to_b(4)];
    let started = Instant::now();
    on_a.set_slots(0, plan).unwrap();
    let applied = started.elapsed();
    let sent: u64 = on_a.metrics().stages[0].iter().map(|w| w.handoff.groups_out).sum();
    let moved_to_b = (0..4096u32).filter(|&g| squilla_batch::keys::group_owner(g, 5) >= 2).count() as u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    let (groups, bytes) = loop {
        let m = on_b.metrics();
        let groups: u64 = m.stages[0].iter().map(|w| w.handoff.groups_in).sum();
        let bytes: u64 = m.stages[0].iter().map(|w| w.handoff.bytes_in).sum();
        if groups >= moved_to_b || Instant::now() > deadline {
            break (groups, bytes);
        }
        std::thread::sleep(Duration::from_micros(200));
    };
    let took = started.elapsed();
    assert_eq!(groups, moved_to_b, "every moved group's state reached B ({sent} sent)");
    json!({
        "keys": keys,
        "apply_ms": (applied.as_secs_f64() * 1e5).round() / 100.0,
        "state_ms": (took.as_secs_f64() * 1e5).round() / 100.0,
        "state_bytes": bytes,
        "state_mb_per_s": ((bytes as f64 / took.as_secs_f64() / 1e6) * 10.0).round() / 10.0,
    })
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
        fill(&p, keys);
        let up = rescale(&p, keys, 5);
        let down = rescale(&p, keys, 3);
        runs.push(json!({ "keys": keys, "open_windows": WINDOWS, "up_2_to_5": up, "down_5_to_3": down }));
        p.stop(Duration::from_secs(5));
    }
    let across: Vec<_> =
        [100_000usize, 400_000].iter().map(|&k| across_agents(&runtime, &executor, &artifact, k)).collect();
    let report = json!({
        "machine": { "cores": std::thread::available_parallelism().map_or(0, |n| n.get()), "pool_threads": executor.threads() },
        "same_agent": runs,
        "across_agents": across,
    });
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
}
