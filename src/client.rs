//! The client commands: `artifact push|list`, `cluster create|list`,
//! `job submit|list|get|metrics|kill|scale|policy|autoscaling`, `agent list`, `tail`, `logs`. Each is one or a
//! few calls of the master's HTTP API. Lists, summaries and metrics print as tables
//! (`crate::table`) unless `--output json` asks for the API's documents; other answers print
//! as JSON; errors as `error: <code>: <message>` with a non-zero exit. Progress of long
//! operations (an upload, waiting for a job to run) goes to standard error.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use futures_util::StreamExt;

/// Where the master is and who we are.
#[derive(clap::Args, Clone)]
pub struct Connection {
    /// The master's URL, or every master's, comma-separated (the CLI follows the leader).
    #[arg(long, env = "SQUILLA_MASTER", default_value = "http://127.0.0.1:7070", global = true)]
    pub master: String,
    /// Your tenant token (default: the one `squilla dev` wrote to `<data dir>/dev.token`).
    #[arg(long, env = "SQUILLA_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// The data directory `squilla dev` uses (only to find `dev.token`).
    #[arg(long, env = "SQUILLA_DATA_DIR", default_value = "squilla-data", global = true)]
    pub data_dir: PathBuf,
    /// A PEM file of CA certificates to trust for an `https://` master or gateway (beside the
    /// public ones).
    #[arg(long, env = "SQUILLA_CA", global = true)]
    pub ca: Option<PathBuf>,
}

/// An HTTP client that trusts the public roots and those in `ca` (PEM), if given.
pub fn http_client(ca: Option<&std::path::Path>) -> anyhow::Result<reqwest::Client> {
    // Redirects are the masters' leadership answers, which `Masters` follows itself (reqwest
    // would drop the token on the way).
    let mut builder = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).with_context(|| format!("--ca {}", ca.display()))?;
        for root in reqwest::Certificate::from_pem_bundle(&pem).with_context(|| format!("--ca {}", ca.display()))? {
            builder = builder.add_root_certificate(root);
        }
    }
    Ok(builder.build()?)
}

impl Connection {
    pub(crate) fn token(&self) -> anyhow::Result<String> {
        if let Some(token) = &self.token {
            return Ok(token.clone());
        }
        let path = self.data_dir.join("dev.token");
        std::fs::read_to_string(&path)
            .map(|t| t.trim().to_owned())
            .with_context(|| format!("no --token / SQUILLA_TOKEN, and no {} to fall back on", path.display()))
    }
}

/// `squilla artifact …`
#[derive(clap::Subcommand)]
pub enum ArtifactCommand {
    /// Upload a component (`.wasm`), optionally tagged `--name N --version V`.
    Push {
        /// The component file.
        file: PathBuf,
        /// Tag name.
        #[arg(long)]
        name: Option<String>,
        /// Tag version.
        #[arg(long)]
        version: Option<String>,
    },
    /// List your artifacts.
    List,
}

/// `squilla cluster …`
#[derive(clap::Subcommand)]
pub enum ClusterCommand {
    /// Create a job cluster (or a new version of it) from a job spec file.
    Create {
        /// The job spec (JSON).
        spec: PathBuf,
    },
    /// List your job clusters.
    List,
}

