//! Application streams end to end: three `squilla publish` processes publish one stream
//! through a gateway process; two subscribers with different queries each receive exactly
//! the events their query selects, a job reading the stream gets its filter's events, and the
//! publishers send only what some query wants. Then a publisher whose network to the gateway
//! is cut keeps publishing without blocking, counts what it drops, and reports it once the
//! network is back.

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use squilla_publish::ValueRef;

use crate::streams::{Sub, ids, start, submit};
use crate::{Api, TOKEN, free_port, gateway};

const PER_PUBLISHER: i64 = 3000;
const PATHS: [&str; 3] = ["/cart", "/home", "/search"];

/// The `n`-th event of publisher `p`.
fn event(p: i64, n: i64) -> Value {
    json!({
        "id": p * 1_000_000 + n,
        "path": PATHS[(n % 3) as usize],
        "status": if n % 10 == 0 { 503 } else { 200 },
        "ms": ((n * 37) % 100) as f64 + 0.5,
        "user": {"id": n % 17},
    })
}

fn expected(keep: impl Fn(&Value) -> bool) -> BTreeSet<i64> {
    (0..3)
        .flat_map(|p| (0..PER_PUBLISHER).map(move |n| event(p, n)))
        .filter(|e| keep(e))
        .map(|e| e["id"].as_i64().unwrap())
        .collect()
}

fn encode(query: &str) -> String {
    query
        .bytes()
        .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

/// The gateways' operator token.
const OPERATOR: &str = "operator-token-0123456789";
const OPERATOR_ARGS: &[&str] = &["--operator-token", OPERATOR];

/// The gateway's figures for stream `shop/requests` (the operator's view).
async fn stream_status(via: &Api) -> Value {
    let response = via.http.get(format!("{}/gateway/status", via.base)).bearer_auth(OPERATOR).send().await.unwrap();
    let status: Value = response.json().await.unwrap();
    status["streams"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["stream"] == "shop/requests").cloned())
        .unwrap_or_default()
}

/// Submits a job named `name` reading application stream `stream` through `query`, its one
/// stage keeping events that have `field`; its id once running.
async fn reading_job(api: &Api, name: &str, stream: &str, query: &str, field: &str) -> String {
    let spec = json!({
        "name": name,
        "source": {"kind": "app", "stream": stream, "query": query},
        "stages": [{"name": "keep", "artifact": "filter@0.1.0", "workers": 1, "params": {"field": field, "op": "exists"}}]
    });
    submit(api, spec.to_string().into_bytes(), name).await
}

