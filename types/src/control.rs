//! The control protocol between the master and its agents (JSON over HTTP).
//!
//! Agents drive it: every heartbeat (`POST /api/v1/agent/heartbeat`, authenticated with the
//! agent token) carries the agent's capacity, attributes, usage and the state of every
//! worker it runs, and the answer is the agent's whole desired state: every job with a
//! worker on it, with the full map of where each of the job's worker slots runs. The agent
//! reconciles to it: it starts what is new, re-plans what moved, and stops what is no longer
//! listed. Because the answer is the whole state, a lost answer, a restarted master or a
//! restarted agent all converge on the next heartbeat; nothing is ever applied twice.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::JobSpec;
use crate::ids::{AgentId, JobKey, Sha256, TenantId, WorkerNumber};

/// What an agent offers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub struct Capacity {
    /// CPU, millicores.
    pub cpu_millis: u64,
    /// Memory, MiB.
    pub memory_mib: u64,
    /// Network, Mbps.
    pub network_mbps: u64,
    /// Worker slots.
    pub slots: u64,
}

/// A worker's state as its agent reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum ReportedState {
    /// Started and processing.
    Running,
    /// Could not start, or failed (traps in a row); `message` says why.
    Failed,
}

/// One worker in a heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub struct WorkerReport {
    /// Its job.
    pub job: JobKey,
    /// Its stage (0-based).
    pub stage: u32,
    /// Its slot in the stage.
    pub index: u32,
    /// Its incarnation.
    pub number: WorkerNumber,
    /// Its state.
    pub state: ReportedState,
    /// Why it failed.
    #[serde(default)]
    pub message: Option<String>,
    /// Whether the failure will recur wherever the worker runs (its artifact cannot be
    /// compiled, for example): the master fails the job at once instead of retrying.
    #[serde(default)]
    pub fatal: bool,
    /// Events it received.
    #[serde(default)]
    pub events_in: u64,
    /// Events it emitted.
    #[serde(default)]
    pub events_out: u64,
    /// Batches dropped on the way into it.
    #[serde(default)]
    pub dropped: u64,
    /// Its linear memory, bytes.
    #[serde(default)]
    pub memory_bytes: u64,
    /// Calls into the stage that failed.
    #[serde(default)]
    pub failed_calls: u64,
    /// Failed calls by kind (`trap`, `deadline`, `stage-error`, `invalid-output`, `init`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub failures: BTreeMap<String, u64>,
    /// The last failure, `kind: message`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<String>,
    /// Everything else the agent counts for the worker (see [`WorkerCounters`]).
    #[serde(default, flatten)]
    pub counters: WorkerCounters,
}

/// The rest of a worker's counters in a heartbeat. Like the counts above, all are totals of
/// the incarnation since it started (gauges where said), not deltas: a lost heartbeat loses
/// nothing, and the master turns consecutive totals into rates. Zeros are left out of the
/// JSON, so an idle worker costs a few bytes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub struct WorkerCounters {
    /// Batches it received.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub batches_in: u64,
    /// Batches it emitted.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub batches_out: u64,
    /// Bytes of the batches it received.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bytes_in: u64,
    /// Bytes of the batches it emitted.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bytes_out: u64,
    /// Dropped batches by reason (`oldest`, `newest`, `failed`, `retired`); their sum is
    /// `dropped`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub drops: BTreeMap<String, u64>,
    /// Events in the batches its full input queue dropped (`drop-oldest`, `drop-newest`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dropped_events: u64,
    /// Calls that trapped or passed their deadline (each replaced the instance).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub traps: u64,
    /// Instances created (1 plus one per replaced instance).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub instances: u64,
    /// Batches waiting in its input queue (a gauge).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub queue_depth: u64,
    /// Time its tenant code ran (instantiation and calls), ns.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub guest_nanos: u64,
    /// Call-time histogram: entry `i` counts calls that took less than `2^i` µs (the last
    /// entry counts the rest). Trailing zeros are left out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub call_micros_log2: Vec<u64>,
    /// The gauges the stage reports about itself (`metrics.gauge` in the WIT), latest values
    /// by name (at most 16).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub user: BTreeMap<String, f64>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What an agent uses, in a heartbeat.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub struct AgentUsage {
    /// Workers running.
    pub workers: u64,
    /// Linear memory the workers' instances hold now, bytes.
    pub memory_bytes: u64,
    /// Compiled components answered from the agent's cache (memory or disk).
    pub compile_cache_hits: u64,
    /// Components compiled.
    pub compiled: u64,
}

