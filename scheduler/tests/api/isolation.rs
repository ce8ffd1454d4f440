//! Tenants cannot take the master from each other: bodies are never read before
//! authentication, every route caps its body, rates are limited per client and tenant, and
//! every check-then-write is one transaction under concurrent requests.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use squilla_net::rate::Rate;
use squilla_scheduler::api::{ApiLimits, AppState, router};
use squilla_scheduler::control::{ControlConfig, Quota};
use tower::ServiceExt;

use super::{ACME, AGENT, GLOBEX, call, data_dir, filter, state, state_with};

/// A body that yields 1 MiB chunks for ever and counts how many bytes were read from it.
fn endless(read: Arc<AtomicUsize>) -> Body {
    let chunk = Bytes::from(vec![b'x'; 1 << 20]);
    Body::from_stream(futures_util::stream::repeat_with(move || {
        read.fetch_add(chunk.len(), Ordering::SeqCst);
        Ok::<_, std::io::Error>(chunk.clone())
    }))
}

async fn send(
    state: &AppState,
    method: &str,
    uri: &str,
    token: Option<&str>,
    declared: Option<u64>,
    body: Body,
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    if let Some(n) = declared {
        request = request.header("content-length", n.to_string());
    }
    let response =
        tokio::time::timeout(Duration::from_secs(20), router(state.clone()).oneshot(request.body(body).unwrap()))
            .await
            .expect("answered in time")
            .unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

const POST_ROUTES: [&str; 8] = [
    "/api/v1/artifacts",
    "/api/v1/clusters",
    "/api/v1/clusters/errors/jobs",
    "/api/v1/jobs/errors-1/kill",
    "/api/v1/jobs/errors-1/stages/keep/scale",
    "/api/v1/jobs/errors-1/stages/keep/workers/0/resubmit",
    "/api/v1/jobs/errors-1/ingest",
    "/api/v1/agent/heartbeat",
];

#[tokio::test]
async fn no_body_is_read_before_the_caller_is_authenticated() {
    let dir = data_dir("iso-auth-first");
    let s = state(&dir, ApiLimits::default());
    for route in POST_ROUTES {
        for token in [None, Some("not-a-token-of-anyone")] {
            let read = Arc::new(AtomicUsize::new(0));
            let (status, body) = send(&s, "POST", route, token, Some(1 << 30), endless(read.clone())).await;
            assert_eq!((status, body["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("unauthorized")), "{route}");
            assert_eq!(read.load(Ordering::SeqCst), 0, "{route}: body read before authentication");
        }
    }
    // A tenant token is no agent token, and the agent token no tenant's.
    let read = Arc::new(AtomicUsize::new(0));
    let (status, _) = send(&s, "POST", "/api/v1/agent/heartbeat", Some(ACME), None, endless(read.clone())).await;
    assert_eq!((status, read.load(Ordering::SeqCst)), (StatusCode::UNAUTHORIZED, 0));
    let (status, _) = send(&s, "POST", "/api/v1/clusters", Some(AGENT), None, endless(read.clone())).await;
    assert_eq!((status, read.load(Ordering::SeqCst)), (StatusCode::UNAUTHORIZED, 0));
}

#[tokio::test]
async fn every_route_caps_its_body_while_reading_it() {
    let dir = data_dir("iso-caps");
    let s = state(&dir, ApiLimits { max_artifact_bytes: 4 << 20, ..ApiLimits::default() });
    for route in POST_ROUTES {
        let token = if route.contains("/agent/") { AGENT } else { ACME };
        // Declared too large: refused before a byte is read.
        let read = Arc::new(AtomicUsize::new(0));
        let (status, body) = send(&s, "POST", route, Some(token), Some(1 << 30), endless(read.clone())).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{route}: {body}");
        assert_eq!(read.load(Ordering::SeqCst), 0, "{route}");
        // Undeclared (chunked) and endless: read only up to the cap.
        let read = Arc::new(AtomicUsize::new(0));
        let (status, body) = send(&s, "POST", route, Some(token), None, endless(read.clone())).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{route}: {body}");
        let code = body["code"].as_str().unwrap();
        assert!(code.ends_with("_too_large"), "{route}: {body}");
        assert!(read.load(Ordering::SeqCst) <= 17 << 20, "{route}: read {} bytes", read.load(Ordering::SeqCst));
    }
    let (_, body) = send(&s, "POST", "/api/v1/clusters", Some(ACME), Some(1 << 30), Body::empty()).await;
    assert_eq!(body["code"], "spec_too_large");
    let (_, body) = send(&s, "POST", "/api/v1/jobs/errors-1/ingest", Some(ACME), Some(1 << 30), Body::empty()).await;
    assert_eq!(body["code"], "ingest_too_large");
    let (_, body) = send(&s, "POST", "/api/v1/artifacts", Some(ACME), Some(1 << 30), Body::empty()).await;
    assert_eq!(body["code"], "artifact_too_large");
}

#[tokio::test]
async fn a_tenant_over_its_request_rate_is_refused_and_others_are_not() {
    let dir = data_dir("iso-rate");
    let limits = ApiLimits { tenant_rate: Rate { per_second: 2.0, burst: 5.0 }, ..ApiLimits::default() };
    let s = state(&dir, limits);
    for _ in 0..5 {
        let (status, _, _) = call(&s, "GET", "/api/v1/jobs", Some(ACME), vec![]).await;
        assert_eq!(status, StatusCode::OK);
    }
    let request = Request::get("/api/v1/jobs").header("authorization", format!("Bearer {ACME}")).body(Body::empty());
    let response = router(s.clone()).oneshot(request.unwrap()).await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().get("retry-after").is_some());
    let body: Value = serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["code"], "rate_limited");
    let (status, _, _) = call(&s, "GET", "/api/v1/jobs", Some(GLOBEX), vec![]).await;
    assert_eq!(status, StatusCode::OK, "another tenant is not slowed");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (status, _, _) = call(&s, "GET", "/api/v1/jobs", Some(ACME), vec![]).await;
    assert_eq!(status, StatusCode::OK, "the bucket refills");
}

/// A raw stage component whose exports have the contract's names and the wrong types.
fn wrong_types() -> Vec<u8> {
    wat::parse_str(
        r#"(component
            (core module $m (func (export "f") (result i32) i32.const 0))
            (core instance $i (instantiate $m))
            (func $f (result u32) (canon lift (core func $i "f")))
            (instance $h (export "init" (func $f)) (export "process" (func $f)) (export "tick" (func $f)))
            (export "squilla:stage/raw-handler@0.1.0" (instance $h)))"#,
    )
    .unwrap()
}

#[tokio::test]
async fn an_upload_whose_exports_have_the_wrong_types_is_refused() {
    let dir = data_dir("iso-types");
    let s = state(&dir, ApiLimits::default());
    let (status, body, _) = call(&s, "POST", "/api/v1/artifacts", Some(ACME), wrong_types()).await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_artifact")), "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("does not match") && message.contains("`init`"), "{message}");
    assert!(s.store.artifacts(&"acme".parse().unwrap()).unwrap().is_empty());
    // Every real stage passes, whichever flavour and language.
    for guest in ["filter", "device-errors", "hostile"] {
        let (status, body, _) = call(&s, "POST", "/api/v1/artifacts", Some(ACME), squilla_guests::read(guest)).await;
        assert!(status.is_success(), "{guest}: {body}");
    }
    for path in [squilla_guests::SENTIMENT_PY, squilla_guests::FILTER_JS, squilla_guests::programs::COMPILE_BOMB] {
        let (status, body, _) = call(&s, "POST", "/api/v1/artifacts", Some(ACME), std::fs::read(path).unwrap()).await;
        assert!(status.is_success(), "{path}: {body}");
    }
}

