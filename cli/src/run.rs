//! `squilla run`: a job in one process, one worker per stage.
//!
//! This is the quickest way to see a stage work: no master, no agent. Each stage runs as one
//! sandboxed worker with the limits of its spec; routing and worker counts are the agent's
//! business and are ignored here.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use squilla_batch::{BatchBuilder, BatchBytes, synth::DeviceLogs};
use squilla_host::{Artifact, Limits, Runtime, RuntimeConfig, StageInstance};
use squilla_types::{ArtifactRef, JobSpec, SourceSpec, StageSpec};

/// How often the source cuts a batch.
const BATCH_PERIOD: Duration = Duration::from_millis(100);

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
    /// Defaults to where the build put the example stages.
    #[arg(long = "artifacts", value_name = "DIR")]
    artifact_dirs: Vec<PathBuf>,
}

struct Worker {
    spec: StageSpec,
    artifact: Artifact,
    limits: Limits,
    params: Vec<(String, String)>,
    instance: StageInstance,
    next_tick: Instant,
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let json = std::fs::read_to_string(&args.spec).with_context(|| format!("cannot read {}", args.spec.display()))?;
    let spec = JobSpec::parse(&json).with_context(|| format!("{} is not a valid job spec", args.spec.display()))?;
    let overrides = parse_overrides(&spec, &args.params)?;
    let mut dirs = args.artifact_dirs.clone();
    if dirs.is_empty() {
        dirs.push(PathBuf::from(squilla_guests::FILTER).parent().context("example path has a parent")?.to_path_buf());
    }

    let runtime = Runtime::new(RuntimeConfig { max_instances: 64, ..Default::default() })?;
    let mut workers = Vec::new();
    for stage in &spec.stages {
        let path = resolve(&stage.artifact, &dirs)?;
        let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let artifact = Artifact::compile(&runtime, &bytes).with_context(|| format!("{}", path.display()))?;
        let limits = Limits { memory_bytes: stage.resources.memory_mib as usize * 1024 * 1024, ..Limits::default() };
        let params = spec.stage_params(stage, &overrides);
        let instance = artifact
            .instantiate(&runtime, &limits, &params)
            .with_context(|| format!("stage `{}` did not start", stage.name))?;
        eprintln!(
            "stage {} ← {} ({} bytes, sha256 {})",
            stage.name,
            path.display(),
            artifact.size_bytes(),
            artifact.sha256()
        );
        let next_tick = Instant::now() + Duration::from_millis(stage.tick_ms);
        workers.push(Worker { spec: stage.clone(), artifact, limits, params, instance, next_tick });
    }

    let deadline = args.seconds.map(|s| Instant::now() + Duration::from_secs(s));
    let mut source = Source::new(&spec.source)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    loop {
        let started = Instant::now();
        if deadline.is_some_and(|d| started >= d) {
            return Ok(());
        }
        match source.next_batch()? {
            Some(batch) => flow(&runtime, &mut workers, 0, Input::Batch(batch), &mut out)?,
            None => {
                // Ingest input ended: give windows a last tick and stop.
                for i in 0..workers.len() {
                    flow(&runtime, &mut workers, i, Input::Tick(now_ms() + 3_600_000), &mut out)?;
                }
                return Ok(());
            }
        }
        for i in 0..workers.len() {
            if workers[i].next_tick <= Instant::now() {
                let period = Duration::from_millis(workers[i].spec.tick_ms);
                workers[i].next_tick += period;
                flow(&runtime, &mut workers, i, Input::Tick(now_ms()), &mut out)?;
            }
        }
        if source.is_timed() {
            std::thread::sleep(BATCH_PERIOD.saturating_sub(started.elapsed()));
        }
    }
}

enum Input {
    Batch(BatchBytes),
    Tick(i64),
}

