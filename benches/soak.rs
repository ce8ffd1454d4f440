//! The soak: many tenants' jobs, hostile ones among them, churned for a long time beside
//! witness jobs whose output is checked event by event, with the master's and agents' memory
//! sampled throughout. Not part of the test run: `cargo bench --workspace --bench soak`
//! (30 minutes; `SOAK_SECS=N` for another length). Prints a JSON report.
//!
//! - Processes: `squilla master` and two `squilla agent`s (one worker thread each), as
//!   deployed, with the default heartbeats (1 s) and agent timeout (5 s).
//! - 5 tenants, 20 jobs: per tenant one **witness** (ingest source, `block`, a keep-all
//!   `filter`), two **churn** jobs (synthetic device logs into `filter` or `device-errors`) and
//!   one **hostile** job (a stage that traps, spins, is slow, bombs its memory or returns
//!   garbage, by tenant).
//! - The driver feeds every witness 200 sequenced events/s and reads its sink: the witness's
//!   output must be complete and in order. Every 2 s it does a random action on a churn or
//!   hostile job: kill and submit anew, scale a stage to 1-3 workers, resubmit a worker;
//!   hostile jobs that failed are submitted anew.
//! - Every 10 s it samples the resident memory of the three processes (reported: start, end,
//!   maximum, and every 5 minutes).

#[path = "../tests/support/cluster.rs"]
mod cluster;

use std::collections::BTreeMap;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cluster::{AGENT_TOKEN, free_port, rss_mib, squilla, temp_dir};
use serde_json::{Value, json};

const TENANTS: [&str; 5] = ["t1", "t2", "t3", "t4", "t5"];
const WITNESS_RATE: u64 = 200;

fn token(tenant: &str) -> String {
    format!("{tenant}-token-0123456789abcdef")
}

/// A child process, killed when dropped, its standard error in a file.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(dir: &std::path::Path, name: &str, args: &[&str]) -> Process {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let child = squilla().args(args).env("SQUILLA_LOG", "warn").stdout(Stdio::null()).stderr(log).spawn().unwrap();
    Process(child)
}

struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    async fn call(&self, tenant: &str, method: reqwest::Method, path: &str, body: Vec<u8>) -> (u16, Value) {
        let request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token(tenant))
            .timeout(Duration::from_secs(30))
            .body(body);
        match request.send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                (status, r.json().await.unwrap_or(Value::Null))
            }
            Err(e) => (0, json!({"error": e.to_string()})),
        }
    }

    async fn submit(&self, tenant: &str, cluster: &str) -> Option<String> {
        let (status, body) =
            self.call(tenant, reqwest::Method::POST, &format!("/api/v1/clusters/{cluster}/jobs"), vec![]).await;
        (status == 201).then(|| body["id"].as_str().unwrap_or_default().to_owned())
    }
}

/// A witness's sink, read in order: the next sequence number expected, and what went wrong.
#[derive(Default)]
struct Witness {
    fed: AtomicU64,
    received: AtomicU64,
    out_of_order: AtomicU64,
    dropped_reported: AtomicU64,
    retries: AtomicU64,
}

async fn read_witness(client: Arc<Client>, tenant: &'static str, id: String, witness: Arc<Witness>) {
    let url = format!("{}/api/v1/jobs/{id}/sink", client.base);
    let Ok(mut response) = client.http.get(url).bearer_auth(token(tenant)).send().await else { return };
    let mut parser = squilla_types::sse::Parser::new();
    let mut next = 0u64;
    while let Ok(Some(chunk)) = response.chunk().await {
        parser.feed(&chunk, |event| match event.name.as_deref() {
            None => {
                let seq = serde_json::from_str::<Value>(&event.data).ok().and_then(|v| v["seq"].as_u64());
                if seq != Some(next) {
                    witness.out_of_order.fetch_add(1, Ordering::Relaxed);
                }
                next = seq.map_or(next, |s| s + 1);
                witness.received.fetch_add(1, Ordering::Relaxed);
            }
            Some("meta") => {
                let n = serde_json::from_str::<Value>(&event.data).ok().and_then(|v| v["dropped"].as_u64());
                witness.dropped_reported.fetch_add(n.unwrap_or(0), Ordering::Relaxed);
            }
            _ => {}
        });
    }
}

