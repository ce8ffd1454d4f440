//! Streams between real processes on loopback: a master and two agents (`squilla master`,
//! `squilla agent`), as deployed. Prints JSON.
//!
//! - **TCP hop.** A two-stage job whose first stage is pinned (by label) to agent `a1` and
//!   whose second to `a2`: the synthetic source and a keep-all `filter` run on a1, every batch
//!   crosses to a2 over the agents' TCP transport, where a `filter` that keeps nothing reads
//!   it in place. Events/s is the growth of the receiving worker's `events_in` (reported by
//!   heartbeats) over the measured span. Backpressure `block`: nothing is dropped, the sender
//!   slows to what the receiver takes.
//! - **Ingest.** JSON lines (~160 bytes each, 10,000 per request) posted one request after
//!   another over one connection to the gateway's ingest of a job whose keep-nothing `filter`
//!   runs on a2: events/s taken (the answers' `events`), and what the stage processed.
//! - **Chained hop.** Job `up` (synthetic source and a keep-all `filter` on a1) and job
//!   `down`, whose source reads `up`'s output (`source.kind = "job"`) and whose keep-nothing
//!   `filter` runs on a2: a2 pulls a1's output batches straight over the data port. Events/s
//!   is the growth of `down`'s worker's `events_in`; the master's CPU time over the span is
//!   measured from `/proc` (it is not in the data path).
//! - **SSE fan-out.** A one-stage job on a2 whose output is read through the master's sink
//!   (`GET /api/v1/jobs/{id}/sink`, the path a user takes) by 1 and by 100 subscribers in this
//!   process, each counting its `data` events and the drops its `meta` events report.
//! - **Gateway fan-out.** The same through a `squilla gateway` process, by 1, 100 and 1,000
//!   subscribers, while a chained job on a1 also reads the job's output: events/s delivered
//!   in all, and the CPU time of the master and of the gateway over the span (from `/proc`).
//!
//! Run: `cargo bench --workspace --bench streams` (about 60 s; every loop is bounded in time).
//! The machine's cores are shared by the three processes and the subscribers.

#[path = "../tests/support/cluster.rs"]
mod cluster;

use std::time::{Duration, Instant};

use cluster::{Api, agent_with, cpu_seconds, free_port, gateway, master_with, temp_dir};
use serde_json::{Value, json};

const WARM_UP: Duration = Duration::from_secs(3);
const MEASURE: Duration = Duration::from_secs(6);

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(run());
}

async fn run() {
    let dir = temp_dir("bench-streams");
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, format!("acme {}\n", cluster::TOKEN)).unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    // 100 subscribers of one tenant: past the default of 64 subscriptions per tenant.
    let master = master_with(port, &dir.join("data"), &tokens, &["--tenant-subscriptions", "128"]);
    // Worker threads per agent (default 1: the two agents then leave a core's worth of room
    // for the source, the transport and the master on a 2-core machine).
    let threads = std::env::var("SQUILLA_BENCH_THREADS").unwrap_or_else(|_| "1".into());
    // `SQUILLA_BENCH_DATA_SECURITY=key` runs the agents' data port without TLS (default `tls`).
    let security = std::env::var("SQUILLA_BENCH_DATA_SECURITY").unwrap_or_else(|_| "tls".into());
    let agent = |id: &str, role: &str| {
        let label = format!("role={role}");
        agent_with(id, &url, &["--label", &label, "--threads", &threads, "--data-security", &security])
    };
    let (_a1, _a2) = (agent("a1", "send"), agent("a2", "recv"));
    let api = Api { base: url, http: reqwest::Client::new() };
    let (status, body) = api
        .call(reqwest::Method::POST, "/api/v1/artifacts?name=filter&version=0.1.0", squilla_guests::read("filter"))
        .await;
    assert_eq!(status, 201, "{body}");

    let gateway_port = free_port();
    let gateway =
        gateway(&api.base, gateway_port, &["--max-connections-per-ip", "2000", "--tenant-subscriptions", "2000"]);
    let via = Api { base: format!("http://127.0.0.1:{gateway_port}"), http: reqwest::Client::new() };
    let pids = [("master", master.pid()), ("gateway", gateway.pid())];

    // `SQUILLA_BENCH=hop`, `=ingest`, `=chain`, `=sse` or `=gateway` runs one part only (a
    // comma-separated list runs those).
    let part = std::env::var("SQUILLA_BENCH").unwrap_or_default();
    let wants = |name: &str| part.is_empty() || part.split(',').any(|p| p.trim() == name);
    let mut report = json!({});
    if wants("hop") {
        report["tcp_hop"] = tcp_hop(&api).await;
    }
    if wants("ingest") {
        report["ingest"] = ingest(&api, &via).await;
    }
    if wants("chain") {
        report["chained_hop"] = chained_hop(&api, master.pid()).await;
    }
    if wants("sse") {
        let mut runs = Vec::new();
        // Saturating rates show what is delivered at most; 100 × 20,000 events/s what a
        // sustained fan-out loses.
        for (subscribers, rate) in [(1, 1_000_000), (100, 100_000), (100, 20_000)] {
            runs.push(fan_out(&api, &api, subscribers, rate, &pids, false).await);
        }
        report["sse"] = json!(runs);
    }
    if wants("gateway") {
        let mut runs = Vec::new();
        // 1 M events/s to one subscriber and a chained job; then the same 2 M events/s in all
        // shared out to 100 and to 1,000 subscribers.
        for (subscribers, rate) in [(1, 1_000_000), (100, 20_000), (1000, 2_000)] {
            runs.push(fan_out(&api, &via, subscribers, rate, &pids, true).await);
        }
        report["gateway"] = json!(runs);
    }
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
}

