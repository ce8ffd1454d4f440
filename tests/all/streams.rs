//! Streams between processes: a job split over two agents against the same job on one,
//! subscribers sharing a `clientId`, a subscriber that stops reading, HTTP ingest, bad
//! queries, and jobs chained to another job's output that follow it across resubmits, rescales
//! and new jobs of its cluster, receiving typed batches straight from the upstream agents.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{Api, TOKEN, agent, free_port, master, temp_dir};

/// One open SSE subscription, read only when asked.
pub(crate) struct Sub {
    response: reqwest::Response,
    buffer: String,
}

impl Sub {
    pub(crate) async fn open(api: &Api, path: &str) -> Sub {
        let response = api.http.get(format!("{}{path}", api.base)).bearer_auth(TOKEN).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        Sub { response, buffer: String::new() }
    }

    /// Reads until `done(events)` or `timeout`; returns `(events, meta events)`.
    pub(crate) async fn read(
        &mut self,
        timeout: Duration,
        done: impl Fn(&[Value]) -> bool,
    ) -> (Vec<Value>, Vec<Value>) {
        let deadline = Instant::now() + timeout;
        let (mut events, mut metas) = (Vec::new(), Vec::new());
        while !done(&events) {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(Ok(Some(chunk))) = tokio::time::timeout(left, self.response.chunk()).await else { break };
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = self.buffer.find("\n\n") {
                let frame: String = self.buffer.drain(..end + 2).collect();
                let name = frame.lines().find_map(|l| l.strip_prefix("event:")).map(str::trim).map(str::to_owned);
                for data in frame.lines().filter_map(|l| l.strip_prefix("data:")) {
                    let value: Value = serde_json::from_str(data.trim()).unwrap();
                    match name.as_deref() {
                        None => events.push(value),
                        Some("meta") => metas.push(value),
                        Some(_) => {}
                    }
                }
            }
        }
        (events, metas)
    }
}

impl Sub {
    /// Reads in the background until `stop`: when each event arrived (one instant per read
    /// chunk's events), for tests that look for gaps in a job's output.
    pub(crate) fn arrivals(
        mut self,
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> (std::sync::Arc<std::sync::Mutex<Vec<Instant>>>, tokio::task::JoinHandle<()>) {
        let arrivals: std::sync::Arc<std::sync::Mutex<Vec<Instant>>> = std::sync::Arc::default();
        let seen = arrivals.clone();
        let reader = tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (events, _) = self.read(Duration::from_millis(100), |e| !e.is_empty()).await;
                let now = Instant::now();
                seen.lock().unwrap().extend(events.iter().map(|_| now));
            }
        });
        (arrivals, reader)
    }
}

pub(crate) fn ids(events: &[Value]) -> BTreeSet<i64> {
    events.iter().map(|e| e["id"].as_i64().unwrap()).collect()
}

pub(crate) fn ndjson(range: std::ops::Range<i64>) -> Vec<u8> {
    range
        .map(|i| json!({"id": i, "status": if i % 3 == 0 { 500 } else { 200 }}).to_string() + "\n")
        .collect::<String>()
        .into_bytes()
}

pub(crate) fn two_filters(name: &str, unique: &str) -> Vec<u8> {
    json!({
        "name": name,
        "source": {"kind": "ingest"},
        "stages": [
            {"name": "has-status", "artifact": "filter@0.1.0", "workers": 2, "constraints": {"unique-agent": unique},
             "params": {"field": "status", "op": "exists"}},
            {"name": "errors", "artifact": "filter@0.1.0", "workers": 2, "constraints": {"unique-agent": unique},
             "params": {"field": "status", "op": "ge", "value": 500}}
        ]
    })
    .to_string()
    .into_bytes()
}