/// Feeds `input` to stage `first` and its output through the following stages to stdout.
fn flow(
    runtime: &Runtime,
    workers: &mut [Worker],
    first: usize,
    input: Input,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let mut batch = None;
    let mut input = Some(input);
    for worker in &mut workers[first..] {
        let result = match (input.take(), batch.take()) {
            (Some(Input::Batch(b)), _) | (None, Some(b)) => worker.instance.process(&b),
            (Some(Input::Tick(now)), _) => worker.instance.tick(now),
            (None, None) => return Ok(()),
        };
        match result {
            Ok(output) if output.is_empty() => return Ok(()),
            Ok(output) => batch = Some(output),
            Err(err) => {
                eprintln!("stage {}: {err}", worker.spec.name);
                if err.is_fatal() {
                    worker.instance = worker.artifact.instantiate(runtime, &worker.limits, &worker.params)?;
                    eprintln!("stage {}: replaced the instance", worker.spec.name);
                }
                return Ok(());
            }
        }
    }
    if let Some(batch) = batch {
        for event in batch.view().events() {
            writeln!(out, "{}", crate::json::to_json(&event))?;
        }
        out.flush()?;
    }
    Ok(())
}

enum Source {
    Synthetic { generator: DeviceLogs, per_batch: usize },
    Stdin { lines: std::io::Lines<std::io::StdinLock<'static>>, line_no: usize },
}

impl Source {
    fn new(spec: &SourceSpec) -> anyhow::Result<Self> {
        match spec {
            SourceSpec::Synthetic { events_per_second, .. } => Ok(Source::Synthetic {
                generator: DeviceLogs::new(now_ms() as u64),
                per_batch: ((*events_per_second as f64 * BATCH_PERIOD.as_secs_f64()).round() as usize).max(1),
            }),
            SourceSpec::Ingest => {
                eprintln!("reading events as JSON lines from standard input");
                Ok(Source::Stdin { lines: std::io::stdin().lock().lines(), line_no: 0 })
            }
            SourceSpec::Job { cluster, .. } => {
                bail!("`squilla run` cannot subscribe to another job (`{cluster}`); that needs the master")
            }
        }
    }

    fn is_timed(&self) -> bool {
        matches!(self, Source::Synthetic { .. })
    }

    fn next_batch(&mut self) -> anyhow::Result<Option<BatchBytes>> {
        match self {
            Source::Synthetic { generator, per_batch } => {
                // Spread the batch's timestamps over the period it stands for.
                let period = BATCH_PERIOD.as_millis() as i64;
                let step = period / *per_batch as i64;
                Ok(Some(generator.batch(*per_batch, now_ms() - period, step)?))
            }
            Source::Stdin { lines, line_no } => {
                let mut builder = BatchBuilder::new().source("stdin");
                for line in lines.by_ref().take(1_000) {
                    *line_no += 1;
                    let line = line?;
                    if line.trim().is_empty() {
                        continue;
                    }
                    crate::json::push_json_line(&mut builder, &line, now_ms())
                        .with_context(|| format!("standard input, line {line_no}"))?;
                }
                if builder.is_empty() { Ok(None) } else { Ok(Some(builder.finish()?)) }
            }
        }
    }
}

fn parse_overrides(spec: &JobSpec, given: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut overrides = BTreeMap::new();
    for pair in given {
        let (name, value) = pair.split_once('=').with_context(|| format!("`{pair}`: a parameter is NAME=VALUE"))?;
        let Some(declared) = spec.parameters.iter().find(|p| p.name == name) else {
            let known: Vec<_> = spec.parameters.iter().map(|p| p.name.as_str()).collect();
            bail!("`{name}` is not a parameter of job `{}` (it has: {})", spec.name, known.join(", "));
        };
        if !declared.ty.accepts(value) {
            bail!("parameter `{name}`: `{value}` is not a valid {:?}", declared.ty);
        }
        overrides.insert(name.to_owned(), value.to_owned());
    }
    for p in &spec.parameters {
        if p.required && p.default.is_none() && !overrides.contains_key(&p.name) {
            bail!("parameter `{}` is required: pass --param {}=VALUE", p.name, p.name);
        }
    }
    Ok(overrides)
}

fn resolve(artifact: &ArtifactRef, dirs: &[PathBuf]) -> anyhow::Result<PathBuf> {
    let ArtifactRef::Tag { name, .. } = artifact else {
        bail!("`squilla run` finds artifacts by name; `{artifact}` needs the master's artifact store");
    };
    let file = format!("{}.wasm", name.replace('-', "_"));
    dirs.iter()
        .map(|d| d.join(&file))
        .find(|p| p.exists())
        .with_context(|| format!("no {file} for artifact `{artifact}` in {dirs:?}"))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}
