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
use squilla_types::ids::{AgentId, ClusterName, JobId, JobKey, Sha256, TenantId, WorkerNumber};

/// A job's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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

    /// Whether a job may go from `self` to `to` (see [`JOB_TRANSITIONS`]).
    pub fn can_become(self, to: JobState) -> bool {
        JOB_TRANSITIONS.iter().any(|(from, tos)| *from == self && tos.contains(&to))
    }
}

/// Every legal change of a job's state, from each state. While it runs, a job moves freely
/// between `accepted` (a worker waits for a place), `launched` (all placed) and `running` (all
/// running) as its workers are placed, run, fail and are replaced; it ends once, in
/// `completed`, `failed` or `killed`, and never leaves.
pub const JOB_TRANSITIONS: &[(JobState, &[JobState])] = {
    use JobState::*;
    &[
        (Accepted, &[Launched, Running, Completed, Failed, Killed]),
        (Launched, &[Accepted, Running, Completed, Failed, Killed]),
        (Running, &[Accepted, Launched, Completed, Failed, Killed]),
        (Completed, &[]),
        (Failed, &[]),
        (Killed, &[]),
    ]
};

/// A worker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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

impl WorkerState {
    /// Whether a worker may go from `self` to `to` (see [`WORKER_TRANSITIONS`]).
    pub fn can_become(self, to: WorkerState) -> bool {
        WORKER_TRANSITIONS.iter().any(|(from, tos)| *from == self && tos.contains(&to))
    }
}

/// Every legal change of a worker's state, from each state. A worker incarnation is placed
/// (`launched`), then reported `running`; it is `stopped` once — its job ended, or it was
/// replaced by a new incarnation (which starts `accepted`) — and never runs again.
pub const WORKER_TRANSITIONS: &[(WorkerState, &[WorkerState])] = {
    use WorkerState::*;
    &[(Accepted, &[Launched, Stopped]), (Launched, &[Running, Stopped]), (Running, &[Stopped]), (Stopped, &[])]
};

/// One entry of a state history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Worker {
    /// Its slot in the stage (kept on replacement).
    pub index: u32,
    /// Its incarnation (unique within the job, new on every replacement).
    pub number: WorkerNumber,
    /// Its state.
    pub state: WorkerState,
    /// The agent it is assigned to.
    pub agent: Option<AgentId>,
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

impl Worker {
    /// Moves the worker to `state`, recording it with `reason`, if the move is legal
    /// ([`WORKER_TRANSITIONS`]); returns whether it moved. An illegal move changes nothing
    /// (and is logged: it is a bug).
    pub fn set_state(&mut self, state: WorkerState, reason: Option<String>) -> bool {
        if self.state == state {
            return false;
        }
        if !self.state.can_become(state) {
            tracing::error!(number = self.number.0, from = ?self.state, to = ?state, "illegal worker state change refused");
            return false;
        }
        self.state = state;
        push_history(&mut self.history, state, reason);
        true
    }
}

/// A stage of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Stage {
    /// The stage's name.
    pub name: String,
    /// Its worker slots.
    pub workers: Vec<Worker>,
}

/// A job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Job {
    /// `<cluster>-<n>`.
    pub id: JobId,
    /// Its owner.
    pub tenant: TenantId,
    /// The cluster it was submitted from.
    pub cluster: ClusterName,
    /// The cluster version.
    pub version: u32,
    /// That version's spec.
    pub spec: JobSpec,
    /// Each stage's artifact, by sha256.
    pub artifacts: Vec<Sha256>,
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
    /// Whether its tenant has paused its stages' scaling policies.
    #[serde(default)]
    pub autoscale_paused: bool,
}

impl Job {
    /// The job's key among every tenant's.
    pub fn key(&self) -> JobKey {
        JobKey::new(self.tenant.clone(), self.id.clone())
    }

    /// Every worker, with its stage.
    pub fn workers(&self) -> impl Iterator<Item = (usize, &Worker)> {
        self.stages.iter().enumerate().flat_map(|(s, stage)| stage.workers.iter().map(move |w| (s, w)))
    }

    /// Moves the job to `state`, recording it, if the move is legal ([`JOB_TRANSITIONS`]);
    /// a change of reason alone is recorded too. An illegal move changes nothing (and is
    /// logged: it is a bug).
    pub fn set_state(&mut self, state: JobState, reason: Option<String>) {
        if self.state == state {
            if reason.is_some() && self.reason != reason {
                self.reason = reason.clone();
                push_history(&mut self.history, state, reason);
            }
            return;
        }
        if !self.state.can_become(state) {
            tracing::error!(job = %self.id, from = ?self.state, to = ?state, "illegal job state change refused");
            return;
        }
        self.state = state;
        self.reason = reason.clone();
        push_history(&mut self.history, state, reason);
    }

    /// A fresh worker for slot `index` (the next number, waiting for a place).
    pub fn new_worker(&mut self, index: u32, not_before_ms: i64, attempts: u32, failures: u32) -> Worker {
        let number = WorkerNumber(self.next_number);
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

#[cfg(test)]
mod tests {
    use super::*;

    const JOBS: [JobState; 6] = [
        JobState::Accepted,
        JobState::Launched,
        JobState::Running,
        JobState::Completed,
        JobState::Failed,
        JobState::Killed,
    ];
    const WORKERS: [WorkerState; 4] =
        [WorkerState::Accepted, WorkerState::Launched, WorkerState::Running, WorkerState::Stopped];

    #[test]
    fn every_job_state_change_is_decided_by_the_table() {
        for from in JOBS {
            for to in JOBS {
                let legal = from != to && !from.is_terminal();
                assert_eq!(from.can_become(to), legal, "{from:?} -> {to:?}");
            }
        }
        let mut job: Job = serde_json::from_value(serde_json::json!({
            "id": "e-1", "tenant": "t", "cluster": "e", "version": 1,
            "spec": {"name": "e", "source": {"kind": "ingest"}, "stages": [{"name": "s", "artifact": "f@1"}]},
            "artifacts": [squilla_types::ids::Sha256::of(b"x")], "params": {}, "state": "running", "history": [], "stages": [],
            "generation": 1, "next_number": 1, "submitted_at_ms": 0
        }))
        .unwrap();
        job.set_state(JobState::Killed, Some("by t".into()));
        job.set_state(JobState::Running, None);
        assert_eq!(job.state, JobState::Killed, "an ended job never runs again");
        assert_eq!(job.history.len(), 1);
    }

    #[test]
    fn every_worker_state_change_is_decided_by_the_table() {
        let legal = [
            (WorkerState::Accepted, WorkerState::Launched),
            (WorkerState::Accepted, WorkerState::Stopped),
            (WorkerState::Launched, WorkerState::Running),
            (WorkerState::Launched, WorkerState::Stopped),
            (WorkerState::Running, WorkerState::Stopped),
        ];
        for from in WORKERS {
            for to in WORKERS {
                assert_eq!(from.can_become(to), legal.contains(&(from, to)), "{from:?} -> {to:?}");
            }
        }
    }
}