/// `squilla job …`
#[derive(clap::Subcommand)]
pub enum JobCommand {
    /// Submit a job of a cluster.
    Submit {
        /// The cluster.
        cluster: String,
        /// Override a declared parameter: `--param window-ms=10000` (repeatable).
        #[arg(long = "param", value_name = "NAME=VALUE")]
        params: Vec<String>,
        /// Wait until every worker runs (progress on standard error); fail if the job fails
        /// or this many seconds pass first.
        #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "120")]
        wait: Option<u64>,
    },
    /// List your jobs: id, cluster, state, workers, age, events/s.
    List {
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
    },
    /// Show one job: its workers (agent, state, counts, reason) and recent history.
    Get {
        /// The job id, e.g. `device-errors-1`.
        job: String,
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
    },
    /// Show a job's metrics per stage and worker: rates, CPU, call times, queues, memory.
    Metrics {
        /// The job id.
        job: String,
        /// Keep the table up to date (every second) until the job ends or Ctrl-C.
        #[arg(long, short)]
        watch: bool,
        /// The window rates are taken over: `10s`, `1m` or `5m`.
        #[arg(long, default_value = "10s", value_parser = ["10s", "1m", "5m"])]
        window: String,
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
    },
    /// Kill a job.
    Kill {
        /// The job id.
        job: String,
    },
    /// Set a stage's worker count.
    Scale {
        /// The job id.
        job: String,
        /// The stage (name or 0-based index).
        stage: String,
        /// Workers.
        workers: u32,
    },
    /// Replace a stage's scaling policy (docs/autoscaling.md), or remove it.
    Policy {
        /// The job id.
        job: String,
        /// The stage (name or 0-based index).
        stage: String,
        /// A JSON file holding the policy (`-` for standard input), or `none`.
        policy: String,
    },
    /// Pause or resume a job's autoscaling.
    Autoscaling {
        /// The job id.
        job: String,
        /// `pause` or `resume`.
        #[arg(value_parser = ["pause", "resume"])]
        action: String,
    },
}

/// How a command prints its answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// For people.
    #[default]
    Table,
    /// The API's JSON document.
    Json,
}

/// `squilla agent …` (client side).
#[derive(clap::Subcommand, Clone)]
pub enum AgentCommand {
    /// List the master's agents with their load.
    List {
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
        #[command(flatten)]
        connection: Connection,
    },
    /// How many agents each zone should gain or lose, and why (GET /api/v1/agents/advice).
    Advice {
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
        #[command(flatten)]
        connection: Connection,
    },
}

/// A client of the master's API.
pub struct Client {
    connection: Connection,
    masters: squilla_net::masters::Masters,
    token: String,
    http: reqwest::Client,
}

impl Client {
    pub fn new(connection: Connection) -> anyhow::Result<Self> {
        let token = connection.token()?;
        let http = http_client(connection.ca.as_deref())?;
        let masters = squilla_net::masters::Masters::new(&connection.master);
        Ok(Client { connection, masters, token, http })
    }

