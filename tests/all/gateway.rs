//! The gateway as its own process in front of a master and two agents: control requests pass
//! through it, a thousand subscribers of one job cost each agent one stream (and a second
//! gateway beside it one more), a `clientId`
//! group splits the stream, ingest goes to the source's agent; and agents take a capability
//! only for its job, its verb and its lifetime.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;
use squilla_net::capability::{Capability, Verb, key_from_token};

use crate::streams::{Sub, ids, ndjson, start, submit, two_filters};
use crate::{AGENT_TOKEN, Api, TOKEN, free_port, gateway};

const SUBSCRIBERS: usize = 1000;

/// `squilla_job_sink_subscribers` of `job` on the agent at `agent` (`host:port`).
async fn agent_subscribers(http: &reqwest::Client, agent: &str, job: &str) -> Option<u64> {
    let text = http.get(format!("{agent}/metrics")).bearer_auth(AGENT_TOKEN).send().await.ok()?.text().await.ok()?;
    text.lines()
        .find(|l| l.starts_with("squilla_job_sink_subscribers{") && l.contains(&format!("job=\"{job}\"")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
}

async fn endpoints(api: &Api, job: &str) -> Value {
    let (status, body) = api.call(reqwest::Method::GET, &format!("/api/v1/jobs/{job}/endpoints"), vec![]).await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_subscribers_through_a_gateway_cost_each_agent_one_stream() {
    let (master, _procs) = start("gateway-fanout").await;
    let port = free_port();
    let _gw = gateway(&master.base, port, &["--tenant-subscriptions", "1100", "--max-connections-per-ip", "1500"]);
    let via = Api { base: format!("http://127.0.0.1:{port}"), http: reqwest::Client::new() };

    // Control requests pass through the gateway to the master, refusals as they are.
    let job = submit(&via, two_filters("spread", "hard"), "spread").await;
    let response = via.http.get(format!("{}/api/v1/jobs/{job}/sink", via.base)).bearer_auth("wrong-token").send().await;
    assert_eq!(response.unwrap().status(), 401, "the master's refusal, passed on");
    let (status, body) = via.call(reqwest::Method::GET, "/api/v1/jobs/nope-1/sink", vec![]).await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")), "{body}");
    let (status, body) = via.call(reqwest::Method::GET, &format!("/api/v1/jobs/{job}/sink?query=SELECT"), vec![]).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid_query")), "{body}");

    let mut subs = Vec::with_capacity(SUBSCRIBERS);
    for _ in 0..SUBSCRIBERS {
        subs.push(Sub::open(&via, &format!("/api/v1/jobs/{job}/sink")).await);
    }
    let mut group = [
        Sub::open(&via, &format!("/api/v1/jobs/{job}/sink?clientId=pair")).await,
        Sub::open(&via, &format!("/api/v1/jobs/{job}/sink?clientId=pair")).await,
    ];
    // Each agent running the last stage serves this gateway two streams: one for the thousand,
    // one for the `clientId` group.
    let key = endpoints(&master, &job).await["job"].as_str().unwrap().to_owned();
    // Agents serve HTTPS with certificates from the master's CA, which the endpoints name.
    let agents = crate::agent_client(endpoints(&master, &job).await["ca"].as_str().expect("the fleet CA"));
    let sinks: Vec<String> = endpoints(&master, &job).await["sinks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(sinks.len(), 2, "the last stage runs on both agents");
    assert!(sinks.iter().all(|s| s.starts_with("https://")), "agents serve HTTPS: {sinks:?}");
    let job_label = key.split_once('.').unwrap().1;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut counts = Vec::new();
        for agent in &sinks {
            counts.push(agent_subscribers(&agents, agent, job_label).await);
        }
        if counts.iter().all(|c| *c == Some(2)) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "agents' sink subscribers: {counts:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, status) = via.call(reqwest::Method::GET, "/gateway/status", vec![]).await;
    assert_eq!(status["upstreams"], 2, "{status}");
    // HEAD answers the headers and follows nothing.
    let (code, _) = via.call(reqwest::Method::HEAD, &format!("/api/v1/jobs/{job}/sink?query=SELECT%20*"), vec![]).await;
    assert_eq!(code, 200);
    let (_, after_head) = via.call(reqwest::Method::GET, "/gateway/status", vec![]).await;
    assert_eq!(after_head["upstreams-started"], status["upstreams-started"], "{after_head}");
    // A second gateway beside the first: its subscribers cost each agent one more stream.
    let port2 = free_port();
    let _gw2 = gateway(&master.base, port2, &[]);
    let via2 = Api { base: format!("http://127.0.0.1:{port2}"), http: reqwest::Client::new() };
    let mut beside = [
        Sub::open(&via2, &format!("/api/v1/jobs/{job}/sink")).await,
        Sub::open(&via2, &format!("/api/v1/jobs/{job}/sink")).await,
    ];
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut counts = Vec::new();
        for agent in &sinks {
            counts.push(agent_subscribers(&agents, agent, job_label).await);
        }
        if counts.iter().all(|c| *c == Some(3)) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "agents' sink subscribers with two gateways: {counts:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Ingest through the gateway goes to the source's agent; every subscriber sees every match.
    let (status, body) = via.call(reqwest::Method::POST, &format!("/api/v1/jobs/{job}/ingest"), ndjson(0..300)).await;
    assert_eq!((status, body["events"].as_u64()), (200, Some(300)), "{body}");
    let expected: BTreeSet<i64> = (0..300).filter(|i| i % 3 == 0).collect();
    for (n, sub) in subs.iter_mut().enumerate() {
        let (events, _) = sub.read(Duration::from_secs(30), |e| e.len() >= expected.len()).await;
        assert_eq!(ids(&events), expected, "subscriber {n}");
        assert_eq!(events.len(), expected.len(), "subscriber {n}: no duplicates");
    }
    for sub in &mut beside {
        let (events, _) = sub.read(Duration::from_secs(30), |e| e.len() >= expected.len()).await;
        assert_eq!(ids(&events), expected, "a subscriber of the second gateway");
    }
    let (a, _) = group[0].read(Duration::from_secs(3), |_| false).await;
    let (b, _) = group[1].read(Duration::from_secs(1), |_| false).await;
    let (a, b) = (ids(&a), ids(&b));
    assert!(!a.is_empty() && !b.is_empty(), "both members of the group receive: {a:?} {b:?}");
    assert!(a.is_disjoint(&b), "a group splits the stream");
    assert_eq!(a.union(&b).copied().collect::<BTreeSet<_>>(), expected, "together they receive all of it");

    // When every subscriber has left, the gateways let go of the agents.
    drop((subs, group, beside));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, status) = via.call(reqwest::Method::GET, "/gateway/status", vec![]).await;
        let mut counts = Vec::new();
        for agent in &sinks {
            counts.push(agent_subscribers(&agents, agent, job_label).await);
        }
        if status["upstreams"] == 0 && status["subscribers"] == 0 && counts.iter().all(|c| *c == Some(0)) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "left behind: {status} {counts:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Bad ingest is refused whole, at the gateway, as the master would.
    let (status, body) = via
        .call(reqwest::Method::POST, &format!("/api/v1/jobs/{job}/ingest"), b"{\"id\": 1}\nnot json\n".to_vec())
        .await;
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid_events")), "{body}");
}

/// One archived batch of events with ids `ids` and status 500.
fn batch(ids: std::ops::Range<i64>) -> Vec<u8> {
    let mut builder = squilla_batch::BatchBuilder::new();
    for id in ids {
        builder.event(0).field("id", id).field("status", 500i64);
    }
    builder.into_vec().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_take_a_capability_only_for_its_job_verb_and_lifetime() {
    let (api, _procs) = start("gateway-capability").await;
    let job = submit(&api, two_filters("caps", "off"), "caps").await;
    let other = submit(&api, two_filters("other", "off"), "other").await;
    let here = endpoints(&api, &job).await;
    let (key, capability) = (here["job"].as_str().unwrap(), here["capability"].as_str().unwrap());
    let source = here["source"].as_str().unwrap();
    assert_eq!(here["sinks"].as_array().unwrap().len(), 1);
    assert!(here["expires-at-ms"].as_i64().unwrap() > 0);
    let other_key = endpoints(&api, &other).await["job"].as_str().unwrap().to_owned();
    // Agents serve HTTPS with certificates from the master's CA, which the endpoints name.
    let http = crate::agent_client(here["ca"].as_str().expect("the fleet CA"));
    let post = |job: &str, bearer: &str, ids: std::ops::Range<i64>| {
        http.post(format!("{source}/jobs/{job}/ingest")).bearer_auth(bearer).body(batch(ids)).send()
    };
    let mut sink = Sub::open(&api, &format!("/api/v1/jobs/{job}/sink")).await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // the master connects to the agent

    // Refused, and nothing reaches the job: another job's capability, a forged one, an
    // expired one, one for another verb, and a plain tenant token.
    let signing = key_from_token(AGENT_TOKEN);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let expired = Capability { job: key.to_owned(), verbs: vec![Verb::Ingest], expires_ms: now - 1 }.sign(&signing);
    let sink_only =
        Capability { job: key.to_owned(), verbs: vec![Verb::Sink], expires_ms: now + 60_000 }.sign(&signing);
    let forged = Capability { job: key.to_owned(), verbs: vec![Verb::Ingest], expires_ms: now + 60_000 }
        .sign(&key_from_token("not-the-agent-token-0000"));
    let other_cap = endpoints(&api, &other).await["capability"].as_str().unwrap().to_owned();
    for (why, bearer, code) in [
        ("another job's", other_cap.as_str(), 403),
        ("forged", forged.as_str(), 403),
        ("expired", expired.as_str(), 403),
        ("sink-only", sink_only.as_str(), 403),
        ("tenant token", TOKEN, 401),
    ] {
        let response = post(key, bearer, 1000..1010).await.unwrap();
        assert_eq!(response.status(), code, "{why}");
        if code == 403 {
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["code"], "capability_refused", "{why}: {body}");
        }
    }
    // The other job's own capability does not open this job's sink either.
    let response = http.get(format!("{source}/jobs/{other_key}/sink")).bearer_auth(capability).send().await;
    assert_eq!(response.unwrap().status(), 403);

    // The job's own capability feeds it directly.
    let response = post(key, capability, 2000..2010).await.unwrap();
    assert_eq!(response.status(), 200);
    let (events, _) = sink.read(Duration::from_secs(15), |e| e.len() >= 10).await;
    assert_eq!(ids(&events), (2000..2010).collect(), "only the accepted batch reached the job");
    let (late, _) = sink.read(Duration::from_secs(2), |_| false).await;
    assert!(ids(&late).iter().all(|id| !(1000..1010).contains(id)), "{late:?}");

    // Several batches framed in one body are fed in order, all or none: one bad frame, or a
    // body whose frames do not add up, feeds nothing.
    let framed = |parts: &[Vec<u8>]| {
        let mut body = Vec::new();
        for part in parts {
            squilla_batch::frames::push(&mut body, part).unwrap();
        }
        http.post(format!("{source}/jobs/{key}/ingest"))
            .bearer_auth(capability)
            .header("content-type", squilla_batch::frames::CONTENT_TYPE)
            .body(body)
            .send()
    };
    let response = framed(&[batch(3000..3005), b"not a batch".to_vec()]).await.unwrap();
    assert_eq!(response.status(), 400);
    let mut cut = Vec::new();
    squilla_batch::frames::push(&mut cut, &batch(3005..3010)).unwrap();
    cut.pop();
    let response = http.post(format!("{source}/jobs/{key}/ingest")).bearer_auth(capability);
    let response = response.header("content-type", squilla_batch::frames::CONTENT_TYPE).body(cut).send().await;
    assert_eq!(response.unwrap().status(), 400);
    let response = framed(&[batch(4000..4004), batch(4004..4010)]).await.unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!((answer["batches"].as_u64(), answer["events"].as_u64()), (Some(2), Some(10)), "{answer}");
    let (events, _) = sink.read(Duration::from_secs(15), |e| e.len() >= 10).await;
    assert_eq!(ids(&events), (4000..4010).collect(), "the framed batches in order, and nothing of the refused ones");

    // A body that is not an archived batch is named as such.
    let response = http.post(format!("{source}/jobs/{key}/ingest")).bearer_auth(capability).body("{}").send();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("archived batch"), "{body}");
    // An ended job has no agents and no capability.
    let (status, _) = api.call(reqwest::Method::POST, &format!("/api/v1/jobs/{other}/kill"), vec![]).await;
    assert_eq!(status, 200);
    let ended = endpoints(&api, &other).await;
    assert_eq!((ended["ended"].as_bool(), ended["capability"].is_null()), (Some(true), true), "{ended}");
    assert_eq!(ended["sinks"].as_array().map(Vec::len), Some(0), "{ended}");

    // A program with the capability reads the agent's sink itself.
    let response = http.get(format!("{source}/jobs/{key}/sink")).bearer_auth(capability).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
}
