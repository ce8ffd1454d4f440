//! Jobs through the API, with agents speaking the heartbeat protocol as the real agent does.

use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{Value, json};
use squilla_scheduler::api::ApiLimits;
use squilla_scheduler::control::{ControlConfig, Quota};

use super::{ACME, AGENT, GLOBEX, call, data_dir, filter, state_with};

fn fast() -> ControlConfig {
    ControlConfig {
        heartbeat: Duration::from_millis(50),
        agent_timeout: Duration::from_millis(300),
        backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
        max_worker_failures: 3,
        quota: Quota { workers: 6, memory_mib: 10_000 },
        ..ControlConfig::default()
    }
}

fn two_stage(unique: &str) -> Vec<u8> {
    json!({
        "name": "errors",
        "source": {"kind": "synthetic", "generator": "device-logs", "events-per-second": 100},
        "parameters": [{"name": "threshold", "type": "int", "default": 500},
                       {"name": "label", "type": "text", "required": true}],
        "stages": [
            {"name": "keep", "artifact": "filter@0.1.0", "workers": 2, "constraints": {"unique-agent": unique},
             "params": {"field": "status", "op": "exists"}},
            {"name": "rate", "artifact": "filter@0.1.0", "workers": 2, "constraints": {"unique-agent": unique},
             "params": {"field": "status", "op": "exists"}}
        ],
        "sla": {"max-jobs": 2}
    })
    .to_string()
    .into_bytes()
}

async fn setup(s: &squilla_scheduler::api::AppState, spec: Vec<u8>) {
    let (status, _, _) = call(s, "POST", "/api/v1/artifacts?name=filter&version=0.1.0", Some(ACME), filter()).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, json, _) = call(s, "POST", "/api/v1/clusters", Some(ACME), spec).await;
    assert_eq!(status, StatusCode::CREATED, "{json}");
}

fn beat(agent: &str, workers: Vec<Value>) -> Vec<u8> {
    json!({
        "agent": agent, "http": format!("127.0.0.1:1{}", agent.len()), "data": format!("127.0.0.1:2{}", agent.len()),
        "capacity": {"cpu-millis": 4000, "memory-mib": 4096, "network-mbps": 1000, "slots": 8},
        "zone": "z1", "workers": workers
    })
    .to_string()
    .into_bytes()
}

/// Heartbeats as `agent`, reporting every worker it was assigned as running (or `failed`).
async fn heartbeat(
    s: &squilla_scheduler::api::AppState,
    agent: &str,
    reports: &[(String, u32, u32, u64, &str)],
) -> Value {
    let workers = reports
        .iter()
        .map(|(job, stage, index, number, state)| {
            json!({"job": job, "stage": stage, "index": index, "number": number, "state": state, "message": "trap: boom"})
        })
        .collect();
    let (status, json, _) = call(s, "POST", "/api/v1/agent/heartbeat", Some(AGENT), beat(agent, workers)).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    json
}

/// The `(job, stage, index, number)` of every slot the plan puts on `agent`.
fn mine(plan: &Value, agent: &str) -> Vec<(String, u32, u32, u64)> {
    let mut out = Vec::new();
    for job in plan["jobs"].as_array().unwrap() {
        for (s, stage) in job["slots"].as_array().unwrap().iter().enumerate() {
            for (i, slot) in stage.as_array().unwrap().iter().enumerate() {
                if slot["agent"] == agent {
                    out.push((
                        job["job"].as_str().unwrap().to_owned(),
                        s as u32,
                        i as u32,
                        slot["number"].as_u64().unwrap(),
                    ));
                }
            }
        }
    }
    out
}

fn running(slots: &[(String, u32, u32, u64)]) -> Vec<(String, u32, u32, u64, &'static str)> {
    slots.iter().map(|(j, s, i, n)| (j.clone(), *s, *i, *n, "running")).collect()
}