    /// Calls the API; the answer's JSON, or the API's error as an error.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<serde_json::Value> {
        let request = |base: &str| {
            let request = self.http.request(method.clone(), format!("{base}{path}")).bearer_auth(&self.token);
            match &body {
                Some(body) => request.body(body.clone()),
                None => request,
            }
        };
        self.answer(self.masters.send(request).await).await
    }

    pub async fn push(
        &self,
        file: &std::path::Path,
        name: Option<&str>,
        version: Option<&str>,
        show_progress: bool,
    ) -> anyhow::Result<serde_json::Value> {
        let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
        let mut path = "/api/v1/artifacts".to_owned();
        if let (Some(n), Some(v)) = (name, version) {
            path.push_str(&format!("?name={n}&version={v}"));
        }
        let total = bytes.len();
        let started = std::time::Instant::now();
        let progress = if show_progress { Progress::new() } else { Progress::hidden() };
        // The body goes in chunks, each reported as sent; the server answers after the last.
        // (Made again if the upload is sent again, to the leader a standby named.)
        let body = || {
            let chunks: Vec<Vec<u8>> = bytes.chunks(256 * 1024).map(<[u8]>::to_vec).collect();
            let mut sent = 0usize;
            let progress_in_body = progress.clone();
            let name = file_name(file);
            futures_util::stream::iter(chunks.into_iter().map(move |chunk| {
                sent += chunk.len();
                progress_in_body.show(&format!(
                    "uploading {name}: {} of {} ({}%)",
                    crate::table::bytes(sent as u64),
                    crate::table::bytes(total as u64),
                    sent * 100 / total.max(1)
                ));
                Ok::<_, std::io::Error>(chunk)
            }))
        };
        let request = |base: &str| {
            self.http
                .post(format!("{base}{path}"))
                .bearer_auth(&self.token)
                .header(reqwest::header::CONTENT_LENGTH, total)
                .body(reqwest::Body::wrap_stream(body()))
        };
        let answer = self.answer(self.masters.send(request).await).await;
        progress.done(&format!(
            "uploaded {} ({}) in {:.1}s",
            file_name(file),
            crate::table::bytes(total as u64),
            started.elapsed().as_secs_f64()
        ));
        answer
    }

    /// The answer's JSON, or the API's error as an error.
    async fn answer(
        &self,
        response: Result<reqwest::Response, squilla_net::masters::Failover>,
    ) -> anyhow::Result<serde_json::Value> {
        let response = response.with_context(|| format!("cannot reach the master at {}", self.connection.master))?;
        if !response.status().is_success() {
            return Err(api_error(response).await);
        }
        Ok(response.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// Opens a server-sent-events stream at `path`: its events, as they come, to `each`, until
    /// the stream ends or `each` says stop (`false`).
    pub async fn events(
        &self,
        path: &str,
        query: &[(&str, String)],
        mut each: impl FnMut(squilla_types::sse::Event) -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        let response = self
            .masters
            .send(|base| self.http.get(format!("{base}{path}")).query(query).bearer_auth(&self.token))
            .await
            .with_context(|| format!("cannot reach the master at {}", self.connection.master))?;
        if !response.status().is_success() {
            return Err(api_error(response).await);
        }
        let mut body = response.bytes_stream();
        let mut parser = squilla_types::sse::Parser::new();
        let mut events = Vec::new();
        while let Some(chunk) = body.next().await {
            parser.feed(&chunk?, |e| events.push(e));
            for event in events.drain(..) {
                if !each(event)? {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Waits until every worker of `job` runs, showing how many do; fails if the job ends
    /// first or `timeout` passes.
    pub async fn wait_running(&self, job: &str, timeout: std::time::Duration) -> anyhow::Result<()> {
        let progress = Progress::new();
        let started = std::time::Instant::now();
        let path = format!("/api/v1/jobs/{job}/status");
        let watch = self.events(&path, &[], |event| {
            if event.name.as_deref() != Some("status") {
                return Ok(true);
            }
            let doc: serde_json::Value = serde_json::from_str(&event.data).unwrap_or_default();
            let state = doc["state"].as_str().unwrap_or("");
            let workers: Vec<&serde_json::Value> = doc["stages"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|s| s["workers"].as_array().into_iter().flatten())
                .collect();
            let running = workers.iter().filter(|w| w["state"] == "running").count();
            progress.show(&format!(
                "{job}: {state}, {running}/{} workers running ({:.0}s)",
                workers.len(),
                started.elapsed().as_secs_f64()
            ));
            match state {
                "running" => Ok(false),
                "failed" | "completed" | "killed" => bail!("job {job} is {state} before it ran"),
                _ => Ok(true),
            }
        });
        let outcome = tokio::time::timeout(timeout, watch).await;
        match outcome {
            Ok(Ok(())) => {
                progress.done(&format!("{job} runs ({:.1}s)", started.elapsed().as_secs_f64()));
                Ok(())
            }
            Ok(Err(e)) => {
                progress.done("");
                Err(e)
            }
            Err(_) => {
                progress.done("");
                bail!("job {job} did not run within {}s", timeout.as_secs())
            }
        }
    }

    pub async fn create_cluster(&self, spec: &[u8]) -> anyhow::Result<serde_json::Value> {
        self.call(reqwest::Method::POST, "/api/v1/clusters", Some(spec.to_vec())).await
    }

    pub async fn submit(&self, cluster: &str, params: &BTreeMap<String, String>) -> anyhow::Result<serde_json::Value> {
        let body = serde_json::json!({ "params": params }).to_string().into_bytes();
        self.call(reqwest::Method::POST, &format!("/api/v1/clusters/{cluster}/jobs"), Some(body)).await
    }

    /// Prints the job's sink, one JSON event per line, until it ends (or `limit` events);
    /// `meta` events go to standard error.
    pub async fn tail(&self, job: &str, options: &TailOptions, out: &mut impl Write) -> anyhow::Result<()> {
        let mut params: Vec<(&str, String)> = Vec::new();
        if let Some(q) = &options.query {
            params.push(("query", q.clone()));
        }
        if let Some(c) = &options.client_id {
            params.push(("clientId", c.clone()));
        }
        if let Some(n) = options.sample {
            params.push(("sample", n.to_string()));
        }
        let mut printed = 0u64;
        self.events(&format!("/api/v1/jobs/{job}/sink"), &params, |event| {
            match event.name.as_deref() {
                None | Some("message") => {
                    writeln!(out, "{}", event.data)?;
                    printed += 1;
                    if options.limit.is_some_and(|l| printed >= l) {
                        out.flush()?;
                        return Ok(false);
                    }
                }
                Some("ping") => {}
                Some(kind) => eprintln!("[{kind}] {}", event.data),
            }
            Ok(true)
        })
        .await?;
        out.flush()?;
        Ok(())
    }
}

/// The API's error answer as an error: `code: message (status)`.
async fn api_error(response: reqwest::Response) -> anyhow::Error {
    let status = response.status();
    let json: serde_json::Value = response.json().await.unwrap_or_default();
    anyhow::anyhow!(
        "{}: {} ({status})",
        json["code"].as_str().unwrap_or("error"),
        json["message"].as_str().unwrap_or("")
    )
}

fn print(json: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(json)?);
    Ok(())
}

/// `key=value` pairs into a map.
pub fn pairs(given: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    given
        .iter()
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .with_context(|| format!("`{p}`: expected NAME=VALUE"))
        })
        .collect()
}

fn block_on<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(f)
}

pub fn artifact(connection: Connection, command: ArtifactCommand) -> anyhow::Result<()> {
    let client = Client::new(connection)?;
    block_on(async {
        let json = match command {
            ArtifactCommand::Push { file, name, version } => {
                client.push(&file, name.as_deref(), version.as_deref(), true).await?
            }
            ArtifactCommand::List => client.call(reqwest::Method::GET, "/api/v1/artifacts", None).await?,
        };
        print(&json)
    })
}

pub fn cluster(connection: Connection, command: ClusterCommand) -> anyhow::Result<()> {
    let client = Client::new(connection)?;
    block_on(async {
        let json = match command {
            ClusterCommand::Create { spec } => {
                let bytes = std::fs::read(&spec).with_context(|| format!("cannot read {}", spec.display()))?;
                client.create_cluster(&bytes).await?
            }
            ClusterCommand::List => client.call(reqwest::Method::GET, "/api/v1/clusters", None).await?,
        };
        print(&json)
    })
}

pub fn job(connection: Connection, command: JobCommand) -> anyhow::Result<()> {
    use reqwest::Method;
    let client = Client::new(connection)?;
    block_on(async {
        let json = match command {
            JobCommand::Submit { cluster, params, wait } => {
                let job = client.submit(&cluster, &pairs(&params)?).await?;
                if let (Some(secs), Some(id)) = (wait, job["id"].as_str()) {
                    client.wait_running(id, std::time::Duration::from_secs(secs)).await?;
                    client.call(Method::GET, &format!("/api/v1/jobs/{id}"), None).await?
                } else {
                    job
                }
            }
            JobCommand::List { output } => {
                let jobs = client.call(Method::GET, "/api/v1/jobs", None).await?;
                if output == Output::Json {
                    return print(&jobs);
                }
                let jobs = jobs.as_array().cloned().unwrap_or_default();
                let rates = client.input_rates(&jobs).await;
                print!("{}", crate::table::jobs(&jobs, &rates, squilla_types::time::now_ms()));
                return Ok(());
            }
            JobCommand::Get { job, output } => {
                let doc = client.call(Method::GET, &format!("/api/v1/jobs/{job}"), None).await?;
                if output == Output::Json {
                    return print(&doc);
                }
                print!("{}", crate::table::job(&doc, squilla_types::time::now_ms()));
                return Ok(());
            }
            JobCommand::Metrics { job, watch, window, output } => {
                return client.metrics(&job, watch, &window, output).await;
            }
            JobCommand::Kill { job } => client.call(Method::POST, &format!("/api/v1/jobs/{job}/kill"), None).await?,
            JobCommand::Scale { job, stage, workers } => {
                let body = serde_json::json!({ "workers": workers }).to_string().into_bytes();
                client.call(Method::POST, &format!("/api/v1/jobs/{job}/stages/{stage}/scale"), Some(body)).await?
            }
            JobCommand::Policy { job, stage, policy } => {
                let body = match policy.as_str() {
                    "none" => b"null".to_vec(),
                    "-" => {
                        let mut text = Vec::new();
                        std::io::Read::read_to_end(&mut std::io::stdin(), &mut text).context("reading the policy")?;
                        text
                    }
                    path => std::fs::read(path).with_context(|| format!("cannot read {path}"))?,
                };
                client.call(Method::PUT, &format!("/api/v1/jobs/{job}/stages/{stage}/scaling"), Some(body)).await?
            }
            JobCommand::Autoscaling { job, action } => {
                let body = serde_json::json!({ "paused": action == "pause" }).to_string().into_bytes();
                client.call(Method::POST, &format!("/api/v1/jobs/{job}/autoscaling"), Some(body)).await?
            }
        };
        print(&json)
    })
}

impl Client {
    /// Each running job's input over the last 10 s (its first stage's events in per second).
    async fn input_rates(&self, jobs: &[serde_json::Value]) -> BTreeMap<String, f64> {
        let live = jobs.iter().filter_map(|j| {
            let id = j["id"].as_str()?;
            let ended = matches!(j["state"].as_str(), Some("completed" | "failed" | "killed"));
            (!ended).then(|| id.to_owned())
        });
        let asks = live.map(|id| async move {
            let m = self.call(reqwest::Method::GET, &format!("/api/v1/jobs/{id}/metrics"), None).await.ok()?;
            Some((id, m["stages"][0]["rates"]["10s"]["events-in"].as_f64()?))
        });
        futures_util::future::join_all(asks).await.into_iter().flatten().collect()
    }

    /// `job metrics`: once, or every second with `watch` (redrawn in place on a terminal).
    async fn metrics(&self, job: &str, watch: bool, window: &str, output: Output) -> anyhow::Result<()> {
        let show = |doc: &serde_json::Value| -> anyhow::Result<()> {
            if output == Output::Json {
                println!("{}", serde_json::to_string(doc)?);
                return Ok(());
            }
            let table = crate::table::metrics(doc, window);
            if watch && std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                print!("\x1b[2J\x1b[H{job} — rates over {window}, every second (Ctrl-C to stop)\n\n{table}");
            } else {
                print!("{table}");
                if watch {
                    println!();
                }
            }
            std::io::stdout().flush()?;
            Ok(())
        };
        if !watch {
            return show(&self.call(reqwest::Method::GET, &format!("/api/v1/jobs/{job}/metrics"), None).await?);
        }
        self.events(&format!("/api/v1/jobs/{job}/metrics/stream"), &[], |event| {
            if event.name.as_deref() == Some("metrics") {
                show(&serde_json::from_str(&event.data)?)?;
            }
            Ok(true)
        })
        .await
    }
}

