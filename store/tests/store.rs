//! One suite, two backends: every behaviour of [`Store`] the master depends on, checked on
//! the embedded redb file and on a real etcd cluster (started here from Debian's
//! `etcd-server`). Then what only etcd has: fenced writes and leader election.

#[path = "../../tests/support/etcd.rs"]
mod etcd_cluster;

use std::time::{Duration, Instant};

use etcd_cluster::{EtcdCluster, Tls};
use squilla_store::etcd::election::Role;
use squilla_store::etcd::watch::Change;
use squilla_store::etcd::{CHUNK, Etcd, EtcdConfig};
use squilla_store::{ArtifactMeta, Delete, JobRecord, Put, Store, StoreError};
use squilla_types::ids::{Sha256, TenantId};

fn tenant(name: &str) -> TenantId {
    name.parse().unwrap()
}

fn meta(bytes: &[u8], tag: Option<(&str, &str)>) -> ArtifactMeta {
    ArtifactMeta {
        sha256: Sha256::of(bytes),
        size: bytes.len() as u64,
        flavour: "raw".into(),
        name: tag.map(|t| t.0.to_owned()),
        version: tag.map(|t| t.1.to_owned()),
        created_at_ms: 1,
    }
}

fn spec(artifact: &str) -> squilla_types::JobSpec {
    serde_json::from_value(serde_json::json!({
        "name": "errors",
        "source": {"kind": "synthetic", "generator": "device-logs", "events-per-second": 100},
        "stages": [{"name": "keep", "artifact": artifact, "workers": 1}]
    }))
    .unwrap()
}

