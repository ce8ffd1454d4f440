//! Partitions, on hosts in network namespaces this test makes (see tests/support/netns.rs):
//! three etcd members, two masters, an agent, and a client host with a gateway, each its own
//! host on one bridge. A client writes to both masters directly all along.
//!
//! - The leader is cut off from etcd: it steps down within its 2 s lease and refuses writes;
//!   the other master takes over. A checker over the write log proves that no two masters
//!   ever accepted writes at the same moment.
//! - The agent is cut off from both masters (for less than its lease): its worker keeps
//!   producing output, read through the gateway, and the agent rejoins afterwards with the
//!   same worker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::etcd::EtcdCluster;
use crate::netns::Net;
use crate::streams::Sub;
use crate::{AGENT_TOKEN, Api, Proc, TOKEN, temp_dir};

const ETCD: [&str; 3] = ["10.231.0.10", "10.231.0.11", "10.231.0.12"];
const MASTERS: [&str; 2] = ["http://10.231.0.20:7070", "http://10.231.0.21:7070"];

/// One write: the master it went to, when it was sent and answered, and whether it was
/// acknowledged.
#[derive(Debug, Clone, Copy)]
struct Write {
    master: usize,
    sent: Instant,
    done: Instant,
    acked: bool,
}

#[test]
fn partitions_never_give_two_masters_writes_nor_stop_a_cut_off_agents_workers() {
    let mut net = Net::new("p");
    for (name, n) in [("c", 2), ("e0", 10), ("e1", 11), ("e2", 12), ("m0", 20), ("m1", 21), ("a0", 30)] {
        net.host(name, n);
    }
    // The test's own client runs on host `c`, on a thread moved into its namespace.
    let net = Arc::new(net);
    let on_c = net.clone();
    std::thread::spawn(move || {
        on_c.enter("c");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(scenario(&on_c));
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
}

async fn healthz(http: &reqwest::Client, base: &str) -> Value {
    match http.get(format!("{base}/healthz")).timeout(Duration::from_secs(1)).send().await {
        Ok(answer) => answer.json().await.unwrap_or(Value::Null),
        Err(_) => Value::Null,
    }
}

async fn wait_until(what: &str, timeout: Duration, mut ok: impl AsyncFnMut() -> bool) -> Instant {
    let deadline = Instant::now() + timeout;
    loop {
        if ok().await {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn scenario(net: &Net) {
    let etcd_hosts: Vec<(String, &str)> = ["e0", "e1", "e2"].iter().zip(ETCD).map(|(h, ip)| (net.ns(h), ip)).collect();
    let hosts: Vec<(&str, &str)> = etcd_hosts.iter().map(|(ns, ip)| (ns.as_str(), *ip)).collect();
    let etcd = EtcdCluster::start_in(&hosts, "partition");
    let dir = temp_dir("partition");
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, format!("acme {TOKEN}\n")).unwrap();
    let store = etcd.url("partition");
    let masters: Vec<Proc> = (0..2)
        .map(|i| {
            let listen = MASTERS[i].trim_start_matches("http://");
            let data = dir.join(format!("m{i}")).display().to_string();
            let tokens = tokens.display().to_string();
            let args = [
                "master",
                "--listen",
                listen,
                "--data-dir",
                &data,
                "--tokens",
                &tokens,
                "--agent-token",
                AGENT_TOKEN,
                "--heartbeat-ms",
                "200",
                "--agent-timeout-ms",
                "10000",
                "--store",
                &store,
                "--leader-lease-secs",
                "2",
                "--tenant-rps",
                "100000",
            ];
            let m = Proc::spawn_in(Some(&net.ns(&format!("m{i}"))), &format!("m{i}"), &args);
            m.wait_for("API at", Duration::from_secs(20));
            m
        })
        .collect();
    let list = MASTERS.join(",");
    let agent_args = ["agent", "--master", &list, "--agent-token", AGENT_TOKEN, "--id", "a0", "--threads", "1"];
    let agent_args: Vec<&str> =
        agent_args.into_iter().chain(["--http", "10.231.0.30:7081", "--data", "10.231.0.30:7082"]).collect();
    let agent = Proc::spawn_in(Some(&net.ns("a0")), "a0", &agent_args);
    agent.wait_for("sinks at", Duration::from_secs(20));
    let gateway =
        Proc::spawn_in(Some(&net.ns("c")), "gateway", &["gateway", "--master", &list, "--listen", "10.231.0.2:7080"]);
    gateway.wait_for("squilla gateway: serving", Duration::from_secs(20));

    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let fleet = squilla_net::masters::Masters::new(&list);
    let call = async |method: reqwest::Method, path: &str, body: Vec<u8>| -> Value {
        let answer = fleet
            .send(|base| http.request(method.clone(), format!("{base}{path}")).bearer_auth(TOKEN).body(body.clone()))
            .await
            .unwrap();
        assert!(answer.status().is_success(), "{path}: {}", answer.status());
        answer.json().await.unwrap_or(Value::Null)
    };
    call(reqwest::Method::POST, "/api/v1/artifacts?name=filter&version=0", squilla_guests::read("filter")).await;
    let spec = |name: &str, source: Value| {
        json!({"name": name, "source": source,
               "stages": [{"name": "keep", "artifact": "filter@0", "workers": 1, "params": {"field": "status", "op": "exists"}}]})
        .to_string()
        .into_bytes()
    };
    let synthetic = json!({"kind": "synthetic", "generator": "device-logs", "events-per-second": 200});
    call(reqwest::Method::POST, "/api/v1/clusters", spec("steady", synthetic)).await;
    let steady =
        call(reqwest::Method::POST, "/api/v1/clusters/steady/jobs", vec![]).await["id"].as_str().unwrap().to_owned();
    let job_path = format!("/api/v1/jobs/{steady}");
    let mut job = Value::Null;
    wait_until("the job runs", Duration::from_secs(30), async || {
        job = call(reqwest::Method::GET, &job_path, vec![]).await;
        job["state"] == "running"
    })
    .await;
    let worker = |job: &Value| {
        let w = &job["stages"][0]["workers"][0];
        (w["number"].clone(), w["agent"].clone(), w["running_since_ms"].clone())
    };
    let before = worker(&job);

    // Its output, read through the gateway (which holds the stream from the agent).
    let via = Api { base: "http://10.231.0.2:7080".into(), http: reqwest::Client::new() };
    let sink = Sub::open(&via, &format!("/api/v1/jobs/{steady}/sink")).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (arrivals, reader) = sink.arrivals(stop.clone());

    // The writer: a new version of cluster `p`, at each master in turn, directly.
    let writes: Arc<Mutex<Vec<Write>>> = Arc::default();
    let writer = {
        let (writes, stop, http) = (writes.clone(), stop.clone(), http.clone());
        let body = spec("p", json!({"kind": "ingest"}));
        tokio::spawn(async move {
            for _ in 0..100_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                for (master, base) in MASTERS.iter().enumerate() {
                    let sent = Instant::now();
                    let answer = http
                        .post(format!("{base}/api/v1/clusters"))
                        .bearer_auth(TOKEN)
                        .timeout(Duration::from_secs(8))
                        .body(body.clone())
                        .send()
                        .await;
                    let acked = answer.is_ok_and(|a| a.status() == 201);
                    writes.lock().unwrap().push(Write { master, sent, done: Instant::now(), acked });
                }
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        })
    };

    // 1. The leader loses etcd.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut leader = 0;
    wait_until("a leader", Duration::from_secs(10), async || {
        for (i, base) in MASTERS.iter().enumerate() {
            if healthz(&http, base).await["status"] == "ok" {
                leader = i;
                return true;
            }
        }
        false
    })
    .await;
    let other = 1 - leader;
    net.cut(&format!("m{leader}"), &ETCD);
    let cut = Instant::now();
    let down = wait_until("the cut-off leader steps down", Duration::from_secs(5), async || {
        healthz(&http, MASTERS[leader]).await["status"] == "standby"
    })
    .await;
    eprintln!("the cut-off leader stood down {:?} after the cut", down - cut);
    assert!(
        down - cut <= Duration::from_millis(2100),
        "stepped down {:?} after the cut, past its 2 s lease",
        down - cut
    );
    let took_over = wait_until("the other master leads", Duration::from_secs(10), async || {
        healthz(&http, MASTERS[other]).await["status"] == "ok"
    })
    .await;
    eprintln!("the other master led {:?} after the cut", took_over - cut);
    tokio::time::sleep(Duration::from_secs(2)).await;
    net.heal(&format!("m{leader}"));
    wait_until("the old leader rejoins as a standby", Duration::from_secs(15), async || {
        let health = healthz(&http, MASTERS[leader]).await;
        health["status"] == "standby" && health["leader"] == MASTERS[other]
    })
    .await;

    // 2. The agent loses both masters, for 4 s: less than its lease (0.9 × 10 s).
    let events_out = |job: &Value| job["stages"][0]["workers"][0]["events_out"].as_u64().unwrap_or(0);
    let reported = events_out(&call(reqwest::Method::GET, &job_path, vec![]).await);
    net.cut("a0", &["10.231.0.20", "10.231.0.21"]);
    let agent_cut = Instant::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    net.heal("a0");
    let agent_healed = Instant::now();
    wait_until("the agent reports again", Duration::from_secs(15), async || {
        events_out(&call(reqwest::Method::GET, &job_path, vec![]).await) > reported + 800
    })
    .await;
    let after = call(reqwest::Method::GET, &job_path, vec![]).await;
    assert_eq!(after["state"], "running");
    assert_eq!(worker(&after), before, "the same worker ran throughout: {after}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    reader.await.unwrap();

    // Its output never stopped while the agent was cut off.
    let arrivals = arrivals.lock().unwrap().clone();
    let within: Vec<Instant> = arrivals.iter().copied().filter(|t| *t >= agent_cut && *t <= agent_healed).collect();
    let gap = within.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(Duration::MAX);
    assert!(within.len() > 400, "output while the agent was cut off: {} events", within.len());
    assert!(gap < Duration::from_secs(1), "its output stopped for {gap:?} while the agent was cut off");

    // The checker: acknowledged writes of different masters never overlap in time; the
    // cut-off leader acknowledged nothing sent after it stood down; both led at some point.
    let writes = writes.lock().unwrap().clone();
    let acked: Vec<Write> = writes.iter().copied().filter(|w| w.acked).collect();
    for a in acked.iter().filter(|w| w.master == 0) {
        for b in acked.iter().filter(|w| w.master == 1) {
            assert!(a.done < b.sent || b.done < a.sent, "two masters accepted writes at once: {a:?} {b:?}");
        }
    }
    assert!(
        !acked.iter().any(|w| w.master == leader && w.sent > down && w.sent < agent_cut),
        "the deposed leader wrote"
    );
    assert!(acked.iter().any(|w| w.master == leader) && acked.iter().any(|w| w.master == other), "both led");
    eprintln!("writes: {} sent, {} acknowledged", writes.len(), acked.len());
    // Every acknowledged write is there.
    let latest = call(reqwest::Method::GET, "/api/v1/clusters/p", vec![]).await;
    let stored = latest["version"].as_u64().unwrap_or(0) as usize;
    assert!(stored >= acked.len(), "{stored} versions stored, {} acknowledged", acked.len());
    drop((masters, agent, gateway, etcd));
}