pub fn agent(command: AgentCommand) -> anyhow::Result<()> {
    match command {
        AgentCommand::List { output, connection } => {
            let client = Client::new(connection)?;
            block_on(async {
                let agents = client.call(reqwest::Method::GET, "/api/v1/agents", None).await?;
                if output == Output::Json {
                    return print(&agents);
                }
                print!("{}", crate::table::agents(agents.as_array().map(Vec::as_slice).unwrap_or_default()));
                Ok(())
            })
        }
        AgentCommand::Advice { output, connection } => {
            let client = Client::new(connection)?;
            block_on(async {
                let advice = client.call(reqwest::Method::GET, "/api/v1/agents/advice", None).await?;
                if output == Output::Json {
                    return print(&advice);
                }
                println!("{:<16} {:>6} {:>5} {:>4} {:>6}  REASON", "ZONE", "AGENTS", "IDLE", "ADD", "REMOVE");
                for group in advice["groups"].as_array().into_iter().flatten() {
                    let n = |k: &str| group[k].as_u64().unwrap_or(0);
                    println!(
                        "{:<16} {:>6} {:>5} {:>4} {:>6}  {}",
                        group["zone"].as_str().unwrap_or("-"),
                        n("agents"),
                        n("idle"),
                        n("add"),
                        n("remove"),
                        group["reason"].as_str().unwrap_or("")
                    );
                }
                Ok(())
            })
        }
    }
}

