//! Real etcd clusters for tests: `etcd` from Debian's `etcd-server`, on loopback ports, in a
//! fresh data directory each, killed when dropped.

#![allow(dead_code, unreachable_pub)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One member's process and where it listens.
pub struct Member {
    /// Its name in the cluster.
    pub name: String,
    /// Its client URL (`http://127.0.0.1:port`).
    pub client_url: String,
    peer_url: String,
    netns: Option<String>,
    data: PathBuf,
    child: Option<Child>,
}

/// An etcd cluster of one or more members.
pub struct EtcdCluster {
    /// The members, in the order of `initial-cluster`.
    pub members: Vec<Member>,
    initial: String,
    tls: Option<Tls>,
}

/// TLS for clients of a cluster: the CA that signed the members' and clients' certificates,
/// the members' certificate and key (for `127.0.0.1`), and a client's certificate and key,
/// which members require.
#[derive(Clone)]
pub struct Tls {
    /// The CA (PEM).
    pub ca: PathBuf,
    /// The members' certificate and key.
    pub server: (PathBuf, PathBuf),
    /// A client's certificate and key.
    pub client: (PathBuf, PathBuf),
}

/// `program`, in network namespace `netns` if given.
fn in_netns(netns: Option<&str>, program: &str) -> Command {
    match netns {
        None => Command::new(program),
        Some(ns) => {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", ns, program]);
            cmd
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl EtcdCluster {
    /// Starts `n` members on loopback and waits until the cluster answers writes.
    pub fn start(n: usize, tag: &str) -> EtcdCluster {
        let hosts: Vec<(Option<String>, String, u16, u16)> =
            (0..n).map(|_| (None, "127.0.0.1".to_owned(), free_port(), free_port())).collect();
        Self::start_on(&hosts, tag, None)
    }

    /// One member on loopback serving clients over TLS only, with client certificates
    /// required.
    pub fn start_tls(tag: &str, tls: Tls) -> EtcdCluster {
        Self::start_on(&[(None, "127.0.0.1".to_owned(), free_port(), free_port())], tag, Some(tls))
    }

    /// Starts a member on each of `hosts` — `(network namespace, address)`, listening on
    /// 2379 and 2380 there — and waits until the cluster answers writes.
    pub fn start_in(hosts: &[(&str, &str)], tag: &str) -> EtcdCluster {
        let hosts: Vec<(Option<String>, String, u16, u16)> =
            hosts.iter().map(|(ns, ip)| (Some((*ns).to_owned()), (*ip).to_owned(), 2379, 2380)).collect();
        Self::start_on(&hosts, tag, None)
    }

    fn start_on(hosts: &[(Option<String>, String, u16, u16)], tag: &str, tls: Option<Tls>) -> EtcdCluster {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let n = hosts.len();
        let members: Vec<Member> = hosts
            .iter()
            .enumerate()
            .map(|(i, (netns, ip, client, peer))| {
                let data = std::env::temp_dir().join(format!("squilla-etcd-{tag}-{}-{i}", std::process::id()));
                let _ = std::fs::remove_dir_all(&data);
                Member {
                    name: format!("m{i}"),
                    client_url: format!("{scheme}://{ip}:{client}"),
                    peer_url: format!("http://{ip}:{peer}"),
                    netns: netns.clone(),
                    data,
                    child: None,
                }
            })
            .collect();
        let initial = members.iter().map(|m| format!("{}={}", m.name, m.peer_url)).collect::<Vec<_>>().join(",");
        let mut cluster = EtcdCluster { members, initial, tls };
        for i in 0..n {
            cluster.spawn(i);
        }
        cluster.wait_ready(Duration::from_secs(30));
        cluster
    }

    fn spawn(&mut self, i: usize) {
        let m = &mut self.members[i];
        let mut cmd = in_netns(m.netns.as_deref(), "etcd");
        if let Some(tls) = &self.tls {
            cmd.arg("--cert-file").arg(&tls.server.0).arg("--key-file").arg(&tls.server.1);
            cmd.arg("--client-cert-auth").arg("--trusted-ca-file").arg(&tls.ca);
        }
        let child = cmd
            .args(["--name", &m.name, "--data-dir"])
            .arg(&m.data)
            .args(["--listen-client-urls", &m.client_url, "--advertise-client-urls", &m.client_url])
            .args(["--listen-peer-urls", &m.peer_url, "--initial-advertise-peer-urls", &m.peer_url])
            .args(["--initial-cluster", &self.initial, "--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "squilla-test", "--log-level", "error"])
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd (Debian's etcd-server) must be installed: .ci/run installs it");
        m.child = Some(child);
    }

    /// Waits until a write through every member succeeds.
    pub fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for m in &self.members {
            loop {
                let mut cmd = in_netns(m.netns.as_deref(), "etcdctl");
                if let Some(tls) = &self.tls {
                    cmd.arg("--cacert").arg(&tls.ca).arg("--cert").arg(&tls.client.0).arg("--key").arg(&tls.client.1);
                }
                let ok = cmd
                    .args(["--endpoints", &m.client_url, "--command-timeout=2s", "put", "squilla-test/ready", "1"])
                    .env("ETCDCTL_API", "3")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if ok {
                    break;
                }
                assert!(Instant::now() < deadline, "etcd member {} did not become ready", m.name);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// The store URL of the cluster (`etcd://h:p,h:p/prefix`).
    pub fn url(&self, prefix: &str) -> String {
        let hosts: Vec<&str> =
            self.members.iter().map(|m| m.client_url.split_once("://").map_or("", |(_, h)| h)).collect();
        let scheme = if self.tls.is_some() { "etcds" } else { "etcd" };
        format!("{scheme}://{}/{prefix}", hosts.join(","))
    }

    /// The client URLs.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// SIGKILLs member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
            let _ = std::fs::remove_dir_all(&self.members[i].data);
        }
    }
}
