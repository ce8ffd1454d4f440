//! Exact keyed results across rescales, with real processes (a master and two agents): a
//! tumbling-window count per key, fed by ingest under `block`, is rescaled 2 → 5 → 3 while it
//! runs, and every window's count for every key is emitted once and equals what was sent.
//! The state of each moved key group goes with it, across agents.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::queries::{call, master};
use crate::{TOKEN, free_port, temp_dir};

async fn job(base: &str, id: &str) -> Value {
    call(base, reqwest::Method::GET, &format!("/api/v1/jobs/{id}"), vec![]).await.1
}

/// Agents of the stage's workers, once every worker runs.
fn running_on(job: &Value) -> Option<Vec<String>> {
    let workers = job["stages"][0]["workers"].as_array()?;
    workers.iter().map(|w| (w["state"] == "running").then(|| w["agent"].as_str().unwrap_or("").to_owned())).collect()
}

async fn scale_to(base: &str, id: &str, workers: usize) -> Vec<String> {
    let body = json!({"workers": workers}).to_string().into_bytes();
    let (status, reply) =
        call(base, reqwest::Method::POST, &format!("/api/v1/jobs/{id}/stages/count/scale"), body).await;
    assert_eq!(status, 200, "{reply}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = job(base, id).await;
        match running_on(&now) {
            Some(agents) if agents.len() == workers => return agents,
            _ => assert!(Instant::now() < deadline, "the stage never ran {workers} workers: {now:#}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads the job's SSE sink into `(window start, key) -> count` until `stop` is set (or a
/// minute passes), failing on a window reported twice.
async fn read_sink(base: String, id: String, stop: Arc<AtomicBool>) -> BTreeMap<(i64, String), i64> {
    let limit = Instant::now() + Duration::from_secs(60);
    let http = reqwest::Client::new();
    let mut response = http.get(format!("{base}/api/v1/jobs/{id}/sink")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let (mut buffer, mut seen) = (String::new(), BTreeMap::new());
    while !stop.load(Ordering::SeqCst) && Instant::now() < limit {
        let chunk = match tokio::time::timeout(Duration::from_millis(200), response.chunk()).await {
            Err(_) => continue,
            Ok(Ok(Some(chunk))) => chunk,
            Ok(_) => break,
        };
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let frame: String = buffer.drain(..end + 2).collect();
            if frame.lines().any(|l| l.starts_with("event:")) {
                continue;
            }
            for data in frame.lines().filter_map(|l| l.strip_prefix("data:")) {
                let event: Value = serde_json::from_str(data.trim()).unwrap();
                let window = event["window-start-ms"].as_i64().unwrap();
                let key = event["key"].as_str().unwrap().to_owned();
                let count = event["count"].as_i64().unwrap();
                let before = seen.insert((window, key.clone()), count);
                assert!(before.is_none(), "window {window} of {key} reported twice: {before:?} then {count}");
            }
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windowed_counts_are_exact_across_a_rescale_from_2_to_5_to_3_over_two_agents() {
    let dir = temp_dir("handoff");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let _m = master(&dir, port);
    // Room for three workers each, so that five must span both agents.
    let _a1 = crate::agent_with("a1", &base, &["--threads", "1", "--cpu-millis", "1000"]);
    let _a2 = crate::agent_with("a2", &base, &["--threads", "1", "--cpu-millis", "1000"]);
    let (status, body) =
        call(&base, reqwest::Method::POST, "/api/v1/artifacts", squilla_guests::read("window-count")).await;
    assert!(status == 200 || status == 201, "{status}: {body}");
    let sha = body["sha256"].as_str().unwrap();
    // One-second windows that close 5 s after their end: time for a rescale to settle.
    let spec = json!({
        "name": "counts", "source": {"kind": "ingest"}, "backpressure": "block",
        "stages": [{"name": "count", "artifact": format!("sha256:{sha}"), "workers": 2,
                    "routing": {"kind": "key-hash", "fields": ["key"]},
                    "params": {"window-ms": 1000, "grace-ms": 5000, "key": "key"},
                    "resources": {"cpu-millis": 300, "memory-mib": 32}, "tick-ms": 200}]
    });
    let (status, body) = call(&base, reqwest::Method::POST, "/api/v1/clusters", spec.to_string().into_bytes()).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = call(&base, reqwest::Method::POST, "/api/v1/clusters/counts/jobs", vec![]).await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    while running_on(&job(&base, &id).await).is_none_or(|a| a.len() != 2) {
        assert!(Instant::now() < deadline, "the job never ran");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let reader = tokio::spawn(read_sink(base.clone(), id.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Feeds 200 events (100 keys, two each) stamped now, and counts them.
    let mut expected: BTreeMap<(i64, String), i64> = BTreeMap::new();
    let mut n = 0u64;
    let mut feed_for = async |expected: &mut BTreeMap<(i64, String), i64>, how_long: Duration| {
        let until = Instant::now() + how_long;
        while Instant::now() < until {
            let now = squilla_types::time::now_ms();
            let events: Vec<Value> = (0..200)
                .map(|i| {
                    n += 1;
                    json!({"timestamp-ms": now, "key": format!("key-{}", (n * 7 + i) % 100)})
                })
                .collect();
            for e in &events {
                let key = e["key"].as_str().unwrap().to_owned();
                *expected.entry((now / 1000 * 1000, key)).or_default() += 1;
            }
            let body: String = events.iter().map(|e| format!("{e}\n")).collect();
            let path = format!("/api/v1/jobs/{id}/ingest");
            let (status, reply) = call(&base, reqwest::Method::POST, &path, body.into_bytes()).await;
            assert_eq!(status, 200, "ingest refused: {reply}");
            assert_eq!(reply["dropped"].as_u64().unwrap_or(0), 0, "{reply}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    feed_for(&mut expected, Duration::from_secs(3)).await;
    let five = scale_to(&base, &id, 5).await;
    assert!(
        five.contains(&"a1".to_owned()) && five.contains(&"a2".to_owned()),
        "five workers on both agents: {five:?}"
    );
    feed_for(&mut expected, Duration::from_secs(3)).await;
    scale_to(&base, &id, 3).await;
    feed_for(&mut expected, Duration::from_secs(3)).await;

    // Every window closes within 5 s of its end (and a tick); then nothing more may come.
    let deadline = Instant::now() + Duration::from_secs(40);
    let last_window = expected.keys().map(|(w, _)| *w).max().unwrap();
    while squilla_types::time::now_ms() < last_window + 1000 + 5000 + 2000 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    let seen = reader.await.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    let wrong: Vec<_> = expected.iter().filter(|(k, v)| seen.get(*k) != Some(*v)).collect();
    let windows: std::collections::BTreeSet<i64> = expected.keys().map(|(w, _)| *w).collect();
    let described: Vec<String> =
        wrong.iter().take(20).map(|(k, v)| format!("{k:?}: sent {v}, emitted {:?}", seen.get(*k))).collect();
    assert!(
        wrong.is_empty(),
        "{} of {} (window, key) counts wrong over windows {windows:?}; e.g. {described:#?}",
        wrong.len(),
        expected.len()
    );
    assert_eq!(seen.len(), expected.len(), "no window that was not sent");
}