/// A one-line progress display on standard error: redrawn in place on a terminal, otherwise
/// only the final line is printed.
#[derive(Clone)]
struct Progress {
    terminal: bool,
    hidden: bool,
}

impl Progress {
    fn new() -> Self {
        Progress { terminal: std::io::IsTerminal::is_terminal(&std::io::stderr()), hidden: false }
    }

    fn hidden() -> Self {
        Progress { terminal: false, hidden: true }
    }

    fn show(&self, line: &str) {
        if self.terminal && !self.hidden {
            eprint!("\r\x1b[2K{line}");
        }
    }

    fn done(&self, line: &str) {
        if self.terminal && !self.hidden {
            eprint!("\r\x1b[2K");
        }
        if !line.is_empty() && !self.hidden {
            eprintln!("{line}");
        }
    }
}

fn file_name(path: &std::path::Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| path.display().to_string())
}

/// What `squilla tail` asks of a sink (see the sink parameters in docs/api.md).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TailOptions {
    /// Stop after this many events.
    #[arg(long)]
    pub limit: Option<u64>,
    /// An ad-hoc query run on the agents, e.g. `SELECT status WHERE status >= 500`.
    #[arg(long)]
    pub query: Option<String>,
    /// Subscribers sharing a client id split the stream between them.
    #[arg(long = "client-id")]
    pub client_id: Option<String>,
    /// At most this many events per second.
    #[arg(long)]
    pub sample: Option<u32>,
}

