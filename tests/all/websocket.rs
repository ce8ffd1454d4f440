//! A job's sink over WebSocket, through the master: the same events as SSE, `$meta` messages,
//! the tenant's token required, bad parameters refused before the upgrade, a close when the job
//! ends.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::TOKEN;
use crate::streams::{ids, ndjson, start, submit, two_filters};

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(base: &str, path: &str, token: Option<&str>) -> Result<Socket, WsError> {
    let mut request = format!("{}{path}", base.replace("http://", "ws://")).into_client_request().unwrap();
    if let Some(token) = token {
        request.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    tokio_tungstenite::connect_async(request).await.map(|(socket, _)| socket)
}

/// Reads until `done(events)` or `timeout`: `(events, $meta objects, close code)`.
async fn read(
    socket: &mut Socket,
    timeout: Duration,
    done: impl Fn(&[Value]) -> bool,
) -> (Vec<Value>, Vec<Value>, Option<u16>) {
    let deadline = Instant::now() + timeout;
    let (mut events, mut metas, mut close) = (Vec::new(), Vec::new(), None);
    while !done(&events) {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Some(Ok(message))) = tokio::time::timeout(left, socket.next()).await else { break };
        match message {
            Message::Text(text) => {
                let value: Value = serde_json::from_str(&text).unwrap();
                match value.get("$meta") {
                    Some(meta) => metas.push(meta.clone()),
                    None => events.push(value),
                }
            }
            Message::Close(frame) => {
                close = frame.map(|f| u16::from(f.code));
                break;
            }
            _ => {}
        }
    }
    (events, metas, close)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_subscribers_get_the_sink_and_are_closed_when_the_job_ends() {
    let (api, _procs) = start("streams-ws").await;
    let job = submit(&api, two_filters("ws", "hard"), "ws").await;
    let path = format!("/api/v1/jobs/{job}/sink");

    // Refusals come as HTTP answers before any upgrade.
    match connect(&api.base, &path, None).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 401),
        other => panic!("no token: {:?}", other.map(|_| ())),
    }
    match connect(&api.base, &format!("{path}?query=SELECT%20FROM"), Some(TOKEN)).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 400),
        other => panic!("bad query: {:?}", other.map(|_| ())),
    }
    match connect(&api.base, "/api/v1/jobs/ws-99/sink", Some(TOKEN)).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 404),
        other => panic!("no such job: {:?}", other.map(|_| ())),
    }

    // An idle subscriber hears a ping frame every `ping` seconds (the agents' own pings, which
    // arrive as often, do not count as hearing something).
    let mut idle = connect(&api.base, &format!("{path}?ping=1"), Some(TOKEN)).await.unwrap();
    let started = Instant::now();
    let mut pings = 0;
    while pings < 3 && started.elapsed() < Duration::from_secs(10) {
        match tokio::time::timeout(Duration::from_secs(10), idle.next()).await {
            Ok(Some(Ok(Message::Ping(_)))) => pings += 1,
            Ok(Some(Ok(Message::Text(text)))) => panic!("nothing was ingested yet: {text}"),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(pings, 3, "three pings within {:?}", started.elapsed());
    drop(idle);

    let mut all = connect(&api.base, &path, Some(TOKEN)).await.unwrap();
    let query = "SELECT id AS n WHERE id < 300";
    let mut some =
        connect(&api.base, &format!("{path}?query={}", query.replace(' ', "%20").replace('<', "%3C")), Some(TOKEN))
            .await
            .unwrap();
    let mut tail = connect(&api.base, &format!("{path}?query=SELECT%20*%20WHERE%20id%20%3E%3D%202900"), Some(TOKEN))
        .await
        .unwrap();
    // `squilla tail` passes a query and a limit through.
    let tail_cli = crate::squilla()
        .args(["tail", &job, "--master", &api.base, "--token", TOKEN, "--limit", "5"])
        .args(["--query", "SELECT id WHERE id >= 30 AND id < 60"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await; // the master connects to both agents
    let (status, body) = api.call(reqwest::Method::POST, &format!("/api/v1/jobs/{job}/ingest"), ndjson(0..3000)).await;
    assert_eq!(status, 200, "{body}");

    let output = tokio::task::spawn_blocking(move || tail_cli.wait_with_output()).await.unwrap().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let printed: Vec<Value> =
        String::from_utf8(output.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(printed.len(), 5, "--limit 5: {printed:?}");
    for e in &printed {
        let id = e["id"].as_i64().unwrap();
        assert!((30..60).contains(&id) && id % 3 == 0 && e.get("status").is_none(), "{e}");
    }

    let expected: BTreeSet<i64> = (0..3000).filter(|i| i % 3 == 0).collect();
    let (events, metas, _) = read(&mut all, Duration::from_secs(30), |e| e.len() >= expected.len()).await;
    assert_eq!(ids(&events), expected, "every output event, as over SSE");
    assert!(metas.is_empty(), "{metas:?}");
    let (events, _, _) = read(&mut some, Duration::from_secs(30), |e| e.len() >= 100).await;
    let projected: BTreeSet<i64> = events.iter().map(|e| e["n"].as_i64().unwrap()).collect();
    assert_eq!(projected, (0..300).filter(|i| i % 3 == 0).collect(), "the query ran before sending");
    assert!(events.iter().all(|e| e.get("id").is_none() && e.get("status").is_none()), "projected: {events:?}");

    let (events, _, _) = read(&mut tail, Duration::from_secs(30), |e| e.len() >= 33).await;
    assert_eq!(ids(&events), (2900..3000).filter(|i| i % 3 == 0).collect(), "a filtering query");
    for e in &events {
        let keys: BTreeSet<&str> = e.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, BTreeSet::from(["timestamp-ms", "id", "status"]), "whole events: {e}");
    }

    // A client's own messages are ignored; the job's end is announced, then the socket closes.
    some.send(Message::Text("hello".into())).await.unwrap();
    let (status, _) = api.call(reqwest::Method::POST, &format!("/api/v1/jobs/{job}/kill"), vec![]).await;
    assert_eq!(status, 200);
    for socket in [&mut all, &mut some, &mut tail] {
        let (events, metas, close) = read(socket, Duration::from_secs(15), |_| false).await;
        assert!(events.is_empty(), "{events:?}");
        assert_eq!(metas, vec![serde_json::json!({"ended": true})]);
        assert_eq!(close, Some(1000), "a normal close");
    }
}
