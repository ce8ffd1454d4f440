//! The master's API, called as a client would: handlers through `oneshot`, and once over a
//! real loopback socket.

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use squilla_scheduler::api::{ApiLimits, AppState, Tenants, router};
use squilla_scheduler::control::{Control, ControlConfig};
use squilla_scheduler::store::Store;
use tower::ServiceExt;

const ACME: &str = "acme-token-0123456789";
const GLOBEX: &str = "globex-token-9876543210";
const AGENT: &str = "agent-token-0123456789";

fn data_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("squilla-api-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn state(dir: &std::path::Path, limits: ApiLimits) -> AppState {
    state_with(dir, limits, ControlConfig::default())
}

fn state_with(dir: &std::path::Path, limits: ApiLimits, config: ControlConfig) -> AppState {
    let store = Arc::new(Store::open(&dir.join("squilla.redb")).unwrap());
    let control = Arc::new(Control::load(store.clone(), config).unwrap());
    let tenants = Tenants::new([("acme", ACME), ("globex", GLOBEX)]);
    let mut state = AppState::new(tenants, store, limits, control, Some(AGENT.into())).unwrap();
    state.set_authority(Arc::new(squilla_net::ca::Authority::generate().unwrap())).unwrap();
    state
}

async fn call(
    state: &AppState,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, Value, Vec<u8>) {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = router(state.clone()).oneshot(request.body(Body::from(body)).unwrap()).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes().to_vec();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, json, bytes)
}

fn filter() -> Vec<u8> {
    squilla_guests::read("filter")
}

#[tokio::test]
async fn health_and_the_openapi_document_are_served_and_every_operation_is_routed() {
    let dir = data_dir("openapi");
    let s = state(&dir, ApiLimits::default());
    let (status, body, _) = call(&s, "GET", "/healthz", None, vec![]).await;
    assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("ok")));
    let (status, doc, _) = call(&s, "GET", "/api/v1/openapi.json", None, vec![]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["openapi"].as_str().map(|v| &v[..2]), Some("3."));
    let paths = doc["paths"].as_object().expect("paths");
    let mut operations = 0;
    for (path, item) in paths {
        for (method, operation) in item.as_object().unwrap() {
            operations += 1;
            // Every documented operation is a route: without a token it answers what its
            // guard (or, for the open routes, its handler) answers, never the fallback 404.
            let uri = path
                .replace("{sha256}", &"0".repeat(64))
                .replace("{id}", "web-1")
                .replace("{name}", "web")
                .replace("{version}", "1")
                .replace("{stage}", "0")
                .replace("{index}", "0")
                .replace("{tenant}", "acme")
                .replace("{cluster}", "web");
            let (status, body, _) = call(&s, &method.to_uppercase(), &uri, None, vec![]).await;
            let open =
                operation["security"].as_array().is_some_and(|s| s.iter().all(|r| r.as_object().unwrap().is_empty()));
            if open {
                assert_eq!(status, StatusCode::OK, "{method} {path}");
            } else {
                assert_eq!(
                    (status, body["code"].as_str()),
                    (StatusCode::UNAUTHORIZED, Some("unauthorized")),
                    "{method} {path}"
                );
                let documented = operation["responses"].as_object().unwrap();
                assert!(documented.contains_key("401") && documented.contains_key("429"), "{method} {path}");
            }
        }
    }
    assert_eq!(operations, 33, "every operation of docs/api.md");
    let (status, body, _) = call(&s, "GET", "/api/v1/nothing-here", Some(ACME), vec![]).await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
}

/// The document in the repository (`docs/openapi.json`) is the one the master serves; run
/// with `SQUILLA_BLESS=1` to rewrite it after changing the API.
#[tokio::test]
async fn the_committed_openapi_document_is_the_served_one() {
    let dir = data_dir("openapi-file");
    let s = state(&dir, ApiLimits::default());
    let (_, _, served) = call(&s, "GET", "/api/v1/openapi.json", None, vec![]).await;
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
    if std::env::var_os("SQUILLA_BLESS").is_some() {
        std::fs::write(&file, &served).unwrap();
    }
    let committed = std::fs::read(&file).unwrap_or_default();
    assert!(committed == served, "docs/openapi.json differs from the served document; rerun with SQUILLA_BLESS=1");
}