pub(crate) async fn start(name: &str) -> (Api, Vec<crate::Proc>) {
    let dir = temp_dir(name);
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, format!("acme {TOKEN}\n")).unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let procs = vec![master(port, &dir.join("data"), &tokens), agent("a1", &url), agent("a2", &url)];
    let api = Api { base: url, http: reqwest::Client::new() };
    let (status, body) = api
        .call(reqwest::Method::POST, "/api/v1/artifacts?name=filter&version=0.1.0", squilla_guests::read("filter"))
        .await;
    assert_eq!(status, 201, "{body}");
    (api, procs)
}

pub(crate) async fn submit(api: &Api, spec: Vec<u8>, cluster: &str) -> String {
    let (status, body) = api.call(reqwest::Method::POST, "/api/v1/clusters", spec).await;
    assert_eq!(status, 201, "{body}");
    let (status, job) = api.call(reqwest::Method::POST, &format!("/api/v1/clusters/{cluster}/jobs"), vec![]).await;
    assert_eq!(status, 201, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    api.until_of(&id, "running", Duration::from_secs(30), |j| j["state"] == "running").await;
    id
}

fn agents_of(job: &Value) -> BTreeSet<String> {
    job["stages"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["workers"].as_array().unwrap().iter().map(|w| w["agent"].as_str().unwrap().to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_jobs_match_single_agent_jobs_and_client_ids_split_the_stream() {
    let (api, _procs) = start("streams-split").await;
    let spread = submit(&api, two_filters("spread", "hard"), "spread").await;
    let single = submit(&api, two_filters("single", "off"), "single").await;
    assert_eq!(agents_of(&api.job_of(&spread).await).len(), 2, "spread over both agents");
    assert_eq!(agents_of(&api.job_of(&single).await).len(), 1, "bin-packed on one agent");

    // Bad queries and parameters answer 400 before anything is subscribed.
    let (status, body) = api
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/jobs/{single}/sink?query=SELECT%20status%20FROM%20WHERE%20x%20%3D%201"),
            vec![],
        )
        .await;
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid_query")), "{body}");
    assert!(body["message"].as_str().unwrap().contains("line 1, column 28"), "{body}");
    let (status, _) = api.call(reqwest::Method::GET, &format!("/api/v1/jobs/{single}/sink?nope=1"), vec![]).await;
    assert_eq!(status, 400);

    let mut a = Sub::open(&api, &format!("/api/v1/jobs/{spread}/sink?clientId=shared")).await;
    let mut b = Sub::open(&api, &format!("/api/v1/jobs/{spread}/sink?clientId=shared")).await;
    let mut one = Sub::open(&api, &format!("/api/v1/jobs/{single}/sink")).await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // the master connects to the agents

    // Ingest is all-or-nothing: a request with bad lines is refused, naming them.
    let mut bad = ndjson(9_000..9_003);
    bad.extend_from_slice(b"{\"id\": 9003, \"status\": [[[[[[[[[500]]]]]]]]]}\nnot json\n");
    for job in [&spread, &single] {
        let (status, body) = api.call(reqwest::Method::POST, &format!("/api/v1/jobs/{job}/ingest"), bad.clone()).await;
        assert_eq!((status, body["code"].as_str()), (400, Some("invalid_events")), "{body}");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains("line 4") && message.contains("line 5") && !message.contains("line 3"), "{message}");
        let (status, body) =
            api.call(reqwest::Method::POST, &format!("/api/v1/jobs/{job}/ingest"), ndjson(0..3000)).await;
        assert_eq!((status, body["events"].as_u64()), (200, Some(3000)), "{body}");
    }
    let expected: BTreeSet<i64> = (0..3000).filter(|i| i % 3 == 0).collect();
    let (from_one, _) = one.read(Duration::from_secs(30), |e| e.len() >= expected.len()).await;
    assert_eq!(ids(&from_one), expected, "the job on one agent");
    let (from_a, _) = a.read(Duration::from_secs(5), |e| e.len() >= expected.len() / 2).await;
    let (from_b, _) = b.read(Duration::from_secs(5), |e| e.len() + from_a.len() >= expected.len()).await;
    let (more_a, _) =
        a.read(Duration::from_millis(500), |e| e.len() + from_a.len() + from_b.len() >= expected.len()).await;
    let (ia, ib) = (ids(&[from_a, more_a].concat()), ids(&from_b));
    assert!(!ia.is_empty() && !ib.is_empty(), "both subscribers of the client id get a share");
    assert!(ia.is_disjoint(&ib), "shares are disjoint");
    assert_eq!(ia.union(&ib).copied().collect::<BTreeSet<_>>(), expected, "together all of it, as on one agent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_reading_slows_nobody_and_is_told_what_it_lost() {
    let (api, _procs) = start("streams-slow").await;
    let job = submit(&api, two_filters("slow", "off"), "slow").await;
    let mut stuck = Sub::open(&api, &format!("/api/v1/jobs/{job}/sink")).await;
    let mut reader = Sub::open(&api, &format!("/api/v1/jobs/{job}/sink")).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // 150,000 events of ~250 bytes at 10,000 events/s: well within what a reading subscriber
    // takes, and far more than the buffers between a stuck one and the agent hold.
    let total = 150_000i64;
    let pad = "x".repeat(200);
    let body = move |r: std::ops::Range<i64>| -> Vec<u8> {
        r.map(|i| json!({"id": i, "status": 500, "pad": pad}).to_string() + "\n").collect::<String>().into_bytes()
    };
    let feeder = {
        let (base, http) = (api.base.clone(), api.http.clone());
        let job = job.clone();
        tokio::spawn(async move {
            for start in (0..total).step_by(500) {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let response = http
                    .post(format!("{base}/api/v1/jobs/{job}/ingest"))
                    .bearer_auth(TOKEN)
                    .body(body(start..start + 500))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200, "ingest is never refused for a stuck subscriber");
            }
        })
    };
    let (events, metas) = reader.read(Duration::from_secs(60), |e| e.len() as i64 >= total).await;
    feeder.await.unwrap();
    assert_eq!(events.len() as i64, total, "the reading subscriber gets everything");
    assert!(metas.is_empty());
    let (_, metas) = stuck.read(Duration::from_secs(10), |_| false).await;
    let dropped: u64 = metas.iter().filter_map(|m| m["dropped"].as_u64()).sum();
    assert!(dropped > 0, "the stuck subscriber is told it lost events: {metas:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chained_job_follows_its_upstream_across_a_resubmit() {
    let (api, _procs) = start("streams-chain").await;
    let upstream = json!({
        "name": "logs",
        "source": {"kind": "synthetic", "generator": "device-logs", "events-per-second": 2000},
        "stages": [{"name": "pass", "artifact": "filter@0.1.0", "params": {"field": "device-type", "op": "exists"}}]
    });
    let downstream = json!({
        "name": "errs",
        "source": {"kind": "job", "cluster": "logs", "query": "SELECT \"device-type\", status WHERE status >= 500"},
        "stages": [{"name": "keep", "artifact": "filter@0.1.0", "params": {"field": "status", "op": "exists"}}]
    });
    let logs = submit(&api, upstream.to_string().into_bytes(), "logs").await;
    let errs = submit(&api, downstream.to_string().into_bytes(), "errs").await;
    let mut sink = Sub::open(&api, &format!("/api/v1/jobs/{errs}/sink")).await;
    let (events, _) = sink.read(Duration::from_secs(30), |e| e.len() >= 10).await;
    assert!(events.len() >= 10, "the chained job receives: {events:?}");
    for e in &events {
        assert!(e["status"].as_i64().unwrap() >= 500, "{e}");
        let keys: BTreeSet<&str> = e.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, BTreeSet::from(["timestamp-ms", "device-type", "status"]), "the query's projection");
    }

    // The upstream's worker is replaced by a new incarnation; the chain keeps flowing.
    let before = api.job_of(&logs).await["stages"][0]["workers"][0]["number"].as_u64().unwrap();
    let (status, _) =
        api.call(reqwest::Method::POST, &format!("/api/v1/jobs/{logs}/stages/pass/workers/0/resubmit"), vec![]).await;
    assert_eq!(status, 200);
    api.until_of(&logs, "upstream re-placed", Duration::from_secs(30), |j| {
        j["state"] == "running" && j["stages"][0]["workers"][0]["number"].as_u64() != Some(before)
    })
    .await;
    let resumed_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let (events, _) = sink
        .read(Duration::from_secs(30), |e| {
            e.iter().filter(|x| x["timestamp-ms"].as_i64().unwrap() > resumed_at).count() >= 5
        })
        .await;
    assert!(
        events.iter().filter(|x| x["timestamp-ms"].as_i64().unwrap() > resumed_at).count() >= 5,
        "events after the resubmit ({resumed_at}): {:?}",
        events.iter().map(|e| e["timestamp-ms"].as_i64().unwrap()).collect::<Vec<_>>()
    );
}

/// Events after `since_ms` (by their own time).
fn after(events: &[Value], since_ms: i64) -> usize {
    events.iter().filter(|e| e["timestamp-ms"].as_i64().unwrap_or(0) > since_ms).count()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

/// A chained job pulls its upstream's output from the agents that make it, as batches: a bytes
/// field made upstream arrives as bytes downstream (through JSON it would have become text),
/// while the upstream is rescaled, and when a new job of its cluster replaces the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chained_job_pulls_typed_batches_across_rescale_and_a_new_upstream_job() {
    let (api, _procs) = start("streams-typed").await;
    let (status, body) = api
        .call(reqwest::Method::POST, "/api/v1/artifacts?name=typed&version=0.1.0", squilla_guests::read("typed"))
        .await;
    assert_eq!(status, 201, "{body}");
    let upstream = json!({
        "name": "tagged",
        "source": {"kind": "synthetic", "generator": "device-logs", "events-per-second": 4000},
        "stages": [{"name": "tag", "artifact": "typed@0.1.0", "workers": 2,
                    "constraints": {"unique-agent": "hard"}, "params": {"mode": "tag"}}]
    });
    let downstream = json!({
        "name": "inspected",
        "source": {"kind": "job", "cluster": "tagged", "query": "SELECT * WHERE status >= 500"},
        "stages": [{"name": "inspect", "artifact": "typed@0.1.0", "params": {"mode": "inspect"}}]
    });
    let tagged = submit(&api, upstream.to_string().into_bytes(), "tagged").await;
    assert_eq!(agents_of(&api.job_of(&tagged).await).len(), 2, "the upstream's output is made on both agents");
    let inspected = submit(&api, downstream.to_string().into_bytes(), "inspected").await;
    let mut sink = Sub::open(&api, &format!("/api/v1/jobs/{inspected}/sink")).await;
    let (events, _) = sink.read(Duration::from_secs(30), |e| e.len() >= 50).await;
    assert!(events.len() >= 50, "the chained job receives: {events:?}");
    for e in &events {
        assert_eq!(e["raw-type"], "bytes", "the bytes field crossed the chain as bytes: {e}");
        assert!(e["status"].as_i64().unwrap() >= 500, "the query ran upstream: {e}");
        let raw = e["raw"].as_str().unwrap();
        assert!(raw.starts_with("0x00ff"), "the sink shows bytes as hex: {e}");
    }

    // Rescale the upstream down to one worker: the chain follows to the agent that is left.
    let (status, body) = api
        .call(reqwest::Method::POST, &format!("/api/v1/jobs/{tagged}/stages/tag/scale"), br#"{"workers": 1}"#.to_vec())
        .await;
    assert_eq!(status, 200, "{body}");
    api.until_of(&tagged, "scaled down", Duration::from_secs(30), |j| {
        j["stages"][0]["workers"].as_array().is_some_and(|w| w.len() == 1)
    })
    .await;
    let scaled_at = now_ms();
    let (events, _) = sink.read(Duration::from_secs(30), |e| after(e, scaled_at) >= 20).await;
    assert!(after(&events, scaled_at) >= 20, "events after the rescale: {}", events.len());
    assert!(events.iter().all(|e| e["raw-type"] == "bytes"), "{events:?}");

    // A new job of the upstream cluster replaces the old one: the chain moves to it.
    let (status, job) = api.call(reqwest::Method::POST, "/api/v1/clusters/tagged/jobs", vec![]).await;
    assert_eq!(status, 201, "{job}");
    let newer = job["id"].as_str().unwrap().to_owned();
    api.until_of(&newer, "running", Duration::from_secs(30), |j| j["state"] == "running").await;
    let (status, _) = api.call(reqwest::Method::POST, &format!("/api/v1/jobs/{tagged}/kill"), vec![]).await;
    assert_eq!(status, 200);
    api.until_of(&tagged, "killed", Duration::from_secs(30), |j| j["state"] != "running").await;
    let moved_at = now_ms();
    let (events, _) = sink.read(Duration::from_secs(30), |e| after(e, moved_at) >= 20).await;
    assert!(after(&events, moved_at) >= 20, "events from the new upstream job: {}", events.len());
    assert!(events.iter().all(|e| e["raw-type"] == "bytes"), "{events:?}");
}

/// A chained job keeps receiving when the agent that runs its upstream is lost: the master
/// re-places the upstream's worker, and the new plan points the source at its new agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chained_job_keeps_receiving_when_its_upstreams_agent_is_lost() {
    let (api, mut procs) = start("streams-chain-loss").await;
    procs.push(crate::agent("a3", &api.base));
    let upstream = json!({
        "name": "beat",
        "source": {"kind": "synthetic", "generator": "device-logs", "events-per-second": 2000},
        "stages": [{"name": "pass", "artifact": "filter@0.1.0", "params": {"field": "device-type", "op": "exists"}}]
    });
    let downstream = json!({
        "name": "heard",
        "source": {"kind": "job", "cluster": "beat", "query": "SELECT * WHERE status >= 500"},
        "stages": [{"name": "keep", "artifact": "filter@0.1.0", "params": {"field": "status", "op": "exists"}}]
    });
    let beat = submit(&api, upstream.to_string().into_bytes(), "beat").await;
    let heard = submit(&api, downstream.to_string().into_bytes(), "heard").await;
    let mut sink = Sub::open(&api, &format!("/api/v1/jobs/{heard}/sink")).await;
    let (events, _) = sink.read(Duration::from_secs(30), |e| e.len() >= 10).await;
    assert!(events.len() >= 10, "the chained job receives: {events:?}");

    // Lose the upstream's agent (not the one the test reads the downstream through).
    let lost = api.job_of(&beat).await["stages"][0]["workers"][0]["agent"].as_str().unwrap().to_owned();
    let index = ["a1", "a2", "a3"].iter().position(|a| *a == lost).unwrap();
    procs[index + 1].kill();
    api.until_of(&beat, "upstream re-placed", Duration::from_secs(30), |j| {
        j["state"] == "running" && j["stages"][0]["workers"][0]["agent"].as_str().is_some_and(|a| a != lost)
    })
    .await;
    api.until_of(&heard, "downstream running", Duration::from_secs(30), |j| j["state"] == "running").await;
    // The subscription may have ended if the downstream's last stage was on the lost agent:
    // open it again from here.
    let mut sink = Sub::open(&api, &format!("/api/v1/jobs/{heard}/sink")).await;
    let moved_at = now_ms();
    let (events, _) = sink.read(Duration::from_secs(30), |e| after(e, moved_at) >= 10).await;
    assert!(after(&events, moved_at) >= 10, "events after the loss: {}", events.len());
    assert!(events.iter().all(|e| e["status"].as_i64().unwrap() >= 500), "{events:?}");
}
