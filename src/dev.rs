//! `squilla dev`: the master and one agent in one process, and optionally a job to watch.
//!
//! Everything a newcomer needs on a laptop: the master (API, store under `--data-dir`), one
//! agent joined to it over loopback (the same heartbeat, fetch and sink paths as a separate
//! agent process), a tenant `dev` whose token is written to `<data dir>/dev.token` (client
//! commands read it from there), and — given a job spec — its artifacts uploaded from the
//! build, its cluster created, a job submitted, and the job's output printed as JSON lines.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use squilla_agent::{Agent, AgentConfig};
use squilla_scheduler::api::Tenants;
use squilla_types::{ArtifactRef, JobSpec};

use crate::client::{Client, Connection};
use crate::master::{self, MasterArgs};

/// Arguments of `squilla dev`.
#[derive(clap::Args)]
pub struct DevArgs {
    /// Job specs to run, in order (e.g. examples/device-errors/job.json, or the three files
    /// of examples/anomaly/); the last one's output is printed.
    jobs: Vec<PathBuf>,
    /// Override a declared job parameter: `--param window-ms=10000` (repeatable).
    #[arg(long = "param", value_name = "NAME=VALUE")]
    params: Vec<String>,
    /// Stop after printing the job's output for this many seconds (without job specs: after
    /// this many seconds); default: until interrupted.
    #[arg(long)]
    seconds: Option<u64>,
    /// Directory holding `<artifact-name>.wasm` files for the job's stages (repeatable;
    /// default: the example stages of this checkout, built on first use).
    #[arg(long = "artifacts", value_name = "DIR", env = "SQUILLA_ARTIFACTS", value_delimiter = ':')]
    artifact_dirs: Vec<PathBuf>,
    #[command(flatten)]
    master: MasterArgs,
    #[command(flatten)]
    compile: crate::agent::CompileArgs,
}

fn random_hex(bytes: usize) -> anyhow::Result<String> {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// The tenants of a dev master: the `--tokens` file if given, else `<data dir>/tokens`
/// (created with one tenant, `dev`, on first use). The dev tenant's token goes to
/// `<data dir>/dev.token`.
fn tenants(args: &MasterArgs) -> anyhow::Result<Tenants> {
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let path = match &args.tokens {
        Some(path) => path.clone(),
        None => {
            let path = args.data_dir.join("tokens");
            if !path.exists() {
                let token = random_hex(16)?;
                std::fs::write(&path, format!("# tenant token\ndev {token}\n"))?;
                std::fs::write(args.data_dir.join("dev.token"), format!("{token}\n"))?;
            }
            path
        }
    };
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    Tenants::parse(&text).with_context(|| format!("{}", path.display()))
}

pub fn run(mut args: DevArgs) -> anyhow::Result<()> {
    if args.master.tls_cert.is_some() {
        anyhow::bail!(
            "`squilla dev` serves plain HTTP on this machine; --tls-cert is for `squilla master` and `squilla gateway`"
        );
    }
    let tenants = tenants(&args.master)?;
    let mut operator_file = None;
    if args.master.agent_token.is_none() {
        // Also the operator's token (the master's `/metrics`, the streams' `/gateway/metrics`).
        let token = random_hex(16)?;
        let path = args.master.data_dir.join("operator.token");
        std::fs::write(&path, format!("{token}\n")).with_context(|| format!("cannot write {}", path.display()))?;
        operator_file = Some(path);
        args.master.agent_token = Some(token);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let running = master::start(&args.master, tenants).await?;
        let url = format!("http://{}", running.addr);
        let mut config = AgentConfig::new(&url, args.master.agent_token.clone().expect("set above"));
        config.id = "dev-agent".parse()?;
        config.cache_dir = Some(args.master.data_dir.join("cache"));
        config.compile = args.compile.config()?;
        let agent = Agent::start(config).await?;
        let token_file = args.master.data_dir.join("dev.token");
        eprintln!("squilla dev: API at {url}/api/v1 — tenant `dev`, token in {}", token_file.display());
        eprintln!("squilla dev: web console at {url}/ (sign in with that token)");
        if let Some(path) = &operator_file {
            eprintln!("squilla dev: operator token (for /metrics and /gateway/metrics) in {}", path.display());
        }
        eprintln!("squilla dev: agent `{}` joined (sinks at {})", agent.id(), agent.http_url());
        let connection =
            Connection { master: url.clone(), token: None, data_dir: args.master.data_dir.clone(), ca: None };
        let work = async {
            match args.jobs.split_last() {
                Some((last, upstream)) => {
                    for spec in upstream {
                        submit(&connection, spec, &[], &args.artifact_dirs).await?;
                    }
                    let id = submit(&connection, last, &args.params, &args.artifact_dirs).await?;
                    // `--seconds` counts from here: building the example stages on first use
                    // does not eat into the output.
                    match args.seconds {
                        Some(s) => {
                            tokio::time::timeout(Duration::from_secs(s), tail(&connection, &id)).await.unwrap_or(Ok(()))
                        }
                        None => tail(&connection, &id).await,
                    }
                }
                None => {
                    eprintln!("squilla dev: try `squilla cluster create SPEC` and `squilla job submit CLUSTER`");
                    std::future::pending().await
                }
            }
        };
        let deadline = async {
            match args.seconds {
                Some(s) if args.jobs.is_empty() => tokio::time::sleep(Duration::from_secs(s)).await,
                _ => std::future::pending().await,
            }
        };
        let result = tokio::select! {
            r = work => r,
            _ = deadline => Ok(()),
            _ = tokio::signal::ctrl_c() => Ok(()),
        };
        agent.shutdown().await;
        result
    })
}

