//! A job split over two agents: stage workers on each, batches between them over TCP on
//! loopback with credit-based flow control. (Both "agents" live in this process here; the
//! end-to-end tests run them as separate processes.)

use squilla_types::time::now_ms;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use squilla_batch::BatchBuilder;
use squilla_host::pipeline::{Pipeline, PipelineConfig, SlotPlan, StageConfig};
use squilla_host::transport::{Transport, TransportConfig};
use squilla_host::{Executor, Limits};
use squilla_types::{Backpressure, Routing};

use crate::{example, runtime};

fn stages() -> Vec<StageConfig> {
    let stage = |name: &str, artifact: &str, params: &[(&str, &str)], routing: Routing| StageConfig {
        name: name.into(),
        artifact: example(artifact),
        params: params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        workers: 2,
        routing,
        limits: Limits::default(),
        tick: Duration::from_millis(50),
    };
    vec![
        stage("parse", "filter", &[("field", "status"), ("op", "exists")], Routing::RoundRobin),
        stage(
            "error-rate",
            "device-errors",
            &[("window-ms", "60000")],
            Routing::KeyHash { fields: vec!["device-type".into()] },
        ),
    ]
}

fn transport(agent: &str) -> Transport {
    let config = TransportConfig { agent: agent.into(), credit_batches: 2, outlet_batches: 2, ..Default::default() };
    Transport::bind("127.0.0.1:0".parse::<SocketAddr>().unwrap(), config).unwrap()
}

fn local(n: usize) -> Vec<SlotPlan> {
    (0..n).map(|i| SlotPlan::Local { number: i as u64 + 1 }).collect()
}

fn remote(t: &Transport, peer: &Transport, job: &str, stage: u32, n: u32) -> Vec<SlotPlan> {
    (0..n).map(|i| SlotPlan::Remote(t.outlet(peer.local_addr(), job, stage, i).unwrap())).collect()
}

#[test]
fn a_job_split_over_two_agents_gives_the_results_it_gives_on_one() {
    let executor = Executor::start(0).expect("executor threads");
    let (a, b) = (transport("a"), transport("b"));
    let job = "errors-1";
    let config = PipelineConfig::new(job, stages(), Backpressure::Block);
    // Agent A runs `parse`; agent B runs `error-rate`; each sees the other's slots as remote.
    let on_a = Pipeline::start_placed(runtime(), &executor, config.clone(), vec![local(2), remote(&a, &b, job, 1, 2)])
        .unwrap();
    let on_b = Pipeline::start_placed(runtime(), &executor, config, vec![remote(&b, &a, job, 0, 2), local(2)]).unwrap();
    a.register(job, on_a.handle());
    b.register(job, on_b.handle());

    let now = now_ms();
    let mut expected = BTreeMap::new();
    for (device, requests, errors) in [("tv", 400i64, 100i64), ("phone", 300, 30), ("console", 200, 200)] {
        expected.insert(device.to_string(), (requests, errors));
    }
    // 100 batches through 2-batch credit windows and outlets: flow control must hold, under
    // `block`, without losing any.
    for n in 0..100 {
        let mut builder = BatchBuilder::new();
        for (device, &(requests, errors)) in &expected {
            for i in 0..requests / 100 {
                let k = n * (requests / 100) + i;
                builder
                    .event(now - 1000 + k)
                    .field("device-type", device.as_str())
                    .field("status", if k < errors { 500 } else { 200 });
            }
        }
        assert!(on_a.push(builder.finish().unwrap()));
    }
    let mut latest: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while latest != expected && Instant::now() < deadline {
        if let Some(batch) = on_b.recv(Duration::from_millis(20)) {
            for e in batch.view().events() {
                latest.insert(
                    e.text("device-type").unwrap().into(),
                    (e.int("requests").unwrap(), e.int("errors").unwrap()),
                );
            }
        }
    }
    assert_eq!(latest, expected);
    assert_eq!(on_a.metrics().dropped(), 0);
    assert_eq!(on_b.metrics().dropped(), 0);
    let (sa, sb) = (a.stats(), b.stats());
    assert!(sa.batches_sent >= 100, "{sa:?}");
    assert_eq!(sb.batches_received, sa.batches_sent);
    assert_eq!(sb.invalid + sb.misrouted, 0);
}

#[test]
fn a_moved_worker_gets_its_batches_on_its_new_agent() {
    let executor = Executor::start(0).expect("executor threads");
    let (a, b) = (transport("a"), transport("b"));
    let job = "moves-1";
    let keep = |workers| StageConfig { workers, ..stages().remove(0) };
    let config = PipelineConfig::new(
        job,
        vec![keep(1), StageConfig { routing: Routing::RoundRobin, ..keep(1) }],
        Backpressure::Block,
    );
    let on_a = Pipeline::start_placed(runtime(), &executor, config.clone(), vec![local(1), remote(&a, &b, job, 1, 1)])
        .unwrap();
    let mut on_b =
        Pipeline::start_placed(runtime(), &executor, config, vec![remote(&b, &a, job, 0, 1), local(1)]).unwrap();
    a.register(job, on_a.handle());
    b.register(job, on_b.handle());
    let send = |n: i64| {
        let mut builder = BatchBuilder::new();
        builder.event(n).field("status", n);
        assert!(on_a.push(builder.finish().unwrap()));
    };
    send(1);
    let first = on_b.recv(Duration::from_secs(10)).expect("output on b");
    assert_eq!(first.view().events().next().unwrap().int("status"), Some(1));

    // The master moves stage 1's worker from B to A (agent B is going away).
    on_b.stop(Duration::from_secs(1));
    b.unregister(job, &on_b.handle());
    on_a.set_slots(1, vec![SlotPlan::Local { number: 2 }]).unwrap();
    send(2);
    let moved = on_a.recv(Duration::from_secs(10)).expect("output on a after the move");
    assert_eq!(moved.view().events().next().unwrap().int("status"), Some(2));
}
