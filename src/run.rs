//! `squilla run`: a job in one process, on the agent's real data plane.
//!
//! The quickest way to see a job work: no master. The job's stages run with their worker
//! counts, routing, limits and backpressure on this process's thread pool; the source is the
//! spec's synthetic generator, or JSON lines on standard input for an `ingest` source; the
//! sink is printed to standard output as JSON lines.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use squilla_host::pipeline::{Pipeline, PipelineConfig, SyntheticSource};
use squilla_host::{Artifact, ArtifactCache, Executor, Runtime, RuntimeConfig};
use squilla_types::time::now_ms;
use squilla_types::{JobSpec, SourceSpec};

/// Events per batch read from standard input.
const INGEST_BATCH: usize = 1_000;

/// Arguments of `squilla run`.
#[derive(clap::Args)]
pub struct RunArgs {
    /// The job spec (JSON), e.g. examples/device-errors/job.json.
    spec: PathBuf,
    /// Override a declared job parameter: `--param window-ms=10000` (repeatable).
    #[arg(long = "param", value_name = "NAME=VALUE")]
    params: Vec<String>,
    /// Stop after this many seconds (default: run until interrupted, or until an ingest
    /// source's input ends).
    #[arg(long)]
    seconds: Option<u64>,
    /// Directory holding `<artifact-name>.wasm` files (dashes become underscores); repeatable.
    /// Defaults to the example stages of this checkout, built on first use.
    #[arg(long = "artifacts", value_name = "DIR", env = "SQUILLA_ARTIFACTS", value_delimiter = ':')]
    artifact_dirs: Vec<PathBuf>,
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let json = std::fs::read_to_string(&args.spec).with_context(|| format!("cannot read {}", args.spec.display()))?;
    let spec = JobSpec::parse(&json).with_context(|| format!("{} is not a valid job spec", args.spec.display()))?;
    let overrides = parse_overrides(&spec, &args.params)?;
    let dirs = args.artifact_dirs.clone();

    let runtime = Runtime::new(RuntimeConfig { max_instances: 256, ..Default::default() })?;
    let cache = ArtifactCache::on_disk(&runtime, &std::env::temp_dir().join("squilla-run-cache"))?;
    let mut artifacts: BTreeMap<String, Artifact> = BTreeMap::new();
    for stage in &spec.stages {
        let path = crate::examples::resolve(&stage.artifact, &dirs)?;
        let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let artifact = cache.get_or_compile(&bytes).with_context(|| format!("{}", path.display()))?;
        eprintln!(
            "stage {} ← {} ({} bytes, sha256 {})",
            stage.name,
            path.display(),
            artifact.size_bytes(),
            artifact.sha256()
        );
        artifacts.insert(stage.artifact.to_string(), artifact);
    }
    let config = PipelineConfig::from_spec(&spec, &overrides, |r| artifacts.get(&r.to_string()).cloned())?;
    let executor = Executor::start(0).context("cannot start the worker threads")?;
    let mut pipeline = Pipeline::start(&runtime, &executor, config)?;
    let deadline = args.seconds.map(|s| Instant::now() + Duration::from_secs(s));

    match &spec.source {
        SourceSpec::Synthetic { events_per_second, .. } => {
            pipeline.start_synthetic(SyntheticSource {
                seed: now_ms() as u64,
                ..SyntheticSource::at_rate(*events_per_second)
            })?;
            print_until(&pipeline, deadline)?;
        }
        SourceSpec::Ingest => {
            eprintln!("reading events as JSON lines from standard input");
            let stdin = std::io::stdin();
            let mut lines = stdin.lock().lines();
            let mut batcher = squilla_batch::json::JsonBatcher::new("stdin", INGEST_BATCH, usize::MAX);
            let mut line_no = 0;
            loop {
                let line = lines.next().transpose()?;
                line_no += 1;
                let closed = match &line {
                    Some(line) if line.trim().is_empty() => None,
                    Some(line) => {
                        batcher.push(line, now_ms()).with_context(|| format!("standard input, line {line_no}"))?
                    }
                    None => batcher.take()?,
                };
                if let Some(batch) = closed {
                    pipeline.push(batch);
                    print_available(&pipeline)?;
                }
                if line.is_none() {
                    break;
                }
            }
            // The input has ended: tick every stage an hour ahead, in order, so that every
            // window closes and its results flow out.
            for stage in 0..pipeline.stages() {
                pipeline.drain(Duration::from_secs(10));
                pipeline.tick_stage(stage, now_ms() + 3_600_000);
            }
            pipeline.drain(Duration::from_secs(10));
            print_until(&pipeline, Some(Instant::now() + Duration::from_millis(300)))?;
        }
        SourceSpec::Job { cluster, .. } => {
            bail!("`squilla run` cannot subscribe to another job (`{cluster}`); that needs the master")
        }
        SourceSpec::App { stream, .. } => {
            bail!("`squilla run` cannot subscribe to application stream `{stream}`; that needs a gateway")
        }
    }
    pipeline.stop(Duration::from_secs(1));
    for (stage, workers) in pipeline.metrics().stages.iter().enumerate() {
        for w in workers.iter().filter(|w| w.failed.is_some() || w.dropped() > 0 || w.failed_calls > 0) {
            eprintln!(
                "stage {stage} worker {}: {} failed calls, {} traps, {} dropped{}",
                w.index,
                w.failed_calls,
                w.traps,
                w.dropped(),
                w.failed.as_deref().map(|f| format!(", failed: {f}")).unwrap_or_default()
            );
        }
    }
    Ok(())
}

/// Prints the sink's output until `deadline` (or forever).
fn print_until(pipeline: &Pipeline, deadline: Option<Instant>) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    while deadline.is_none_or(|d| Instant::now() < d) {
        if let Some(batch) = pipeline.recv(Duration::from_millis(50)) {
            for event in batch.view().events() {
                writeln!(out, "{}", squilla_batch::json::to_json(&event))?;
            }
            out.flush()?;
        }
    }
    Ok(())
}

/// Prints whatever output is ready, without waiting.
fn print_available(pipeline: &Pipeline) -> anyhow::Result<()> {
    print_until(pipeline, Some(Instant::now()))
}

fn parse_overrides(spec: &JobSpec, given: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut overrides = BTreeMap::new();
    for pair in given {
        let (name, value) = pair.split_once('=').with_context(|| format!("`{pair}`: a parameter is NAME=VALUE"))?;
        overrides.insert(name.to_owned(), value.to_owned());
    }
    spec.check_params(&overrides)?;
    Ok(overrides)
}