#[tokio::test]
async fn no_token_or_a_wrong_token_is_unauthorized() {
    let dir = data_dir("auth");
    let s = state(&dir, ApiLimits::default());
    for token in [None, Some("not-a-known-token-at-all"), Some("")] {
        let (status, body, _) = call(&s, "GET", "/api/v1/artifacts", token, vec![]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}");
        assert_eq!(body["code"], "unauthorized");
    }
    let (status, _, _) = call(&s, "POST", "/api/v1/artifacts", None, filter()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(s.store.artifacts(&"acme".parse().unwrap()).unwrap().is_empty());
}

#[tokio::test]
async fn upload_is_idempotent_and_artifacts_can_be_listed_fetched_and_deleted() {
    let dir = data_dir("lifecycle");
    let s = state(&dir, ApiLimits::default());
    let (status, meta, _) = call(&s, "POST", "/api/v1/artifacts?name=filter&version=0.1.0", Some(ACME), filter()).await;
    assert_eq!(status, StatusCode::CREATED, "{meta}");
    let sha = meta["sha256"].as_str().unwrap().to_owned();
    assert_eq!(sha.len(), 64);
    assert_eq!(
        (meta["flavour"].as_str(), meta["name"].as_str(), meta["size"].as_u64()),
        (Some("raw"), Some("filter"), Some(filter().len() as u64))
    );

    let (status, again, _) =
        call(&s, "POST", "/api/v1/artifacts?name=filter&version=0.1.0", Some(ACME), filter()).await;
    assert_eq!((status, &again), (StatusCode::OK, &meta));

    let (_, list, _) = call(&s, "GET", "/api/v1/artifacts", Some(ACME), vec![]).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    let (status, got, _) = call(&s, "GET", &format!("/api/v1/artifacts/{sha}"), Some(ACME), vec![]).await;
    assert_eq!((status, got), (StatusCode::OK, meta));
    let (status, _, bytes) = call(&s, "GET", &format!("/api/v1/artifacts/{sha}/wasm"), Some(ACME), vec![]).await;
    assert_eq!((status, bytes), (StatusCode::OK, filter()));

    let (status, _, _) = call(&s, "DELETE", &format!("/api/v1/artifacts/{sha}"), Some(ACME), vec![]).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body, _) = call(&s, "GET", &format!("/api/v1/artifacts/{sha}"), Some(ACME), vec![]).await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
    // The tag went with it: the same name@version can now name other bytes.
    let (status, _, _) =
        call(&s, "POST", "/api/v1/artifacts?name=filter&version=0.1.0", Some(ACME), squilla_guests::read("sentiment"))
            .await;
    assert_eq!(status, StatusCode::CREATED);
}

#[tokio::test]
async fn another_tenants_artifacts_answer_404() {
    let dir = data_dir("tenants");
    let s = state(&dir, ApiLimits::default());
    let (_, meta, _) = call(&s, "POST", "/api/v1/artifacts", Some(ACME), filter()).await;
    let sha = meta["sha256"].as_str().unwrap();
    for (method, uri) in [
        ("GET", format!("/api/v1/artifacts/{sha}")),
        ("GET", format!("/api/v1/artifacts/{sha}/wasm")),
        ("DELETE", format!("/api/v1/artifacts/{sha}")),
    ] {
        let (status, body, _) = call(&s, method, &uri, Some(GLOBEX), vec![]).await;
        assert_eq!((status, body["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")), "{method} {uri}");
    }
    let (_, list, _) = call(&s, "GET", "/api/v1/artifacts", Some(GLOBEX), vec![]).await;
    assert_eq!(list, serde_json::json!([]));
    // Globex uploading the same bytes gets its own artifact; deleting it leaves Acme's.
    let (status, _, _) = call(&s, "POST", "/api/v1/artifacts", Some(GLOBEX), filter()).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _, _) = call(&s, "DELETE", &format!("/api/v1/artifacts/{sha}"), Some(GLOBEX), vec![]).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _, bytes) = call(&s, "GET", &format!("/api/v1/artifacts/{sha}/wasm"), Some(ACME), vec![]).await;
    assert_eq!((status, bytes), (StatusCode::OK, filter()));
}