/// The API as served at `127.0.0.1:port` (a gateway).
fn at(port: u16) -> Api {
    Api { base: format!("http://127.0.0.1:{port}"), http: reqwest::Client::new() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_publishers_two_queries_and_a_job_reading_the_stream() {
    let (master, _procs) = start("publish-e2e").await;
    let port = free_port();
    let _gw = gateway(&master.base, port, OPERATOR_ARGS);
    let via = at(port);

    // A job reads the stream's server errors.
    let job = reading_job(&via, "shop-errors", "shop/requests", "SELECT * WHERE status >= 500", "status").await;
    // Its source query only filters.
    let bad = json!({"name": "bad", "source": {"kind": "app", "stream": "shop/requests", "query": "SELECT count(*) AS n"},
        "stages": [{"name": "keep", "artifact": "filter@0.1.0", "params": {"field": "status", "op": "exists"}}]});
    let (status, body) = via.call(reqwest::Method::POST, "/api/v1/clusters", bad.to_string().into_bytes()).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid_spec")), "{body}");

    let (status, body) =
        via.call(reqwest::Method::GET, "/api/v1/streams/shop/requests/sink?query=SELECT", vec![]).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid_query")), "{body}");
    let refused =
        via.http.get(format!("{}/api/v1/streams/shop/requests/sink", via.base)).bearer_auth("wrong").send().await;
    assert_eq!(refused.unwrap().status(), 401);
    // A publisher with a wrong token fails at once, saying why, rather than publishing into
    // nothing.
    let base = via.base.clone();
    let wrong = tokio::task::spawn_blocking(move || {
        crate::squilla()
            .args(["publish", "shop/requests", "--gateway", &base, "--token", "wrong-token-0123456789"])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(!wrong.status.success() && stderr.contains("401"), "{stderr}");

    let cart = "SELECT * WHERE path = '/cart'";
    let slow = "SELECT id, ms WHERE ms > 90 AND user.id < 9";
    let mut by_path = Sub::open(&via, &format!("/api/v1/streams/shop/requests/sink?query={}", encode(cart))).await;
    let mut by_time = Sub::open(&via, &format!("/api/v1/streams/shop/requests/sink?query={}", encode(slow))).await;
    let mut of_job = Sub::open(&via, &format!("/api/v1/jobs/{job}/sink")).await;

    // Three publisher processes, connected before they have anything to say.
    let mut publishers: Vec<std::process::Child> = (0..3)
        .map(|_| {
            crate::squilla()
                .args(["publish", "shop/requests", "--gateway", &via.base, "--token", TOKEN])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("squilla publish starts")
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = stream_status(&via).await;
        if s["publishers"] == 3 && s["subscribers"] == 2 && s["consumers"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "publishers, subscribers and the reading job at the gateway: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The publishers learn of the job's filter within a control message; give it one tick.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (p, child) in publishers.iter_mut().enumerate() {
        let mut stdin = child.stdin.take().unwrap();
        let mut lines: String = (0..PER_PUBLISHER).map(|n| event(p as i64, n).to_string() + "\n").collect();
        if p == 0 {
            // A line that is not an event is skipped and counted; the rest go on.
            let middle = lines[lines.len() / 2..].find('\n').unwrap() + lines.len() / 2 + 1;
            lines.insert_str(middle, "not an event\n");
        }
        stdin.write_all(lines.as_bytes()).unwrap();
    }

    let want_path = expected(|e| e["path"] == "/cart");
    let want_time = expected(|e| e["ms"].as_f64().unwrap() > 90.0 && e["user"]["id"].as_i64().unwrap() < 9);
    let want_job = expected(|e| e["status"].as_i64().unwrap() >= 500);
    let (got, _) = by_path.read(Duration::from_secs(30), |e| e.len() >= want_path.len()).await;
    assert_eq!((ids(&got), got.len()), (want_path.clone(), want_path.len()), "the /cart subscriber");
    assert!(got.iter().all(|e| e["user"]["id"].is_i64()), "whole events, nested again: {}", got[0]);
    let (got, _) = by_time.read(Duration::from_secs(30), |e| e.len() >= want_time.len()).await;
    assert_eq!((ids(&got), got.len()), (want_time.clone(), want_time.len()), "the slow-requests subscriber");
    assert!(
        got.iter().all(|e| e.as_object().unwrap().keys().all(|k| ["id", "ms", "timestamp-ms"].contains(&k.as_str()))),
        "its projection: {}",
        got[0]
    );
    let (got, _) = of_job.read(Duration::from_secs(30), |e| e.len() >= want_job.len()).await;
    assert_eq!((ids(&got), got.len()), (want_job.clone(), want_job.len()), "the job reading the stream");

    // Each publisher sent only the events some query wanted, and lost none.
    let wanted_by_any = |p: i64| {
        (0..PER_PUBLISHER)
            .map(|n| event(p, n))
            .filter(|e| {
                e["path"] == "/cart"
                    || (e["ms"].as_f64().unwrap() > 90.0 && e["user"]["id"].as_i64().unwrap() < 9)
                    || e["status"].as_i64().unwrap() >= 500
            })
            .count() as u64
    };
    for (p, child) in publishers.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stats: Value = serde_json::from_str(stderr.lines().last().unwrap_or("")).unwrap_or_default();
        let want = wanted_by_any(p as i64);
        assert!(want < PER_PUBLISHER as u64 / 2, "the queries select a minority: {want}");
        assert_eq!(
            (stats["matched"].as_u64(), stats["sent"].as_u64(), stats["dropped"].as_u64()),
            (Some(want), Some(want), Some(0)),
            "{stderr}"
        );
        assert_eq!(stats["invalid-lines"], u64::from(p == 0), "{stderr}");
    }
    let s = stream_status(&via).await;
    assert_eq!(s["publisher-dropped"], 0, "{s}");
    assert_eq!(s["consumer-dropped"], 0, "{s}");
}

/// Reads `sub` until it has as many events as `want` holds and then 1 s more: exactly `want`,
/// each once.
async fn exactly(sub: &mut Sub, want: &BTreeSet<i64>, what: &str) {
    let (got, _) = sub.read(Duration::from_secs(30), |e| e.len() >= want.len()).await;
    assert_eq!((ids(&got), got.len()), (want.clone(), want.len()), "{what}");
    let (more, _) = sub.read(Duration::from_secs(1), |e| !e.is_empty()).await;
    assert!(more.is_empty(), "{what}: {} more, such as {}", more.len(), more[0]);
}

/// `squilla publish` processes, each connected to every gateway in `gateways`.
fn publishers(n: usize, gateways: &str) -> Vec<std::process::Child> {
    (0..n)
        .map(|_| {
            crate::squilla()
                .args(["publish", "shop/requests", "--gateway", gateways, "--token", TOKEN])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("squilla publish starts")
        })
        .collect()
}

/// Writes events `range` of each publisher to its standard input.
fn write_events(publishers: &mut [std::process::Child], range: std::ops::Range<i64>) {
    for (p, child) in publishers.iter_mut().enumerate() {
        let lines: String = range.clone().map(|n| event(p as i64, n).to_string() + "\n").collect();
        child.stdin.as_mut().unwrap().write_all(lines.as_bytes()).unwrap();
    }
}

/// Two gateways, and two publishers connected to both: a subscriber at either gateway gets
/// its query's events from every publisher, and the job reading the stream gets each of its
/// events once, not once per gateway. With one gateway gone, the other feeds the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishers_of_two_gateways_serve_both_and_the_reading_job_once() {
    let (master, _procs) = start("publish-gateways").await;
    let (port1, port2) = (free_port(), free_port());
    let gw1 = gateway(&master.base, port1, OPERATOR_ARGS);
    let _gw2 = gateway(&master.base, port2, OPERATOR_ARGS);
    let one = at(port1);
    let two = at(port2);
    let job = reading_job(&master, "shop-errors", "shop/requests", "SELECT * WHERE status >= 500", "status").await;
    let mut at_one = Sub::open(
        &one,
        &format!("/api/v1/streams/shop/requests/sink?query={}", encode("SELECT * WHERE path = '/cart'")),
    )
    .await;
    let mut at_two =
        Sub::open(&two, &format!("/api/v1/streams/shop/requests/sink?query={}", encode("SELECT * WHERE user.id = 3")))
            .await;
    let mut of_job = Sub::open(&master, &format!("/api/v1/jobs/{job}/sink")).await;

    let mut children = publishers(2, &format!("{},{}", one.base, two.base));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (s1, s2) = (stream_status(&one).await, stream_status(&two).await);
        let ready = |s: &Value| s["publishers"] == 2 && s["subscribers"] == 1 && s["consumers"] == 1;
        if ready(&s1) && ready(&s2) {
            break;
        }
        assert!(Instant::now() < deadline, "publishers, subscribers and the job at both gateways: {s1} {s2}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let of = |range: std::ops::Range<i64>, keep: &dyn Fn(&Value) -> bool| -> BTreeSet<i64> {
        (0..2)
            .flat_map(|p| range.clone().map(move |n| event(p, n)))
            .filter(|e| keep(e))
            .map(|e| e["id"].as_i64().unwrap())
            .collect()
    };
    let cart = |e: &Value| e["path"] == "/cart";
    let user3 = |e: &Value| e["user"]["id"] == 3;
    let errors = |e: &Value| e["status"].as_i64().unwrap() >= 500;
    write_events(&mut children, 0..1000);
    exactly(&mut at_one, &of(0..1000, &cart), "the subscriber at the first gateway").await;
    exactly(&mut at_two, &of(0..1000, &user3), "the subscriber at the second gateway").await;
    exactly(&mut of_job, &of(0..1000, &errors), "the job reading the stream").await;

    // The first gateway goes: the second feeds the job, and its subscriber carries on.
    drop(gw1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    write_events(&mut children, 1000..2000);
    exactly(&mut at_two, &of(1000..2000, &user3), "the subscriber at the second gateway, alone").await;
    exactly(&mut of_job, &of(1000..2000, &errors), "the job, fed by the second gateway").await;

    for child in children {
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        let stats: Value = serde_json::from_str(stderr.lines().last().unwrap_or("")).unwrap_or_default();
        assert_eq!(stats["dropped"], 0, "{stderr}");
        assert_eq!(stats["sent"], stats["matched"], "{stderr}");
        assert_eq!(stats["gateways-connected"], 1, "{stderr}");
    }
    let s = stream_status(&two).await;
    assert_eq!((s["publisher-dropped"].as_u64(), s["consumer-dropped"].as_u64()), (Some(0), Some(0)), "{s}");
}

/// A TCP proxy to `to` whose traffic can be cut (connections stay open, nothing passes) and
/// healed (the cut connections are closed; new ones pass).
struct Proxy {
    port: u16,
    cut: Arc<AtomicBool>,
    generation: Arc<std::sync::atomic::AtomicU64>,
}

/// Copies `r` to `w` while the network is not cut, until either closes or the proxy heals.
async fn pass(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    cut: Arc<AtomicBool>,
    generation: Arc<std::sync::atomic::AtomicU64>,
    born: u64,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 << 10];
    loop {
        if generation.load(Ordering::Relaxed) != born {
            return;
        }
        if cut.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        match tokio::time::timeout(Duration::from_millis(50), r.read(&mut buf)).await {
            Err(_) => continue,
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => {
                if w.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

impl Proxy {
    async fn start(to: u16) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let generation = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (c, g) = (cut.clone(), generation.clone());
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let (cut, generation) = (c.clone(), g.clone());
                tokio::spawn(async move {
                    let born = generation.load(Ordering::Relaxed);
                    let Ok(outbound) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await else { return };
                    let (ri, wi) = inbound.into_split();
                    let (ro, wo) = outbound.into_split();
                    tokio::join!(
                        pass(ri, wo, cut.clone(), generation.clone(), born),
                        pass(ro, wi, cut, generation, born)
                    );
                });
            }
        });
        Proxy { port, cut, generation }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::Relaxed);
    }

    fn heal(&self) {
        self.generation.fetch_add(1, Ordering::Relaxed);
        self.cut.store(false, Ordering::Relaxed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_cut_never_blocks_the_publisher_and_its_drops_are_counted() {
    let (master, _procs) = start("publish-cut").await;
    let port = free_port();
    let _gw = gateway(&master.base, port, OPERATOR_ARGS);
    let via = at(port);
    let proxy = Proxy::start(port).await;

    let mut config =
        squilla_publish::Config::new(format!("http://127.0.0.1:{}", proxy.port), "shop/requests").token(TOKEN);
    config.buffer_events = 500;
    config.request_timeout = Duration::from_secs(1);
    let publisher = Arc::new(squilla_publish::Publisher::start(config).unwrap());
    // Nobody subscribes: nothing is wanted, nothing is sent.
    assert!(publisher.wait_connected(Duration::from_secs(20)), "{:?}", publisher.stats());
    let path = ValueRef::Text("/cart");
    for n in 0..10_000 {
        publisher.publish(&[("id", ValueRef::Int(n)), ("path", path)]);
    }
    assert!(!publisher.wanted());
    let idle = publisher.stats();
    assert_eq!((idle.matched, idle.requests, idle.bytes_sent), (0, 0, 0), "{idle:?}");

    let mut sub = Sub::open(&via, "/api/v1/streams/shop/requests/sink").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !publisher.wanted() {
        assert!(Instant::now() < deadline, "the publisher never learned of the subscription");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    publisher.publish(&[("id", ValueRef::Int(1)), ("path", path)]);
    let (got, _) = sub.read(Duration::from_secs(10), |e| !e.is_empty()).await;
    assert_eq!(ids(&got), BTreeSet::from([1]));

    // The network is cut: publishing goes on at full speed, the buffer stays bounded, and
    // what cannot be sent is counted.
    proxy.cut();
    let p = publisher.clone();
    let slowest = tokio::task::spawn_blocking(move || {
        let mut slowest = Duration::ZERO;
        let until = Instant::now() + Duration::from_secs(3);
        let mut n = 100;
        while Instant::now() < until {
            let started = Instant::now();
            p.publish(&[("id", ValueRef::Int(n)), ("path", ValueRef::Text("/cart"))]);
            slowest = slowest.max(started.elapsed());
            n += 1;
            if n % 1000 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        slowest
    })
    .await
    .unwrap();
    assert!(slowest < Duration::from_millis(200), "one publish call took {slowest:?} while the network was cut");
    let during = publisher.stats();
    assert!(during.dropped > 0, "{during:?}");

    // Healed: the publisher connects again, and the gateway learns what it dropped.
    proxy.heal();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        publisher.publish(&[("id", ValueRef::Int(2)), ("path", path)]);
        let s = stream_status(&via).await;
        if s["publisher-dropped"].as_u64().unwrap_or(0) > 0 {
            assert!(s["publisher-dropped"].as_u64().unwrap() <= publisher.stats().dropped, "{s}");
            break;
        }
        assert!(Instant::now() < deadline, "the gateway never heard of the drops: {s} {:?}", publisher.stats());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(sub);

    // The drops are in the gateway's metrics, for the operator only; tenants' streams are
    // not in the status anyone sees.
    let metrics = |token: &'static str| via.http.get(format!("{}/gateway/metrics", via.base)).bearer_auth(token).send();
    assert_eq!(metrics(TOKEN).await.unwrap().status(), 401, "a tenant's token does not open the metrics");
    let (_, public) = via.call(reqwest::Method::GET, "/gateway/status", vec![]).await;
    assert!(public.get("streams").is_none(), "{public}");
    let text = metrics(OPERATOR).await.unwrap().text().await.unwrap();
    let series = r#"squilla_gateway_stream_publisher_dropped_total{tenant="acme",stream="shop/requests"} "#;
    let dropped: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series}in {text}"));
    assert!(dropped > 0, "{text}");
}

/// A client in another language, run as `program args… <gateways> <token>` against two gateway
/// processes (`<gateways>`: both, comma-separated), publishes 200 events
/// `{"n": n, "user": {"name": "u<n>"}}` to `<app>/requests`, and three that are not JSON objects,
/// once it knows of both subscriptions and the reading job (3 subscriptions), and prints its
/// counts as JSON. Each subscriber's query selects from what its gateway got, and the job gets
/// its events once; counts are of copies, one per gateway.
async fn client_publishes(app: &str, program: &str, args: &[&str], env: (&str, &str)) {
    let (master, _procs) = start(&format!("publish-{app}")).await;
    let (port1, port2) = (free_port(), free_port());
    let _gw1 = gateway(&master.base, port1, OPERATOR_ARGS);
    let _gw2 = gateway(&master.base, port2, OPERATOR_ARGS);
    let one = at(port1);
    let two = at(port2);
    let (name, stream) = (format!("{app}-tens"), format!("{app}/requests"));
    let job = reading_job(&master, &name, &stream, "SELECT * WHERE n % 10 = 0", "n").await;
    let sink = |query: &str| format!("/api/v1/streams/{app}/requests/sink?query={}", encode(query));
    let mut fours = Sub::open(&one, &sink("SELECT * WHERE n % 4 = 0")).await;
    let mut fives = Sub::open(&two, &sink("SELECT * WHERE n % 5 = 0")).await;
    let mut tens = Sub::open(&master, &format!("/api/v1/jobs/{job}/sink")).await;
    let mut command = std::process::Command::new(program);
    command.args(args).args([&format!("{},{}", one.base, two.base), TOKEN]).env(env.0, env.1);
    let out = tokio::task::spawn_blocking(move || command.output().expect("the client's runtime runs")).await.unwrap();
    assert!(out.status.success(), "{program}: {}", String::from_utf8_lossy(&out.stderr));
    let stats: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((stats["sent"].as_u64(), stats["dropped"].as_u64()), (Some(400), Some(6)), "{stats}");
    let every = |k: i64| -> BTreeSet<i64> { (0..200).filter(|n| n % k == 0).collect() };
    let n_of = |got: &[Value]| -> BTreeSet<i64> { got.iter().map(|e| e["n"].as_i64().unwrap()).collect() };
    for (sub, k) in [(&mut fours, 4), (&mut fives, 5), (&mut tens, 10)] {
        let want = every(k);
        let (got, _) = sub.read(Duration::from_secs(20), |e| e.len() >= want.len()).await;
        assert_eq!((n_of(&got), got.len()), (want.clone(), want.len()), "n % {k} = 0");
        assert_eq!(got[1]["user"]["name"], format!("u{k}"), "nested fields arrive nested");
        let (more, _) = sub.read(Duration::from_secs(1), |e| !e.is_empty()).await;
        assert!(more.is_empty(), "n % {k} = 0: {} more, such as {}", more.len(), more[0]);
    }
}

/// The Python client (`clients/python`), run by `python3`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_publishes_through_two_gateways() {
    let script = r#"
import sys, json, time
from squilla_publish import Publisher
bad = Publisher(sys.argv[1], "py/requests", token="wrong-token-0123456789")
assert not bad.wait_connected(1)
assert "401" in (bad.last_error or ""), bad.last_error
bad.close()
p = Publisher(sys.argv[1], "py/requests", token=sys.argv[2])
assert p.wait_connected(20), "not connected"
assert p.last_error is None, p.last_error
until = time.monotonic() + 20
while p.subscriptions < 3 and time.monotonic() < until:
    time.sleep(0.05)
assert p.subscriptions == 3, p.subscriptions
for n in range(200):
    p.publish({"n": n, "user": {"name": "u%d" % n}})
    if n == 100:
        p.publish({"n": {1, 2}})
        p.publish([n])
        p.publish({"n": float("nan")})
assert p.flush(20)
print(json.dumps({"sent": p.sent, "dropped": p.dropped}))
"#;
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/python");
    client_publishes("py", "python3", &["-c", script], ("PYTHONPATH", path)).await;
}

/// The JavaScript client (`clients/js`), run by `node` as an ES module.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_javascript_client_publishes_through_two_gateways() {
    let script = r#"
import assert from "node:assert";
import { setTimeout as sleep } from "node:timers/promises";
const { Publisher } = await import(process.env.SQUILLA_PUBLISH_JS);
const [gateway, token] = process.argv.slice(-2);
const bad = new Publisher({ gateway, stream: "js/requests", token: "wrong-token-0123456789" });
assert.equal(await bad.waitConnected(1000), false);
assert.match(String(bad.stats().lastError), /401/);
await bad.close();
const p = new Publisher({ gateway, stream: "js/requests", token });
assert(await p.waitConnected(20_000), "not connected");
assert.equal(p.stats().lastError, null);
const until = Date.now() + 20_000;
while (p.stats().subscriptions < 3 && Date.now() < until) await sleep(50);
assert.equal(p.stats().subscriptions, 3);
for (let n = 0; n < 200; n++) {
  p.publish({ n, user: { name: `u${n}` } });
  if (n === 100) p.publish({ n: 10n }), p.publish("n"), p.publish(new Date());
}
assert(await p.flush(20_000));
const { sent, dropped } = p.stats();
await p.close();
console.log(JSON.stringify({ sent, dropped }));
"#;
    let module = concat!("file://", env!("CARGO_MANIFEST_DIR"), "/clients/js/index.js");
    client_publishes("js", "node", &["--input-type=module", "-e", script, "--"], ("SQUILLA_PUBLISH_JS", module)).await;
}

/// A publisher whose gateway accepts connections and never answers: dropping it returns at
/// once, without waiting for the connection attempt to time out.
#[test]
fn dropping_a_publisher_never_waits_on_the_network() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let publisher = squilla_publish::Publisher::start(squilla_publish::Config::new(url, "shop/requests")).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(!publisher.stats().connected);
    let started = Instant::now();
    drop(publisher);
    assert!(started.elapsed() < Duration::from_secs(2), "dropping took {:?}", started.elapsed());
}

/// Tenant `beta`'s token, for the limits below.
const BETA: &str = "beta-token-0123456789";

/// A gateway and a master (which serves streams itself over plain HTTP), each started with
/// `--tenant-publishers 2 --tenant-publish-rate 100`: a tenant's third control connection and
/// the request that goes past its rate are refused with their codes while another tenant
/// publishes freely, and a closed control connection gives its place back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_at_its_publish_limits_is_refused_and_another_is_not() {
    let dir = crate::temp_dir("publish-limits");
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, format!("acme {TOKEN}\nbeta {BETA}\n")).unwrap();
    let limits = ["--tenant-publishers", "2", "--tenant-publish-rate", "100"];
    let master_port = free_port();
    let _master = crate::master_with(master_port, &dir.join("data"), &tokens, &limits);
    let master = format!("http://127.0.0.1:{master_port}");
    let port = free_port();
    let _gw = gateway(&master, port, &limits);
    for server in [format!("http://127.0.0.1:{port}"), master.clone()] {
        publish_limits_hold(&format!("{server}/api/v1/streams/shop/requests")).await;
    }
    // A master serving streams itself shows their metrics to its operator (the agent token).
    let http = reqwest::Client::new();
    let scrape = |token: &'static str| http.get(format!("{master}/gateway/metrics")).bearer_auth(token).send();
    assert_eq!(scrape(TOKEN).await.unwrap().status(), 401);
    let text = scrape(crate::AGENT_TOKEN).await.unwrap().text().await.unwrap();
    for tenant in ["acme", "beta"] {
        let series = format!(r#"squilla_gateway_stream_events_total{{tenant="{tenant}",stream="shop/requests"}} 150"#);
        assert!(text.lines().any(|l| l == series), "{series} in {text}");
    }
}

async fn publish_limits_hold(stream: &str) {
    let http = reqwest::Client::new();
    let control = |token: &'static str| http.get(format!("{stream}/subscriptions")).bearer_auth(token).send();
    let events = |token: &'static str, n: usize| {
        let body: String = (0..n).map(|i| format!("{{\"n\": {i}}}\n")).collect();
        http.post(format!("{stream}/events")).bearer_auth(token).body(body).send()
    };
    let refused = |response: reqwest::Response, code: &'static str| async move {
        assert_eq!(response.status(), 429, "{stream}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], code, "{body}");
    };

    let first = control(TOKEN).await.unwrap();
    let second = control(TOKEN).await.unwrap();
    assert_eq!((first.status().as_u16(), second.status().as_u16()), (200, 200), "{stream}");
    refused(control(TOKEN).await.unwrap(), "too_many_publishers").await;
    let other = control(BETA).await.unwrap();
    assert_eq!(other.status(), 200, "another tenant's publisher has its own places");

    // 100 events/s, bursts of 200: 150 pass, the next 100 are refused whole.
    let taken = events(TOKEN, 150).await.unwrap();
    assert_eq!(taken.status(), 200, "{stream}");
    assert_eq!(taken.json::<Value>().await.unwrap()["events"], 150);
    refused(events(TOKEN, 100).await.unwrap(), "rate_limited").await;
    assert_eq!(events(BETA, 150).await.unwrap().status(), 200, "another tenant's rate is its own");

    // A closed control connection gives its place back.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(20);
    let again = loop {
        let response = control(TOKEN).await.unwrap();
        if response.status() == 200 {
            break response;
        }
        assert!(Instant::now() < deadline, "the closed connection's place was never given back: {stream}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    drop((second, again, other));
}
