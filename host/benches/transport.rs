//! The TCP hop between agents: events/s from a pipeline whose first stage runs on another
//! agent, over loopback with credit-based flow control. Agent A holds only an outlet towards
//! agent B; B's worker runs the `filter` stage keeping nothing (so B's cost per event is the
//! receive, the validation and a Wasm call that reads the batch in place). Both agents live in
//! this process, each with its own transport and TCP connection. Prints JSON.
//!
//! The hop is measured three ways: with no handshake, with the key handshake (frames in the
//! clear, as plain as the first once admitted), and with TLS 1.3 and certificates from a CA
//! (what agents use by default); `tls_cost` is the share of the plain hop's events/s that TLS
//! takes away.
//!
//! Run: `cargo bench --workspace --bench transport` (about 30 s; every loop is bounded).

use std::time::{Duration, Instant};

use squilla_batch::synth::DeviceLogs;
use squilla_host::pipeline::{Pipeline, PipelineConfig, SlotPlan, StageConfig};
use squilla_host::transport::{Auth, DataTls, Transport, TransportConfig};
use squilla_host::{Artifact, Executor, Limits, Runtime, RuntimeConfig};
use squilla_types::{Backpressure, Routing};

fn main() {
    let runtime = Runtime::new(RuntimeConfig::default()).unwrap();
    let filter = Artifact::compile(&runtime, &squilla_guests::read("filter")).unwrap();
    let executor = Executor::start(0).expect("executor threads");
    let ca = squilla_net::ca::Authority::generate().unwrap();
    let identity = |agent: &str| {
        let (key, csr) = squilla_net::ca::request(agent).unwrap();
        let issued = ca.issue(&csr, agent, squilla_net::ca::LIFETIME).unwrap();
        let tls = DataTls::new();
        tls.install(ca.certificate_pem(), &issued.certificate, &key).unwrap();
        Auth::Tls(tls)
    };
    let key = Auth::Key(squilla_host::transport::handshake::key_from_token("bench-agent-token-0123"));
    // `SQUILLA_BENCH_HOP=plain`, `=key` or `=tls` measures one only (for a profiler).
    let only = std::env::var("SQUILLA_BENCH_HOP").unwrap_or_default();
    let measure = |name: &str, auth: (Auth, Auth)| {
        if only.is_empty() || only == name {
            hop(&runtime, &executor, &filter, name, auth)
        } else {
            serde_json::Value::Null
        }
    };
    let plain = measure("plain", (Auth::Open, Auth::Open));
    let keyed = measure("key", (key.clone(), key));
    let tls = measure("tls", (identity("a"), identity("b")));
    let rate = |v: &serde_json::Value| v["events_per_second"].as_f64().unwrap_or(0.0);
    let cost = 1.0 - rate(&tls) / rate(&plain).max(1.0);
    println!(
        "{}",
        serde_json::json!({
            "tcp_hop": plain,
            "tcp_hop_key": keyed,
            "tcp_hop_tls": tls,
            "tls_cost": (cost * 1000.0).round() / 1000.0,
        })
    );
}

fn hop(
    runtime: &Runtime,
    executor: &Executor,
    filter: &Artifact,
    name: &str,
    (auth_a, auth_b): (Auth, Auth),
) -> serde_json::Value {
    let stage = StageConfig {
        name: "drop-all".into(),
        artifact: filter.clone(),
        params: vec![("field".into(), "no-such-field".into()), ("op".into(), "exists".into())],
        workers: 1,
        routing: Routing::RoundRobin,
        limits: Limits::default(),
        tick: Duration::from_secs(1),
    };
    let config = PipelineConfig::new("hop", vec![stage], Backpressure::Block);
    let t = |name: &str, auth: Auth| {
        let config = TransportConfig { agent: name.into(), auth, ..Default::default() };
        Transport::bind("127.0.0.1:0".parse().unwrap(), config).unwrap()
    };
    let (a, b) = (t("a", auth_a), t("b", auth_b));
    let on_b =
        Pipeline::start_placed(runtime, executor, config.clone(), vec![vec![SlotPlan::Local { number: 1 }]]).unwrap();
    b.register("hop", on_b.handle());
    let outlet = a.outlet(b.local_addr(), "hop", 0, 0).unwrap();
    let on_a = Pipeline::start_placed(runtime, executor, config, vec![vec![SlotPlan::Remote(outlet)]]).unwrap();

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
    let report = serde_json::json!({
        "events_per_second": (received as f64 / elapsed).round(),
        "mb_per_second": (received as f64 * event_bytes / elapsed / 1e6 * 10.0).round() / 10.0,
        "event_bytes": event_bytes.round(),
        "batch_events": 1024,
        "sent": pushed - sent_before,
        "received": received,
        "dropped": on_a.metrics().dropped() + on_b.metrics().dropped(),
        "stats_a": format!("{:?}", a.stats()),
    });
    eprintln!("bench: {name} hop {report}");
    report
}
