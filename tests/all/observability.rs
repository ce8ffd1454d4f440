//! Metrics as operators read them: a real Prometheus server (Debian's `prometheus`, installed
//! by `.ci/run`) scrapes a real agent and the master on loopback, with the agent token, and
//! answers queries through its HTTP API with exactly the events that went through the job.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::queries::{call, ingest, ingest_job, master};
use crate::{AGENT_TOKEN, Proc, free_port, temp_dir};

/// Asks Prometheus for `query`'s single value, until `done` holds of it (at most 60 s).
async fn until_value(prometheus: &str, query: &str, done: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = None;
    loop {
        let url = reqwest::Url::parse_with_params(&format!("{prometheus}/api/v1/query"), [("query", query)]).unwrap();
        if let Ok(response) = reqwest::Client::new().get(url).timeout(Duration::from_secs(5)).send().await
            && let Ok(body) = response.json::<Value>().await
        {
            let value = body["data"]["result"][0]["value"][1].as_str().and_then(|v| v.parse::<f64>().ok());
            if let Some(v) = value
                && done(v)
            {
                return v;
            }
            last = Some(body);
        }
        assert!(Instant::now() < deadline, "{query}: not within 60 s; last answer {last:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_agents_and_the_master() {
    let dir = temp_dir("observability");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let _m = master(&dir, port);
    let agent =
        Proc::spawn("a1", &["agent", "--master", &base, "--agent-token", AGENT_TOKEN, "--id", "a1", "--threads", "2"]);
    let line = agent.wait_for("sinks at", Duration::from_secs(20));
    let agent_url = line.split("sinks at ").nth(1).and_then(|r| r.split(',').next()).unwrap().to_owned();
    let target = agent_url.strip_prefix("https://").expect("the agent serves HTTPS").to_owned();
    let ca_file = dir.join("data/ca/ca.pem");

    // The agent's metrics take its token, like every route but its health.
    let agents = crate::agent_client(&crate::fleet_ca(&dir.join("data")));
    // (It serves HTTPS once the master has certified it, just after it starts.)
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let response = loop {
        match agents.get(format!("{agent_url}/metrics")).send().await {
            Ok(response) => break response,
            Err(err) => assert!(std::time::Instant::now() < deadline, "the agent never served HTTPS: {err}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(response.status(), 401);

    let job = ingest_job(&base, "observed").await;
    let events: Vec<Value> = (0..500).map(|i| json!({"device": "tv", "n": i})).collect();
    ingest(&base, &job, &events).await;
    ingest(&base, &job, &events).await;
    let (_, status) = call(&base, reqwest::Method::GET, &format!("/api/v1/jobs/{job}"), vec![]).await;
    assert_eq!(status["state"], "running");

    let token_file = dir.join("agent-token");
    std::fs::write(&token_file, AGENT_TOKEN).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: squilla-agents\n    \
             honor_labels: true\n    scheme: https\n    tls_config:\n      ca_file: {ca}\n      server_name: squilla-agent\n    \
             authorization:\n      credentials_file: {token}\n    static_configs:\n      - targets: ['{target}']\n  \
             - job_name: squilla-master\n    honor_labels: true\n    authorization:\n      credentials_file: {token}\n    \
             static_configs:\n      - targets: ['127.0.0.1:{port}']\n",
            token = token_file.display(),
            ca = ca_file.display()
        ),
    )
    .unwrap();
    let prometheus_port = free_port();
    let mut server = std::process::Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{prometheus_port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("prometheus (Debian's package, installed by .ci/run)");
    let prometheus = format!("http://127.0.0.1:{prometheus_port}");

    let selector = format!(r#"tenant="acme",job="{job}",stage="only""#);
    let events_in =
        until_value(&prometheus, &format!("sum(squilla_worker_events_in_total{{{selector}}})"), |v| v >= 1000.0).await;
    assert_eq!(events_in, 1000.0, "every ingested event reached the stage, once");
    let events_out =
        until_value(&prometheus, &format!("sum(squilla_worker_events_out_total{{{selector}}})"), |v| v >= 1000.0).await;
    assert_eq!(events_out, 1000.0, "the keep-all stage passed every event");
    let up = until_value(&prometheus, r#"up{job="squilla-agents"}"#, |v| v == 1.0).await;
    assert_eq!(up, 1.0);
    let failed =
        until_value(&prometheus, &format!("sum(squilla_worker_failed_calls_total{{{selector}}})"), |_| true).await;
    assert_eq!(failed, 0.0);
    let _ = server.kill();
    let _ = server.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trapping_guests_log_is_read_through_the_api_and_the_cli() {
    let dir = temp_dir("observability-logs");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let _m = master(&dir, port);
    let _a = crate::agent_with("a1", &base, &["--threads", "2"]);
    let (status, body) = call(&base, reqwest::Method::POST, "/api/v1/artifacts", squilla_guests::read("hostile")).await;
    assert!(status == 200 || status == 201, "{status}: {body}");
    let sha = body["sha256"].as_str().unwrap();
    let spec = json!({
        "name": "trapper", "source": {"kind": "ingest"},
        "stages": [{"name": "only", "artifact": format!("sha256:{sha}"), "params": {"process": "trap"}}]
    });
    let (status, body) = call(&base, reqwest::Method::POST, "/api/v1/clusters", spec.to_string().into_bytes()).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = call(&base, reqwest::Method::POST, "/api/v1/clusters/trapper/jobs", vec![]).await;
    assert_eq!(status, 201, "{body}");
    let job = body["id"].as_str().unwrap().to_owned();
    let logs = format!("/api/v1/jobs/{job}/stages/only/workers/0/logs");

    // Until the worker runs, its log is not there to read.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = call(&base, reqwest::Method::GET, &logs, vec![]).await;
        if status == 200 {
            break;
        }
        assert_eq!((status, body["code"].as_str()), (503, Some("not_running")), "{body}");
        assert!(Instant::now() < deadline, "the worker never ran");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ingest(&base, &job, &[json!({"n": 1}), json!({"n": 2})]).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let line = loop {
        let (status, body) = call(&base, reqwest::Method::GET, &logs, vec![]).await;
        assert_eq!(status, 200, "{body}");
        let found = body["lines"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["message"].as_str().is_some_and(|m| m.contains("trapping on a batch of 2 events")));
        if let Some(line) = found {
            break line.clone();
        }
        assert!(Instant::now() < deadline, "no log line of the trap: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(line["level"], "error");

    // The CLI prints the same line.
    let output = crate::squilla()
        .args(["logs", &job, "only", "0", "--master", &base, "--token", crate::TOKEN])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.lines().any(|l| l.contains(" error ") && l.contains("trapping on a batch of 2 events")), "{text}");

    // `--follow` prints the lines there are, then new ones as the worker logs them.
    let mut follower = crate::squilla()
        .args(["logs", &job, "only", "0", "--follow", "--master", &base, "--token", crate::TOKEN])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let wait_for = |needle: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(e) => panic!("no `{needle}` from squilla logs --follow: {e}"),
            }
        }
    };
    wait_for("trapping on a batch of 2 events");
    ingest(&base, &job, &[json!({"n": 1}), json!({"n": 2}), json!({"n": 3})]).await;
    let line = wait_for("trapping on a batch of 3 events");
    assert!(line.contains(" error "), "{line}");
    // A new incarnation keeps a new log, numbered from 0 again: the follower moves to it.
    let (status, body) =
        call(&base, reqwest::Method::POST, &format!("/api/v1/jobs/{job}/stages/only/workers/0/resubmit"), vec![]).await;
    assert_eq!(status, 200, "{body}");
    let four: String = (0..4).map(|n| format!("{}\n", json!({"n": n}))).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, doc) = call(&base, reqwest::Method::GET, &format!("/api/v1/jobs/{job}"), vec![]).await;
        let worker = &doc["stages"][0]["workers"][0];
        if worker["number"].as_u64().unwrap_or(0) > 1 && worker["state"] == "running" {
            break;
        }
        assert!(Instant::now() < deadline, "the new incarnation never ran: {doc}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    loop {
        let (status, body) =
            call(&base, reqwest::Method::POST, &format!("/api/v1/jobs/{job}/ingest"), four.clone().into_bytes()).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the new incarnation never took events: {status} {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_for("trapping on a batch of 4 events");
    let _ = follower.kill();
    let _ = follower.wait();

    // Another tenant's job, a stage or a worker that is not there: 404.
    for (path, code) in [
        (format!("/api/v1/jobs/{job}/stages/nope/workers/0/logs"), "no_such_stage"),
        (format!("/api/v1/jobs/{job}/stages/only/workers/7/logs"), "no_such_worker"),
        ("/api/v1/jobs/other-1/stages/only/workers/0/logs".to_owned(), "not_found"),
    ] {
        let (status, body) = call(&base, reqwest::Method::GET, &path, vec![]).await;
        assert_eq!((status, body["code"].as_str()), (404, Some(code)), "{path}: {body}");
    }
}