/// `filter` with a custom section of `pad` bytes named `n`: a valid, distinct artifact.
fn padded(n: usize, pad: usize) -> Vec<u8> {
    let mut bytes = filter();
    let name = format!("pad-{n}");
    let mut body = vec![name.len() as u8];
    body.extend_from_slice(name.as_bytes());
    body.extend(std::iter::repeat_n(0u8, pad));
    bytes.push(0);
    let mut len = body.len();
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        bytes.push(if len == 0 { byte } else { byte | 0x80 });
        if len == 0 {
            break;
        }
    }
    bytes.extend_from_slice(&body);
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_uploads_never_pass_the_artifact_quota_together() {
    for round in 0..3 {
        let dir = data_dir(&format!("iso-quota-{round}"));
        let size = padded(0, 1 << 20).len() as u64;
        let quota = size * 3 + size / 2;
        let s = state(&dir, ApiLimits { artifact_bytes_per_tenant: quota, ..ApiLimits::default() });
        let uploads = (0..6).map(|i| {
            let s = s.clone();
            tokio::spawn(async move { call(&s, "POST", "/api/v1/artifacts", Some(ACME), padded(i, 1 << 20)).await })
        });
        let mut created = 0;
        for upload in uploads {
            let (status, body, _) = upload.await.unwrap();
            match status {
                StatusCode::CREATED => created += 1,
                StatusCode::FORBIDDEN => assert_eq!(body["code"], "quota_exceeded"),
                other => panic!("{other}: {body}"),
            }
        }
        let held: u64 = s.store.artifacts(&"acme".parse().unwrap()).unwrap().iter().map(|a| a.size).sum();
        assert_eq!(created, 3, "round {round}");
        assert!(held <= quota, "round {round}: {held} bytes held over a quota of {quota}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_tag_names_one_artifact_whoever_uploads_at_once() {
    let dir = data_dir("iso-tags");
    let s = state(&dir, ApiLimits::default());
    let uploads = (0..8).map(|i| {
        let s = s.clone();
        tokio::spawn(async move {
            call(&s, "POST", "/api/v1/artifacts?name=stage&version=1.0.0", Some(ACME), padded(i, 16)).await
        })
    });
    let mut codes = Vec::new();
    for upload in uploads {
        let (status, body, _) = upload.await.unwrap();
        codes.push((status, body["code"].as_str().map(str::to_owned)));
    }
    assert_eq!(codes.iter().filter(|(s, _)| *s == StatusCode::CREATED).count(), 1, "{codes:?}");
    assert!(
        codes
            .iter()
            .filter(|(s, _)| *s != StatusCode::CREATED)
            .all(|(s, c)| *s == StatusCode::CONFLICT && c.as_deref() == Some("tag_conflict"))
    );
}

fn spec_by_sha(sha: &str) -> Vec<u8> {
    json!({
        "name": "errors",
        "source": {"kind": "synthetic", "generator": "device-logs", "events-per-second": 100},
        "stages": [{"name": "keep", "artifact": format!("sha256:{sha}"), "params": {"field": "status", "op": "exists"}}]
    })
    .to_string()
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleting_an_artifact_while_a_cluster_is_created_over_it_never_leaves_a_dangling_version() {
    let dir = data_dir("iso-delete-create");
    let s = state(&dir, ApiLimits::default());
    for round in 0..60 {
        let bytes = padded(round, 8);
        let (status, meta, _) = call(&s, "POST", "/api/v1/artifacts", Some(ACME), bytes).await;
        assert_eq!(status, StatusCode::CREATED, "{meta}");
        let sha = meta["sha256"].as_str().unwrap().to_owned();
        let (create, delete) = {
            let (s1, s2, sha1, sha2) = (s.clone(), s.clone(), sha.clone(), sha.clone());
            let create =
                tokio::spawn(
                    async move { call(&s1, "POST", "/api/v1/clusters", Some(ACME), spec_by_sha(&sha1)).await },
                );
            let delete = tokio::spawn(async move {
                call(&s2, "DELETE", &format!("/api/v1/artifacts/{sha2}"), Some(ACME), vec![]).await
            });
            (create.await.unwrap(), delete.await.unwrap())
        };
        match (create.0, delete.0) {
            (StatusCode::CREATED, StatusCode::CONFLICT) => assert_eq!(delete.1["code"], "artifact_in_use"),
            (StatusCode::BAD_REQUEST, StatusCode::NO_CONTENT) => assert_eq!(create.1["code"], "unknown_artifact"),
            other => panic!("round {round}: create {} / delete {}: {other:?}", create.1, delete.1),
        }
        // Whatever happened, every cluster version names artifacts that exist.
        for cluster in s.store.clusters(&"acme".parse().unwrap()).unwrap() {
            for sha in &cluster.artifacts {
                assert!(
                    s.store.artifact(&"acme".parse().unwrap(), sha).unwrap().is_some(),
                    "round {round}: version {} names a deleted artifact",
                    cluster.version
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_scales_and_submissions_never_pass_the_worker_quota() {
    let dir = data_dir("iso-scale-quota");
    let config = ControlConfig { quota: Quota { workers: 6, memory_mib: 1 << 20 }, ..ControlConfig::default() };
    let s = state_with(&dir, ApiLimits::default(), config);
    let (status, meta, _) = call(&s, "POST", "/api/v1/artifacts", Some(ACME), filter()).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _, _) =
        call(&s, "POST", "/api/v1/clusters", Some(ACME), spec_by_sha(meta["sha256"].as_str().unwrap())).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _, _) = call(&s, "POST", "/api/v1/clusters/errors/jobs", Some(ACME), vec![]).await;
    assert_eq!(status, StatusCode::CREATED);
    let mut tasks = Vec::new();
    for i in 0..12 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                call(
                    &s,
                    "POST",
                    "/api/v1/jobs/errors-1/stages/keep/scale",
                    Some(ACME),
                    format!(r#"{{"workers": {}}}"#, 2 + i % 5).into_bytes(),
                )
                .await
            } else {
                call(&s, "POST", "/api/v1/clusters/errors/jobs", Some(ACME), vec![]).await
            }
        }));
    }
    for task in tasks {
        let (status, body, _) = task.await.unwrap();
        assert!(status.is_success() || body["code"] == "quota_exceeded", "{status}: {body}");
    }
    let (_, jobs, _) = call(&s, "GET", "/api/v1/jobs", Some(ACME), vec![]).await;
    let workers: usize = jobs
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| !["completed", "failed", "killed"].contains(&j["state"].as_str().unwrap()))
        .flat_map(|j| j["stages"].as_array().unwrap().iter())
        .map(|st| st["workers"].as_array().unwrap().len())
        .sum();
    assert!(workers <= 6, "{workers} workers over a quota of 6");
}

fn ingest_spec(sha: &str) -> Vec<u8> {
    json!({
        "name": "feed",
        "source": {"kind": "ingest"},
        "stages": [{"name": "keep", "artifact": format!("sha256:{sha}"), "params": {"field": "status", "op": "exists"}}]
    })
    .to_string()
    .into_bytes()
}

fn beat(agent: &str, http: &str) -> Vec<u8> {
    json!({
        "agent": agent, "http": http, "data": "127.0.0.1:9",
        "capacity": {"cpu-millis": 4000, "memory-mib": 4096, "network-mbps": 1000, "slots": 8},
        "zone": "z1", "workers": []
    })
    .to_string()
    .into_bytes()
}

#[tokio::test]
async fn ingest_refusals_name_what_happened_promptly() {
    let dir = data_dir("iso-ingest");
    let config = ControlConfig {
        heartbeat: Duration::from_millis(100),
        agent_timeout: Duration::from_millis(600),
        ..ControlConfig::default()
    };
    let s = state_with(&dir, ApiLimits::default(), config);
    let (_, meta, _) = call(&s, "POST", "/api/v1/artifacts", Some(ACME), filter()).await;
    let sha = meta["sha256"].as_str().unwrap().to_owned();
    call(&s, "POST", "/api/v1/clusters", Some(ACME), ingest_spec(&sha)).await;
    call(&s, "POST", "/api/v1/clusters", Some(ACME), spec_by_sha(&sha)).await;
    call(&s, "POST", "/api/v1/clusters/feed/jobs", Some(ACME), vec![]).await;
    call(&s, "POST", "/api/v1/clusters/errors/jobs", Some(ACME), vec![]).await;
    let ingest = |body: Vec<u8>, job: &'static str| {
        let s = s.clone();
        async move { call(&s, "POST", &format!("/api/v1/jobs/{job}/ingest"), Some(ACME), body).await }
    };
    let (status, body, _) = ingest(b"{\"status\": 200}\n".to_vec(), "errors-1").await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::CONFLICT, Some("not_ingest")));
    // No agent yet: the source is not running.
    let (status, body, _) = ingest(b"{\"status\": 200}\n".to_vec(), "feed-1").await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("not_running")), "{body}");
    // An event too large for any path is refused by name, before anything is sent.
    let mut big = b"{\"status\": 200}\n{\"blob\": \"".to_vec();
    big.extend(std::iter::repeat_n(b'a', 5 << 20));
    big.extend_from_slice(b"\"}\n");
    let (status, body, _) = ingest(big, "feed-1").await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::PAYLOAD_TOO_LARGE, Some("event_too_large")), "{body}");
    assert!(body["message"].as_str().unwrap().contains("line 2"), "{body}");
    // An agent that takes the source but cannot be reached: a prompt, named refusal.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (status, _, _) =
        call(&s, "POST", "/api/v1/agent/heartbeat", Some(AGENT), beat("gone", &dead.to_string())).await;
    assert_eq!(status, StatusCode::OK);
    s.control.tick().unwrap();
    let (_, job, _) = call(&s, "GET", "/api/v1/jobs/feed-1", Some(ACME), vec![]).await;
    assert_eq!(job["stages"][0]["workers"][0]["agent"], "gone", "{job}");
    let started = Instant::now();
    let (status, body, _) = ingest(b"{\"status\": 200}\n".to_vec(), "feed-1").await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("agent_unavailable")), "{body}");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    // An agent that has gone silent is refused at once, without waiting on it.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let started = Instant::now();
    let (status, body, _) = ingest(b"{\"status\": 200}\n".to_vec(), "feed-1").await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("agent_unavailable")), "{body}");
    assert!(started.elapsed() < Duration::from_secs(1));
    // An ended job takes nothing, and says so (never "retry").
    call(&s, "POST", "/api/v1/jobs/feed-1/kill", Some(ACME), vec![]).await;
    let (status, body, _) = ingest(b"{\"status\": 200}\n".to_vec(), "feed-1").await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::CONFLICT, Some("job_ended")), "{body}");
}

