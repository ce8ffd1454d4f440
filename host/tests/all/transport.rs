//! A job split over two agents: stage workers on each, batches between them over TCP on
//! loopback with credit-based flow control. (Both "agents" live in this process here; the
//! end-to-end tests run them as separate processes.)

use squilla_types::time::now_ms;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use squilla_batch::BatchBuilder;
use squilla_host::pipeline::{Pipeline, PipelineConfig, SlotPlan, StageConfig};
use squilla_host::transport::{Auth, DataTls, Transport, TransportConfig};
use squilla_host::{Executor, Limits};
use squilla_net::ca::Authority;
use squilla_types::{Backpressure, Routing};
use std::sync::Arc;

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
    transport_with(agent, Auth::Open)
}

fn transport_with(agent: &str, auth: Auth) -> Transport {
    let config =
        TransportConfig { agent: agent.into(), credit_batches: 2, outlet_batches: 2, auth, ..Default::default() };
    Transport::bind("127.0.0.1:0".parse::<SocketAddr>().unwrap(), config).unwrap()
}

/// A data-port identity for `agent`, issued by `ca` as the master does.
fn identity(ca: &Authority, agent: &str) -> Arc<DataTls> {
    let (key, csr) = squilla_net::ca::request(agent).unwrap();
    let issued = ca.issue(&csr, agent, squilla_net::ca::LIFETIME).unwrap();
    let tls = DataTls::new();
    tls.install(ca.certificate_pem(), &issued.certificate, &key).unwrap();
    tls
}

fn local(n: usize) -> Vec<SlotPlan> {
    (0..n).map(|i| SlotPlan::Local { number: i as u64 + 1 }).collect()
}

fn remote(t: &Transport, peer: &Transport, job: &str, stage: u32, n: u32) -> Vec<SlotPlan> {
    (0..n).map(|i| SlotPlan::Remote(t.outlet(peer.local_addr(), job, stage, i).unwrap())).collect()
}

#[test]
fn a_job_split_over_two_agents_gives_the_results_it_gives_on_one() {
    split_job(transport("a"), transport("b"));
}

#[test]
fn a_job_split_over_two_agents_speaking_tls_gives_the_same_results() {
    let ca = Authority::generate().unwrap();
    let (a, b) =
        (transport_with("a", Auth::Tls(identity(&ca, "a"))), transport_with("b", Auth::Tls(identity(&ca, "b"))));
    split_job(a, b);
}

fn split_job(a: Transport, b: Transport) {
    let executor = Executor::start(0).expect("executor threads");
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

/// One stage on each side: `a` runs stage 0 and sends to stage 1 on `b`.
fn across(executor: &Executor, a: &Transport, b: &Transport, job: &str) -> (Pipeline, Pipeline) {
    let one = StageConfig { workers: 1, routing: Routing::RoundRobin, ..stages().remove(0) };
    let config = PipelineConfig::new(job, vec![one.clone(), one], Backpressure::Block);
    let on_a =
        Pipeline::start_placed(runtime(), executor, config.clone(), vec![local(1), remote(a, b, job, 1, 1)]).unwrap();
    let on_b = Pipeline::start_placed(runtime(), executor, config, vec![remote(b, a, job, 0, 1), local(1)]).unwrap();
    b.register(job, on_b.handle());
    (on_a, on_b)
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn only_agents_holding_the_fleets_certificate_under_their_own_name_get_batches_through() {
    use std::io::{Read, Write};
    let executor = Executor::start(0).expect("executor threads");
    let ca = Authority::generate().unwrap();
    let b = transport_with("b", Auth::Tls(identity(&ca, "b")));

    // A stranger speaking the frame protocol in the clear is closed before any frame is read.
    let mut raw = std::net::TcpStream::connect(b.local_addr()).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut hello = vec![1u8];
    hello.extend_from_slice(&7u32.to_be_bytes());
    hello.extend_from_slice(b"mallory");
    let _ = raw.write_all(&hello);
    let mut answer = Vec::new();
    let _ = raw.read_to_end(&mut answer);
    assert!(answer.iter().all(|&b| b != 1), "no frame came back: {answer:?}");
    wait_until("the stranger to be refused", || b.stats().refused == 1);

    // A certificate made by another CA for the same DNS name (the forger trusts the real CA,
    // so only the receiving agent's check stands between it and the job).
    let forged = {
        let other = Authority::generate().unwrap();
        let (key, csr) = squilla_net::ca::request("a").unwrap();
        let issued = other.issue(&csr, "a", squilla_net::ca::LIFETIME).unwrap();
        let tls = DataTls::new();
        tls.install(ca.certificate_pem(), &issued.certificate, &key).unwrap();
        tls
    };
    // A real certificate, for agent `c`, on an agent that says hello as `a`.
    let impostor = identity(&ca, "c");
    let genuine = identity(&ca, "a");
    for (n, (tls, arrives)) in [(forged, false), (impostor, false), (genuine, true)].into_iter().enumerate() {
        let job = format!("certified-{n}");
        let a = transport_with("a", Auth::Tls(tls));
        let (on_a, on_b) = across(&executor, &a, &b, &job);
        b.allow_senders(&job, vec![vec![], vec!["a".into()]]);
        let mut builder = BatchBuilder::new();
        builder.event(n as i64).field("status", 200);
        assert!(on_a.push(builder.finish().unwrap()));
        let got = on_b.recv(Duration::from_secs(if arrives { 10 } else { 2 }));
        assert_eq!(got.is_some(), arrives, "sender {n}: {:?} {:?}", a.stats(), b.stats());
    }
    // The receiver counts a batch just after handing it on: the count may trail the batch.
    wait_until("the genuine batch to be counted", || b.stats().batches_received >= 1);
    std::thread::sleep(Duration::from_millis(100));
    let stats = b.stats();
    assert!(stats.refused >= 2, "the stranger and the forger were refused: {stats:?}");
    assert_eq!(stats.batches_received, 1, "only the genuine agent's batch arrived: {stats:?}");
}

#[test]
fn a_sender_hands_batches_only_to_the_agent_its_plan_names_at_an_address() {
    let executor = Executor::start(0).expect("executor threads");
    let ca = Authority::generate().unwrap();
    // Agent `c`, a member of the fleet, listens where the plan says agent `b` is.
    let at_bs_address = transport_with("c", Auth::Tls(identity(&ca, "c")));
    let a = transport_with("a", Auth::Tls(identity(&ca, "a")));
    a.expect_agent(at_bs_address.local_addr(), "b");
    let (on_a, on_c) = across(&executor, &a, &at_bs_address, "planned-0");
    let mut builder = BatchBuilder::new();
    builder.event(1).field("status", 200);
    assert!(on_a.push(builder.finish().unwrap()));
    assert!(on_c.recv(Duration::from_secs(2)).is_none(), "nothing reached the wrong agent");
    wait_until("the sender to refuse the wrong agent", || a.stats().refused >= 1);
    // Once the plan names who is there, batches flow.
    a.expect_agent(at_bs_address.local_addr(), "c");
    assert!(on_c.recv(Duration::from_secs(10)).is_some(), "the planned agent gets the batch");
}