fn pinned(role: &str) -> Value {
    json!({"labels": [{"name": "role", "value": role}]})
}

async fn submit(api: &Api, spec: Value) -> String {
    let name = spec["name"].as_str().unwrap().to_owned();
    let (status, body) = api.call(reqwest::Method::POST, "/api/v1/clusters", spec.to_string().into_bytes()).await;
    assert_eq!(status, 201, "{body}");
    let (status, job) = api.call(reqwest::Method::POST, &format!("/api/v1/clusters/{name}/jobs"), vec![]).await;
    assert_eq!(status, 201, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    api.until_of(&id, "running", Duration::from_secs(60), |j| j["state"] == "running").await;
    id
}

async fn kill(api: &Api, id: &str) {
    let (status, body) = api.call(reqwest::Method::POST, &format!("/api/v1/jobs/{id}/kill"), vec![]).await;
    assert_eq!(status, 200, "{body}");
}

/// `events_in` of worker 0 of `stage`, as last reported.
async fn events_in(api: &Api, id: &str, stage: usize) -> u64 {
    api.job_of(id).await["stages"][stage]["workers"][0]["events_in"].as_u64().unwrap_or(0)
}

async fn tcp_hop(api: &Api) -> Value {
    let id = submit(
        api,
        json!({
            "name": "hop",
            "source": {"kind": "synthetic", "generator": "device-logs", "events-per-second": 10_000_000},
            "backpressure": "block",
            "stages": [
                {"name": "send", "artifact": "filter@0.1.0", "constraints": pinned("send"),
                 "params": {"field": "device-type", "op": "exists"}},
                {"name": "recv", "artifact": "filter@0.1.0", "constraints": pinned("recv"),
                 "params": {"field": "no-such-field", "op": "exists"}}
            ]
        }),
    )
    .await;
    let job = api.job_of(&id).await;
    let agents: Vec<&str> = (0..2).map(|s| job["stages"][s]["workers"][0]["agent"].as_str().unwrap()).collect();
    assert_eq!(agents, ["a1", "a2"], "the stages sit on different agents");
    tokio::time::sleep(WARM_UP).await;
    eprintln!("bench: hop measuring");
    let (t0, sent0, received0) = (Instant::now(), events_in(api, &id, 0).await, events_in(api, &id, 1).await);
    tokio::time::sleep(MEASURE).await;
    let (t1, sent1, received1) = (Instant::now(), events_in(api, &id, 0).await, events_in(api, &id, 1).await);
    kill(api, &id).await;
    let seconds = (t1 - t0).as_secs_f64();
    let per_second = (received1 - received0) as f64 / seconds;
    let batch = squilla_batch::synth::DeviceLogs::new(1).batch(1024, 0, 1).unwrap();
    let event_bytes = batch.as_bytes().len() as f64 / 1024.0;
    json!({
        "events_per_second": per_second.round(),
        "mb_per_second": (per_second * event_bytes / 1e6).round(),
        "event_bytes": event_bytes.round(),
        "sent_per_second": ((sent1 - sent0) as f64 / seconds).round(),
        "seconds": seconds,
    })
}

/// JSON lines posted to a gateway's ingest over one keep-alive connection, one request after
/// another, each of `INGEST_EVENTS` lines, into a job whose keep-nothing `filter` runs on a2.
async fn ingest(api: &Api, via: &Api) -> Value {
    const INGEST_EVENTS: usize = 10_000;
    let id = submit(
        api,
        json!({
            "name": "ingest",
            "source": {"kind": "ingest"},
            "backpressure": "block",
            "stages": [{"name": "recv", "artifact": "filter@0.1.0", "constraints": pinned("recv"),
                        "params": {"field": "no-such-field", "op": "exists"}}]
        }),
    )
    .await;
    let events = squilla_batch::synth::DeviceLogs::new(3).batch(INGEST_EVENTS, 0, 1).unwrap();
    let mut body = Vec::new();
    for event in events.view().events() {
        squilla_batch::json::write_json(&event, &mut body);
        body.push(b'\n');
    }
    let path = format!("/api/v1/jobs/{id}/ingest");
    let post = |body: Vec<u8>| via.call(reqwest::Method::POST, &path, body);
    let warm_up = Instant::now() + WARM_UP;
    while Instant::now() < warm_up {
        let (status, answer) = post(body.clone()).await;
        assert!(status == 200 || status == 503, "{status} {answer}");
    }
    eprintln!("bench: ingest measuring");
    let (t0, received0) = (Instant::now(), events_in(api, &id, 0).await);
    let (mut taken, mut requests, mut refused) = (0u64, 0u64, 0u64);
    while t0.elapsed() < MEASURE {
        let (status, answer) = post(body.clone()).await;
        requests += 1;
        match status {
            200 => taken += answer["events"].as_u64().unwrap_or(0),
            _ => refused += 1,
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    // What the stage has processed once the last answer is in (heartbeats lag by up to 1 s).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let received1 = events_in(api, &id, 0).await;
    kill(api, &id).await;
    json!({
        "events_per_second": (taken as f64 / seconds).round(),
        "mb_per_second": (taken as f64 * body.len() as f64 / INGEST_EVENTS as f64 / seconds / 1e6).round(),
        "line_bytes": body.len() / INGEST_EVENTS,
        "events_per_request": INGEST_EVENTS,
        "requests": requests,
        "refused": refused,
        "processed_by_stage": received1 - received0,
        "seconds": seconds,
    })
}

async fn chained_hop(api: &Api, master: u32) -> Value {
    let up = submit(
        api,
        json!({
            "name": "up",
            "source": {"kind": "synthetic", "generator": "device-logs", "events-per-second": 10_000_000},
            "stages": [{"name": "send", "artifact": "filter@0.1.0", "constraints": pinned("send"),
                        "params": {"field": "device-type", "op": "exists"}}]
        }),
    )
    .await;
    let down = submit(
        api,
        json!({
            "name": "down",
            "source": {"kind": "job", "cluster": "up"},
            "backpressure": "block",
            "stages": [{"name": "recv", "artifact": "filter@0.1.0", "constraints": pinned("recv"),
                        "params": {"field": "no-such-field", "op": "exists"}}]
        }),
    )
    .await;
    tokio::time::sleep(WARM_UP).await;
    eprintln!("bench: chained hop measuring");
    let (t0, made0, received0, cpu0) =
        (Instant::now(), events_in(api, &up, 0).await, events_in(api, &down, 0).await, cpu_seconds(master));
    tokio::time::sleep(MEASURE).await;
    let (t1, made1, received1, cpu1) =
        (Instant::now(), events_in(api, &up, 0).await, events_in(api, &down, 0).await, cpu_seconds(master));
    kill(api, &down).await;
    kill(api, &up).await;
    let seconds = (t1 - t0).as_secs_f64();
    json!({
        "events_per_second": ((received1 - received0) as f64 / seconds).round(),
        "upstream_events_per_second": ((made1 - made0) as f64 / seconds).round(),
        "master_cpu_percent": ((cpu1 - cpu0) / seconds * 1000.0).round() / 10.0,
        "seconds": seconds,
    })
}

/// One subscriber's counts over the measured span.
#[derive(Default, Clone, Copy)]
struct Counts {
    events: u64,
    dropped: u64,
    /// Whether a limit ended the stream (an `error` event).
    ended: bool,
}

/// `subscribers` read a job of `rate` events/s through `via` (the master or a gateway), with a
/// chained job reading it too if `chained`; the CPU time of `pids` is measured over the span.
async fn fan_out(api: &Api, via: &Api, subscribers: usize, rate: u64, pids: &[(&str, u32)], chained: bool) -> Value {
    let name = format!("fan-{subscribers}-{rate}-{}", if chained { "chained" } else { "plain" });
    let id = submit(
        api,
        json!({
            "name": name,
            "source": {"kind": "synthetic", "generator": "device-logs", "events-per-second": rate},
            "backpressure": "drop-oldest",
            "stages": [{"name": "pass", "artifact": "filter@0.1.0", "constraints": pinned("recv"),
                        "params": {"field": "device-type", "op": "exists"}}]
        }),
    )
    .await;
    let chain = if chained {
        let spec = json!({
            "name": format!("{name}-down"),
            "source": {"kind": "job", "cluster": name},
            "stages": [{"name": "recv", "artifact": "filter@0.1.0", "constraints": pinned("send"),
                        "params": {"field": "no-such-field", "op": "exists"}}]
        });
        Some(submit(api, spec).await)
    } else {
        None
    };
    let start = Instant::now();
    let (measure_from, measure_to) = (start + WARM_UP, start + WARM_UP + MEASURE);
    let tasks: Vec<_> = (0..subscribers)
        .map(|_| {
            let request = via.http.get(format!("{}/api/v1/jobs/{id}/sink", via.base)).bearer_auth(cluster::TOKEN);
            tokio::spawn(subscribe(request, measure_from, measure_to))
        })
        .collect();
    tokio::time::sleep_until(measure_from.into()).await;
    let cpu0: Vec<f64> = pids.iter().map(|(_, pid)| cpu_seconds(*pid)).collect();
    let chained0 = match &chain {
        Some(c) => events_in(api, c, 0).await,
        None => 0,
    };
    tokio::time::sleep_until(measure_to.into()).await;
    let cpu1: Vec<f64> = pids.iter().map(|(_, pid)| cpu_seconds(*pid)).collect();
    let chained1 = match &chain {
        Some(c) => events_in(api, c, 0).await,
        None => 0,
    };
    let mut counts = Vec::new();
    for task in tasks {
        counts.push(task.await.unwrap());
    }
    if let Some(c) = &chain {
        kill(api, c).await;
    }
    kill(api, &id).await;
    let seconds = MEASURE.as_secs_f64();
    let total: u64 = counts.iter().map(|c| c.events).sum();
    let per = |f: fn(&Counts) -> u64| counts.iter().map(f).collect::<Vec<_>>();
    let cpu: serde_json::Map<String, Value> = pids
        .iter()
        .zip(cpu0.iter().zip(&cpu1))
        .map(|((name, _), (a, b))| (format!("{name}_cpu_percent"), json!(((b - a) / seconds * 1000.0).round() / 10.0)))
        .collect();
    json!({
        "via": if std::ptr::eq(api, via) { "master" } else { "gateway" },
        "subscribers": subscribers,
        "offered_events_per_second": rate,
        "delivered_events_per_second": (total as f64 / seconds).round(),
        "per_subscriber_min": (per(|c| c.events).into_iter().min().unwrap_or(0) as f64 / seconds).round(),
        "per_subscriber_max": (per(|c| c.events).into_iter().max().unwrap_or(0) as f64 / seconds).round(),
        "dropped_per_second": (per(|c| c.dropped).into_iter().sum::<u64>() as f64 / seconds).round(),
        "ended_by_a_limit": counts.iter().filter(|c| c.ended).count(),
        "chained_events_per_second": ((chained1 - chained0) as f64 / seconds).round(),
        "cpu": cpu,
        "seconds": seconds,
    })
}

/// Reads one SSE subscription until `to`, counting what arrives from `from` on.
async fn subscribe(request: reqwest::RequestBuilder, from: Instant, to: Instant) -> Counts {
    let mut response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    let (mut counts, mut carry, mut meta) = (Counts::default(), Vec::<u8>::new(), false);
    while let Ok(Ok(Some(chunk))) = tokio::time::timeout_at(to.into(), response.chunk()).await {
        let counting = Instant::now() >= from;
        carry.extend_from_slice(&chunk);
        let mut start = 0;
        while let Some(end) = carry[start..].iter().position(|&b| b == b'\n') {
            let line = &carry[start..start + end];
            start += end + 1;
            if line.starts_with(b"event:") {
                meta = true;
            } else if let Some(data) = line.strip_prefix(b"data:") {
                if std::mem::take(&mut meta) {
                    let value: Value = serde_json::from_slice(data).unwrap_or(Value::Null);
                    counts.dropped += if counting { value["dropped"].as_u64().unwrap_or(0) } else { 0 };
                    counts.ended |= value["code"].is_string();
                } else if counting {
                    counts.events += 1;
                }
            }
        }
        carry.drain(..start);
    }
    counts
}
