//! Writes to the master's store: latency and writes per second of the embedded redb file
//! against etcd (one member, and three on loopback), through the same [`Store`] calls the
//! API makes. `cargo bench --workspace --bench store`; prints a table and a JSON line.
//!
//! - **job number**: `next_job_number`, a read and a one-key write (every submission);
//! - **job records**: `put_job_records` of one 2 KiB job (every change of a job);
//! - **upload**: `put_artifact` of a new 1 MiB component (bytes, then its record).
//!
//! Writes are sequential (the store serializes them); etcd runs with its defaults (fsync
//! per commit) on the same disk as redb.

#[path = "../../tests/support/etcd.rs"]
mod etcd_cluster;

use std::time::{Duration, Instant};

use squilla_store::etcd::election::Role;
use squilla_store::etcd::{Etcd, EtcdConfig};
use squilla_store::{ArtifactMeta, JobRecord, Store};
use squilla_types::ids::{Sha256, TenantId};

struct Figures {
    p50: Duration,
    p99: Duration,
    per_second: f64,
}

fn measure(n: usize, mut write: impl FnMut(usize)) -> Figures {
    let started = Instant::now();
    let mut times: Vec<Duration> = (0..n)
        .map(|i| {
            let t = Instant::now();
            write(i);
            t.elapsed()
        })
        .collect();
    let total = started.elapsed();
    times.sort();
    Figures { p50: times[n / 2], p99: times[n * 99 / 100], per_second: n as f64 / total.as_secs_f64() }
}

fn run(name: &str, store: &Store, rows: &mut Vec<serde_json::Value>) {
    let tenant: TenantId = "bench".parse().unwrap();
    let cluster = "c".parse().unwrap();
    let numbers = measure(500, |_| {
        store.next_job_number(&tenant, &cluster).unwrap();
    });
    let json = vec![b'x'; 2048];
    let records = measure(500, |i| {
        let key = format!("bench.c-{}", 1 + i % 50).parse().unwrap();
        store.put_job_records(&[JobRecord { key, json: json.clone() }]).unwrap();
    });
    let uploads = measure(20, |i| {
        let mut bytes = vec![0u8; 1 << 20];
        bytes[..8].copy_from_slice(&(i as u64).to_le_bytes());
        let meta = ArtifactMeta {
            sha256: Sha256::of(&bytes),
            size: bytes.len() as u64,
            flavour: "raw".into(),
            name: None,
            version: None,
            created_at_ms: 0,
        };
        store.put_artifact(&tenant, meta, &bytes, u64::MAX).unwrap();
    });
    for (what, f) in [("job number", numbers), ("job records", records), ("upload 1 MiB", uploads)] {
        println!(
            "| {name} | {what} | {:.2} ms | {:.2} ms | {:.0} |",
            f.p50.as_secs_f64() * 1e3,
            f.p99.as_secs_f64() * 1e3,
            f.per_second
        );
        rows.push(serde_json::json!({
            "store": name, "write": what, "p50_ms": f.p50.as_secs_f64() * 1e3,
            "p99_ms": f.p99.as_secs_f64() * 1e3, "per_second": f.per_second,
        }));
    }
}

fn etcd_store(cluster: &etcd_cluster::EtcdCluster) -> (Store, tokio::sync::watch::Receiver<Role>) {
    let etcd = Etcd::connect(&EtcdConfig::from_url(&cluster.url("bench")).unwrap()).unwrap();
    let role = etcd.campaign("http://bench".into(), Duration::from_secs(3)).role;
    let deadline = Instant::now() + Duration::from_secs(10);
    while *role.borrow() != Role::Leader {
        assert!(Instant::now() < deadline, "not elected");
        std::thread::sleep(Duration::from_millis(20));
    }
    (Store::new(etcd), role)
}

fn main() {
    println!("| store | write | p50 | p99 | writes/s |\n| --- | --- | --- | --- | --- |");
    let mut rows = Vec::new();
    let dir = std::env::temp_dir().join(format!("squilla-store-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    run("redb", &Store::open(&dir.join("bench.redb")).unwrap(), &mut rows);
    let _ = std::fs::remove_dir_all(&dir);
    for members in [1, 3] {
        let cluster = etcd_cluster::EtcdCluster::start(members, &format!("bench{members}"));
        let (store, _role) = etcd_store(&cluster);
        run(&format!("etcd × {members}"), &store, &mut rows);
    }
    println!("{}", serde_json::json!({ "store_writes": rows }));
}