#[tokio::test]
async fn bad_uploads_are_refused_with_a_reason_and_store_nothing() {
    let dir = data_dir("bad");
    let s = state(
        &dir,
        ApiLimits { max_artifact_bytes: 200_000, artifact_bytes_per_tenant: 150_000, ..ApiLimits::default() },
    );
    let cases: Vec<(&str, Vec<u8>, StatusCode, &str, &str)> = vec![
        ("", vec![0; 200_001], StatusCode::PAYLOAD_TOO_LARGE, "artifact_too_large", "at most 200000 bytes"),
        ("", b"PK\x03\x04 a zip".to_vec(), StatusCode::BAD_REQUEST, "invalid_artifact", "not a WebAssembly binary"),
        (
            "",
            wat::parse_str("(module)").unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_artifact",
            "core WebAssembly module",
        ),
        (
            "",
            squilla_guests::read("fs-reader"),
            StatusCode::BAD_REQUEST,
            "invalid_artifact",
            "imports `wasi:filesystem/",
        ),
        ("?name=Filter&version=1", filter(), StatusCode::BAD_REQUEST, "bad_request", "a tag is a name"),
        ("?name=filter", filter(), StatusCode::BAD_REQUEST, "bad_request", "both `name` and `version`"),
    ];
    for (query, body, status, code, message) in cases {
        let (got, json, _) = call(&s, "POST", &format!("/api/v1/artifacts{query}"), Some(ACME), body).await;
        assert_eq!((got, json["code"].as_str()), (status, Some(code)), "{json}");
        assert!(json["message"].as_str().unwrap().contains(message), "{json}");
    }
    assert!(
        s.store.artifacts(&"acme".parse().unwrap()).unwrap().is_empty(),
        "nothing may be stored by a refused upload"
    );

    // Tags are immutable; quotas count bytes held.
    let (status, _, _) = call(&s, "POST", "/api/v1/artifacts?name=f&version=1", Some(ACME), filter()).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, json, _) =
        call(&s, "POST", "/api/v1/artifacts?name=f&version=1", Some(ACME), squilla_guests::read("sentiment")).await;
    assert_eq!((status, json["code"].as_str()), (StatusCode::CONFLICT, Some("tag_conflict")));
    let (status, json, _) = call(&s, "POST", "/api/v1/artifacts", Some(ACME), squilla_guests::read("top-titles")).await;
    assert_eq!((status, json["code"].as_str()), (StatusCode::FORBIDDEN, Some("quota_exceeded")), "{json}");
    assert_eq!(s.store.artifacts(&"acme".parse().unwrap()).unwrap().len(), 1);
}

#[tokio::test]
async fn artifacts_survive_a_restart() {
    let dir = data_dir("restart");
    {
        let s = state(&dir, ApiLimits::default());
        let (status, _, _) = call(&s, "POST", "/api/v1/artifacts?name=filter&version=1", Some(ACME), filter()).await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let s = state(&dir, ApiLimits::default());
    let (_, list, _) = call(&s, "GET", "/api/v1/artifacts", Some(ACME), vec![]).await;
    assert_eq!(list[0]["name"], "filter");
}

#[tokio::test]
async fn an_oversized_upload_over_a_socket_is_cut_short_with_413() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = data_dir("socket");
    let s = state(&dir, ApiLimits { max_artifact_bytes: 64 << 10, ..ApiLimits::default() });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(axum::serve(listener, router(s.clone())).into_future());
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let declared = 64u64 << 20; // claims 64 MiB, sends far less: the server must not wait for it
    let head = format!(
        "POST /api/v1/artifacts HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {ACME}\r\ncontent-length: {declared}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&vec![0u8; 256 << 10]).await.unwrap();
    let mut response = vec![0u8; 1024];
    let n =
        tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut response)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&response[..n]);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("artifact_too_large"), "{text}");
    assert!(s.store.artifacts(&"acme".parse().unwrap()).unwrap().is_empty());
    server.abort();
}

