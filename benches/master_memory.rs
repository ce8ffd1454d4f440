//! The master's memory under metrics: a real `squilla master` with 100 running jobs (300
//! workers) whose agents report every worker's counters each second, for 10 minutes, with a
//! tenant reading a job's metrics every second. The agents are this program: four clients of
//! the heartbeat protocol that report whatever workers the master assigns them, running, with
//! counters that grow every beat (so every heartbeat adds a sample to every slot's history).
//! The master's resident memory is sampled every 10 s; with the history bounded per slot, it
//! must stay flat once the histories are full (5 min 20 s). Prints a JSON report.
//!
//! `cargo bench --workspace --bench master_memory` (10 minutes; `MASTER_MEMORY_SECS=N` for
//! another length). Not part of the test run.

#[path = "../tests/support/cluster.rs"]
mod cluster;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cluster::{AGENT_TOKEN, free_port, master_args, rss_mib, squilla, temp_dir};
use serde_json::{Value, json};
use squilla_types::control::{Assignments, Capacity, Heartbeat, WorkerReport};

const TOKEN: &str = "acme-token-0123456789";
const JOBS: usize = 100;
const AGENTS: usize = 4;

async fn call(http: &reqwest::Client, base: &str, method: reqwest::Method, path: &str, body: Vec<u8>) -> (u16, Value) {
    let response = http.request(method, format!("{base}{path}")).bearer_auth(TOKEN).body(body).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap_or_default())
}

/// One simulated agent: heartbeats every second until `until`, reporting its assigned workers
/// running with counters that grow by 1,000 events a beat.
async fn agent(base: String, index: usize, until: Instant) -> u64 {
    let http = reqwest::Client::new();
    let id = format!("sim-{index}");
    let mut beat = Heartbeat {
        agent: id.parse().unwrap(),
        http: format!("127.0.0.1:{}", 40_000 + index),
        data: format!("127.0.0.1:{}", 41_000 + index),
        capacity: Capacity { cpu_millis: 100_000, memory_mib: 100_000, network_mbps: 100_000, slots: 100 },
        zone: "z1".into(),
        labels: BTreeMap::new(),
        workers: Vec::new(),
        usage: Default::default(),
    };
    let mut mine: Vec<WorkerReport> = Vec::new();
    let mut beats = 0u64;
    while Instant::now() < until {
        beats += 1;
        for w in &mut mine {
            w.events_in += 1_000;
            w.events_out += 500;
            w.counters.batches_in += 1;
            w.counters.bytes_in += 130_000;
            w.counters.guest_nanos += 2_000_000;
            if w.counters.call_micros_log2.len() < 12 {
                w.counters.call_micros_log2.resize(12, 0);
            }
            w.counters.call_micros_log2[9] += 1;
        }
        beat.workers = mine.clone();
        let answer = http
            .post(format!("{base}/api/v1/agent/heartbeat"))
            .bearer_auth(AGENT_TOKEN)
            .json(&beat)
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        if let Ok(response) = answer
            && let Ok(plan) = response.json::<Assignments>().await
        {
            let mut next = Vec::new();
            for job in &plan.jobs {
                for (s, slots) in job.slots.iter().enumerate() {
                    for (i, slot) in slots.iter().enumerate() {
                        if slot.agent.as_ref().map(ToString::to_string).as_deref() != Some(id.as_str()) {
                            continue;
                        }
                        let same = mine.iter().find(|w| {
                            w.job == job.job
                                && w.stage as usize == s
                                && w.index as usize == i
                                && w.number == slot.number
                        });
                        next.push(
                            same.cloned()
                                .unwrap_or_else(|| WorkerReport::new(job.job.clone(), s as u32, i as u32, slot.number)),
                        );
                    }
                }
            }
            mine = next;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    beats
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let secs: u64 = std::env::var("MASTER_MEMORY_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(600);
    let dir = temp_dir("master-memory");
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, format!("acme {TOKEN}\n")).unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut args = master_args(port, &dir.join("data"), &tokens, 1000, 5000);
    args.extend(["--tenant-workers".to_owned(), "1000".to_owned()]);
    let log = std::fs::File::create(dir.join("master.log")).unwrap();
    let mut master = squilla()
        .args(&args)
        .env("SQUILLA_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while http.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(Instant::now() < deadline, "the master did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let started = Instant::now();
    let until = started + Duration::from_secs(secs);
    let agents: Vec<_> = (0..AGENTS).map(|i| tokio::spawn(agent(base.clone(), i, until))).collect();

    let (status, body) =
        call(&http, &base, reqwest::Method::POST, "/api/v1/artifacts", squilla_guests::read("filter")).await;
    assert!(status == 200 || status == 201, "{status}: {body}");
    let spec = json!({"name": "reported", "source": {"kind": "ingest"},
        "stages": [{"name": "only", "artifact": format!("sha256:{}", body["sha256"].as_str().unwrap()), "workers": 3,
                    "params": {"field": "n", "op": "exists"}, "resources": {"cpu-millis": 10, "memory-mib": 1}}]});
    let (status, body) =
        call(&http, &base, reqwest::Method::POST, "/api/v1/clusters", spec.to_string().into_bytes()).await;
    assert_eq!(status, 201, "{body}");
    for _ in 0..JOBS {
        let (status, body) = call(&http, &base, reqwest::Method::POST, "/api/v1/clusters/reported/jobs", vec![]).await;
        assert_eq!(status, 201, "{body}");
    }

    let pid = master.id();
    let mut samples = Vec::new();
    let mut reads = 0u64;
    let mut last_totals = 0u64;
    let mut next_sample = Instant::now();
    while Instant::now() < until {
        let (status, metrics) =
            call(&http, &base, reqwest::Method::GET, "/api/v1/jobs/reported-1/metrics", vec![]).await;
        if status == 200 {
            reads += 1;
            last_totals = metrics["stages"][0]["totals"]["events-in"].as_u64().unwrap_or(0);
        }
        if Instant::now() >= next_sample {
            samples.push((started.elapsed().as_secs(), rss_mib(pid)));
            next_sample += Duration::from_secs(10);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let mut beats = 0;
    for a in agents {
        beats += a.await.unwrap();
    }
    let (_, jobs) = call(&http, &base, reqwest::Method::GET, "/api/v1/jobs", vec![]).await;
    let running = jobs.as_array().map_or(0, |j| j.iter().filter(|j| j["state"] == "running").count());
    let _ = master.kill();
    let _ = master.wait();

    // Flat: after the histories have filled (5 min 20 s of samples), memory should not grow.
    let at = |t: u64| samples.iter().find(|(s, _)| *s >= t).map(|(_, m)| *m);
    let full = samples.iter().filter(|(s, _)| *s >= 330).map(|(_, m)| *m).collect::<Vec<_>>();
    let report = json!({
        "seconds": secs, "jobs": JOBS, "running_jobs_at_end": running, "workers": JOBS * 3, "agents": AGENTS,
        "heartbeats": beats, "metric_reads": reads, "reported_1_events_in": last_totals,
        "rss_mib": {
            "at_60s": at(60), "at_330s": at(330), "end": samples.last().map(|(_, m)| *m),
            "max": samples.iter().map(|(_, m)| *m).fold(0.0, f64::max),
            "after_histories_full_min": full.iter().copied().fold(f64::INFINITY, f64::min),
            "after_histories_full_max": full.iter().copied().fold(0.0, f64::max),
        },
        "samples": samples.iter().filter(|(s, _)| s % 60 < 10).map(|(s, m)| json!([s, (m * 10.0).round() / 10.0])).collect::<Vec<_>>(),
    });
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
}