#[tokio::test]
async fn a_body_of_countless_tiny_events_is_refused_without_parsing_it_all() {
    let dir = data_dir("iso-tiny-events");
    let s = state(&dir, ApiLimits::default());
    let (_, meta, _) = call(&s, "POST", "/api/v1/artifacts", Some(ACME), filter()).await;
    call(&s, "POST", "/api/v1/clusters", Some(ACME), ingest_spec(meta["sha256"].as_str().unwrap())).await;
    call(&s, "POST", "/api/v1/clusters/feed/jobs", Some(ACME), vec![]).await;
    // 8 million array elements in 16 MiB: refused at the 100,001st, whatever the form.
    let mut array = b"[".to_vec();
    array.extend(b"{},".repeat((16 << 20) / 3 - 1));
    array.extend(b"{}]");
    let started = Instant::now();
    let (status, body, _) = call(&s, "POST", "/api/v1/jobs/feed-1/ingest", Some(ACME), array).await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::PAYLOAD_TOO_LARGE, Some("too_many_events")), "{body}");
    let lines = b"{}\n".repeat(200_000);
    let (status, body, _) = call(&s, "POST", "/api/v1/jobs/feed-1/ingest", Some(ACME), lines).await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::PAYLOAD_TOO_LARGE, Some("too_many_events")), "{body}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    // Bad lines are named (the first 20) and counted, not collected.
    let bad = b"x\n".repeat(50_000);
    let (status, body, _) = call(&s, "POST", "/api/v1/jobs/feed-1/ingest", Some(ACME), bad).await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_events")), "{body}");
    assert!(body["message"].as_str().unwrap().starts_with("50000 bad line(s)"), "{body}");
    assert!(body["message"].as_str().unwrap().ends_with("and 49980 more"), "{body}");
}