/// The suite both backends pass.
fn suite(store: &Store) {
    let (acme, other) = (tenant("acme"), tenant("other"));
    let a = b"component a".to_vec();
    let b = b"component b, a little longer".to_vec();

    // Uploads: created once, then existing; a tag names one artifact only; quotas hold.
    assert!(matches!(store.put_artifact(&acme, meta(&a, Some(("f", "1"))), &a, 1000).unwrap(), Put::Created(_)));
    assert!(matches!(store.put_artifact(&acme, meta(&a, None), &a, 1000).unwrap(), Put::Existing(_)));
    let taken = store.put_artifact(&acme, meta(&b, Some(("f", "1"))), &b, 1000).unwrap();
    assert_eq!(taken, Put::TagTaken { sha256: Sha256::of(&a).to_string() });
    let over = store.put_artifact(&acme, meta(&b, None), &b, 20).unwrap();
    assert_eq!(over, Put::OverQuota { would_hold: (a.len() + b.len()) as u64, quota: 20 });
    assert_eq!(store.artifacts(&acme).unwrap().len(), 1, "a refused upload stores nothing");
    assert_eq!(store.tag(&acme, "f", "1").unwrap(), Some(Sha256::of(&a)));
    assert_eq!(store.artifact_bytes(&acme, &Sha256::of(&a)).unwrap(), Some(a.clone()));

    // Tenants see only their own; the same bytes are stored once and outlive one tenant.
    assert_eq!(store.artifacts(&other).unwrap(), vec![]);
    assert_eq!(store.artifact_bytes(&other, &Sha256::of(&a)).unwrap(), None);
    assert!(matches!(store.put_artifact(&other, meta(&a, None), &a, 1000).unwrap(), Put::Created(_)));

    // Cluster versions count from 1 and resolve tags; unknown artifacts are named.
    let v1 = store.put_cluster(&acme, spec("f@1"), 5).unwrap().unwrap();
    let v2 = store.put_cluster(&acme, spec(&format!("sha256:{}", Sha256::of(&a))), 6).unwrap().unwrap();
    assert_eq!((v1.version, v2.version), (1, 2));
    assert_eq!(v1.artifacts, vec![Sha256::of(&a)]);
    let unknown = store.put_cluster(&acme, spec("g@1"), 7).unwrap().unwrap_err();
    assert_eq!((unknown.stage, unknown.reference.as_str()), (0, "g@1"));
    assert_eq!(store.clusters(&acme).unwrap().len(), 2);
    assert_eq!(store.clusters(&other).unwrap().len(), 0);
    let latest = store.all_latest_clusters().unwrap();
    assert_eq!(latest.len(), 1);
    assert_eq!((latest[0].0.as_str(), latest[0].1.version), ("acme", 2));

    // An artifact in use is not deleted; its bytes stay while another tenant holds them.
    let used = store.delete_artifact(&acme, &Sha256::of(&a)).unwrap();
    assert!(matches!(used, Delete::InUse { version: 1, .. }), "{used:?}");
    assert_eq!(store.delete_artifact(&other, &Sha256::of(&a)).unwrap(), Delete::Deleted);
    assert_eq!(store.delete_artifact(&other, &Sha256::of(&a)).unwrap(), Delete::Missing);
    assert_eq!(store.blob(&Sha256::of(&a)).unwrap(), Some(a.clone()), "acme still holds the bytes");
    assert!(matches!(store.put_artifact(&other, meta(&b, Some(("g", "2"))), &b, 1000).unwrap(), Put::Created(_)));
    assert_eq!(store.delete_artifact(&other, &Sha256::of(&b)).unwrap(), Delete::Deleted);
    assert_eq!(store.blob(&Sha256::of(&b)).unwrap(), None, "the last holder took the bytes with it");
    assert_eq!(store.tag(&other, "g", "2").unwrap(), None, "and its tags");

    // Job numbers are never reused; job records round-trip, many at once.
    let errors = "errors".parse().unwrap();
    assert_eq!(store.next_job_number(&acme, &errors).unwrap(), 1);
    assert_eq!(store.next_job_number(&acme, &errors).unwrap(), 2);
    assert_eq!(store.next_job_number(&other, &errors).unwrap(), 1);
    let records: Vec<JobRecord> = (1..=250)
        .map(|n| JobRecord { key: format!("acme.errors-{n}").parse().unwrap(), json: format!("{{\"n\":{n}}}").into() })
        .collect();
    store.put_job_records(&records).unwrap();
    let stored = store.all_jobs().unwrap();
    assert_eq!(stored.len(), 250);
    let n7 = stored.iter().find(|r| r.key.to_string() == "acme.errors-7").unwrap();
    assert_eq!(n7.json, b"{\"n\":7}");

    // Bytes larger than several etcd chunks round-trip exactly.
    let big: Vec<u8> = (0..CHUNK * 2 + 12345).map(|i| (i * 7 % 251) as u8).collect();
    assert!(matches!(store.put_artifact(&acme, meta(&big, None), &big, 1 << 30).unwrap(), Put::Created(_)));
    assert_eq!(store.artifact_bytes(&acme, &Sha256::of(&big)).unwrap(), Some(big));
}