pub fn tail(connection: Connection, job: String, options: TailOptions) -> anyhow::Result<()> {
    let client = Client::new(connection)?;
    block_on(async {
        let stdout = std::io::stdout();
        client.tail(&job, &options, &mut stdout.lock()).await
    })
}

/// `squilla logs JOB STAGE INDEX`: `time level message` per line (RFC 3339 times, UTC), or the
/// JSON document with `--json`; with `follow`, then every new line until the job ends (one
/// JSON line each with `--json`).
pub fn logs(
    connection: Connection,
    job: &str,
    stage: &str,
    index: u32,
    json: bool,
    follow: bool,
) -> anyhow::Result<()> {
    let client = Client::new(connection)?;
    let print_line = |out: &mut dyn Write, line: &serde_json::Value| -> anyhow::Result<()> {
        if json {
            writeln!(out, "{line}")?;
        } else {
            let at = line["at-ms"].as_i64().unwrap_or(0);
            let level = line["level"].as_str().unwrap_or("");
            let message = line["message"].as_str().unwrap_or("");
            writeln!(out, "{} {level:<5} {message}", utc(at))?;
        }
        Ok(())
    };
    block_on(async {
        let path = format!("/api/v1/jobs/{job}/stages/{stage}/workers/{index}/logs");
        if follow {
            return client
                .events(&path, &[("follow", "true".to_owned())], |event| {
                    if event.name.as_deref() == Some("log") {
                        let mut out = std::io::stdout().lock();
                        print_line(&mut out, &serde_json::from_str(&event.data)?)?;
                        out.flush()?;
                    }
                    Ok(true)
                })
                .await;
        }
        let log = client.call(reqwest::Method::GET, &path, None).await?;
        if json {
            return print(&log);
        }
        let mut out = std::io::stdout().lock();
        if let Some(dropped) = log["dropped"].as_u64().filter(|n| *n > 0) {
            writeln!(out, "({dropped} older lines dropped)")?;
        }
        for line in log["lines"].as_array().into_iter().flatten() {
            print_line(&mut out, line)?;
        }
        Ok(())
    })
}

/// `ms` since the Unix epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ` (days to dates as in Howard
/// Hinnant's `civil_from_days`).
fn utc(ms: i64) -> String {
    let (days, ms_of_day) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, sec, milli) = (ms_of_day / 3_600_000, ms_of_day / 60_000 % 60, ms_of_day / 1000 % 60, ms_of_day % 1000);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{sec:02}.{milli:03}Z")
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_print_as_utc_dates() {
        assert_eq!(super::utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(super::utc(1_764_460_800_123), "2025-11-30T00:00:00.123Z");
        assert_eq!(super::utc(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
