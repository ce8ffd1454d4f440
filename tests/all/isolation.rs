//! No tenant can stop, starve or corrupt another, tried as an attacker would: real `squilla`
//! processes on loopback, hostile guests beside a neighbour whose output is checked.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{Proc, TOKEN, agent_with, free_port, temp_dir};

/// Tenant `globex`'s token.
const GLOBEX: &str = "globex-token-9876543210";

/// The master's API as one tenant.
struct Tenant {
    base: String,
    http: reqwest::Client,
    token: &'static str,
}

impl Tenant {
    fn new(base: &str, token: &'static str) -> Self {
        Tenant { base: base.to_owned(), http: reqwest::Client::new(), token }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Vec<u8>) -> (u16, Value) {
        let response = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(self.token)
            .timeout(Duration::from_secs(30))
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn upload(&self, bytes: Vec<u8>) -> String {
        let (status, body) = self.call(reqwest::Method::POST, "/api/v1/artifacts", bytes).await;
        assert!(status == 200 || status == 201, "{status}: {body}");
        body["sha256"].as_str().unwrap().to_owned()
    }

    /// Creates cluster `name` of one stage running `sha` with `params`, fed by `source`, and
    /// submits a job of it; returns the job's id.
    async fn run(&self, name: &str, sha: &str, params: Value, source: Value) -> String {
        let spec = json!({
            "name": name, "source": source,
            "stages": [{"name": "only", "artifact": format!("sha256:{sha}"), "params": params}]
        });
        let (status, body) = self.call(reqwest::Method::POST, "/api/v1/clusters", spec.to_string().into_bytes()).await;
        assert_eq!(status, 201, "{body}");
        let (status, body) = self.call(reqwest::Method::POST, &format!("/api/v1/clusters/{name}/jobs"), vec![]).await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_str().unwrap().to_owned()
    }

    async fn job(&self, id: &str) -> Value {
        self.call(reqwest::Method::GET, &format!("/api/v1/jobs/{id}"), vec![]).await.1
    }

    async fn until(&self, id: &str, what: &str, timeout: Duration, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let job = self.job(id).await;
            if ok(&job) {
                return job;
            }
            assert!(Instant::now() < deadline, "{what}: not within {timeout:?}; job is {job:#}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn synthetic(rate: u64) -> Value {
    json!({"kind": "synthetic", "generator": "device-logs", "events-per-second": rate})
}

fn keep_all() -> Value {
    json!({"field": "status", "op": "exists"})
}

/// The worker numbers of a job, stage by stage.
fn numbers(job: &Value) -> Vec<u64> {
    job["stages"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["workers"].as_array().unwrap().iter().map(|w| w["number"].as_u64().unwrap()))
        .collect()
}

/// Every history entry of every worker of a job.
fn worker_history(job: &Value) -> Vec<Value> {
    job["stages"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["workers"].as_array().unwrap().iter())
        .flat_map(|w| w["history"].as_array().unwrap().clone())
        .collect()
}

/// A master for tenants `acme` and `globex` with 200 ms heartbeats, agents lost after 3 s
/// (a lease of 2.7 s), and `extra` arguments.
fn master(dir: &Path, port: u16, extra: &[&str]) -> Proc {
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, format!("acme {TOKEN}\nglobex {GLOBEX}\n")).unwrap();
    let args = crate::master_args(port, &dir.join("data"), &tokens, 200, 3000);
    let args: Vec<&str> = args.iter().map(String::as_str).chain(extra.iter().copied()).collect();
    let m = Proc::spawn("master", &args);
    m.wait_for("API at", Duration::from_secs(20));
    m
}

/// What a sink reader has seen: when each data event arrived, and each named event's name
/// and data.
type Seen = (Vec<Instant>, Vec<(String, String)>);

/// Reads a job's sink in the background: the data events (with when they arrived) and the
/// named events, until the stream ends or the task is dropped.
struct SinkReader {
    events: tokio::sync::watch::Receiver<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl SinkReader {
    fn start(base: &str, token: &str, id: &str, query: &str) -> SinkReader {
        let url = format!("{base}/api/v1/jobs/{id}/sink{query}");
        let token = token.to_owned();
        let (tx, events) = tokio::sync::watch::channel((Vec::new(), Vec::new()));
        let task = tokio::spawn(async move {
            let Ok(mut response) = reqwest::Client::new().get(url).bearer_auth(token).send().await else { return };
            let mut parser = squilla_types::sse::Parser::new();
            while let Ok(Some(chunk)) = response.chunk().await {
                let now = Instant::now();
                tx.send_modify(|(data, named)| {
                    parser.feed(&chunk, |event| match event.name {
                        None => data.push(now),
                        Some(name) => named.push((name, event.data)),
                    })
                });
            }
        });
        SinkReader { events, task }
    }

    fn data(&self) -> Vec<Instant> {
        self.events.borrow().0.clone()
    }

    fn named(&self) -> Vec<(String, String)> {
        self.events.borrow().1.clone()
    }

    /// Data events that arrived in `[from, to)`.
    fn between(&self, from: Instant, to: Instant) -> usize {
        self.data().iter().filter(|t| **t >= from && **t < to).count()
    }
}

impl Drop for SinkReader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn agents(t: &Tenant) -> Vec<Value> {
    t.call(reqwest::Method::GET, "/api/v1/agents", vec![]).await.1.as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_jobs_beside_a_neighbour_never_stop_it_nor_the_agent() {
    let dir = temp_dir("iso-neighbours");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let _m = master(&dir, port, &[]);
    let _a = agent_with("a1", &base, &["--threads", "2"]);
    let (acme, globex) = (Tenant::new(&base, TOKEN), Tenant::new(&base, GLOBEX));

    let filter = acme.upload(squilla_guests::read("filter")).await;
    let keep = acme.run("keep", &filter, keep_all(), synthetic(2000)).await;
    let job = acme.until(&keep, "the neighbour runs", Duration::from_secs(30), |j| j["state"] == "running").await;
    let before = numbers(&job);
    let sink = SinkReader::start(&base, TOKEN, &keep, "");

    // The hostile tenant: a component that reads files is refused at upload; every other one
    // runs, misbehaving in its own way.
    let (status, body) =
        globex.call(reqwest::Method::POST, "/api/v1/artifacts", squilla_guests::read("fs-reader")).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid_artifact")), "{body}");
    let gfilter = globex.upload(squilla_guests::read("filter")).await;
    let hostile = globex.upload(squilla_guests::read("hostile")).await;
    let mut hostile_jobs = Vec::new();
    // A stage whose `init` fails (the filter without its `value`): before, this wedged the agent.
    hostile_jobs.push(globex.run("broken", &gfilter, json!({"field": "status"}), synthetic(10_000)).await);
    for (name, guest, params) in [
        ("spin", hostile.clone(), json!({"process": "spin"})),
        ("tick-spin", hostile.clone(), json!({"tick": "spin"})),
        ("trap", hostile.clone(), json!({"process": "trap"})),
        ("init-spin", hostile.clone(), json!({"init": "spin"})),
        ("slow", hostile.clone(), json!({"process": "busy-ms:900"})),
        ("memory-bomb", globex.upload(squilla_guests::read("memory-bomb")).await, json!({})),
        ("recursion", globex.upload(squilla_guests::read("deep-recursion")).await, json!({})),
        ("corrupt", globex.upload(squilla_guests::read("corrupt-output")).await, json!({})),
    ] {
        hostile_jobs.push(globex.run(name, &guest, params, synthetic(5000)).await);
    }

    // For 12 s the neighbour keeps its workers and its output, and the agent is never lost.
    let started = Instant::now();
    let mut checked = started;
    while started.elapsed() < Duration::from_secs(12) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(agents(&acme).await.iter().all(|a| a["lost"] == false), "the agent was declared lost");
        if checked.elapsed() >= Duration::from_secs(3) {
            let now = Instant::now();
            assert!(sink.between(checked, now) > 0, "the neighbour's output stopped for 3 s");
            checked = now;
        }
    }
    let job = acme.job(&keep).await;
    assert_eq!((job["state"].as_str(), numbers(&job)), (Some("running"), before.clone()), "{job:#}");
    assert!(!worker_history(&job).iter().any(|t| t["reason"].as_str().is_some_and(|r| r.contains("lost"))));

    // The hostile jobs are killed (or have failed by themselves): every answer comes at once.
    for id in &hostile_jobs {
        let started = Instant::now();
        let (status, body) = globex.call(reqwest::Method::POST, &format!("/api/v1/jobs/{id}/kill"), vec![]).await;
        assert!(status == 200 || (status == 409 && body["code"] == "job_ended"), "{id}: {status} {body}");
        assert!(started.elapsed() < Duration::from_secs(3), "{id}: kill took {:?}", started.elapsed());
    }
    // New work of any tenant still starts, and killed work stops, within seconds.
    let keep2 = acme.run("keep2", &filter, keep_all(), synthetic(500)).await;
    acme.until(&keep2, "a new job starts", Duration::from_secs(15), |j| j["state"] == "running").await;
    let again = globex.run("healthy", &gfilter, keep_all(), synthetic(500)).await;
    globex
        .until(&again, "the other tenant's new job starts", Duration::from_secs(15), |j| j["state"] == "running")
        .await;
    let (status, _) = acme.call(reqwest::Method::POST, &format!("/api/v1/jobs/{keep}/kill"), vec![]).await;
    assert_eq!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let workers: u64 = agents(&acme).await.iter().map(|a| a["workers"].as_u64().unwrap()).sum();
        if workers == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "the agent still runs {workers} workers, not the 2 of the live jobs");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_stage_or_a_looping_tick_never_gets_the_agent_declared_lost() {
    let dir = temp_dir("iso-slow");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let _m = master(&dir, port, &[]);
    // One worker thread: the slow stages compete with the neighbour for it.
    let _a = agent_with("a1", &base, &["--threads", "1"]);
    let (acme, globex) = (Tenant::new(&base, TOKEN), Tenant::new(&base, GLOBEX));
    let filter = acme.upload(squilla_guests::read("filter")).await;
    let keep = acme.run("keep", &filter, keep_all(), synthetic(1000)).await;
    let job = acme.until(&keep, "the neighbour runs", Duration::from_secs(30), |j| j["state"] == "running").await;
    let before = numbers(&job);
    let hostile = globex.upload(squilla_guests::read("hostile")).await;
    // 0.9 s per batch, under the 1 s deadline: legal, and a batch is always waiting.
    globex.run("slow", &hostile, json!({"process": "busy-ms:900"}), synthetic(5000)).await;
    globex.run("tick-loop", &hostile, json!({"tick": "spin"}), synthetic(10)).await;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        for a in agents(&acme).await {
            assert_eq!(a["lost"], false, "agent lost {:?} after the slow stages started", started.elapsed());
        }
    }
    let job = acme.job(&keep).await;
    assert_eq!(numbers(&job), before, "the neighbour's workers were restarted: {job:#}");
    assert_eq!(job["state"], "running");
}

/// Sends `signal` to process `pid`.
fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill").args([&format!("-{signal}"), &pid.to_string()]).status().unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_agent_never_emits_beside_the_workers_that_replaced_it() {
    let dir = temp_dir("iso-fence");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let _m = master(&dir, port, &[]);
    let a1 = agent_with("a1", &base, &["--threads", "1"]);
    let acme = Tenant::new(&base, TOKEN);
    let filter = acme.upload(squilla_guests::read("filter")).await;
    let rate = 2000;
    let keep = acme.run("keep", &filter, keep_all(), synthetic(rate)).await;
    acme.until(&keep, "running on a1", Duration::from_secs(30), |j| {
        j["state"] == "running" && j["stages"][0]["workers"][0]["agent"] == "a1"
    })
    .await;
    let _a2 = agent_with("a2", &base, &["--threads", "1"]);
    let sink = SinkReader::start(&base, TOKEN, &keep, "");
    tokio::time::sleep(Duration::from_secs(2)).await;

    // a1 stops for longer than the agent timeout: the master replaces its workers on a2.
    signal(a1.pid(), "STOP");
    acme.until(&keep, "re-placed on a2", Duration::from_secs(20), |j| {
        j["state"] == "running" && j["stages"][0]["workers"][0]["agent"] == "a2"
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // a1 wakes with its old worker and source: they must not emit beside their replacements.
    signal(a1.pid(), "CONT");
    let woke = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut second = woke;
    while second + Duration::from_secs(1) <= Instant::now() {
        let n = sink.between(second, second + Duration::from_secs(1));
        assert!(n <= (rate as usize) * 3 / 2, "{n} events in one second after a1 woke, at {rate}/s");
        second += Duration::from_secs(1);
    }
    assert!(sink.between(woke, Instant::now()) > 0, "the replacement emits");
    let job = acme.job(&keep).await;
    assert_eq!(job["stages"][0]["workers"][0]["agent"], "a2", "{job:#}");
}

/// The resident memory of process `pid`, bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_and_queries_hold_bounded_memory_and_are_told_when_they_pass_it() {
    use tokio::io::AsyncWriteExt;
    let dir = temp_dir("iso-memory");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let m = master(&dir, port, &["--stream-subscriber-mib", "2"]);
    let a = agent_with("a1", &base, &["--threads", "2", "--sink-subscriber-mib", "2", "--query-state-mib", "1"]);
    let acme = Tenant::new(&base, TOKEN);
    let filter = acme.upload(squilla_guests::read("filter")).await;

    // A query that groups by a near-unique key over an hour: its subscription ends with a named
    // error once its window passes 1 MiB; a plain subscriber of the same job goes on.
    let logs = acme.run("logs", &filter, keep_all(), synthetic(20_000)).await;
    acme.until(&logs, "running", Duration::from_secs(30), |j| j["state"] == "running").await;
    let query = "?query=SELECT%20%22device-id%22%2C%20count(*)%20GROUP%20BY%20%22device-id%22%2C%20window(3600000)";
    let grouped = SinkReader::start(&base, TOKEN, &logs, query);
    let plain = SinkReader::start(&base, TOKEN, &logs, "");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !grouped.named().iter().any(|(name, _)| name == "error") {
        assert!(Instant::now() < deadline, "the query was never stopped: {:?}", grouped.named());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, error) = grouped.named().into_iter().find(|(name, _)| name == "error").unwrap();
    let error: Value = serde_json::from_str(&error).unwrap();
    assert_eq!(error["code"], "query_state_limit", "{error}");
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(plain.between(t, Instant::now()) > 0, "the plain subscriber goes on");

    // Large events and subscribers that never read: the master and the agent hold what their
    // limits allow, not what the job produces.
    let feed = acme.run("feed", &filter, json!({"field": "blob", "op": "exists"}), json!({"kind": "ingest"})).await;
    acme.until(&feed, "running", Duration::from_secs(30), |j| j["state"] == "running").await;
    let mut stuck = Vec::new();
    for _ in 0..20 {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let head = format!("GET /api/v1/jobs/{feed}/sink HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\n\r\n");
        s.write_all(head.as_bytes()).await.unwrap();
        stuck.push(s);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (master_before, agent_before) = (rss(m.pid()), rss(a.pid()));
    let line = format!("{{\"blob\": \"{}\"}}\n", "x".repeat(200 << 10));
    let body: Vec<u8> = line.repeat(40).into_bytes();
    for _ in 0..40 {
        let (status, answer) =
            acme.call(reqwest::Method::POST, &format!("/api/v1/jobs/{feed}/ingest"), body.clone()).await;
        assert_eq!(status, 200, "{answer}");
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (master_after, agent_after) = (rss(m.pid()), rss(a.pid()));
    let grew = |before: u64, after: u64| after.saturating_sub(before) >> 20;
    // 330 MB went through the job to 20 stuck subscribers: without limits each would hold all of it.
    assert!(grew(master_before, master_after) < 200, "master grew {} MiB", grew(master_before, master_after));
    assert!(grew(agent_before, agent_after) < 200, "agent grew {} MiB", grew(agent_before, agent_after));
    drop(stuck);
}

/// Pids of live `compile-worker` processes.
fn compile_workers() -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if cmdline.split(|b| *b == 0).any(|arg| arg == b"compile-worker") {
            out.push(pid);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compile_bomb_is_stopped_at_its_budget_remembered_and_never_delays_another_tenant() {
    let dir = temp_dir("iso-bomb");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let _m = master(&dir, port, &[]);
    let a = agent_with("a1", &base, &["--compile-cpu-secs", "1", "--compile-wall-secs", "30"]);
    let (acme, globex) = (Tenant::new(&base, TOKEN), Tenant::new(&base, GLOBEX));
    let bomb = globex.upload(std::fs::read(squilla_guests::programs::COMPILE_BOMB).unwrap()).await;
    let boom = globex.run("boom", &bomb, json!({}), synthetic(100)).await;
    // Another tenant's new job starts while the bomb compiles.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let filter = acme.upload(squilla_guests::read("filter")).await;
    let started = Instant::now();
    let keep = acme.run("keep", &filter, keep_all(), synthetic(100)).await;
    acme.until(&keep, "the neighbour starts", Duration::from_secs(20), |j| j["state"] == "running").await;
    eprintln!("the neighbour started in {:?} while the bomb compiled", started.elapsed());
    // The bomb is stopped at its budget, and its job fails at once with the reason.
    let job = globex.until(&boom, "the bomb's job fails", Duration::from_secs(30), |j| j["state"] == "failed").await;
    let reason = job["reason"].as_str().unwrap();
    assert!(reason.contains("CPU time budget"), "{reason}");
    assert!(compile_workers().is_empty(), "a compile past its budget is really stopped");
    a.wait_for("compiling a component", Duration::from_secs(1));
    // The failure is remembered: the same bytes fail at once, without compiling again.
    let again = globex.run("boom-again", &bomb, json!({}), synthetic(100)).await;
    let started = Instant::now();
    let job = globex.until(&again, "fails at once", Duration::from_secs(10), |j| j["state"] == "failed").await;
    assert!(job["reason"].as_str().unwrap().contains("CPU time budget"), "{job}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_counted_by_kind_and_fail_the_worker_whatever_ticks_do() {
    let dir = temp_dir("iso-failures");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let _m = master(&dir, port, &[]);
    let _a = agent_with("a1", &base, &["--threads", "2"]);
    let acme = Tenant::new(&base, TOKEN);
    let corrupt = acme.upload(squilla_guests::read("corrupt-output")).await;
    let hostile = acme.upload(squilla_guests::read("hostile")).await;
    let bad = acme.run("corrupt", &corrupt, json!({}), synthetic(1000)).await;
    // Every batch passes the deadline; every tick succeeds (and emits).
    let late = acme.run("late", &hostile, json!({"process": "spin", "tick": "emit"}), synthetic(1000)).await;
    let history = |job: &Value| {
        worker_history(job).into_iter().filter_map(|t| t["reason"].as_str().map(str::to_owned)).collect::<Vec<_>>()
    };
    let job = acme
        .until(&bad, "invalid output counted", Duration::from_secs(20), |j| {
            history(j).iter().any(|r| r.contains("failed calls in a row; last (invalid-output)"))
        })
        .await;
    assert!(history(&job).iter().any(|r| r.contains("invalid-output")), "{job:#}");
    let job = acme
        .until(&late, "deadline hits fail the worker", Duration::from_secs(30), |j| {
            history(j).iter().any(|r| r.contains("failed calls in a row; last (deadline)"))
        })
        .await;
    let worker = &job["stages"][0]["workers"][0];
    assert!(worker["history"].as_array().unwrap().len() > 1, "{job:#}");

    // Ingest: one large event and many small ones both fit; what the job drops is reported.
    let feed = acme.run("feed", &hostile, json!({"process": "busy-ms:50"}), json!({"kind": "ingest"})).await;
    acme.until(&feed, "running", Duration::from_secs(30), |j| j["state"] == "running").await;
    let large = format!("{{\"blob\": \"{}\"}}\n", "x".repeat(3 << 20));
    let (status, body) =
        acme.call(reqwest::Method::POST, &format!("/api/v1/jobs/{feed}/ingest"), large.into_bytes()).await;
    assert_eq!((status, body["events"].as_u64()), (200, Some(1)), "{body}");
    let small = format!("{{\"blob\": \"{}\"}}\n", "y".repeat(4000)).repeat(1000);
    let (status, body) =
        acme.call(reqwest::Method::POST, &format!("/api/v1/jobs/{feed}/ingest"), small.into_bytes()).await;
    assert_eq!((status, body["events"].as_u64()), (200, Some(1000)), "{body}");
    let (status, body) = acme.call(reqwest::Method::POST, &format!("/api/v1/jobs/{feed}/kill"), vec![]).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) =
        acme.call(reqwest::Method::POST, &format!("/api/v1/jobs/{feed}/ingest"), b"{}\n".to_vec()).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("job_ended")), "{body}");

    let spec = json!({
        "name": "lossy", "source": {"kind": "ingest"}, "backpressure": "drop-newest",
        "stages": [{"name": "only", "artifact": format!("sha256:{hostile}"), "params": {"process": "busy-ms:200"}}]
    });
    let (status, body) = acme.call(reqwest::Method::POST, "/api/v1/clusters", spec.to_string().into_bytes()).await;
    assert_eq!(status, 201, "{body}");
    let (_, body) = acme.call(reqwest::Method::POST, "/api/v1/clusters/lossy/jobs", vec![]).await;
    let lossy = body["id"].as_str().unwrap().to_owned();
    acme.until(&lossy, "running", Duration::from_secs(30), |j| j["state"] == "running").await;
    let many = "{\"n\": 1}\n".repeat(99_000).into_bytes();
    let (status, body) = acme.call(reqwest::Method::POST, &format!("/api/v1/jobs/{lossy}/ingest"), many).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["dropped"].as_u64().unwrap() > 0, "a job that drops says so: {body}");
    let _ = BTreeMap::<(), ()>::new();
}