#[tokio::test]
async fn submissions_are_checked_against_parameters_quotas_and_the_sla() {
    let dir = data_dir("jobs-submit");
    let s = state_with(&dir, ApiLimits::default(), fast());
    setup(&s, two_stage("off")).await;
    let submit =
        |body: Value| call(&s, "POST", "/api/v1/clusters/errors/jobs", Some(ACME), body.to_string().into_bytes());
    let cases = [
        (json!({"params": {"nope": 1, "label": "x"}}), "unknown_parameter", "`nope`"),
        (json!({"parms": {}}), "bad_request", "parms"),
        (json!({"params": {"threshold": "high", "label": "x"}}), "invalid_parameter", "threshold"),
        (json!({}), "missing_parameter", "`label`"),
    ];
    for (body, code, names) in cases {
        let (status, json, _) = submit(body).await;
        assert_eq!((status, json["code"].as_str()), (StatusCode::BAD_REQUEST, Some(code)), "{json}");
        assert!(json["message"].as_str().unwrap().contains(names), "{json}");
    }
    let (status, job, _) = submit(json!({"params": {"label": "x", "threshold": 400}})).await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    assert_eq!((job["id"].as_str(), job["state"].as_str()), (Some("errors-1"), Some("accepted")));
    assert_eq!(job["params"]["threshold"], "400");
    // No agent yet: every worker waits, with the reason.
    assert!(job["stages"][0]["workers"][0]["pending_reason"].as_str().is_some(), "{job}");
    // 4 workers run; 4 more would pass the quota of 6.
    let (status, json, _) = submit(json!({"params": {"label": "y"}})).await;
    assert_eq!((status, json["code"].as_str()), (StatusCode::TOO_MANY_REQUESTS, Some("quota_exceeded")), "{json}");
    assert!(json["message"].as_str().unwrap().contains("quota of 6"), "{json}");
    let (status, json, _) =
        call(&s, "POST", "/api/v1/jobs/errors-1/stages/keep/scale", Some(ACME), br#"{"workers": 5}"#.to_vec()).await;
    assert_eq!((status, json["code"].as_str()), (StatusCode::TOO_MANY_REQUESTS, Some("quota_exceeded")));
    let (_, listed, _) = call(&s, "GET", "/api/v1/jobs", Some(ACME), vec![]).await;
    assert_eq!(listed.as_array().unwrap().len(), 1, "refused submissions leave nothing behind");

    // Another tenant can neither see nor touch the job.
    for (method, uri) in [
        ("GET", "/api/v1/jobs/errors-1"),
        ("POST", "/api/v1/jobs/errors-1/kill"),
        ("GET", "/api/v1/jobs/errors-1/status"),
        ("GET", "/api/v1/jobs/errors-1/sink"),
        ("POST", "/api/v1/jobs/errors-1/stages/keep/workers/0/resubmit"),
        ("POST", "/api/v1/clusters/errors/jobs"),
    ] {
        let (status, json, _) = call(&s, method, uri, Some(GLOBEX), vec![]).await;
        assert_eq!((status, json["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")), "{method} {uri}");
    }
    let (status, json, _) =
        call(&s, "POST", "/api/v1/jobs/errors-1/stages/keep/scale", Some(GLOBEX), br#"{"workers": 1}"#.to_vec()).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{json}");
    let (_, listed, _) = call(&s, "GET", "/api/v1/jobs", Some(GLOBEX), vec![]).await;
    assert_eq!(listed, json!([]));

    // Killed, it ends; a killed job cannot be scaled.
    let (status, job, _) = call(&s, "POST", "/api/v1/jobs/errors-1/kill", Some(ACME), vec![]).await;
    assert_eq!((status, job["state"].as_str()), (StatusCode::OK, Some("killed")));
    let (status, json, _) =
        call(&s, "POST", "/api/v1/jobs/errors-1/stages/keep/scale", Some(ACME), br#"{"workers": 1}"#.to_vec()).await;
    assert_eq!((status, json["code"].as_str()), (StatusCode::CONFLICT, Some("job_ended")));
    // With the quota free again, the SLA's max-jobs (2) still applies.
    let quota_free = ControlConfig { quota: Quota::default(), ..fast() };
    drop(s);
    let s = state_with(&dir, ApiLimits::default(), quota_free);
    for n in [2, 3] {
        let (status, job, _) =
            call(&s, "POST", "/api/v1/clusters/errors/jobs", Some(ACME), br#"{"params":{"label":"z"}}"#.to_vec()).await;
        assert_eq!((status, job["id"].as_str()), (StatusCode::CREATED, Some(format!("errors-{n}").as_str())));
    }
    let (status, json, _) =
        call(&s, "POST", "/api/v1/clusters/errors/jobs", Some(ACME), br#"{"params":{"label":"z"}}"#.to_vec()).await;
    assert_eq!((status, json["code"].as_str()), (StatusCode::CONFLICT, Some("sla_max_jobs")), "{json}");
}

#[tokio::test]
async fn workers_are_placed_on_agents_adopted_and_re_placed_when_an_agent_is_lost() {
    let dir = data_dir("jobs-agents");
    let s = state_with(&dir, ApiLimits::default(), fast());
    setup(&s, two_stage("hard")).await;
    // Agents need the agent token.
    let (status, _, _) = call(&s, "POST", "/api/v1/agent/heartbeat", Some(ACME), beat("a", vec![])).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    heartbeat(&s, "a", &[]).await;
    heartbeat(&s, "bb", &[]).await;
    let (status, job, _) =
        call(&s, "POST", "/api/v1/clusters/errors/jobs", Some(ACME), br#"{"params":{"label":"x"}}"#.to_vec()).await;
    assert_eq!((status, job["state"].as_str()), (StatusCode::CREATED, Some("launched")), "{job}");
    // unique-agent (hard): each stage has one worker on each agent.
    let (plan_a, plan_b) = (heartbeat(&s, "a", &[]).await, heartbeat(&s, "bb", &[]).await);
    let (on_a, on_b) = (mine(&plan_a, "a"), mine(&plan_b, "bb"));
    assert_eq!((on_a.len(), on_b.len()), (2, 2), "{plan_a}");
    assert!(plan_a["jobs"][0]["slots"][0][1]["data"].as_str().is_some());
    assert_ne!(plan_a["jobs"][0]["source"], plan_b["jobs"][0]["source"], "one agent runs the source");
    heartbeat(&s, "a", &running(&on_a)).await;
    heartbeat(&s, "bb", &running(&on_b)).await;
    let (_, job, _) = call(&s, "GET", "/api/v1/jobs/errors-1", Some(ACME), vec![]).await;
    assert_eq!(job["state"], "running", "{job}");

    // What heartbeats change is stored by the loop's next round (a quarter heartbeat later).
    s.control.tick().unwrap();
    // The master restarts: the job comes back; agents that still run the workers are handed
    // the same workers (same numbers): adopted, not duplicated.
    drop(s);
    let s = state_with(&dir, ApiLimits::default(), fast());
    let (_, job, _) = call(&s, "GET", "/api/v1/jobs/errors-1", Some(ACME), vec![]).await;
    assert_eq!(job["state"], "running");
    let plan_a = heartbeat(&s, "a", &running(&on_a)).await;
    let plan_b = heartbeat(&s, "bb", &running(&on_b)).await;
    assert_eq!((mine(&plan_a, "a"), mine(&plan_b, "bb")), (on_a.clone(), on_b.clone()));

    // Agent bb goes silent: after the timeout its workers move to a (unique-agent is hard,
    // so they wait with a reason instead), and the job is no longer running.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        heartbeat(&s, "a", &running(&on_a)).await;
        s.control.tick().unwrap();
        let (_, job, _) = call(&s, "GET", "/api/v1/jobs/errors-1", Some(ACME), vec![]).await;
        let w = &job["stages"][0]["workers"];
        let moved = (0..2).any(|i| w[i]["agent"].is_null() && w[i]["pending_reason"].is_string());
        if moved {
            assert_eq!(job["state"], "accepted");
            let history = w.as_array().unwrap().iter().flat_map(|w| w["history"].as_array().unwrap().clone());
            assert!(history.clone().any(|t| t["reason"] == "agent `bb` lost"), "{job}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "bb never declared lost: {job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A new agent joins: the waiting workers go there, as new incarnations.
    heartbeat(&s, "ccc", &[]).await;
    s.control.tick().unwrap();
    let plan_c = heartbeat(&s, "ccc", &[]).await;
    let on_c = mine(&plan_c, "ccc");
    assert_eq!(on_c.len(), 2, "{plan_c}");
    assert!(on_c.iter().all(|(_, _, _, n)| on_b.iter().all(|(_, _, _, m)| n != m)), "new numbers");
    heartbeat(&s, "ccc", &running(&on_c)).await;
    let (_, job, _) = call(&s, "GET", "/api/v1/jobs/errors-1", Some(ACME), vec![]).await;
    assert_eq!(job["state"], "running", "{job}");
}

#[tokio::test]
async fn a_job_whose_workers_keep_failing_is_failed_with_the_reason() {
    let dir = data_dir("jobs-failing");
    let s = state_with(&dir, ApiLimits::default(), fast());
    setup(&s, two_stage("off")).await;
    heartbeat(&s, "a", &[]).await;
    call(&s, "POST", "/api/v1/clusters/errors/jobs", Some(ACME), br#"{"params":{"label":"x"}}"#.to_vec()).await;
    let mut numbers = Vec::new();
    for _ in 0..20 {
        s.control.tick().unwrap();
        let plan = heartbeat(&s, "a", &[]).await;
        let Some(slot) = mine(&plan, "a").into_iter().find(|(_, st, i, _)| (*st, *i) == (1, 0)) else {
            if plan["jobs"].as_array().unwrap().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        numbers.push(slot.3);
        heartbeat(&s, "a", &[(slot.0, 1, 0, slot.3, "failed")]).await;
    }
    numbers.dedup();
    assert_eq!(numbers.len(), 3, "three incarnations, then the job fails: {numbers:?}");
    let (_, job, _) = call(&s, "GET", "/api/v1/jobs/errors-1", Some(ACME), vec![]).await;
    assert_eq!(job["state"], "failed");
    let reason = job["reason"].as_str().unwrap();
    assert!(reason.contains("stage `rate` worker 0 failed 3 times") && reason.contains("trap: boom"), "{reason}");
}
