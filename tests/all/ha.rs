//! Masters that survive losing their machine: a real three-member etcd cluster, three
//! masters sharing it, an agent and a gateway that know all three. A client writes all the
//! while (uploads, clusters, submissions, kills, scales); the leader is SIGKILLed. A new
//! leader serves writes within 5 s, every acknowledged write is there afterwards, a running
//! job's output never stops, and none of its workers runs twice.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use squilla_net::masters::{Failover, Masters};

use crate::etcd::EtcdCluster;
use crate::streams::Sub;
use crate::{Api, Proc, TOKEN, agent_with, free_port, gateway, temp_dir};

/// The tenant's client of the fleet: follows the leader as the CLI does.
#[derive(Clone)]
struct Fleet {
    masters: Masters,
    http: reqwest::Client,
}

/// What a write came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// 2xx: acknowledged.
    Acked,
    /// Refused before anything was applied (a refusal, no master, no connection).
    Refused,
    /// Sent, then the connection failed: it may or may not have been applied.
    Unknown,
}

impl Fleet {
    async fn call(&self, method: reqwest::Method, path: &str, body: Vec<u8>) -> (Outcome, Value) {
        let sent = self
            .masters
            .send(|base| {
                self.http
                    .request(method.clone(), format!("{base}{path}"))
                    .bearer_auth(TOKEN)
                    .timeout(Duration::from_secs(10))
                    .body(body.clone())
            })
            .await;
        match sent {
            Ok(response) => {
                let ok = response.status().is_success();
                let json = response.json().await.unwrap_or(Value::Null);
                (if ok { Outcome::Acked } else { Outcome::Refused }, json)
            }
            Err(Failover::Request(_)) => (Outcome::Unknown, Value::Null),
            Err(_) => (Outcome::Refused, Value::Null),
        }
    }
}

/// Whether the master at `base` leads (its health says `ok`, a standby's `standby`).
async fn leads(http: &reqwest::Client, base: &str) -> bool {
    let Ok(response) = http.get(format!("{base}/healthz")).timeout(Duration::from_secs(2)).send().await else {
        return false;
    };
    response.json::<Value>().await.is_ok_and(|h| h["status"] == "ok")
}

fn stage_spec(name: &str, tag: &str, workers: u32, source: Value) -> Vec<u8> {
    json!({
        "name": name,
        "source": source,
        "stages": [{"name": "keep", "artifact": format!("filter@{tag}"), "workers": workers,
                    "params": {"field": "status", "op": "exists"}}]
    })
    .to_string()
    .into_bytes()
}

