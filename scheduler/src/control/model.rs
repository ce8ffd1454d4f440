//! Jobs and workers as the master keeps them (and stores them, as JSON).
//!
//! States follow Mantis. A job is `accepted` when submitted, `launched` once every worker has
//! a place, `running` once every worker reports running; it ends `completed`, `failed` (with
//! the reason) or `killed`. A worker is `accepted` while it waits for a place, `launched`
//! once assigned to an agent, `running` once the agent reports it; a failed worker is
//! replaced by a new incarnation (new `number`, same `index`) after a backoff.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use squilla_types::JobSpec;

/// A job's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobState {
    /// Submitted; some workers wait for a place.
    Accepted,
    /// Every worker has a place; not all run yet.
    Launched,
    /// Every worker runs.
    Running,
    /// Ended by itself.
    Completed,
    /// Ended by the master, with a reason.
    Failed,
    /// Ended by its tenant.
    Killed,
}

impl JobState {
    /// Whether the job has ended.
    pub fn is_terminal(self) -> bool {
        matches!(self, JobState::Completed | JobState::Failed | JobState::Killed)
    }
}

/// A worker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorkerState {
    /// Waiting for a place.
    Accepted,
    /// Assigned to an agent.
    Launched,
    /// Its agent reports it running.
    Running,
    /// Ended (its job ended, or it was replaced).
    Stopped,
}

/// One entry of a state history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// When, ms since the Unix epoch.
    pub at_ms: i64,
    /// The new state, as text.
    pub state: String,
    /// Why, when there is more to say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// How many transitions a history keeps (oldest dropped first).
pub const HISTORY: usize = 50;

pub(crate) fn push_history(history: &mut Vec<Transition>, state: impl Serialize, reason: Option<String>) {
    let state = serde_json::to_value(state).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
    history.push(Transition { at_ms: now_ms(), state, reason });
    if history.len() > HISTORY {
        history.remove(0);
    }
}

/// A worker slot and its current incarnation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Worker {
    /// Its slot in the stage (kept on replacement).
    pub index: u32,
    /// Its incarnation (unique within the job, new on every replacement).
    pub number: u64,
    /// Its state.
    pub state: WorkerState,
    /// The agent it is assigned to.
    pub agent: Option<String>,
    /// Why it is waiting, when it cannot be placed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_reason: Option<String>,
    /// Replacements since it last ran (drives the backoff).
    pub attempts: u32,
    /// Failures since it last ran (too many fail the job).
    pub failures: u32,
    /// Not placed before this time, ms since the Unix epoch (backoff).
    pub not_before_ms: i64,
    /// Since when its agent reports it running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_since_ms: Option<i64>,
    /// Last reported counters.
    #[serde(default)]
    pub events_in: u64,
    /// Last reported counters.
    #[serde(default)]
    pub events_out: u64,
    /// Batches dropped on the way into it (by the backpressure policy, or because it had
    /// failed or been replaced), as last reported.
    #[serde(default)]
    pub dropped: u64,
    /// Calls into its stage that failed, as last reported.
    #[serde(default)]
    pub failed_calls: u64,
    /// Failed calls by kind (`trap`, `deadline`, `stage-error`, `invalid-output`, `init`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub call_failures: BTreeMap<String, u64>,
    /// The last failed call, `kind: message`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<String>,
    /// Its history.
    pub history: Vec<Transition>,
}

/// A stage of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stage {
    /// The stage's name.
    pub name: String,
    /// Its worker slots.
    pub workers: Vec<Worker>,
}

/// A job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// `<cluster>-<n>`.
    pub id: String,
    /// Its owner.
    pub tenant: String,
    /// The cluster it was submitted from.
    pub cluster: String,
    /// The cluster version.
    pub version: u32,
    /// That version's spec.
    pub spec: JobSpec,
    /// Each stage's artifact, by sha256.
    pub artifacts: Vec<String>,
    /// Parameter overrides.
    pub params: BTreeMap<String, String>,
    /// Its state.
    pub state: JobState,
    /// Why it is in that state, when there is more to say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Its history.
    pub history: Vec<Transition>,
    /// Its stages and their workers.
    pub stages: Vec<Stage>,
    /// Bumped on every change of where its workers run.
    pub generation: u64,
    /// The next worker number.
    pub next_number: u64,
    /// When it was submitted, ms since the Unix epoch.
    pub submitted_at_ms: i64,
}

/// The master-wide key of `tenant`'s job `id`: `tenant.id` (job ids are unique per tenant;
/// `.` appears in neither part). Agents and the transport know jobs by this key.
pub fn job_key(tenant: &str, id: &str) -> String {
    format!("{tenant}.{id}")
}

impl Job {
    /// The master-wide key, see [`job_key`].
    pub fn key(&self) -> String {
        job_key(&self.tenant, &self.id)
    }

    /// Every worker, with its stage.
    pub fn workers(&self) -> impl Iterator<Item = (usize, &Worker)> {
        self.stages.iter().enumerate().flat_map(|(s, stage)| stage.workers.iter().map(move |w| (s, w)))
    }

    /// Moves the job to `state`, recording it.
    pub fn set_state(&mut self, state: JobState, reason: Option<String>) {
        if self.state != state || (reason.is_some() && self.reason != reason) {
            self.state = state;
            self.reason = reason.clone();
            push_history(&mut self.history, state, reason);
        }
    }

    /// A fresh worker for slot `index` (the next number, waiting for a place).
    pub fn new_worker(&mut self, index: u32, not_before_ms: i64, attempts: u32, failures: u32) -> Worker {
        let number = self.next_number;
        self.next_number += 1;
        let mut history = Vec::new();
        push_history(&mut history, WorkerState::Accepted, None);
        Worker {
            index,
            number,
            state: WorkerState::Accepted,
            agent: None,
            pending_reason: None,
            attempts,
            failures,
            not_before_ms,
            running_since_ms: None,
            events_in: 0,
            events_out: 0,
            dropped: 0,
            failed_calls: 0,
            call_failures: BTreeMap::new(),
            last_failure: None,
            history,
        }
    }

    /// Recomputes the job's state from its workers' (terminal states are kept).
    pub fn refresh_state(&mut self) {
        if self.state.is_terminal() {
            return;
        }
        let all = |s: WorkerState| self.workers().all(|(_, w)| w.state == s);
        let placed = self.workers().all(|(_, w)| w.agent.is_some());
        let next = if all(WorkerState::Running) {
            JobState::Running
        } else if placed {
            JobState::Launched
        } else {
            JobState::Accepted
        };
        if next != self.state {
            self.set_state(next, None);
        }
    }
}

pub use squilla_types::time::now_ms;
