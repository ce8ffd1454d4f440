//! The autoscaler on live jobs: once a second the control loop samples every running stage
//! that has a scaling policy — per worker, over the last 10 s of its workers' heartbeats:
//! events in per second (`rps`), batches dropped per second (`drops`), the share of a core in
//! the stage's code (`cpu`) and batches queued (`queue`) — keeps the last 100 samples, and asks
//! [`crate::autoscale::decide`]. A decision is applied like a tenant's scale (quota checked, the
//! change stored before anything else sees it) and written in the job's history with its
//! reason and the samples it saw. Any scaling of a stage, by hand too, starts its cooldown.
//!
//! The samples live in memory: after a master restart a stage gathers `of` samples again
//! before it is scaled (a few seconds), and the cooldown starts afresh.

use std::collections::{BTreeMap, VecDeque};

use squilla_types::ids::JobKey;
use squilla_types::scaling::Reason;

use super::model::{Job, JobState};
use super::telemetry::{Telemetry, WorkerInfo};
use crate::autoscale::{Decision, Now, Sample, Signal};

/// How often stages are sampled, ms.
pub const PERIOD_MS: i64 = 1_000;

/// Samples kept per stage (a rolling count looks back over at most 100).
const KEPT: usize = 100;

/// A stage's samples and when it was last scaled.
#[derive(Debug, Default)]
struct Track {
    samples: VecDeque<Sample>,
    last_scaled_ms: Option<i64>,
}

/// The autoscaler's memory, kept in the control state.
#[derive(Debug, Default)]
pub(crate) struct Tracks {
    stages: BTreeMap<(JobKey, usize), Track>,
    last_round_ms: i64,
}

impl Tracks {
    /// Notes that stage `stage` of `key` was scaled at `now_ms` (by anyone).
    pub fn scaled(&mut self, key: &JobKey, stage: usize, now_ms: i64) {
        self.stages.entry((key.clone(), stage)).or_default().last_scaled_ms = Some(now_ms);
    }

    /// One round: a sample of every running stage with a policy, and the decisions they
    /// lead to. Nothing if the last round was less than [`PERIOD_MS`] ago.
    pub fn round(
        &mut self,
        jobs: &BTreeMap<JobKey, Job>,
        telemetry: &Telemetry,
        now_ms: i64,
    ) -> Vec<(JobKey, usize, Decision)> {
        if now_ms - self.last_round_ms < PERIOD_MS {
            return Vec::new();
        }
        self.last_round_ms = now_ms;
        self.stages.retain(|(key, _), _| jobs.get(key).is_some_and(|j| !j.state.is_terminal()));
        let mut decisions = Vec::new();
        for (key, job) in jobs {
            if job.state != JobState::Running || job.autoscale_paused {
                continue;
            }
            if job.spec.stages.iter().all(|s| s.scaling.is_none()) {
                continue;
            }
            let view = telemetry.view(key, &infos(job), now_ms);
            for (s, (spec, metrics)) in job.spec.stages.iter().zip(&view.stages).enumerate() {
                let Some(policy) = &spec.scaling else { continue };
                let workers = job.stages[s].workers.len().max(1) as u32;
                let track = self.stages.entry((key.clone(), s)).or_default();
                if let Some(rates) = metrics.rates.get("10s").filter(|r| r.span_ms > 0) {
                    let per = f64::from(workers);
                    let values = [
                        (Reason::Rps, rates.events_in / per),
                        (Reason::Drops, rates.dropped / per),
                        (Reason::Cpu, rates.guest_cpu / per),
                        (Reason::Queue, metrics.queue_depth as f64 / per),
                    ];
                    let user = metrics
                        .user
                        .iter()
                        .map(|(name, sum)| (Signal { reason: Reason::User, metric: Some(name.clone()) }, sum / per));
                    let values = values
                        .into_iter()
                        .map(|(reason, v)| (Signal { reason, metric: None }, v))
                        .chain(user)
                        .collect();
                    track.samples.push_back(Sample { at_ms: now_ms, values });
                    if track.samples.len() > KEPT {
                        track.samples.pop_front();
                    }
                }
                let history: Vec<Sample> = track.samples.iter().cloned().collect();
                let now = Now { workers, last_scaled_ms: track.last_scaled_ms, at_ms: now_ms };
                let decision = match &policy.set_point {
                    Some(sp) => {
                        let signal = Signal { reason: sp.reason, metric: sp.metric.clone() };
                        let aim = (sp.target, sp.tolerance, sp.samples as usize);
                        crate::autoscale::decide_set_point(policy, &history, &signal, aim, now)
                    }
                    None => crate::autoscale::decide(policy, &history, now),
                };
                if let Some(decision) = decision {
                    decisions.push((key.clone(), s, decision));
                }
            }
        }
        decisions
    }
}

/// What the metrics view needs of a job's workers.
pub(crate) fn infos(job: &Job) -> Vec<(String, Vec<WorkerInfo>)> {
    job.stages
        .iter()
        .map(|stage| {
            let workers = stage
                .workers
                .iter()
                .map(|w| WorkerInfo {
                    number: w.number,
                    agent: w.agent.as_ref().map(ToString::to_string),
                    state: serde_json::to_value(w.state)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default(),
                })
                .collect();
            (stage.name.clone(), workers)
        })
        .collect()
}

/// The history line of a decision.
pub(crate) fn note(stage: &str, from: u32, decision: &Decision) -> String {
    let seen: Vec<String> = decision
        .seen
        .iter()
        .map(|(signal, values)| {
            let values: Vec<String> = values.iter().map(|v| format!("{v:.3}")).collect();
            format!("{signal} [{}]", values.join(", "))
        })
        .collect();
    format!(
        "autoscaled stage `{stage}` from {from} to {} workers: {}; saw {}",
        decision.workers,
        decision.reason,
        if seen.is_empty() { "nothing".to_owned() } else { seen.join("; ") }
    )
}