/// Every write the client made, in order: (what, outcome, when).
type Log = Arc<Mutex<Vec<(String, Outcome, Instant)>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_is_killed_and_nothing_acknowledged_is_lost_nor_any_output_stopped() {
    let etcd = EtcdCluster::start(3, "ha");
    let dir = temp_dir("ha");
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, format!("acme {TOKEN}\n")).unwrap();
    let store = etcd.url("ha");
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut masters: Vec<Proc> = ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            // Agents keep their workers for 0.9 × the agent timeout without a heartbeat's
            // answer: longer than a failover (the 2 s lease, then a heartbeat).
            let args = crate::master_args(*port, &dir.join(format!("m{i}")), &tokens, 200, 5000);
            let fleet = ["--store", &store, "--leader-lease-secs", "2", "--tenant-rps", "100000"];
            let args: Vec<&str> = args.iter().map(String::as_str).chain(fleet).collect();
            let m = Proc::spawn(&format!("master{i}"), &args);
            m.wait_for("API at", Duration::from_secs(20));
            m
        })
        .collect();
    let urls: Vec<String> = ports.iter().map(|p| format!("http://127.0.0.1:{p}")).collect();
    let list = urls.join(",");
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let fleet = Fleet { masters: Masters::new(&list), http: http.clone() };

    // One leads; the others send clients to it.
    let deadline = Instant::now() + Duration::from_secs(20);
    let leader = loop {
        let mut leading = Vec::new();
        for (i, url) in urls.iter().enumerate() {
            if leads(&http, url).await {
                leading.push(i);
            }
        }
        if leading.len() == 1 {
            break leading[0];
        }
        assert!(leading.len() <= 1, "two masters lead: {leading:?}");
        assert!(Instant::now() < deadline, "no master leads");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let standby = urls[(leader + 1) % 3].clone();
    let deadline = Instant::now() + Duration::from_secs(5);
    let redirected = loop {
        let answer = http.post(format!("{standby}/api/v1/clusters")).bearer_auth(TOKEN).send().await.unwrap();
        if answer.status() != 503 || Instant::now() > deadline {
            break answer; // 503 `no_leader` until the standby has read who leads
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(redirected.status(), 307);
    assert_eq!(redirected.headers()["location"].to_str().unwrap(), format!("{}/api/v1/clusters", urls[leader]));

    let _agent = agent_with("a1", &list, &["--threads", "2"]);
    let gateway_port = free_port();
    let _gateway = gateway(&list, gateway_port, &[]);
    let filter = squilla_guests::read("filter");
    let (outcome, body) =
        fleet.call(reqwest::Method::POST, "/api/v1/artifacts?name=filter&version=0", filter.clone()).await;
    assert_eq!(outcome, Outcome::Acked, "{body}");

    // A job that runs throughout, its output read through the gateway from the agent.
    let synthetic = json!({"kind": "synthetic", "generator": "device-logs", "events-per-second": 200});
    let (outcome, body) =
        fleet.call(reqwest::Method::POST, "/api/v1/clusters", stage_spec("steady", "0", 1, synthetic)).await;
    assert_eq!(outcome, Outcome::Acked, "{body}");
    let (_, job) = fleet.call(reqwest::Method::POST, "/api/v1/clusters/steady/jobs", vec![]).await;
    let steady = job["id"].as_str().expect("submitted").to_owned();
    let running = |job: &Value| job["state"] == "running";
    let before = until(&fleet, &steady, running).await;
    // Standbys answer reads themselves, from the jobs the leader wrote (followed through a
    // watch), marked as theirs.
    for url in urls.iter().filter(|u| **u != urls[leader]) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let answer = http.get(format!("{url}/api/v1/jobs/{steady}")).bearer_auth(TOKEN).send().await.unwrap();
            let (status, standby) = (answer.status(), answer.headers().get("x-squilla-standby").cloned());
            let job: Value = answer.json().await.unwrap_or(Value::Null);
            // (307 until the standby has made its copy, just after it started.)
            if status != 200 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            assert_eq!(status, 200, "a standby reads: {job}");
            assert_eq!(standby.as_ref().map(|v| v.to_str().unwrap()), Some("true"));
            let placed = |job: &Value| {
                let workers = job["stages"][0]["workers"].as_array().cloned().unwrap_or_default();
                workers.iter().map(|w| (w["number"].clone(), w["agent"].clone())).collect::<Vec<_>>()
            };
            if job["state"] == before["state"] && placed(&job) == placed(&before) {
                break;
            }
            assert!(Instant::now() < deadline, "the standby's copy does not follow: {job} against {before}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let via = Api { base: format!("http://127.0.0.1:{gateway_port}"), http: reqwest::Client::new() };
    let sink = Sub::open(&via, &format!("/api/v1/jobs/{steady}/sink")).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (arrivals, reader) = sink.arrivals(stop.clone());
    // A job the writer scales back and forth.
    let (outcome, _) = fleet
        .call(reqwest::Method::POST, "/api/v1/clusters", stage_spec("scaled", "0", 1, json!({"kind": "ingest"})))
        .await;
    assert_eq!(outcome, Outcome::Acked);
    let (_, job) = fleet.call(reqwest::Method::POST, "/api/v1/clusters/scaled/jobs", vec![]).await;
    let scaled = job["id"].as_str().expect("submitted").to_owned();

    // The writer: each round tags an upload, makes a cluster of it, submits a job of that
    // cluster, kills it, and scales `scaled`.
    let log: Log = Arc::default();
    let writer = {
        let (fleet, log, stop, filter, scaled) =
            (fleet.clone(), log.clone(), stop.clone(), filter.clone(), scaled.clone());
        tokio::spawn(async move {
            let record = |what: String, outcome: Outcome| log.lock().unwrap().push((what, outcome, Instant::now()));
            for round in 1..=10_000u32 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                let path = format!("/api/v1/artifacts?name=filter&version={round}");
                let (outcome, _) = fleet.call(reqwest::Method::POST, &path, filter.clone()).await;
                record(format!("tag {round}"), outcome);
                if outcome != Outcome::Acked {
                    continue;
                }
                let spec = stage_spec(&format!("w{round}"), &round.to_string(), 1, json!({"kind": "ingest"}));
                let (outcome, _) = fleet.call(reqwest::Method::POST, "/api/v1/clusters", spec).await;
                record(format!("cluster w{round}"), outcome);
                if outcome != Outcome::Acked {
                    continue;
                }
                let (outcome, job) =
                    fleet.call(reqwest::Method::POST, &format!("/api/v1/clusters/w{round}/jobs"), vec![]).await;
                let id = job["id"].as_str().unwrap_or("?").to_owned();
                record(format!("submit w{round} {id}"), outcome);
                if outcome == Outcome::Acked {
                    let (outcome, _) =
                        fleet.call(reqwest::Method::POST, &format!("/api/v1/jobs/{id}/kill"), b"{}".to_vec()).await;
                    record(format!("kill {id}"), outcome);
                }
                let workers = 1 + round % 2;
                let body = json!({"workers": workers}).to_string().into_bytes();
                let (outcome, _) =
                    fleet.call(reqwest::Method::POST, &format!("/api/v1/jobs/{scaled}/stages/0/scale"), body).await;
                record(format!("scale {workers}"), outcome);
            }
        })
    };

    // Writes flow; then the leader dies without a word.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let acked_before = log.lock().unwrap().iter().filter(|(_, o, _)| *o == Outcome::Acked).count();
    assert!(acked_before > 5, "the writer writes before the kill: {acked_before}");
    masters[leader].kill();
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_secs(8)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    reader.await.unwrap();
    let log = log.lock().unwrap().clone();

    // A new leader served writes within 5 s.
    let after_kill: Vec<_> = log.iter().filter(|(_, _, at)| *at > killed).collect();
    let first_after = after_kill
        .iter()
        .find(|(_, o, _)| *o == Outcome::Acked)
        .unwrap_or_else(|| panic!("no write acknowledged after the kill: {after_kill:?}"));
    let failover = first_after.2 - killed;
    let count = |o: Outcome| log.iter().filter(|(_, x, _)| *x == o).count();
    eprintln!(
        "failover: first acknowledged write {failover:?} after the kill; writes: {} acknowledged, {} refused, {} unknown",
        count(Outcome::Acked),
        count(Outcome::Refused),
        count(Outcome::Unknown)
    );
    assert!(failover < Duration::from_secs(5), "first write acknowledged {failover:?} after the kill");
    let new_leader = fleet.masters.current();
    assert_ne!(new_leader, urls[leader]);

    // Every acknowledged write is there; unacknowledged ones are whole or absent.
    let (_, clusters) = fleet.call(reqwest::Method::GET, "/api/v1/clusters", vec![]).await;
    let names: Vec<&str> = clusters.as_array().unwrap().iter().filter_map(|c| c["name"].as_str()).collect();
    for (what, outcome, _) in &log {
        let mut words = what.split(' ');
        match (words.next(), words.next(), words.next(), outcome) {
            (Some("cluster"), Some(name), _, Outcome::Acked) => assert!(names.contains(&name), "{what} is missing"),
            (Some("submit"), _, Some(id), Outcome::Acked) => {
                let (outcome, job) = fleet.call(reqwest::Method::GET, &format!("/api/v1/jobs/{id}"), vec![]).await;
                assert_eq!(outcome, Outcome::Acked, "{what} is missing: {job}");
                assert_eq!(job["stages"].as_array().map(Vec::len), Some(1), "{what} is whole: {job}");
            }
            (Some("kill"), Some(id), _, Outcome::Acked) => {
                let (_, job) = fleet.call(reqwest::Method::GET, &format!("/api/v1/jobs/{id}"), vec![]).await;
                assert_ne!(job["state"], "running", "{what} was acknowledged: {job}");
            }
            _ => {}
        }
    }
    for cluster in clusters.as_array().unwrap() {
        assert_eq!(cluster["spec"]["stages"].as_array().map(Vec::len), Some(1), "every cluster is whole: {cluster}");
    }
    let last_scale = log.iter().rev().find(|(w, o, _)| w.starts_with("scale") && *o != Outcome::Refused).unwrap();
    let workers: u64 = last_scale.0.rsplit(' ').next().unwrap().parse().unwrap();
    let job = until(&fleet, &scaled, |j| j["stages"][0]["workers"].as_array().map(Vec::len).is_some()).await;
    let now_workers = job["stages"][0]["workers"].as_array().unwrap().len() as u64;
    if last_scale.1 == Outcome::Acked {
        assert_eq!(now_workers, workers, "the last acknowledged scale holds: {job}");
    }

    // The running job never stopped: no gap in its output past a second.
    let arrivals = arrivals.lock().unwrap().clone();
    assert!(arrivals.iter().any(|t| *t > killed + Duration::from_secs(6)), "output after the failover");
    // The longest gap between `from` and `to`, and how long after the kill it began.
    let gaps = |from: Instant, to: Instant| {
        let within: Vec<Instant> = arrivals.iter().copied().filter(|t| *t >= from && *t <= to).collect();
        within.windows(2).map(|w| (w[1] - w[0], w[0].saturating_duration_since(killed))).max().unwrap_or_default()
    };
    let ((usual, _), (during, at)) =
        (gaps(killed - Duration::from_secs(3), killed), gaps(killed, killed + Duration::from_secs(8)));
    eprintln!(
        "longest gap in the running job's output: {usual:?} before the kill, {during:?} after (from {at:?} after it)"
    );
    // The source emits every second or so; a stop would last the failover (2 s and more).
    assert!(during < usual + Duration::from_millis(500), "its output stopped for {during:?}");

    // Its worker is the same incarnation, still running since before the kill: adopted, not
    // placed again.
    let after = until(&fleet, &steady, running).await;
    let worker = |job: &Value| {
        let w = &job["stages"][0]["workers"][0];
        (w["number"].clone(), w["agent"].clone(), w["running_since_ms"].clone())
    };
    assert_eq!(job_workers(&after), 1, "{after}");
    assert_eq!(worker(&after), worker(&before), "the worker was not run again");
    drop(etcd);
}

fn job_workers(job: &Value) -> usize {
    job["stages"].as_array().unwrap().iter().map(|s| s["workers"].as_array().map_or(0, Vec::len)).sum()
}

/// Job `id` once `ok` holds (within 30 s).
async fn until(fleet: &Fleet, id: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, job) = fleet.call(reqwest::Method::GET, &format!("/api/v1/jobs/{id}"), vec![]).await;
        if ok(&job) {
            return job;
        }
        assert!(Instant::now() < deadline, "job {id}: {job:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