async fn feed_witness(client: Arc<Client>, tenant: &'static str, id: String, witness: Arc<Witness>, until: Instant) {
    let mut seq = 0u64;
    let per_tick = WITNESS_RATE / 10;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    // A producer that fell behind does not make up for it in a burst.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while Instant::now() < until {
        tick.tick().await;
        let body: String =
            (seq..seq + per_tick).map(|s| format!("{{\"seq\": {s}, \"tenant\": \"{tenant}\"}}\n")).collect();
        // A producer retries what the platform asks it to retry (`503`), as the docs say.
        let mut tries = 0;
        loop {
            let (status, answer) = client
                .call(tenant, reqwest::Method::POST, &format!("/api/v1/jobs/{id}/ingest"), body.clone().into_bytes())
                .await;
            if status == 200 && answer["dropped"].as_u64() == Some(0) {
                seq += per_tick;
                witness.fed.store(seq, Ordering::Relaxed);
                break;
            }
            tries += 1;
            witness.retries.fetch_add(1, Ordering::Relaxed);
            if !(status == 503 || status == 429) || tries > 100 {
                eprintln!("soak: witness {tenant}/{id}: ingest answered {status} {answer}; giving up");
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(run());
}

async fn run() {
    let secs: u64 = std::env::var("SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(1800);
    let dir = temp_dir("soak");
    let tokens: String = TENANTS.iter().map(|t| format!("{t} {}\n", token(t))).collect();
    std::fs::write(dir.join("tokens"), tokens).unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    // The default heartbeat and agent timeout, as deployed.
    let args = cluster::master_args(port, &dir.join("data"), &dir.join("tokens"), 1000, 5000);
    let master = spawn(&dir, "master", &args.iter().map(String::as_str).collect::<Vec<_>>());
    let agents: Vec<Process> = ["a1", "a2"]
        .iter()
        .map(|id| {
            spawn(&dir, id, &["agent", "--master", &base, "--agent-token", AGENT_TOKEN, "--id", id, "--threads", "1"])
        })
        .collect();
    let client = Arc::new(Client { base: base.clone(), http: reqwest::Client::new() });
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.call("t1", reqwest::Method::GET, "/api/v1/agents", vec![]).await.1.as_array().map_or(0, Vec::len) < 2 {
        assert!(Instant::now() < deadline, "the master and agents did not come up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Artifacts and clusters of every tenant.
    let hostile_params = [
        json!({"process": "trap"}),
        json!({"process": "spin"}),
        json!({"process": "busy-ms:900"}),
        json!({"tick": "spin"}),
        json!({}),
    ];
    let mut witnesses = Vec::new();
    let mut churn: Vec<(&'static str, String, Option<String>)> = Vec::new();
    for (i, tenant) in TENANTS.iter().enumerate() {
        let mut sha = BTreeMap::new();
        for guest in ["filter", "device-errors", "hostile", "memory-bomb", "corrupt-output"] {
            let (status, body) =
                client.call(tenant, reqwest::Method::POST, "/api/v1/artifacts", squilla_guests::read(guest)).await;
            assert!(status == 201 || status == 200, "{body}");
            sha.insert(guest, body["sha256"].as_str().unwrap().to_owned());
        }
        let artifact = |g: &str| format!("sha256:{}", sha[g]);
        let hostile = match i {
            4 => ("corrupt-output", json!({})),
            3 => ("memory-bomb", json!({})),
            _ => ("hostile", hostile_params[i].clone()),
        };
        let specs = [
            json!({"name": "witness", "source": {"kind": "ingest"},
                   "stages": [{"name": "keep", "artifact": artifact("filter"), "params": {"field": "seq", "op": "exists"}}]}),
            json!({"name": "logs", "source": {"kind": "synthetic", "generator": "device-logs", "events-per-second": 2000},
                   "stages": [{"name": "keep", "artifact": artifact("filter"), "params": {"field": "status", "op": "ge", "value": 500}}]}),
            json!({"name": "errors", "source": {"kind": "synthetic", "generator": "device-logs", "events-per-second": 2000},
                   "stages": [{"name": "rate", "artifact": artifact("device-errors"), "routing": {"kind": "key-hash", "fields": ["device-type"]},
                               "params": {"window-ms": 10000, "bucket-ms": 1000}}]}),
            json!({"name": "hostile", "source": {"kind": "synthetic", "generator": "device-logs", "events-per-second": 1000},
                   "stages": [{"name": "bad", "artifact": artifact(hostile.0), "params": hostile.1}]}),
        ];
        for spec in specs {
            let (status, body) =
                client.call(tenant, reqwest::Method::POST, "/api/v1/clusters", spec.to_string().into_bytes()).await;
            assert_eq!(status, 201, "{body}");
        }
        let id = client.submit(tenant, "witness").await.unwrap();
        witnesses.push((*tenant, id));
        for cluster in ["logs", "errors", "hostile"] {
            let id = client.submit(tenant, cluster).await;
            churn.push((tenant, cluster.to_owned(), id));
        }
    }
    for (tenant, id) in &witnesses {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (_, job) = client.call(tenant, reqwest::Method::GET, &format!("/api/v1/jobs/{id}"), vec![]).await;
            if job["state"] == "running" {
                break;
            }
            assert!(Instant::now() < deadline, "witness {tenant}/{id} did not start: {job}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pids = [("master", master.0.id()), ("a1", agents[0].0.id()), ("a2", agents[1].0.id())];
    let start_memory: BTreeMap<&str, f64> = pids.iter().map(|(n, p)| (*n, rss_mib(*p))).collect();
    eprintln!("soak: {secs} s; memory at start {start_memory:?}");

    let until = Instant::now() + Duration::from_secs(secs);
    let mut tracked = Vec::new();
    for (tenant, id) in &witnesses {
        let witness = Arc::new(Witness::default());
        tokio::spawn(read_witness(client.clone(), tenant, id.clone(), witness.clone()));
        tokio::time::sleep(Duration::from_millis(300)).await;
        tokio::spawn(feed_witness(client.clone(), tenant, id.clone(), witness.clone(), until));
        tracked.push((tenant, id.clone(), witness));
    }

    let mut rng = squilla_fuzz_rng(42);
    let mut actions: BTreeMap<&str, u64> = BTreeMap::new();
    let mut samples = Vec::new();
    let mut max_memory: BTreeMap<&str, f64> = start_memory.clone();
    let mut last_sample = Instant::now();
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let pick = (rng() % churn.len() as u64) as usize;
        let (tenant, cluster, id) = churn[pick].clone();
        let action = match (rng() % 4, &id) {
            (_, None) => "submit",
            (0, _) => "kill-and-submit",
            (1, _) => "scale",
            (2, _) => "resubmit-worker",
            _ => "refresh-failed",
        };
        match (action, id) {
            ("submit", _) => churn[pick].2 = client.submit(tenant, &cluster).await,
            ("kill-and-submit", Some(id)) => {
                client.call(tenant, reqwest::Method::POST, &format!("/api/v1/jobs/{id}/kill"), vec![]).await;
                churn[pick].2 = client.submit(tenant, &cluster).await;
            }
            ("scale", Some(id)) => {
                let body = format!(r#"{{"workers": {}}}"#, 1 + rng() % 3).into_bytes();
                client.call(tenant, reqwest::Method::POST, &format!("/api/v1/jobs/{id}/stages/0/scale"), body).await;
            }
            ("resubmit-worker", Some(id)) => {
                let path = format!("/api/v1/jobs/{id}/stages/0/workers/0/resubmit");
                client.call(tenant, reqwest::Method::POST, &path, vec![]).await;
            }
            (_, Some(id)) => {
                let (_, job) = client.call(tenant, reqwest::Method::GET, &format!("/api/v1/jobs/{id}"), vec![]).await;
                if job["state"] == "failed" {
                    churn[pick].2 = client.submit(tenant, &cluster).await;
                }
            }
            _ => {}
        }
        *actions.entry(action).or_default() += 1;
        if last_sample.elapsed() >= Duration::from_secs(10) {
            last_sample = Instant::now();
            let sample: BTreeMap<&str, f64> = pids.iter().map(|(n, p)| (*n, rss_mib(*p))).collect();
            for (n, v) in &sample {
                let max = max_memory.entry(n).or_default();
                *max = max.max(*v);
            }
            samples.push(sample);
        }
    }
    // Let the witnesses drain: every event fed must arrive (within a minute).
    let drained = Instant::now() + Duration::from_secs(60);
    while Instant::now() < drained
        && tracked.iter().any(|(_, _, w)| w.received.load(Ordering::Relaxed) < w.fed.load(Ordering::Relaxed))
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let end_memory: BTreeMap<&str, f64> = pids.iter().map(|(n, p)| (*n, rss_mib(*p))).collect();
    let witnesses: Vec<Value> = tracked
        .iter()
        .map(|(tenant, id, w)| {
            let (fed, received) = (w.fed.load(Ordering::Relaxed), w.received.load(Ordering::Relaxed));
            json!({"tenant": tenant, "job": id, "fed": fed, "received": received, "lost": fed.saturating_sub(received),
                   "out_of_order": w.out_of_order.load(Ordering::Relaxed),
                   "dropped_reported": w.dropped_reported.load(Ordering::Relaxed),
                   "ingest_retries": w.retries.load(Ordering::Relaxed)})
        })
        .collect();
    let report = json!({
        "seconds": secs,
        "memory_mib": {"start": start_memory, "end": end_memory, "max": max_memory},
        "memory_samples": samples.len(),
        // Every 30th sample (each 5 minutes), to tell a plateau from a climb.
        "memory_mib_every_5_min": samples
            .iter()
            .step_by(30)
            .map(|s| s.iter().map(|(n, v)| (*n, (v * 10.0).round() / 10.0)).collect::<BTreeMap<_, _>>())
            .collect::<Vec<_>>(),
        "witnesses": witnesses,
        "actions": actions,
    });
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    drop(agents);
    drop(master);
}

/// A seeded random stream for the churn.
fn squilla_fuzz_rng(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed | 1;
    move || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}
