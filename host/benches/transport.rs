//! The TCP hop between agents: events/s from a pipeline whose first stage runs on another
//! agent, over loopback with credit-based flow control. Agent A holds only an outlet towards
//! agent B; B's worker runs the `filter` stage keeping nothing (so B's cost per event is the
//! receive, the validation and a Wasm call that reads the batch in place). Both agents live in
//! this process, each with its own transport and TCP connection. Prints JSON.
//!
//! Run: `cargo bench --workspace --bench transport` (about 10 s; every loop is bounded).

use std::time::{Duration, Instant};

use squilla_batch::synth::DeviceLogs;
use squilla_host::pipeline::{Pipeline, PipelineConfig, SlotPlan, StageConfig};
use squilla_host::transport::{Transport, TransportConfig};
use squilla_host::{Artifact, Executor, Limits, Runtime, RuntimeConfig};
use squilla_types::{Backpressure, Routing};

fn main() {
    let runtime = Runtime::new(RuntimeConfig::default()).unwrap();
    let filter = Artifact::compile(&runtime, &squilla_guests::read("filter")).unwrap();
    let executor = Executor::start(0).expect("executor threads");
    let stage = StageConfig {
        name: "drop-all".into(),
        artifact: filter,
        params: vec![("field".into(), "no-such-field".into()), ("op".into(), "exists".into())],
        workers: 1,
        routing: Routing::RoundRobin,
        limits: Limits::default(),
        tick: Duration::from_secs(1),
    };
    let config = PipelineConfig::new("hop", vec![stage], Backpressure::Block);
    let t = |name: &str| {
        Transport::bind("127.0.0.1:0".parse().unwrap(), TransportConfig { agent: name.into(), ..Default::default() })
            .unwrap()
    };
    let (a, b) = (t("a"), t("b"));
    let on_b =
        Pipeline::start_placed(&runtime, &executor, config.clone(), vec![vec![SlotPlan::Local { number: 1 }]]).unwrap();
    b.register("hop", on_b.handle());
    let outlet = a.outlet(b.local_addr(), "hop", 0, 0).unwrap();
    let on_a = Pipeline::start_placed(&runtime, &executor, config, vec![vec![SlotPlan::Remote(outlet)]]).unwrap();

    let mut generator = DeviceLogs::new(7);
    let batches: Vec<_> = (0..64).map(|i| generator.batch(1024, i, 1).unwrap()).collect();
    let event_bytes = batches[0].as_bytes().len() as f64 / 1024.0;
    // Warm up, then measure for 5 s.
    let mut pushed = 0u64;
    let run = |d: Duration, pushed: &mut u64| {
        let end = Instant::now() + d;
        let mut i = 0;
        while Instant::now() < end {
            on_a.push(batches[i % batches.len()].clone());
            *pushed += 1024;
            i += 1;
        }
    };
    run(Duration::from_secs(1), &mut pushed);
    on_b.drain(Duration::from_secs(5));
    let received_before = on_b.metrics().stages[0][0].events_in;
    let sent_before = pushed;
    let start = Instant::now();
    run(Duration::from_secs(5), &mut pushed);
    on_b.drain(Duration::from_secs(10));
    let elapsed = start.elapsed().as_secs_f64();
    let received = on_b.metrics().stages[0][0].events_in - received_before;
    println!(
        "{}",
        serde_json::json!({
            "tcp_hop": {
                "events_per_second": (received as f64 / elapsed).round(),
                "mb_per_second": (received as f64 * event_bytes / elapsed / 1e6 * 10.0).round() / 10.0,
                "event_bytes": event_bytes.round(),
                "batch_events": 1024,
                "sent": pushed - sent_before,
                "received": received,
                "dropped": on_a.metrics().dropped() + on_b.metrics().dropped(),
                "stats_a": format!("{:?}", a.stats()),
            }
        })
    );
}
