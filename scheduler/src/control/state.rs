//! The live state the control loop holds behind its lock: the agents as their heartbeats
//! describe them, and the jobs. Its own module so that the loop's parts ([`super::agents`],
//! [`super::schedule`]) and the loop itself ([`super::Control`]) all depend on it, and it on
//! none of them.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use squilla_types::control::Heartbeat;
use squilla_types::ids::{AgentId, JobKey};

use super::model::Job;
use super::telemetry::Telemetry;

/// An agent as the master knows it.
pub(crate) struct AgentEntry {
    pub beat: Heartbeat,
    pub last_seen: Instant,
    pub lost: bool,
    /// When it joined, or came back after being lost.
    pub joined: Instant,
}

/// Everything the control loop holds.
#[derive(Default)]
pub(crate) struct State {
    pub agents: BTreeMap<AgentId, AgentEntry>,
    pub jobs: BTreeMap<JobKey, Job>,
    /// Bumped on every change, for status streams.
    pub version: u64,
    /// Jobs changed in memory and not yet stored (heartbeats' changes, failed writes).
    pub unsaved: BTreeSet<JobKey>,
    /// Jobs' metrics from the heartbeats.
    pub telemetry: Telemetry,
    /// The autoscaler's samples and cooldowns.
    pub autoscale: super::autoscaler::Tracks,
    /// Agents a scale-down left without a worker of a job, and until when they still get the
    /// job's assignment (with no slot of their own), so that their workers hand the state of
    /// their key groups over before the job stops there. In memory only.
    pub leaving: BTreeMap<(JobKey, AgentId), Instant>,
    /// Stages rescaled lately: their count before, and until when agents that start the job
    /// are told it (`JobAssignment::rescaled_from`). In memory only.
    pub rescaled: BTreeMap<(JobKey, usize), (u32, Instant)>,
}

/// How long an agent a scale-down left without a worker of a job keeps its assignment: time
/// for a few heartbeats to carry the new plan and for the state hand-off to finish.
pub(crate) const LEAVING_FOR: std::time::Duration = std::time::Duration::from_secs(10);
