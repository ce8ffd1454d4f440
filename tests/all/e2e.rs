//! The whole platform as separate processes on loopback: a master and two agents. A 3-stage
//! job is spread over both agents (batches cross between them over TCP), its results are read
//! from the SSE sink, an agent is killed and its workers move to the other, and the master is
//! restarted and adopts the running workers instead of starting new ones.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{Api, TOKEN, agent, free_port, master, temp_dir};

impl Api {
    /// Polls the job until `ok` holds, within `timeout`.
    async fn until(&self, what: &str, timeout: Duration, ok: impl Fn(&Value) -> bool) -> Value {
        self.until_of("errors-1", what, timeout, ok).await
    }

    /// Reads `n` events from the job's SSE sink (within `timeout`).
    async fn sink(&self, n: usize, timeout: Duration) -> Vec<Value> {
        let mut response =
            self.http.get(format!("{}/api/v1/jobs/errors-1/sink", self.base)).bearer_auth(TOKEN).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let deadline = Instant::now() + timeout;
        let (mut buffer, mut events) = (String::new(), Vec::new());
        while events.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            let chunk = tokio::time::timeout(left, response.chunk()).await;
            let Ok(Ok(Some(chunk))) = chunk else { panic!("sink: {} of {n} events in {timeout:?}", events.len()) };
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find("\n\n") {
                let frame: String = buffer.drain(..end + 2).collect();
                if frame.lines().any(|l| l.starts_with("event:")) {
                    continue;
                }
                for data in frame.lines().filter_map(|l| l.strip_prefix("data:")) {
                    events.push(serde_json::from_str(data.trim()).unwrap());
                }
            }
        }
        events
    }
}

/// Where each stage's workers run, and their numbers.
fn placement(job: &Value) -> Vec<Vec<(String, u64)>> {
    job["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            s["workers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|w| (w["agent"].as_str().unwrap_or("").to_owned(), w["number"].as_u64().unwrap()))
                .collect()
        })
        .collect()
}

/// Error-rate results must be consistent and about the generator's device types.
fn check(events: &[Value]) {
    let known: BTreeSet<&str> = squilla_batch::synth::DEVICE_TYPES.iter().map(|(d, _)| *d).collect();
    for e in events {
        let (requests, errors) = (e["requests"].as_i64().unwrap(), e["errors"].as_i64().unwrap());
        assert!(requests > 0 && errors >= 0 && errors <= requests, "{e}");
        assert!((e["error-rate"].as_f64().unwrap() - errors as f64 / requests as f64).abs() < 1e-9, "{e}");
        assert!(known.contains(e["device-type"].as_str().unwrap()), "{e}");
        assert_eq!(e["window-ms"], 30_000);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_spread_over_two_agents_survives_losing_one_and_a_master_restart() {
    let dir = temp_dir("e2e");
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, format!("acme {TOKEN}\n")).unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut m = master(port, &dir.join("data"), &tokens);
    let _a1 = agent("a1", &url);
    let mut a2 = agent("a2", &url);
    let api = Api { base: url.clone(), http: reqwest::Client::new() };

    // Upload the stages as a client would, and make a cluster of three stages whose workers
    // prefer distinct agents.
    for name in ["filter", "device-errors"] {
        let path = format!("/api/v1/artifacts?name={name}&version=0.1.0");
        let (status, body) = api.call(reqwest::Method::POST, &path, squilla_guests::read(name)).await;
        assert_eq!(status, 201, "{body}");
    }
    let unique = json!({"unique-agent": "soft"});
    let spec = json!({
        "name": "errors",
        "source": {"kind": "synthetic", "generator": "device-logs", "events-per-second": 5000},
        "stages": [
            {"name": "parse", "artifact": "filter@0.1.0", "workers": 2, "constraints": unique,
             "params": {"field": "status", "op": "exists"}},
            {"name": "typed", "artifact": "filter@0.1.0", "workers": 2, "constraints": unique,
             "params": {"field": "device-type", "op": "exists"}},
            {"name": "error-rate", "artifact": "device-errors@0.1.0", "workers": 2, "constraints": unique,
             "routing": {"kind": "key-hash", "fields": ["device-type"]}, "tick-ms": 300,
             "params": {"window-ms": 30000, "bucket-ms": 1000}}
        ]
    });
    let (status, body) = api.call(reqwest::Method::POST, "/api/v1/clusters", spec.to_string().into_bytes()).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = api.call(reqwest::Method::POST, "/api/v1/clusters/errors/jobs", vec![]).await;
    assert_eq!((status, body["id"].as_str()), (201, Some("errors-1")), "{body}");

    // Every stage has a worker on each agent, and the job runs.
    let job = api.until("running on both agents", Duration::from_secs(30), |j| j["state"] == "running").await;
    for stage in placement(&job) {
        let agents: BTreeSet<&str> = stage.iter().map(|(a, _)| a.as_str()).collect();
        assert_eq!(agents, BTreeSet::from(["a1", "a2"]), "{job:#}");
    }
    let events = api.sink(12, Duration::from_secs(20)).await;
    check(&events);

    // Agent a2 dies: its workers are re-placed on a1 and results resume.
    a2.kill();
    let job = api
        .until("re-placed on a1", Duration::from_secs(30), |j| {
            j["state"] == "running" && placement(j).iter().flatten().all(|(a, _)| a == "a1")
        })
        .await;
    let history = job["stages"].as_array().unwrap().iter().flat_map(|s| s["workers"].as_array().unwrap().clone());
    assert!(history.flat_map(|w| w["history"].as_array().unwrap().clone()).any(|t| t["reason"] == "agent `a2` lost"));
    let killed_at = job["history"].as_array().unwrap().last().unwrap()["at_ms"].as_i64().unwrap();
    let events = api.sink(12, Duration::from_secs(20)).await;
    check(&events);
    assert!(events.iter().any(|e| e["timestamp-ms"].as_i64().unwrap() >= killed_at), "fresh results after the move");

    // The master restarts: the job is still listed and running, on the same workers.
    let before = placement(&job);
    m.kill();
    let _m = master(port, &dir.join("data"), &tokens);
    let (_, jobs) = api.call(reqwest::Method::GET, "/api/v1/jobs", vec![]).await;
    assert_eq!(jobs.as_array().unwrap().len(), 1, "{jobs:#}");
    tokio::time::sleep(Duration::from_secs(3)).await; // past the grace period
    let job = api.until("running after the restart", Duration::from_secs(20), |j| j["state"] == "running").await;
    assert_eq!(placement(&job), before, "workers adopted, none started anew");
    check(&api.sink(6, Duration::from_secs(20)).await);
}
