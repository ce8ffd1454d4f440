//! Job metrics as users read them: a known number of events through a 2-stage job whose stages
//! run on two agents, checked counter by counter in `GET /api/v1/jobs/{id}/metrics`, its
//! server-sent stream, both agents' Prometheus exposition, and the CLI's tables.

use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use serde_json::{Value, json};

use crate::queries::{call, ingest};
use crate::{AGENT_TOKEN, TOKEN, agent_with, free_port, squilla, temp_dir};

const GLOBEX: &str = "globex-token-0123456789";

/// The value of the exposition line of `name` that carries every label in `labels`.
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .find(|l| labels.iter().all(|label| l.contains(label)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn agent_metrics(agents: &reqwest::Client, url: &str) -> String {
    agents.get(format!("{url}/metrics")).bearer_auth(AGENT_TOKEN).send().await.unwrap().text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_stage_job_on_two_agents_counts_every_event_once() {
    let dir = temp_dir("metrics");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, format!("acme {TOKEN}\nglobex {GLOBEX}\n")).unwrap();
    let _m = crate::master(port, &dir.join("data"), &tokens);
    let (a1_http, a2_http) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let _a1 = agent_with("a1", &base, &["--threads", "1", "--label", "role=pick", "--http", &a1_http]);
    let _a2 = agent_with("a2", &base, &["--threads", "1", "--label", "role=big", "--http", &a2_http]);

    let (status, body) = call(&base, reqwest::Method::POST, "/api/v1/artifacts", squilla_guests::read("filter")).await;
    assert!(status == 200 || status == 201, "{status}: {body}");
    let artifact = format!("sha256:{}", body["sha256"].as_str().unwrap());
    let on = |role: &str| json!({"labels": [{"name": "role", "value": role}]});
    let spec = json!({
        "name": "counted", "source": {"kind": "ingest"},
        "stages": [
            {"name": "pick", "artifact": artifact, "params": {"field": "device", "op": "exists"}, "constraints": on("pick")},
            {"name": "big", "artifact": artifact, "params": {"field": "n", "op": "ge", "value": "300"}, "constraints": on("big")}
        ]
    });
    let (status, body) = call(&base, reqwest::Method::POST, "/api/v1/clusters", spec.to_string().into_bytes()).await;
    assert_eq!(status, 201, "{body}");

    // `squilla job submit --wait` returns once every worker runs.
    let output = squilla()
        .args(["job", "submit", "counted", "--wait", "60", "--master", &base, "--token", TOKEN])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let job: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(job["state"], "running", "{job:#}");
    let id = job["id"].as_str().unwrap().to_owned();

    // 1,000 events; 800 carry a device; of those, 560 have n >= 300.
    let events: Vec<Value> =
        (0..1000).map(|i| if i % 5 == 0 { json!({"n": i}) } else { json!({"n": i, "device": "tv"}) }).collect();
    for chunk in events.chunks(250) {
        ingest(&base, &id, chunk).await;
    }
    let path = format!("/api/v1/jobs/{id}/metrics");
    let deadline = Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        let (status, m) = call(&base, reqwest::Method::GET, &path, vec![]).await;
        assert_eq!(status, 200, "{m}");
        if m["stages"][1]["totals"]["events-out"] == 560 && m["stages"][0]["totals"]["events-in"] == 1000 {
            break m;
        }
        assert!(Instant::now() < deadline, "the counts never added up: {m:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (pick, big) = (&metrics["stages"][0], &metrics["stages"][1]);
    assert_eq!((pick["name"].as_str(), big["name"].as_str()), (Some("pick"), Some("big")));
    for (stage, events_in, events_out, agent) in [(pick, 1000, 800, "a1"), (big, 800, 560, "a2")] {
        let t = &stage["totals"];
        assert_eq!((t["events-in"].as_u64(), t["events-out"].as_u64()), (Some(events_in), Some(events_out)), "{t}");
        assert!(t["batches-in"].as_u64().unwrap() >= 1, "{t}");
        assert!(t["bytes-in"].as_u64().unwrap() > t["bytes-out"].as_u64().unwrap(), "a filter emits less: {t}");
        assert!(t["bytes-out"].as_u64().unwrap() > 0, "{t}");
        assert_eq!(
            (t["dropped"].as_u64(), t["failed-calls"].as_u64(), t["traps"].as_u64()),
            (Some(0), Some(0), Some(0))
        );
        assert_eq!(t["instances"], 1, "{t}");
        assert!(t["calls"].as_u64().unwrap() >= t["batches-in"].as_u64().unwrap(), "{t}");
        assert!(t["guest-nanos"].as_u64().unwrap() > 0, "{t}");
        assert!(stage["call-micros"]["p99"].as_u64().unwrap() >= 1, "{stage}");
        assert!(stage["rates"]["5m"]["events-in"].as_f64().unwrap() > 0.0, "{stage}");
        let workers = stage["workers"].as_array().unwrap();
        assert_eq!(workers.len(), 1);
        assert_eq!((workers[0]["agent"].as_str(), workers[0]["state"].as_str()), (Some(agent), Some("running")));
        assert_eq!(workers[0]["totals"], stage["totals"], "one worker: the stage is its sum");
        let histogram: u64 =
            workers[0]["call-micros-log2"].as_array().unwrap().iter().map(|n| n.as_u64().unwrap()).sum();
        assert_eq!(Some(histogram), t["calls"].as_u64());
    }

    // Each agent's exposition (HTTPS, its certificate from the master's CA) counts its own
    // stage the same.
    let agents = crate::agent_client(&crate::fleet_ca(&dir.join("data")));
    for (http, stage, events_in, events_out) in [(&a1_http, "pick", 1000.0, 800.0), (&a2_http, "big", 800.0, 560.0)] {
        let text = agent_metrics(&agents, &format!("https://{http}")).await;
        let labels = [r#"tenant="acme""#, &format!(r#"job="{id}""#), &format!(r#"stage="{stage}""#)];
        let labels: Vec<&str> = labels.iter().map(|s| s.as_ref()).collect();
        assert_eq!(sample(&text, "squilla_worker_events_in_total", &labels), Some(events_in), "{text}");
        assert_eq!(sample(&text, "squilla_worker_events_out_total", &labels), Some(events_out), "{text}");
        let stage_bytes = metrics["stages"].as_array().unwrap().iter().find(|s| s["name"] == stage).unwrap()["totals"]
            ["bytes-in"]
            .as_f64();
        assert_eq!(sample(&text, "squilla_worker_bytes_in_total", &labels), stage_bytes, "{text}");
        let calls = sample(&text, "squilla_worker_call_duration_seconds_count", &labels).unwrap();
        assert!(calls >= 1.0, "{text}");
        let inf = [labels.clone(), vec![r#"le="+Inf""#]].concat();
        assert_eq!(sample(&text, "squilla_worker_call_duration_seconds_bucket", &inf), Some(calls), "{text}");
        assert!(sample(&text, "squilla_worker_guest_cpu_seconds_total", &labels).unwrap() > 0.0, "{text}");
        assert_eq!(
            sample(
                &text,
                "squilla_worker_dropped_batches_total",
                &[labels.clone(), vec![r#"reason="newest""#]].concat()
            ),
            Some(0.0)
        );
        assert!(!text.contains(&format!(r#"stage="{}""#, if stage == "pick" { "big" } else { "pick" })), "{text}");
        assert!(sample(&text, "squilla_agent_compiled_total", &[]).unwrap() >= 1.0, "{text}");
    }

    // The stream pushes the same document every second.
    let response = reqwest::Client::new()
        .get(format!("{base}/api/v1/jobs/{id}/metrics/stream"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let mut parser = squilla_types::sse::Parser::new();
    let mut seen = Vec::new();
    let started = Instant::now();
    while seen.len() < 2 {
        let chunk = tokio::time::timeout(Duration::from_secs(5), futures_util::StreamExt::next(&mut body))
            .await
            .expect("a metrics event every second")
            .unwrap()
            .unwrap();
        parser.feed(&chunk, |e| {
            if e.name.as_deref() == Some("metrics") {
                seen.push(serde_json::from_str::<Value>(&e.data).unwrap());
            }
        });
    }
    assert!(started.elapsed() >= Duration::from_millis(900), "two events a second apart");
    assert_eq!(seen[1]["stages"][0]["totals"]["events-in"], 1000);

    // Tables for people.
    let cli = |args: &[&str]| {
        let output = squilla().args(args).args(["--master", &base, "--token", TOKEN]).output().unwrap();
        assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    };
    let list = cli(&["job", "list"]);
    let header: Vec<&str> = list.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["ID", "CLUSTER", "STATE", "WORKERS", "AGE", "EVENTS/S"], "{list}");
    let row: Vec<&str> = list.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[..5], [id.as_str(), "counted", "v1", "running", "2/2"], "{list}");
    let as_json: Value = serde_json::from_str(&cli(&["job", "list", "--output", "json"])).unwrap();
    assert_eq!(as_json[0]["id"], id.as_str());
    let summary = cli(&["job", "get", &id]);
    assert!(
        summary.contains("2/2 running") && summary.lines().any(|l| l.starts_with("pick") && l.contains("a1")),
        "{summary}"
    );
    let table = cli(&["job", "metrics", &id, "--window", "5m"]);
    let all_big: Vec<&str> =
        table.lines().find(|l| l.starts_with("big") && l.contains(" all")).unwrap().split_whitespace().collect();
    assert_eq!(all_big[all_big.len() - 2..], ["800", "560"], "{table}");
    let agents = cli(&["agent", "list"]);
    assert!(agents.lines().any(|l| l.starts_with("a1") && l.contains("alive") && l.contains("1/64")), "{agents}");
    let agents: Value = serde_json::from_str(&cli(&["agent", "list", "-o", "json"])).unwrap();
    let a2 = agents.as_array().unwrap().iter().find(|a| a["id"] == "a2").unwrap();
    assert_eq!(a2["reserved"]["slots"], 1, "{a2}");
    assert!(a2["utilization"]["slots"].as_f64().unwrap() > 0.0, "{a2}");
    assert_eq!(a2["usage"]["workers"], 1, "{a2}");

    // To another tenant the job does not exist.
    for path in [path.clone(), format!("{path}/stream")] {
        let other = reqwest::Client::new().get(format!("{base}{path}")).bearer_auth(GLOBEX).send().await.unwrap();
        assert_eq!(other.status(), 404, "{path}");
    }
    let (status, body) = call(&base, reqwest::Method::GET, "/api/v1/jobs/other-1/metrics", vec![]).await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drops_under_drop_newest_match_what_producers_and_subscribers_are_told() {
    let dir = temp_dir("metrics-drops");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let _m = crate::queries::master(&dir, port);
    let _a = agent_with("a1", &base, &["--threads", "1"]);
    let (status, body) = call(&base, reqwest::Method::POST, "/api/v1/artifacts", squilla_guests::read("slow")).await;
    assert!(status == 200 || status == 201, "{status}: {body}");
    // 50 ms per batch: 20 batches a second, far fewer than arrive.
    let spec = json!({"name": "slowed", "source": {"kind": "ingest"}, "backpressure": "drop-newest",
        "stages": [{"name": "slow", "artifact": format!("sha256:{}", body["sha256"].as_str().unwrap()), "params": {"delay-us": "50000"}}]});
    let (status, body) = call(&base, reqwest::Method::POST, "/api/v1/clusters", spec.to_string().into_bytes()).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = call(&base, reqwest::Method::POST, "/api/v1/clusters/slowed/jobs", vec![]).await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    while call(&base, reqwest::Method::GET, &format!("/api/v1/jobs/{id}"), vec![]).await.1["state"] != "running" {
        assert!(Instant::now() < deadline, "the job never ran");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A subscriber counts what reaches it.
    let response =
        reqwest::Client::new().get(format!("{base}/api/v1/jobs/{id}/sink")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let received = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let told_dropped = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (r, t) = (received.clone(), told_dropped.clone());
    let reader = tokio::spawn(async move {
        let mut body = response.bytes_stream();
        let mut parser = squilla_types::sse::Parser::new();
        while let Some(Ok(chunk)) = futures_util::StreamExt::next(&mut body).await {
            parser.feed(&chunk, |e| match e.name.as_deref() {
                None | Some("message") => {
                    r.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Some("meta") => {
                    let meta: Value = serde_json::from_str(&e.data).unwrap_or_default();
                    t.fetch_add(meta["dropped"].as_u64().unwrap_or(0), std::sync::atomic::Ordering::Relaxed);
                }
                _ => {}
            });
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    // 150 requests of 4 events, 10 at a time: each is one batch; most find the queue full.
    let sent = 150u64 * 4;
    let mut producers_told = 0;
    let requests: Vec<_> =
        (0..150)
            .map(|r| {
                let body: String = (0..4).map(|i| format!("{}\n", json!({"r": r, "i": i}))).collect();
                let (base, id) = (base.clone(), id.clone());
                async move {
                    call(&base, reqwest::Method::POST, &format!("/api/v1/jobs/{id}/ingest"), body.into_bytes()).await
                }
            })
            .collect();
    let mut requests = futures_util::stream::iter(requests).buffer_unordered(10);
    while let Some((status, answer)) = futures_util::StreamExt::next(&mut requests).await {
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["events"], 4, "{answer}");
        producers_told += answer["dropped"].as_u64().unwrap();
    }
    assert!(producers_told > 0, "the queue of 64 batches overflowed");

    let path = format!("/api/v1/jobs/{id}/metrics");
    let deadline = Instant::now() + Duration::from_secs(60);
    let totals = loop {
        let (_, m) = call(&base, reqwest::Method::GET, &path, vec![]).await;
        let t = m["stages"][0]["totals"].clone();
        let (events_in, dropped) = (t["events-in"].as_u64().unwrap(), t["dropped-events"].as_u64().unwrap());
        if events_in + dropped == sent && t["events-out"].as_u64() == Some(events_in) {
            break t;
        }
        assert!(Instant::now() < deadline, "never added up to {sent}: {t}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        totals["dropped-events"].as_u64(),
        Some(producers_told),
        "what producers were told was dropped: {totals}"
    );
    assert_eq!(totals["dropped-newest"].as_u64(), Some(producers_told / 4), "one batch per request: {totals}");
    assert_eq!(totals["dropped"], totals["dropped-newest"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while received.load(std::sync::atomic::Ordering::Relaxed) < totals["events-out"].as_u64().unwrap() {
        assert!(Instant::now() < deadline, "the subscriber got {received:?} of {totals}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        received.load(std::sync::atomic::Ordering::Relaxed),
        totals["events-out"].as_u64().unwrap(),
        "no more, no less"
    );
    assert_eq!(
        told_dropped.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "the subscriber kept up: no drops of its own"
    );
    reader.abort();
}