fn spec(artifact: &str, workers: u32) -> Vec<u8> {
    serde_json::json!({
        "name": "errors",
        "source": {"kind": "synthetic", "generator": "device-logs", "events-per-second": 100},
        "stages": [{"name": "keep", "artifact": artifact, "workers": workers,
                    "params": {"field": "status", "op": "ge", "value": 500}}]
    })
    .to_string()
    .into_bytes()
}

#[tokio::test]
async fn clusters_are_versioned_templates_over_the_tenants_artifacts() {
    let dir = data_dir("clusters");
    let s = state(&dir, ApiLimits::default());
    // A stage naming an artifact the tenant does not have is refused, naming the stage.
    let (status, json, _) = call(&s, "POST", "/api/v1/clusters", Some(ACME), spec("filter@0.1.0", 1)).await;
    assert_eq!((status, json["code"].as_str()), (StatusCode::BAD_REQUEST, Some("unknown_artifact")), "{json}");
    assert!(json["message"].as_str().unwrap().starts_with("stages[0].artifact"), "{json}");

    let (_, artifact, _) = call(&s, "POST", "/api/v1/artifacts?name=filter&version=0.1.0", Some(ACME), filter()).await;
    let sha = artifact["sha256"].as_str().unwrap().to_owned();
    let (status, v1, _) = call(&s, "POST", "/api/v1/clusters", Some(ACME), spec("filter@0.1.0", 1)).await;
    assert_eq!((status, v1["version"].as_u64()), (StatusCode::CREATED, Some(1)), "{v1}");
    assert_eq!(v1["artifacts"], serde_json::json!([sha]));
    let (status, v2, _) = call(&s, "POST", "/api/v1/clusters", Some(ACME), spec(&format!("sha256:{sha}"), 3)).await;
    assert_eq!((status, v2["version"].as_u64()), (StatusCode::CREATED, Some(2)));

    let (_, latest, _) = call(&s, "GET", "/api/v1/clusters/errors", Some(ACME), vec![]).await;
    assert_eq!(latest["spec"]["stages"][0]["workers"], 3);
    let (_, first, _) = call(&s, "GET", "/api/v1/clusters/errors/versions/1", Some(ACME), vec![]).await;
    assert_eq!(first["spec"]["stages"][0]["workers"], 1);
    let (_, list, _) = call(&s, "GET", "/api/v1/clusters", Some(ACME), vec![]).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["version"], 2);

    // Another tenant sees none of it, and cannot use Acme's artifact.
    let (status, _, _) = call(&s, "GET", "/api/v1/clusters/errors", Some(GLOBEX), vec![]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, json, _) = call(&s, "POST", "/api/v1/clusters", Some(GLOBEX), spec(&format!("sha256:{sha}"), 1)).await;
    assert_eq!((status, json["code"].as_str()), (StatusCode::BAD_REQUEST, Some("unknown_artifact")));

    // An artifact in use cannot be deleted.
    let (status, json, _) = call(&s, "DELETE", &format!("/api/v1/artifacts/{sha}"), Some(ACME), vec![]).await;
    assert_eq!((status, json["code"].as_str()), (StatusCode::CONFLICT, Some("artifact_in_use")), "{json}");

    // An invalid spec is refused with the path of the problem, and stores nothing.
    let bad = String::from_utf8(spec("filter@0.1.0", 0)).unwrap().into_bytes();
    let (status, json, _) = call(&s, "POST", "/api/v1/clusters", Some(ACME), bad).await;
    assert_eq!((status, json["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_spec")));
    assert!(json["message"].as_str().unwrap().starts_with("stages[0].workers"), "{json}");
    let (_, latest, _) = call(&s, "GET", "/api/v1/clusters/errors", Some(ACME), vec![]).await;
    assert_eq!(latest["version"], 2);
}

