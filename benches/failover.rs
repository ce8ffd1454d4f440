//! Failover of the master fleet: a three-member etcd cluster and three `squilla master`
//! processes on loopback; the leader is SIGKILLed ten times (and started again as a
//! standby), and each time a client that knows every master writes every 20 ms. Reported:
//! the time from the kill to the first acknowledged write (median, max), and the leases used.
//! `cargo bench --workspace --bench failover` (`FAILOVER_LEASE_SECS=N`, default 3: the
//! masters' default lease).

#[path = "../tests/support/cluster.rs"]
mod cluster;
#[path = "../tests/support/etcd.rs"]
mod etcd;

use std::time::{Duration, Instant};

use cluster::{Proc, TOKEN, free_port, master_args, temp_dir};
use squilla_net::masters::Masters;

fn start_master(i: usize, port: u16, dir: &std::path::Path, store: &str, lease: &str) -> Proc {
    let args = master_args(port, &dir.join(format!("m{i}")), &dir.join("tokens"), 1000, 5000);
    let fleet = ["--store", store, "--leader-lease-secs", lease];
    let args: Vec<&str> = args.iter().map(String::as_str).chain(fleet).collect();
    let m = Proc::spawn(&format!("master{i}"), &args);
    m.wait_for("API at", Duration::from_secs(20));
    m
}

async fn leader(http: &reqwest::Client, urls: &[String]) -> usize {
    loop {
        for (i, url) in urls.iter().enumerate() {
            let Ok(answer) = http.get(format!("{url}/healthz")).send().await else { continue };
            if answer.json::<serde_json::Value>().await.is_ok_and(|h| h["status"] == "ok") {
                return i;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // SAFETY: set before any thread reads the environment.
    unsafe { std::env::set_var("TEST_SQUILLA_LOG", "warn") };
    let lease = std::env::var("FAILOVER_LEASE_SECS").unwrap_or_else(|_| "3".into());
    let etcd = etcd::EtcdCluster::start(3, "failover");
    let dir = temp_dir("failover");
    std::fs::write(dir.join("tokens"), format!("acme {TOKEN}\n")).unwrap();
    let store = etcd.url("failover");
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let urls: Vec<String> = ports.iter().map(|p| format!("http://127.0.0.1:{p}")).collect();
    let mut masters: Vec<Proc> =
        ports.iter().enumerate().map(|(i, p)| start_master(i, *p, &dir, &store, &lease)).collect();
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let fleet = Masters::new(&urls.join(","));
    let spec = serde_json::json!({
        "name": "probe", "source": {"kind": "ingest"},
        "stages": [{"name": "s", "artifact": "filter@0", "workers": 1}]
    })
    .to_string();
    let upload = fleet
        .send(|b| {
            http.post(format!("{b}/api/v1/artifacts?name=filter&version=0"))
                .bearer_auth(TOKEN)
                .body(squilla_guests::read("filter"))
        })
        .await
        .unwrap();
    assert!(upload.status().is_success());
    let mut times = Vec::new();
    for round in 0..10 {
        let l = leader(&http, &urls).await;
        masters[l].kill();
        let killed = Instant::now();
        loop {
            let write = fleet
                .send(|b| {
                    http.post(format!("{b}/api/v1/clusters"))
                        .bearer_auth(TOKEN)
                        .timeout(Duration::from_secs(5))
                        .body(spec.clone())
                })
                .await;
            if write.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            assert!(killed.elapsed() < Duration::from_secs(60), "no failover within a minute");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let took = killed.elapsed();
        println!("kill {}: first acknowledged write after {:.2} s", round + 1, took.as_secs_f64());
        times.push(took);
        masters[l] = start_master(l, ports[l], &dir, &store, &lease);
        // The restarted master stands by before the next kill.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    times.sort();
    let median = (times[4] + times[5]) / 2;
    let max = times[9];
    println!(
        "failover over 10 kills, lease {lease} s: median {:.2} s, max {:.2} s",
        median.as_secs_f64(),
        max.as_secs_f64()
    );
    println!(
        "{}",
        serde_json::json!({"failover": {"lease_secs": lease, "median_s": median.as_secs_f64(), "max_s": max.as_secs_f64()}})
    );
    let _ = std::fs::remove_dir_all(&dir);
}
