//! What a pipeline runs: stages, their workers, limits and the job's backpressure policy.

use std::collections::BTreeMap;
use std::time::Duration;

use squilla_types::{ArtifactRef, Backpressure, JobSpec, Routing};

use std::sync::Arc;

use super::wanted::Wanted;
use crate::{Artifact, InstantiateError, Lease, Limits};

/// One stage of a pipeline.
#[derive(Debug, Clone)]
pub struct StageConfig {
    /// The stage's name (for metrics and logs).
    pub name: String,
    /// The compiled component.
    pub artifact: Artifact,
    /// The parameters its workers' `init` receives.
    pub params: Vec<(String, String)>,
    /// How many workers (at least 1).
    pub workers: usize,
    /// How input is spread over the workers.
    pub routing: Routing,
    /// Each worker's sandbox limits.
    pub limits: Limits,
    /// Period of the stage's `tick`.
    pub tick: Duration,
}

/// What a pipeline runs. `queue_batches`, `sink_batches`, `max_consecutive_failures` and
/// `lease` have the defaults documented on them when built by [`PipelineConfig::new`].
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// The job's name.
    pub name: String,
    /// The stages, in order.
    pub stages: Vec<StageConfig>,
    /// What a full queue does.
    pub backpressure: Backpressure,
    /// Capacity of each worker's input queue, in batches (default 64).
    pub queue_batches: usize,
    /// Capacity of the sink, in batches (default 1024).
    pub sink_batches: usize,
    /// Failed calls in a row that fail a worker (default 5): traps, passed deadlines, invalid
    /// output and failed re-instantiations count (stage errors are counted apart, and do not);
    /// only a successful `process` call (never a successful `tick`) starts the count again.
    pub max_consecutive_failures: u32,
    /// The agent's lease: while it has run out nothing leaves the pipeline (default: a lease
    /// that never runs out; an agent passes the one its master renews).
    pub lease: Arc<Lease>,
    /// What the owner still wants emitted (default: everything; an agent passes the table
    /// its dispatcher keeps, see [`Wanted`]).
    pub wanted: Arc<Wanted>,
    /// Whether each call into a stage is timed, for the call-time histogram and the guest
    /// time (default: yes; the agent bench turns it off to measure what it costs).
    pub time_calls: bool,
    /// Per stage, the worker count it had just before this pipeline starts, when the stage was
    /// rescaled moments ago elsewhere (0 or missing: none). Workers of a stage that hands its
    /// keyed state over then hold the input of the groups they gain until it arrives.
    pub rescaled_from: Vec<usize>,
}

/// Why a job spec could not be turned into a pipeline.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The spec names an artifact the caller could not provide.
    #[error("stage `{stage}`: unknown artifact `{artifact}`")]
    UnknownArtifact {
        /// The stage.
        stage: String,
        /// The reference it holds.
        artifact: String,
    },
    /// A worker could not start.
    #[error("stage `{stage}`: {source}")]
    Start {
        /// The stage.
        stage: String,
        /// Why.
        source: InstantiateError,
    },
    /// A stage index out of range.
    #[error("no stage {0}")]
    NoSuchStage(usize),
    /// A thread for the pipeline could not be started (the system is out of threads).
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
}

impl PipelineConfig {
    /// A pipeline of `stages` with the default queue sizes and failure threshold.
    pub fn new(name: impl Into<String>, stages: Vec<StageConfig>, backpressure: Backpressure) -> Self {
        PipelineConfig {
            name: name.into(),
            stages,
            backpressure,
            queue_batches: 64,
            sink_batches: 1024,
            max_consecutive_failures: 5,
            lease: Lease::unlimited(),
            wanted: Arc::new(Wanted::everything()),
            time_calls: true,
            rescaled_from: Vec::new(),
        }
    }

    /// The pipeline a job spec describes, with `overrides` for its declared parameters and
    /// `artifacts` to resolve each stage's artifact reference.
    pub fn from_spec(
        spec: &JobSpec,
        overrides: &BTreeMap<String, String>,
        mut artifacts: impl FnMut(&ArtifactRef) -> Option<Artifact>,
    ) -> Result<Self, PipelineError> {
        let mut stages = Vec::with_capacity(spec.stages.len());
        for stage in &spec.stages {
            let artifact = artifacts(&stage.artifact).ok_or_else(|| PipelineError::UnknownArtifact {
                stage: stage.name.clone(),
                artifact: stage.artifact.to_string(),
            })?;
            stages.push(StageConfig {
                name: stage.name.clone(),
                artifact,
                params: spec.stage_params(stage, overrides),
                workers: stage.workers as usize,
                routing: stage.routing.clone(),
                limits: Limits { memory_bytes: stage.resources.memory_mib as usize * 1024 * 1024, ..Limits::default() },
                tick: Duration::from_millis(stage.tick_ms),
            });
        }
        Ok(PipelineConfig::new(spec.name.clone(), stages, spec.backpressure))
    }
}