#[path = "api/jobs.rs"]
mod jobs;

#[path = "api/isolation.rs"]
mod isolation;

#[tokio::test]
async fn agents_get_data_port_certificates_for_their_own_keys_and_nobody_else_does() {
    let dir = data_dir("certificate");
    let state = state(&dir, ApiLimits::default());
    let (_key, csr) = squilla_net::ca::request("agent-1").unwrap();
    let body = serde_json::to_vec(&serde_json::json!({ "agent": "agent-1", "csr": csr })).unwrap();
    let uri = "/api/v1/agent/certificate";
    for token in [None, Some(ACME)] {
        let (status, json, _) = call(&state, "POST", uri, token, body.clone()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{json}");
    }
    let (status, json, _) = call(&state, "POST", uri, Some(AGENT), body).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert!(json["certificate"].as_str().unwrap().starts_with("-----BEGIN CERTIFICATE-----"));
    assert_eq!(json["ca"].as_str(), Some(state.authority.as_ref().unwrap().certificate_pem()));
    let day = squilla_net::ca::LIFETIME.as_millis() as u64;
    let left = json["not-after-ms"].as_u64().unwrap().saturating_sub(squilla_types::time::now_ms() as u64);
    assert!(left > day - 60_000 && left <= day, "valid for a day: {left} ms");
    for bad in [
        serde_json::json!({ "agent": "agent-1", "csr": "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n" }),
        serde_json::json!({ "agent": "not an id!", "csr": "x" }),
        serde_json::json!({ "csr": "x" }),
    ] {
        let (status, json, _) = call(&state, "POST", uri, Some(AGENT), serde_json::to_vec(&bad).unwrap()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {json}");
        assert_eq!(json["code"], "invalid_certificate_request");
    }
}

#[tokio::test]
async fn agent_pool_advice_over_hundreds_of_heartbeating_agents() {
    let dir = data_dir("advice");
    let mut state = state(&dir, ApiLimits::default());
    for i in 0..200 {
        let beat = serde_json::json!({
            "agent": format!("fake-{i}"), "http": "127.0.0.1:1", "data": "127.0.0.1:2",
            "capacity": {"cpu-millis": 4000, "memory-mib": 4096, "network-mbps": 1000, "slots": 8},
            "zone": if i % 2 == 0 { "east" } else { "west" }
        });
        let (status, json, _) =
            call(&state, "POST", "/api/v1/agent/heartbeat", Some(AGENT), serde_json::to_vec(&beat).unwrap()).await;
        assert_eq!(status, StatusCode::OK, "{json}");
    }
    // Just joined: the default cooldown (300 s) holds every group.
    let (status, advice, _) = call(&state, "GET", "/api/v1/agents/advice", Some(ACME), vec![]).await;
    assert_eq!(status, StatusCode::OK, "{advice}");
    assert_eq!(advice["groups"].as_array().unwrap().len(), 2);
    assert!(advice["groups"].as_array().unwrap().iter().all(|g| g["remove"] == 0 && g["agents"] == 100), "{advice}");
    assert!(advice["groups"][0]["reason"].as_str().unwrap().contains("cooling down"), "{advice}");
    // Without a cooldown: 100 idle agents per zone against max-idle 3.
    state.pool = squilla_scheduler::advice::PoolRules { min_idle: 1, max_idle: 3, cooldown_ms: 0 };
    let (_, advice, _) = call(&state, "GET", "/api/v1/agents/advice", Some(ACME), vec![]).await;
    for group in advice["groups"].as_array().unwrap() {
        assert_eq!(
            (group["idle"].as_u64(), group["add"].as_u64(), group["remove"].as_u64()),
            (Some(100), Some(0), Some(97))
        );
    }
    assert_eq!((advice["pending-workers"].as_u64(), advice["add-for-pending"].as_u64()), (Some(0), Some(0)));
    let (status, _, _) = call(&state, "GET", "/api/v1/agents/advice", None, vec![]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}