impl WorkerReport {
    /// A report of worker `(stage, index)`, incarnation `number`, of `job`, running, with no
    /// counts yet.
    pub fn new(job: JobKey, stage: u32, index: u32, number: WorkerNumber) -> Self {
        WorkerReport {
            job,
            stage,
            index,
            number,
            state: ReportedState::Running,
            message: None,
            fatal: false,
            events_in: 0,
            events_out: 0,
            dropped: 0,
            memory_bytes: 0,
            failed_calls: 0,
            failures: BTreeMap::new(),
            last_failure: None,
            counters: WorkerCounters::default(),
        }
    }
}

/// Agent → master, every heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub struct Heartbeat {
    /// The agent's id (unique among live agents; a restarted agent takes a new one).
    pub agent: AgentId,
    /// Where the agent serves sinks: `host:port` (plain HTTP), or a base URL such as
    /// `https://10.0.0.5:7071` (HTTPS with its certificate from the master's CA).
    pub http: String,
    /// Where the agent takes batches from peers (`host:port`).
    pub data: String,
    /// What it offers.
    pub capacity: Capacity,
    /// Its zone.
    pub zone: String,
    /// Its labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Every worker it runs.
    #[serde(default)]
    pub workers: Vec<WorkerReport>,
    /// What it uses.
    #[serde(default)]
    pub usage: AgentUsage,
}

/// Agent → master: a request for a data-port certificate
/// (`POST /api/v1/agent/certificate`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub struct CertificateRequest {
    /// The agent's id, which the certificate will name.
    pub agent: AgentId,
    /// A PKCS#10 certificate signing request (PEM) for the agent's own key; only its public
    /// key is used.
    pub csr: String,
}

/// Master → agent: a data-port certificate and the CA that issued it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub struct CertificateAnswer {
    /// The certificate (PEM).
    pub certificate: String,
    /// The CA's certificate (PEM), which every agent trusts.
    pub ca: String,
    /// When the certificate stops being valid, ms since the epoch.
    pub not_after_ms: u64,
}

/// Where one worker slot runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub struct SlotAssignment {
    /// The agent running it; `None` while it waits for a place.
    pub agent: Option<AgentId>,
    /// That agent's data address.
    pub data: Option<String>,
    /// The worker's incarnation.
    pub number: WorkerNumber,
}

/// One job, as an agent that runs part of it must know it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub struct JobAssignment {
    /// The job.
    pub job: JobKey,
    /// Its owner (for logs, and the memory budgets of its streams).
    pub tenant: TenantId,
    /// The job cluster version's spec.
    pub spec: JobSpec,
    /// Parameter overrides of the submission.
    pub params: BTreeMap<String, String>,
    /// Each stage's artifact, by sha256 (fetch from `GET /api/v1/agent/artifacts/{sha256}`).
    pub artifacts: Vec<Sha256>,
    /// `slots[stage][index]`: where every worker of the job runs.
    pub slots: Vec<Vec<SlotAssignment>>,
    /// Whether this agent runs the job's source (the agent of stage 0's slot 0).
    pub source: bool,
    /// For the agent that runs the source of a job that reads another job's output
    /// (`source.kind = "job"`): where that output is now. `None` for other sources, other
    /// agents, and while the upstream cluster has no active job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<UpstreamSinks>,
    /// Per stage, the worker count before a rescale of the last few seconds (0: none). An
    /// agent that starts the job meanwhile holds the input of the key groups its workers gain
    /// until their state arrives, as the agents that applied the rescale do. Empty when no
    /// stage was rescaled lately.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rescaled_from: Vec<u32>,
}

/// Where the output of an upstream job is made: the data ports of the agents that run its
/// last stage. The downstream job's source connects to each and pulls that agent's share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub struct UpstreamSinks {
    /// The upstream cluster's current job.
    pub job: JobKey,
    /// The data addresses (`host:port`) of the agents that run its last stage, sorted.
    pub data: Vec<String>,
}

/// Master → agent: the answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub struct Assignments {
    /// When to send the next heartbeat, ms.
    pub heartbeat_ms: u64,
    /// Every job with a worker on this agent.
    pub jobs: Vec<JobAssignment>,
    /// How long, from when the agent sent its heartbeat, it may keep emitting without hearing
    /// from the master again, ms (0: without limit). Shorter than the master's agent timeout,
    /// so that an agent the master has given up on has stopped emitting by then.
    #[serde(default)]
    pub lease_ms: u64,
}
