//! A stage that scales itself, with real processes (a master and two agents): ingest ramps up
//! and the stage grows within its policy's window; ingest stops and it shrinks after the
//! cooldown; never past `min` or `max`; every decision in the job's history with its reason
//! and what it saw. The policy can be replaced and paused on the running job.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::queries::{call, master};
use crate::{free_port, temp_dir};

async fn job(base: &str, id: &str) -> Value {
    call(base, reqwest::Method::GET, &format!("/api/v1/jobs/{id}"), vec![]).await.1
}

/// Feeds `events` to the job; a 503 while a worker is being placed is retried by the next call.
async fn feed(base: &str, id: &str, events: &[Value]) {
    let body: String = events.iter().map(|e| format!("{e}\n")).collect();
    let (status, reply) =
        call(base, reqwest::Method::POST, &format!("/api/v1/jobs/{id}/ingest"), body.into_bytes()).await;
    assert!(status == 200 || status == 503, "{status}: {reply}");
}

fn workers(job: &Value) -> usize {
    job["stages"][0]["workers"].as_array().map_or(0, Vec::len)
}

fn autoscaled(job: &Value) -> Vec<String> {
    job["history"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["reason"].as_str())
        .filter(|r| r.starts_with("autoscaled"))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_grows_with_its_load_and_shrinks_after_it_within_its_bounds() {
    let dir = temp_dir("autoscale");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let _m = master(&dir, port);
    let _a1 = crate::agent_with("a1", &base, &["--threads", "1"]);
    let _a2 = crate::agent_with("a2", &base, &["--threads", "1"]);
    let (status, body) = call(&base, reqwest::Method::POST, "/api/v1/artifacts", squilla_guests::read("filter")).await;
    assert!(status == 200 || status == 201, "{status}: {body}");
    let sha = body["sha256"].as_str().unwrap();
    let policy = json!({"min": 1, "max": 3, "cooldown-secs": 3, "strategies": [
        {"reason": "rps", "scale-up-above": 300, "scale-down-below": 50, "samples": {"k": 2, "of": 3}}]});
    let spec = json!({
        "name": "elastic", "source": {"kind": "ingest"},
        "stages": [{"name": "only", "artifact": format!("sha256:{sha}"),
                    "params": {"field": "device", "op": "exists"}, "scaling": policy}]
    });
    let (status, body) = call(&base, reqwest::Method::POST, "/api/v1/clusters", spec.to_string().into_bytes()).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = call(&base, reqwest::Method::POST, "/api/v1/clusters/elastic/jobs", vec![]).await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    while job(&base, &id).await["state"] != "running" {
        assert!(Instant::now() < deadline, "the job never ran");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A scale by hand outside the policy is refused; so is a policy that leaves out the
    // stage's workers.
    let scale = |n: u32| json!({"workers": n}).to_string().into_bytes();
    let (status, body) =
        call(&base, reqwest::Method::POST, &format!("/api/v1/jobs/{id}/stages/only/scale"), scale(5)).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid_scale")), "{body}");
    let narrow =
        json!({"min": 2, "max": 3, "strategies": [{"reason": "rps", "scale-up-above": 300, "scale-down-below": 50}]});
    let path = format!("/api/v1/jobs/{id}/stages/only/scaling");
    let (status, body) = call(&base, reqwest::Method::PUT, &path, narrow.to_string().into_bytes()).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid_scale")), "{body}");
    let broken =
        json!({"min": 1, "max": 3, "strategies": [{"reason": "rps", "scale-up-above": 10, "scale-down-below": 50}]});
    let (status, body) = call(&base, reqwest::Method::PUT, &path, broken.to_string().into_bytes()).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid_policy")), "{body}");
    assert!(body["message"].as_str().unwrap().contains("stages[0].scaling.strategies[0].scale-down-below"), "{body}");

    // Load: 500 events every 100 ms (5,000 events/s against a threshold of 300 per worker).
    let events: Vec<Value> = (0..500).map(|i| json!({"device": "tv", "n": i})).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut most = 0;
    loop {
        feed(&base, &id, &events).await;
        let now = job(&base, &id).await;
        most = most.max(workers(&now));
        if workers(&now) == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "the stage never reached its max under load: {now:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // At its max, more load adds nothing.
    for _ in 0..30 {
        feed(&base, &id, &events).await;
        most = most.max(workers(&job(&base, &id).await));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(most, 3, "never past max");

    // No load: it shrinks, one step per cooldown, down to min.
    let deadline = Instant::now() + Duration::from_secs(90);
    let after = loop {
        let now = job(&base, &id).await;
        assert!(workers(&now) >= 1 && workers(&now) <= 3);
        if workers(&now) == 1 {
            break now;
        }
        assert!(Instant::now() < deadline, "the stage never came back to its min: {now:#}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let decisions = autoscaled(&after);
    eprintln!("decisions: {decisions:#?}");
    assert!(decisions.len() >= 4, "two steps up and two down, each in the history: {decisions:#?}");
    assert!(decisions[0].contains("from 1 to 2") && decisions[0].contains("rps above 300"), "{decisions:#?}");
    assert!(decisions.iter().any(|d| d.contains("from 2 to 1") && d.contains("below")), "{decisions:#?}");
    assert!(decisions.iter().all(|d| d.contains("saw rps [")), "{decisions:#?}");

    // Paused, load moves nothing; the pause is in the history too.
    let (status, body) = call(
        &base,
        reqwest::Method::POST,
        &format!("/api/v1/jobs/{id}/autoscaling"),
        json!({"paused": true}).to_string().into_bytes(),
    )
    .await;
    assert_eq!((status, body["autoscale_paused"].as_bool()), (200, Some(true)), "{body}");
    for _ in 0..50 {
        feed(&base, &id, &events).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let paused = job(&base, &id).await;
    assert_eq!(workers(&paused), 1, "paused: {paused:#}");
    assert_eq!(autoscaled(&paused).len(), decisions.len());

    // The CLI resumes it, and replaces the policy from a file, then removes it.
    let cli = |args: &[&str]| {
        let output = crate::squilla().args(args).args(["--master", &base, "--token", crate::TOKEN]).output().unwrap();
        assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice::<Value>(&output.stdout).unwrap_or(Value::Null)
    };
    cli(&["job", "autoscaling", &id, "resume"]);
    assert_eq!(job(&base, &id).await["autoscale_paused"], false);
    let file = dir.join("policy.json");
    std::fs::write(
        &file,
        json!({"min": 1, "max": 2, "strategies": [{"reason": "queue", "scale-up-above": 8, "scale-down-below": 1}]})
            .to_string(),
    )
    .unwrap();
    cli(&["job", "policy", &id, "only", file.to_str().unwrap()]);
    assert_eq!(job(&base, &id).await["spec"]["stages"][0]["scaling"]["max"], 2);
    cli(&["job", "policy", &id, "only", "none"]);
    assert!(job(&base, &id).await["spec"]["stages"][0].get("scaling").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_point_on_a_gauge_the_stage_reports_sizes_the_stage_in_one_step() {
    let dir = temp_dir("set-point");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let _m = master(&dir, port);
    let _a1 = crate::agent_with("a1", &base, &["--threads", "1"]);
    let (status, body) =
        call(&base, reqwest::Method::POST, "/api/v1/artifacts", squilla_guests::read("window-count")).await;
    assert!(status == 200 || status == 201, "{status}: {body}");
    let sha = body["sha256"].as_str().unwrap();
    // window-count reports `open-keys`, the keys in its open windows: aim at 150 per worker,
    // on the latest sample (the gauge is 0 until the first events arrive).
    let policy = json!({"min": 1, "max": 4, "cooldown-secs": 60,
        "set-point": {"reason": "user", "metric": "open-keys", "target": 150, "samples": 1}});
    let spec = json!({
        "name": "sized", "source": {"kind": "ingest"},
        "stages": [{"name": "only", "artifact": format!("sha256:{sha}"),
                    "routing": {"kind": "key-hash", "fields": ["key"]},
                    "params": {"window-ms": 60000, "grace-ms": 1000, "key": "key"},
                    "tick-ms": 200, "scaling": policy}]
    });
    let (status, body) = call(&base, reqwest::Method::POST, "/api/v1/clusters", spec.to_string().into_bytes()).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = call(&base, reqwest::Method::POST, "/api/v1/clusters/sized/jobs", vec![]).await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    // 500 keys now, in one window: 500 per worker against a target of 150 wants 4 workers.
    let now = squilla_types::time::now_ms();
    let events: Vec<Value> = (0..500).map(|i| json!({"timestamp-ms": now, "key": format!("k{i}")})).collect();
    let deadline = Instant::now() + Duration::from_secs(40);
    let scaled = loop {
        feed(&base, &id, &events).await;
        let now = job(&base, &id).await;
        if workers(&now) > 1 {
            break now;
        }
        assert!(Instant::now() < deadline, "the stage was never sized: {now:#}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(workers(&scaled), 4, "one step to the set-point: {scaled:#}");
    let decisions = autoscaled(&scaled);
    assert!(
        decisions
            .iter()
            .any(|d| d.contains("from 1 to 4") && d.contains("user:open-keys averaged") && d.contains("target 150")),
        "{decisions:#?}"
    );
    // The gauge is in the job's metrics; its keys moved with their groups, none was lost.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let metrics = call(&base, reqwest::Method::GET, &format!("/api/v1/jobs/{id}/metrics"), vec![]).await.1;
        if metrics["stages"][0]["user"]["open-keys"].as_f64() == Some(500.0) {
            break;
        }
        assert!(Instant::now() < deadline, "{metrics:#}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