/// Uploads the job's artifacts, creates its cluster and submits it; returns the job's id.
async fn submit(
    connection: &Connection,
    spec_path: &Path,
    params: &[String],
    dirs: &[PathBuf],
) -> anyhow::Result<String> {
    let client = Client::new(connection.clone())?;
    let json = std::fs::read_to_string(spec_path).with_context(|| format!("cannot read {}", spec_path.display()))?;
    let mut spec = JobSpec::parse(&json).with_context(|| format!("{} is not a valid job spec", spec_path.display()))?;

    for stage in &mut spec.stages {
        if let ArtifactRef::Tag { name, version } = stage.artifact.clone() {
            let file = crate::examples::resolve(&stage.artifact, dirs)?;
            // Upload untagged and refer to the bytes by sha256, so that a rebuilt example
            // never collides with an older upload's tag.
            let meta = client.push(&file, None, None, false).await?;
            let sha = meta["sha256"].as_str().context("the master answered without a sha256")?;
            eprintln!("squilla dev: {name}@{version} ← {} (sha256 {sha})", file.display());
            stage.artifact = ArtifactRef::Sha256(sha.to_owned());
        }
    }
    let cluster = client.create_cluster(&serde_json::to_vec(&spec)?).await?;
    let params: BTreeMap<String, String> = crate::client::pairs(params)?;
    let job = client.submit(&spec.name, &params).await?;
    let id = job["id"].as_str().context("the master answered without a job id")?.to_owned();
    eprintln!("squilla dev: cluster `{}` version {}, job `{id}` submitted", spec.name, cluster["version"]);
    Ok(id)
}

/// Prints a job's sink until it ends.
async fn tail(connection: &Connection, id: &str) -> anyhow::Result<()> {
    let client = Client::new(connection.clone())?;
    eprintln!("squilla dev: the output of `{id}` follows (Ctrl-C stops)");
    let stdout = std::io::stdout();
    loop {
        client.tail(id, &Default::default(), &mut stdout.lock()).await?;
        let state = client.call(reqwest::Method::GET, &format!("/api/v1/jobs/{id}"), None).await?;
        if state["state"].as_str().is_some_and(|s| ["completed", "failed", "killed"].contains(&s)) {
            eprintln!("squilla dev: job `{id}` ended: {} {}", state["state"], state["reason"]);
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