#[tokio::test]
async fn a_tenant_holds_a_bounded_number_of_subscriptions() {
    let dir = data_dir("iso-subscriptions");
    let s = state(&dir, ApiLimits { subscriptions_per_tenant: 3, ..ApiLimits::default() });
    let (_, meta, _) = call(&s, "POST", "/api/v1/artifacts", Some(ACME), filter()).await;
    call(&s, "POST", "/api/v1/clusters", Some(ACME), spec_by_sha(meta["sha256"].as_str().unwrap())).await;
    call(&s, "POST", "/api/v1/clusters/errors/jobs", Some(ACME), vec![]).await;
    let open = || {
        let request = Request::get("/api/v1/jobs/errors-1/sink").header("authorization", format!("Bearer {ACME}"));
        router(s.clone()).oneshot(request.body(Body::empty()).unwrap())
    };
    let mut streams = Vec::new();
    for _ in 0..3 {
        let response = open().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        streams.push(response);
    }
    let refused = open().await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let body: Value = serde_json::from_slice(&refused.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["code"], "too_many_subscriptions");
    // Closing one frees its place (the master notices within a second).
    streams.pop();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let response = open().await.unwrap();
        if response.status() == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < deadline, "the place was never freed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_submissions_never_pass_the_clusters_sla() {
    let dir = data_dir("iso-sla");
    let s = state(&dir, ApiLimits::default());
    let (_, meta, _) = call(&s, "POST", "/api/v1/artifacts", Some(ACME), filter()).await;
    let mut spec: Value = serde_json::from_slice(&spec_by_sha(meta["sha256"].as_str().unwrap())).unwrap();
    spec["sla"] = json!({"max-jobs": 2});
    let (status, body, _) = call(&s, "POST", "/api/v1/clusters", Some(ACME), spec.to_string().into_bytes()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let submissions = (0..10).map(|_| {
        let s = s.clone();
        tokio::spawn(async move { call(&s, "POST", "/api/v1/clusters/errors/jobs", Some(ACME), vec![]).await })
    });
    let mut created = 0;
    for submission in submissions {
        let (status, body, _) = submission.await.unwrap();
        match status {
            StatusCode::CREATED => created += 1,
            _ => assert_eq!(body["code"], "sla_max_jobs", "{status}: {body}"),
        }
    }
    assert_eq!(created, 2);
}

#[tokio::test]
async fn a_trusted_gateway_is_rated_by_its_callers_address_and_others_by_their_own() {
    let dir = data_dir("iso-forwarded");
    let gateway: std::net::IpAddr = "10.0.0.9".parse().unwrap();
    let limits = ApiLimits {
        client_rate: Rate { per_second: 0.5, burst: 2.0 },
        trusted_proxies: vec![gateway],
        ..ApiLimits::default()
    };
    let s = state(&dir, limits);
    let from = |peer: std::net::IpAddr, forwarded: &str| {
        let mut request = Request::get("/api/v1/jobs")
            .header("authorization", format!("Bearer {ACME}"))
            .header("x-forwarded-for", forwarded)
            .body(Body::empty())
            .unwrap();
        request.extensions_mut().insert(squilla_net::server::ClientAddr(std::net::SocketAddr::new(peer, 4000)));
        let s = s.clone();
        async move { router(s).oneshot(request).await.unwrap().status() }
    };
    // Through the gateway: each caller has its own bucket.
    assert_eq!(from(gateway, "192.0.2.1").await, StatusCode::OK);
    assert_eq!(from(gateway, "192.0.2.1").await, StatusCode::OK);
    assert_eq!(from(gateway, "192.0.2.1").await, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(from(gateway, "192.0.2.2").await, StatusCode::OK, "another caller behind the gateway");
    // Anyone else's `X-Forwarded-For` is ignored: it is rated by its own address.
    let other: std::net::IpAddr = "10.0.0.8".parse().unwrap();
    assert_eq!(from(other, "192.0.2.3").await, StatusCode::OK);
    assert_eq!(from(other, "192.0.2.4").await, StatusCode::OK);
    assert_eq!(from(other, "192.0.2.5").await, StatusCode::TOO_MANY_REQUESTS);
}
