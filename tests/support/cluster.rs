//! Shared by the `squilla` tests and the benchmarks that run processes: `squilla` processes on loopback (a
//! master, agents), and a small client for the master's API.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use serde_json::Value;

/// `squilla`, run from the repository's root.
pub fn squilla() -> Command {
    squilla_in(None)
}

/// `squilla`, run from the repository's root, in network namespace `netns` if given (with
/// `ip netns exec`, which becomes the program: its pid is squilla's).
pub fn squilla_in(netns: Option<&str>) -> Command {
    let mut cmd = match netns {
        None => Command::new(env!("CARGO_BIN_EXE_squilla")),
        Some(ns) => {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_squilla")]);
            cmd
        }
    };
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
    cmd.env_remove("SQUILLA_CONFIG");
    // The stages the test build made (`squilla dev` and `run` look there first).
    let dir = |path: &str| std::path::Path::new(path).parent().map(|p| p.display().to_string()).unwrap_or_default();
    cmd.env("SQUILLA_ARTIFACTS", dir(squilla_guests::FILTER));
    cmd
}

/// A fresh directory under the system's temp dir.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("squilla-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A port free right now on loopback.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A child process whose standard error is read line by line (and echoed, prefixed, to the
/// test's own), killed when dropped.
pub struct Proc {
    name: String,
    child: Child,
    lines: Receiver<String>,
}

impl Proc {
    /// Starts `squilla ARGS`, named `name` in the test's output.
    pub fn spawn(name: &str, args: &[&str]) -> Proc {
        Self::spawn_in(None, name, args)
    }

    /// [`Proc::spawn`] in network namespace `netns`, if given.
    pub fn spawn_in(netns: Option<&str>, name: &str, args: &[&str]) -> Proc {
        let mut child = squilla_in(netns)
            .args(args)
            .env("SQUILLA_LOG", std::env::var("TEST_SQUILLA_LOG").unwrap_or_else(|_| "info".into()))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = channel();
        let tag = name.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[{tag}] {line}");
                let _ = tx.send(line);
            }
        });
        Proc { name: name.into(), child, lines }
    }

    /// The first line containing `needle`, within `timeout`.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => panic!("{}: no line with `{needle}` in {timeout:?}", self.name),
                Err(RecvTimeoutError::Disconnected) => panic!("{}: exited before printing `{needle}`", self.name),
            }
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process (SIGKILL: no chance to clean up, as in a crash).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Tenant `acme`'s token.
pub const TOKEN: &str = "acme-token-0123456789";
/// The agents' shared token.
pub const AGENT_TOKEN: &str = "agent-token-0123456789";

/// The master's API, as tenant `acme`.
pub struct Api {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The client.
    pub http: reqwest::Client,
}

impl Api {
    /// `(status, JSON body or null)` of a request with the tenant's token.
    pub async fn call(&self, method: reqwest::Method, path: &str, body: Vec<u8>) -> (u16, Value) {
        let response = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// The job as `GET /api/v1/jobs/{id}` answers.
    pub async fn job_of(&self, id: &str) -> Value {
        self.call(reqwest::Method::GET, &format!("/api/v1/jobs/{id}"), vec![]).await.1
    }

    /// Polls job `id` until `ok` holds, within `timeout`.
    pub async fn until_of(&self, id: &str, what: &str, timeout: Duration, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let job = self.job_of(id).await;
            if ok(&job) {
                return job;
            }
            assert!(Instant::now() < deadline, "{what}: not within {timeout:?}; job is {job:#}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The arguments of `squilla master` on `port`, with its data in `data`, tenants from
/// `tokens`, the agent token [`AGENT_TOKEN`], and the given heartbeat and agent timeout.
pub fn master_args(
    port: u16,
    data: &std::path::Path,
    tokens: &std::path::Path,
    heartbeat_ms: u64,
    agent_timeout_ms: u64,
) -> Vec<String> {
    [
        "master".to_owned(),
        "--listen".to_owned(),
        format!("127.0.0.1:{port}"),
        "--data-dir".to_owned(),
        data.display().to_string(),
        "--tokens".to_owned(),
        tokens.display().to_string(),
        "--agent-token".to_owned(),
        AGENT_TOKEN.to_owned(),
        "--heartbeat-ms".to_owned(),
        heartbeat_ms.to_string(),
        "--agent-timeout-ms".to_owned(),
        agent_timeout_ms.to_string(),
    ]
    .into()
}

/// A master on `port` with its data in `data` and tenants from `tokens`; 200 ms heartbeats,
/// agents lost after 1.5 s.
pub fn master(port: u16, data: &std::path::Path, tokens: &std::path::Path) -> Proc {
    master_with(port, data, tokens, &[])
}

/// [`master`] with more arguments.
pub fn master_with(port: u16, data: &std::path::Path, tokens: &std::path::Path, extra: &[&str]) -> Proc {
    let args = master_args(port, data, tokens, 200, 1500);
    let args: Vec<&str> = args.iter().map(String::as_str).chain(extra.iter().copied()).collect();
    let m = Proc::spawn("master", &args);
    m.wait_for("API at", Duration::from_secs(20));
    m
}

/// A client for agents' HTTPS servers, trusting the fleet CA `ca` (PEM) as the master and
/// gateways do.
pub fn agent_client(ca: &str) -> reqwest::Client {
    let config = squilla_net::tls::agent_client_config(ca).expect("the fleet CA");
    reqwest::Client::builder().use_preconfigured_tls(config).build().unwrap()
}

/// The fleet CA of a master whose data directory is `data`.
pub fn fleet_ca(data: &std::path::Path) -> String {
    std::fs::read_to_string(data.join("ca/ca.pem")).expect("the master keeps its CA in its data dir")
}

/// An agent with one worker thread.
pub fn agent(id: &str, url: &str) -> Proc {
    agent_with(id, url, &["--threads", "1"])
}

/// An agent with more arguments (labels, threads).
pub fn agent_with(id: &str, url: &str, extra: &[&str]) -> Proc {
    let mut args = vec!["agent", "--master", url, "--agent-token", AGENT_TOKEN, "--id", id];
    args.extend_from_slice(extra);
    let a = Proc::spawn(id, &args);
    a.wait_for("sinks at", Duration::from_secs(20));
    a
}

/// A gateway on `port` in front of the master at `url`, with more arguments.
pub fn gateway(url: &str, port: u16, extra: &[&str]) -> Proc {
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec!["gateway", "--master", url, "--listen", &listen];
    args.extend_from_slice(extra);
    let g = Proc::spawn("gateway", &args);
    g.wait_for("squilla gateway: serving", Duration::from_secs(20));
    g
}

/// The resident memory of process `pid`, MiB (0 if it cannot be read).
pub fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

/// CPU time (user + system) process `pid` has used, seconds (0 if it cannot be read).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces) start after its closing parenthesis;
    // utime and stime are the 14th and 15th fields of the line, in clock ticks.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // `getconf CLK_TCK` is 100 on Linux everywhere this runs.
    (ticks(11) + ticks(12)) / 100.0
}
