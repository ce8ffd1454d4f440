//! Queries through real sink subscriptions: a master and an agent as processes, a job fed by
//! ingest, subscribers with queries over HTTP, known events in, exact answers out. Windows are
//! event-time or counted, so the answers do not depend on when the events arrive.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{Proc, TOKEN, agent_with, free_port, temp_dir};

pub(crate) fn master(dir: &Path, port: u16) -> Proc {
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, format!("acme {TOKEN}\n")).unwrap();
    let args = crate::master_args(port, &dir.join("data"), &tokens, 200, 3000);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let m = Proc::spawn("master", &args);
    m.wait_for("API at", Duration::from_secs(20));
    m
}

pub(crate) async fn call(base: &str, method: reqwest::Method, path: &str, body: Vec<u8>) -> (u16, Value) {
    crate::Api { base: base.to_owned(), http: reqwest::Client::new() }.call(method, path, body).await
}

/// Runs a one-stage keep-all job fed by ingest; returns its id once it runs.
pub(crate) async fn ingest_job(base: &str, name: &str) -> String {
    let (status, body) = call(base, reqwest::Method::POST, "/api/v1/artifacts", squilla_guests::read("filter")).await;
    assert!(status == 200 || status == 201, "{status}: {body}");
    let sha = body["sha256"].as_str().unwrap();
    let spec = json!({
        "name": name, "source": {"kind": "ingest"},
        "stages": [{"name": "only", "artifact": format!("sha256:{sha}"), "params": {"field": "device", "op": "exists"}}]
    });
    let (status, body) = call(base, reqwest::Method::POST, "/api/v1/clusters", spec.to_string().into_bytes()).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = call(base, reqwest::Method::POST, &format!("/api/v1/clusters/{name}/jobs"), vec![]).await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, job) = call(base, reqwest::Method::GET, &format!("/api/v1/jobs/{id}"), vec![]).await;
        if job["state"] == "running" {
            return id;
        }
        assert!(Instant::now() < deadline, "the job never ran: {job:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What one subscription received: its data events, its named events, and whether it ended.
#[derive(Debug, Default, Clone)]
struct Received {
    data: Vec<Value>,
    named: Vec<(String, Value)>,
    ended: bool,
}

struct Subscriber {
    seen: tokio::sync::watch::Receiver<Received>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    fn start(base: &str, job: &str, query: &str) -> Subscriber {
        let url =
            reqwest::Url::parse_with_params(&format!("{base}/api/v1/jobs/{job}/sink"), [("query", query)]).unwrap();
        let (tx, seen) = tokio::sync::watch::channel(Received::default());
        let task = tokio::spawn(async move {
            let response = reqwest::Client::new().get(url).bearer_auth(TOKEN).send().await.unwrap();
            assert_eq!(response.status(), 200);
            let mut response = response;
            let mut parser = squilla_types::sse::Parser::new();
            while let Ok(Some(chunk)) = response.chunk().await {
                tx.send_modify(|r| {
                    parser.feed(&chunk, |event| {
                        let data = serde_json::from_str(&event.data).unwrap_or(Value::Null);
                        match event.name {
                            None => r.data.push(data),
                            Some(name) if name == "ping" => {}
                            Some(name) => r.named.push((name, data)),
                        }
                    })
                });
            }
            tx.send_modify(|r| r.ended = true);
        });
        Subscriber { seen, task }
    }

    fn now(&self) -> Received {
        self.seen.borrow().clone()
    }

    /// Waits until `done` holds of what was received (at most 20 s).
    async fn until(&self, what: &str, done: impl Fn(&Received) -> bool) -> Received {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let now = self.now();
            if done(&now) {
                return now;
            }
            assert!(Instant::now() < deadline, "{what}: not within 20 s; received {now:#?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(crate) async fn ingest(base: &str, job: &str, events: &[Value]) {
    let body: String = events.iter().map(|e| format!("{e}\n")).collect();
    let (status, reply) =
        call(base, reqwest::Method::POST, &format!("/api/v1/jobs/{job}/ingest"), body.into_bytes()).await;
    assert_eq!(status, 200, "{reply}");
}

/// Rows of (timestamp, device, latency, status, user): two event-time windows of 1 s, then an
/// event at 10 s that closes both.
fn events() -> Vec<Value> {
    let rows: [(i64, &str, f64, i64, i64); 11] = [
        (100, "tv", 10.0, 200, 1),
        (200, "tv", 11.0, 500, 2),
        (300, "phone", 9.0, 500, 1),
        (400, "tv", 10.5, 404, 1),
        (500, "console", 9.5, 200, 3),
        (600, "phone", 10.0, 200, 4),
        (700, "tv", 250.0, 500, 5),
        (1_100, "phone", 20.0, 200, 6),
        (1_200, "phone", 21.0, 200, 6),
        (1_300, "tv", 22.0, 500, 7),
        (10_000, "tv", 1.0, 200, 8),
    ];
    rows.iter()
        .map(|(ts, device, latency, status, user)| {
            let mut event = json!({"timestamp-ms": ts, "device": device, "latency": latency, "status": status,
                   "user": {"id": user, "region": "eu"}});
            if *latency > 200.0 {
                event["calls"] = json!([{"ms": 5}, {"ms": 300, "host": "b"}]);
            }
            event
        })
        .collect()
}

fn field(rows: &[Value], name: &str) -> Vec<Value> {
    rows.iter().map(|r| r[name].clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_construct_answers_through_a_real_subscription() {
    let dir = temp_dir("queries");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let _m = master(&dir, port);
    let _a = agent_with("a1", &base, &["--threads", "2"]);
    let job = ingest_job(&base, "q").await;

    let subscriptions = [
        // Top-N per window, over two windows.
        ("top", "SELECT device, count(*) AS n GROUP BY device, event_window(1000) ORDER BY n DESC, device LIMIT 2"),
        // Aggregates: exact and approximate distinct counts, list, HAVING, arithmetic over
        // aggregates, a non-aggregated field taking its first value.
        (
            "aggregates",
            "SELECT device, count(DISTINCT user.id) AS users, approx_count_distinct(user.id) AS approx, \
            list(status) AS statuses, count(*) * 2 AS doubled, latency AS first_latency \
            GROUP BY device, event_window(1000) HAVING count(*) >= 2 ORDER BY device",
        ),
        // Count windows.
        ("counted", "SELECT count(*) AS n, max(latency) AS top GROUP BY count_window(4)"),
        // Event time with lateness: the late event is counted, not folded in.
        ("late", "SELECT count(*) AS n GROUP BY event_window(1000, 100)"),
        // Anomaly: the outlier of its window.
        ("anomaly", "SELECT device, latency GROUP BY event_window(1000) HAVING anomaly(latency, 3)"),
        // A stream's LIMIT: the first results, then the end.
        ("first", "SELECT device, user WHERE status >= 400 LIMIT 3"),
        // Arrays: any element, an index, the whole array; and whole events nested again.
        ("arrays", "SELECT device, calls, calls[1].ms AS second WHERE calls[*].ms > 100"),
        ("whole", "SELECT * WHERE latency > 200"),
    ];
    let subscribers: Vec<(&str, Subscriber)> =
        subscriptions.iter().map(|(name, q)| (*name, Subscriber::start(&base, &job, q))).collect();
    // Subscriptions reach the agent within a second of the request.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut feed = events();
    // A late event for the first window, after the second has opened and the watermark passed it.
    feed.insert(9, json!({"timestamp-ms": 150, "device": "tv", "latency": 1.0, "status": 200, "user": {"id": 9}}));
    ingest(&base, &job, &feed).await;
    let get = |name: &str| &subscribers.iter().find(|(n, _)| *n == name).unwrap().1;

    let top = get("top").until("two windows of top 2", |r| r.data.len() >= 4).await;
    assert_eq!(field(&top.data, "timestamp-ms"), [1000, 1000, 2000, 2000].map(|t| json!(t)));
    assert_eq!(field(&top.data, "device"), ["tv", "phone", "phone", "tv"].map(|d| json!(d)));
    assert_eq!(field(&top.data, "n"), [4, 2, 2, 1].map(|n| json!(n)));

    let aggregates = get("aggregates").until("three groups", |r| r.data.len() >= 3).await;
    assert_eq!(field(&aggregates.data, "device"), ["phone", "tv", "phone"].map(|d| json!(d)));
    let tv = &aggregates.data[1];
    assert_eq!((tv["users"].clone(), tv["approx"].clone()), (json!(3), json!(3)), "{tv}");
    assert_eq!(tv["statuses"], json!([200, 500, 404, 500]));
    assert_eq!(tv["doubled"], 8);
    assert_eq!(tv["first_latency"], 10.0);

    let counted = get("counted").until("three count windows", |r| r.data.len() >= 3).await;
    assert_eq!(field(&counted.data, "n"), [4, 4, 4].map(|n| json!(n)));
    assert_eq!(counted.data[0]["window-events"], 4);
    assert_eq!(counted.data[1]["top"], 250.0);

    let late = get("late").until("two windows", |r| r.data.len() >= 2).await;
    assert_eq!(field(&late.data, "n"), [7, 3].map(|n| json!(n)));
    assert_eq!(field(&late.data, "late-events"), [0, 1].map(|n| json!(n)));

    let anomaly = get("anomaly").until("the outlier", |r| !r.data.is_empty()).await;
    assert_eq!((anomaly.data[0]["device"].clone(), anomaly.data[0]["latency"].clone()), (json!("tv"), json!(250.0)));

    let arrays = get("arrays").until("the event with a slow call", |r| !r.data.is_empty()).await;
    assert_eq!(
        arrays.data[0],
        json!({"timestamp-ms": 700, "device": "tv", "calls": [{"ms": 5}, {"ms": 300, "host": "b"}], "second": 300})
    );
    let whole = get("whole").until("the event whole", |r| !r.data.is_empty()).await;
    assert_eq!(whole.data[0]["user"], json!({"id": 5, "region": "eu"}));
    assert_eq!(whole.data[0]["calls"], json!([{"ms": 5}, {"ms": 300, "host": "b"}]));

    // A window result larger than a subscriber's buffer (16 MiB) ends that subscription with
    // `result_too_large`, within the query state limit (64 MiB); a plain subscriber of the
    // same job gets every event.
    let big_job = ingest_job(&base, "big").await;
    let huge = Subscriber::start(&base, &big_job, "SELECT list(big) AS l GROUP BY count_window(17)");
    let plain = Subscriber::start(&base, &big_job, "SELECT n");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let big = "y".repeat(1 << 20);
    for half in [0..6, 6..12, 12..17] {
        let batch: Vec<Value> = half.map(|i| json!({"device": "tv", "n": i, "big": big})).collect();
        ingest(&base, &big_job, &batch).await;
    }
    let r = huge.until("result_too_large", |r| r.ended).await;
    let (name, error) = r.named.last().cloned().expect("an error event");
    assert_eq!((name.as_str(), error["code"].as_str()), ("error", Some("result_too_large")), "{error}");
    let r = plain.until("17 events", |r| r.data.len() >= 17).await;
    assert_eq!(field(&r.data, "n"), (0..17).map(|n| json!(n)).collect::<Vec<_>>());

    let first = get("first").until("three results and the end", |r| r.ended).await;
    assert_eq!(field(&first.data, "device"), ["tv", "phone", "tv"].map(|d| json!(d)));
    assert_eq!(first.data[0]["user"], json!({"id": 2, "region": "eu"}), "a prefix selects an object");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_query_ends_its_own_subscription_and_nobody_elses() {
    let dir = temp_dir("queries-fail");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let _m = master(&dir, port);
    let _a = agent_with("a1", &base, &["--threads", "2", "--query-state-mib", "1"]);
    let job = ingest_job(&base, "f").await;

    // Bad syntax is refused before anything runs, with the offending token's position.
    let url = reqwest::Url::parse_with_params(
        &format!("{base}/api/v1/jobs/{job}/sink"),
        [("query", "SELECT device FROM events TABLESAMPLE (10 PERCENT)")],
    )
    .unwrap();
    let response = reqwest::Client::new().get(url).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "invalid_query");
    assert!(body["message"].as_str().unwrap().ends_with("(line 1, column 27)"), "{body}");

    // A job source's query is checked when the cluster is created.
    for (query, problem) in [("SELECT x WHERE", "line 1"), ("SELECT x LIMIT 5", "LIMIT")] {
        let spec = json!({
            "name": "down", "source": {"kind": "job", "cluster": "f", "query": query},
            "stages": [{"name": "only", "artifact": "sha256:0000000000000000000000000000000000000000000000000000000000000000"}]
        });
        let (status, body) =
            call(&base, reqwest::Method::POST, "/api/v1/clusters", spec.to_string().into_bytes()).await;
        assert_eq!((status, body["code"].as_str()), (400, Some("invalid_spec")), "{body}");
        let message = body["message"].as_str().unwrap();
        assert!(message.starts_with("source.query: ") && message.contains(problem), "{message}");
    }

    let plain = Subscriber::start(&base, &job, "SELECT *");
    // The query of the crash report: arithmetic over an aggregate, in a short window.
    let doubled = Subscriber::start(&base, &job, "SELECT count(*) * 2 AS n GROUP BY window(500)");
    // A list over an hour: past the agent's 1 MiB of query state it fails.
    let hog = Subscriber::start(&base, &job, "SELECT list(blob) GROUP BY window(3600000)");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let blob = "x".repeat(2000);
    let mut sent = 0;
    for round in 0..5 {
        let batch: Vec<Value> = (0..400).map(|i| json!({"device": "tv", "n": round * 400 + i, "blob": blob})).collect();
        ingest(&base, &job, &batch).await;
        sent += batch.len();
    }
    let hog = hog.until("the hog ends with an error", |r| r.ended).await;
    let (name, error) = hog.named.last().cloned().expect("an error event");
    assert_eq!((name.as_str(), error["code"].as_str()), ("error", Some("query_state_limit")), "{error}");
    let received = plain.until("every event", |r| r.data.len() >= sent).await;
    let mut numbers: Vec<i64> = received.data.iter().map(|e| e["n"].as_i64().unwrap()).collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (0..sent as i64).collect::<Vec<_>>(), "the plain subscriber lost nothing");
    let doubled = doubled
        .until("every event counted twice", |r| {
            r.data.iter().map(|w| w["n"].as_i64().unwrap_or(0)).sum::<i64>() >= 2 * sent as i64
        })
        .await;
    assert_eq!(doubled.data.iter().map(|w| w["n"].as_i64().unwrap()).sum::<i64>(), 2 * sent as i64);
    assert!(!doubled.ended && !received.ended);

    // A query that takes far too long on each batch (every subscriber of the job shares the
    // work) ends with `query_too_slow`. The plain subscriber still gets every event.
    let terms: Vec<String> = (0..200).map(|i| format!("arr[*].x = {}", -1 - i)).collect();
    let slow = Subscriber::start(&base, &job, &format!("SELECT n WHERE {}", terms.join(" OR ")));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let arr: Vec<Value> = (0..1000).map(|x| json!({"x": x})).collect();
    for round in 0..3 {
        let batch: Vec<Value> =
            (0..100).map(|i| json!({"device": "tv", "n": sent + round * 100 + i, "arr": arr})).collect();
        ingest(&base, &job, &batch).await;
    }
    let total = sent + 300;
    let r = slow.until("query_too_slow", |r| r.ended).await;
    let (name, error) = r.named.last().cloned().expect("an error event");
    assert_eq!((name.as_str(), error["code"].as_str()), ("error", Some("query_too_slow")), "{error}");
    let received = plain.until("every event", |r| r.data.len() >= total).await;
    let mut numbers: Vec<i64> = received.data.iter().map(|e| e["n"].as_i64().unwrap()).collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (0..total as i64).collect::<Vec<_>>(), "the plain subscriber lost nothing");
}