#[test]
fn redb_passes_the_suite() {
    let dir = std::env::temp_dir().join(format!("squilla-store-redb-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    suite(&Store::open(&dir.join("squilla.redb")).unwrap());
    // Reopened, everything is still there.
    let store = Store::open(&dir.join("squilla.redb")).unwrap();
    assert_eq!(store.all_jobs().unwrap().len(), 250);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A client of `cluster` under `prefix`, leading (its writes are fenced on that).
fn leading(cluster: &EtcdCluster, prefix: &str, me: &str) -> (Etcd, tokio::sync::watch::Receiver<Role>) {
    let etcd = Etcd::connect(&EtcdConfig::from_url(&cluster.url(prefix)).unwrap()).unwrap();
    let role = etcd.campaign(me.into(), Duration::from_secs(2)).role;
    wait_role(&role, &Role::Leader, Duration::from_secs(10));
    (etcd, role)
}

fn wait_role(role: &tokio::sync::watch::Receiver<Role>, want: &Role, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while *role.borrow() != *want {
        assert!(Instant::now() < deadline, "role {:?}, not {want:?}, after {timeout:?}", *role.borrow());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn etcd_passes_the_suite_and_fences_writes_on_leadership() {
    let cluster = EtcdCluster::start(1, "suite");
    let (etcd, role) = leading(&cluster, "suite", "http://m1");
    let store = Store::new(etcd.clone());
    assert_eq!(store.kind(), "etcd");
    suite(&store);

    // A second master sees the same state, stands by, and cannot write.
    let standby = Etcd::connect(&EtcdConfig::from_url(&cluster.url("suite")).unwrap()).unwrap();
    let standby_role = standby.campaign("http://m2".into(), Duration::from_secs(2)).role;
    wait_role(&standby_role, &Role::Standby { leader: Some("http://m1".into()) }, Duration::from_secs(5));
    let second = Store::new(standby.clone());
    assert_eq!(second.all_jobs().unwrap().len(), 250);
    let acme = tenant("acme");
    let errors = "errors".parse().unwrap();
    assert!(matches!(second.next_job_number(&acme, &errors), Err(StoreError::NotLeader)));

    // A standby follows what the leader writes: everything at first, then each change.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    let mut jobs = standby.follow("jobs/");
    let mut next = || {
        runtime.block_on(async { tokio::time::timeout(Duration::from_secs(5), jobs.recv()).await }).unwrap().unwrap()
    };
    assert!(matches!(next(), Change::Reset(all) if all.len() == 250));
    let changed = JobRecord { key: "acme.errors-7".parse().unwrap(), json: b"{\"n\":77}".to_vec() };
    store.put_job_records(&[changed]).unwrap();
    assert_eq!(next(), Change::Put("acme.errors-7".into(), b"{\"n\":77}".to_vec()));

    // The leader gives up (its receiver dropped): the standby leads within the poll, and
    // the old handle's writes are refused and change nothing.
    drop(role);
    wait_role(&standby_role, &Role::Leader, Duration::from_secs(5));
    assert!(!etcd.is_leader());
    assert!(matches!(store.next_job_number(&acme, &errors), Err(StoreError::NotLeader)));
    assert_eq!(second.next_job_number(&acme, &errors).unwrap(), 3, "the refused write took no number");
}

#[test]
fn a_leader_that_cannot_renew_steps_down_within_its_lease() {
    let mut cluster = EtcdCluster::start(3, "election");
    let (etcd, role) = leading(&cluster, "election", "http://m1");
    let store = Store::new(etcd.clone());
    let acme = tenant("acme");
    let errors = "errors".parse().unwrap();
    assert_eq!(store.next_job_number(&acme, &errors).unwrap(), 1);

    // Losing one member of three changes nothing: the client moves to another.
    cluster.kill(0);
    assert_eq!(store.next_job_number(&acme, &errors).unwrap(), 2);

    // Losing quorum: renewals fail; the leader steps down within its lease.
    cluster.kill(1);
    let cut = Instant::now();
    wait_role(&role, &Role::Standby { leader: None }, Duration::from_secs(10));
    let stepped_down = cut.elapsed();
    assert!(stepped_down <= Duration::from_secs(2), "stepped down after {stepped_down:?}, past its 2 s lease");
    assert!(!etcd.is_leader());
    let refused = store.next_job_number(&acme, &errors);
    assert!(matches!(refused, Err(StoreError::NotLeader | StoreError::Etcd(_))), "{refused:?}");
}

#[test]
fn a_redb_file_of_the_older_layout_opens_with_everything_in_it() {
    use redb::TableDefinition;
    let dir = std::env::temp_dir().join(format!("squilla-store-old-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("squilla.redb");
    let a = b"component a".to_vec();
    let sha = Sha256::of(&a).to_string();
    {
        // One table per kind, as files written before the `kv` table held them.
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        let json = serde_json::to_vec(&meta(&a, Some(("f", "1")))).unwrap();
        txn.open_table(TableDefinition::<&str, &[u8]>::new("artifacts"))
            .unwrap()
            .insert(format!("acme/{sha}").as_str(), json.as_slice())
            .unwrap();
        txn.open_table(TableDefinition::<&str, &[u8]>::new("blobs"))
            .unwrap()
            .insert(sha.as_str(), a.as_slice())
            .unwrap();
        txn.open_table(TableDefinition::<&str, &str>::new("tags")).unwrap().insert("acme/f@1", sha.as_str()).unwrap();
        txn.open_table(TableDefinition::<&str, u64>::new("job-seq")).unwrap().insert("acme/errors", 4).unwrap();
        let mut jobs = txn.open_table(TableDefinition::<&str, &[u8]>::new("jobs")).unwrap();
        jobs.insert("acme/errors-3", b"{\"old\":true}".as_slice()).unwrap();
        jobs.insert("acme.errors-4", b"{}".as_slice()).unwrap();
        drop(jobs);
        txn.commit().unwrap();
    }
    let store = Store::open(&path).unwrap();
    let acme = tenant("acme");
    assert_eq!(store.artifacts(&acme).unwrap().len(), 1);
    assert_eq!(store.artifact_bytes(&acme, &Sha256::of(&a)).unwrap(), Some(a));
    assert_eq!(store.tag(&acme, "f", "1").unwrap(), Some(Sha256::of(b"component a")));
    assert_eq!(store.next_job_number(&acme, &"errors".parse().unwrap()).unwrap(), 5);
    let jobs: Vec<String> = store.all_jobs().unwrap().iter().map(|r| r.key.to_string()).collect();
    assert_eq!(jobs, ["acme.errors-3", "acme.errors-4"]);
    drop(store);
    // Opened again, nothing moves twice.
    assert_eq!(Store::open(&path).unwrap().all_jobs().unwrap().len(), 2);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A CA and, signed by it, a certificate for `127.0.0.1` and one for a client (openssl).
fn certificates(dir: &std::path::Path) -> Tls {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl").args(args).current_dir(dir).output().expect("openssl runs");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    run(&[
        &["req", "-x509"],
        &ec[..],
        &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=etcd test CA"],
    ]
    .concat());
    for (name, ext) in [
        ("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n"),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ] {
        let (key, csr, pem, extfile) =
            (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"), format!("{name}.ext"));
        run(&[&["req"], &ec[..], &["-keyout", &key, "-out", &csr, "-subj", &format!("/CN={name}")]].concat());
        std::fs::write(dir.join(&extfile), ext).unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &extfile,
        ]);
    }
    Tls {
        ca: dir.join("ca.pem"),
        server: (dir.join("server.pem"), dir.join("server.key")),
        client: (dir.join("client.pem"), dir.join("client.key")),
    }
}

#[test]
fn etcd_over_tls_takes_the_fleets_ca_and_a_client_certificate() {
    let dir = std::env::temp_dir().join(format!("squilla-store-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let tls = certificates(&dir);
    let cluster = EtcdCluster::start_tls("tls", tls.clone());
    let url = cluster.url("tls");
    assert!(url.starts_with("etcds://"), "{url}");
    let config = EtcdConfig {
        ca: Some(tls.ca.clone()),
        identity: Some(tls.client.clone()),
        ..EtcdConfig::from_url(&url).unwrap()
    };
    let etcd = Etcd::connect(&config).unwrap();
    let role = etcd.campaign("http://tls".into(), Duration::from_secs(2)).role;
    wait_role(&role, &Role::Leader, Duration::from_secs(10));
    let store = Store::new(etcd);
    let acme = tenant("acme");
    assert_eq!(store.next_job_number(&acme, &"errors".parse().unwrap()).unwrap(), 1);
    // Without the client certificate, or without the CA, nothing is read.
    let bare = EtcdConfig { identity: None, ..config.clone() };
    assert!(Store::new(Etcd::connect(&bare).unwrap()).clusters(&acme).is_err());
    let stranger = EtcdConfig { ca: None, ..config };
    assert!(Store::new(Etcd::connect(&stranger).unwrap()).clusters(&acme).is_err());
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}
