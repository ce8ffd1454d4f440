//! Placing waiting workers, replacing failed or lost ones, and declaring agents lost.
//!
//! Each function changes the state in place and returns the ids of the jobs it changed (the
//! caller stores them). The placement plan itself is [`crate::placement::plan`], a pure
//! function: this module only turns jobs and agents into its input and its output back into
//! assignments.

use std::collections::BTreeMap;

use squilla_types::ids::{AgentId, JobKey};
use squilla_types::{Fitness, Strength as SpecStrength};

use super::config::ControlConfig;
use super::model::{self, Job, JobState, WorkerState};
use super::state::State;
use crate::placement::{self, Agent, Constraints, Request, Resources, StageKey, Strength, WorkerKey};

pub(crate) fn needs(job: &Job, stage: usize) -> Resources {
    let r = job.spec.stages[stage].resources;
    Resources {
        cpu_millis: u64::from(r.cpu_millis),
        memory_mib: u64::from(r.memory_mib),
        network_mbps: u64::from(r.network_mbps),
        slots: 1,
    }
}

fn strength(s: SpecStrength) -> Strength {
    match s {
        SpecStrength::Off => Strength::Off,
        SpecStrength::Soft => Strength::Soft,
        SpecStrength::Hard => Strength::Hard,
    }
}

fn stage_key(job: &Job, stage: usize) -> StageKey {
    StageKey { job: job.key().to_string(), stage: job.stages[stage].name.clone() }
}

/// Places every worker that waits for a place and whose backoff has passed: asks placement for
/// a plan and assigns the workers it places.
pub(crate) fn place_waiting(state: &mut State, now_ms: i64) -> Vec<JobKey> {
    // Placement is pure and speaks text; agents come back by their id's text.
    let ids: BTreeMap<String, AgentId> = state.agents.keys().map(|id| (id.to_string(), id.clone())).collect();
    let mut agents: Vec<Agent> = state
        .agents
        .iter()
        .filter(|(_, e)| !e.lost)
        .map(|(id, e)| Agent {
            id: id.to_string(),
            zone: e.beat.zone.clone(),
            labels: e.beat.labels.clone(),
            capacity: Resources {
                cpu_millis: e.beat.capacity.cpu_millis,
                memory_mib: e.beat.capacity.memory_mib,
                network_mbps: e.beat.capacity.network_mbps,
                slots: e.beat.capacity.slots,
            },
            used: Resources::default(),
            running: Vec::new(),
        })
        .collect();
    let mut requests: BTreeMap<Fitness, Vec<Request>> = BTreeMap::new();
    let mut slots: BTreeMap<WorkerKey, (JobKey, usize, usize)> = BTreeMap::new();
    for job in state.jobs.values().filter(|j| !j.state.is_terminal()) {
        for (s, stage) in job.stages.iter().enumerate() {
            for (i, w) in stage.workers.iter().enumerate() {
                match &w.agent {
                    Some(agent) => {
                        if let Some(a) = agents.iter_mut().find(|a| a.id == agent.as_str()) {
                            a.used = a.used.plus(&needs(job, s));
                            a.running.push(stage_key(job, s));
                        }
                    }
                    None if w.not_before_ms <= now_ms => {
                        let spec = &job.spec.stages[s].constraints;
                        let key = WorkerKey { stage: stage_key(job, s), index: w.index };
                        slots.insert(key.clone(), (job.key(), s, i));
                        requests.entry(job.spec.fitness).or_default().push(Request {
                            key,
                            needs: needs(job, s),
                            constraints: Constraints {
                                unique_agent: strength(spec.unique_agent),
                                zone_balance: strength(spec.zone_balance),
                                labels: spec
                                    .labels
                                    .iter()
                                    .map(|l| (l.name.clone(), l.value.clone(), strength(l.strength)))
                                    .collect(),
                            },
                        });
                    }
                    None => {}
                }
            }
        }
    }
    let mut dirty = Vec::new();
    for (fitness, requests) in requests {
        let fitness = match fitness {
            Fitness::BinPack => placement::Fitness::BinPack,
            Fitness::Spread => placement::Fitness::Spread,
        };
        let outcome = placement::plan(&agents, &requests, fitness);
        for (key, agent) in outcome.assigned {
            let (Some((job_id, s, i)), Some(agent_id)) = (slots.get(&key), ids.get(&agent)) else { continue };
            let Some(job) = state.jobs.get_mut(job_id) else { continue };
            if let Some(a) = agents.iter_mut().find(|a| a.id == agent) {
                a.used = a.used.plus(&needs(job, *s));
                a.running.push(stage_key(job, *s));
            }
            let w = &mut job.stages[*s].workers[*i];
            w.agent = Some(agent_id.clone());
            w.pending_reason = None;
            w.set_state(WorkerState::Launched, Some(format!("placed on agent `{agent}`")));
            job.generation += 1;
            job.refresh_state();
            dirty.push(job_id.clone());
        }
        for (key, reason) in outcome.unplaced {
            let Some((job_id, s, i)) = slots.get(&key) else { continue };
            let Some(job) = state.jobs.get_mut(job_id) else { continue };
            let w = &mut job.stages[*s].workers[*i];
            if w.pending_reason.as_deref() != Some(reason.as_str()) {
                w.pending_reason = Some(reason);
                dirty.push(job_id.clone());
            }
        }
    }
    dirty
}

/// Replaces worker `i` of stage `s` by a new incarnation that waits for a place after a
/// backoff; `failure` counts towards failing the job.
pub(crate) fn replace(
    job: &mut Job,
    s: usize,
    i: usize,
    reason: String,
    failure: bool,
    config: &ControlConfig,
    now_ms: i64,
) {
    let old = &mut job.stages[s].workers[i];
    old.set_state(WorkerState::Stopped, Some(reason.clone()));
    let (index, attempts, failures) = (old.index, old.attempts + 1, old.failures + u32::from(failure));
    let mut history = std::mem::take(&mut old.history);
    let delay = config.backoff.saturating_mul(1 << (attempts - 1).min(16)).min(config.max_backoff);
    let mut next = job.new_worker(index, now_ms + delay.as_millis() as i64, attempts, failures);
    history.append(&mut next.history);
    next.history = history;
    if next.history.len() > model::HISTORY {
        let extra = next.history.len() - model::HISTORY;
        next.history.drain(..extra);
    }
    let stage = job.stages[s].name.clone();
    job.stages[s].workers[i] = next;
    job.generation += 1;
    if failures >= config.max_worker_failures {
        for w in job.stages.iter_mut().flat_map(|st| st.workers.iter_mut()) {
            w.set_state(WorkerState::Stopped, Some("its job failed".into()));
        }
        job.set_state(
            JobState::Failed,
            Some(format!("stage `{stage}` worker {index} failed {failures} times in a row; last: {reason}")),
        );
    } else {
        job.refresh_state();
    }
}

/// Fails `job` at once because worker `i` of stage `s` cannot run anywhere (`reason`).
pub(crate) fn fail_job(job: &mut Job, s: usize, i: usize, reason: String) {
    let stage = job.stages[s].name.clone();
    let index = job.stages[s].workers[i].index;
    job.stages[s].workers[i].set_state(WorkerState::Stopped, Some(reason.clone()));
    for w in job.stages.iter_mut().flat_map(|st| st.workers.iter_mut()) {
        w.set_state(WorkerState::Stopped, Some("its job failed".into()));
    }
    job.generation += 1;
    job.set_state(JobState::Failed, Some(format!("stage `{stage}` worker {index} cannot run: {reason}")));
}

/// Declares agents silent for longer than the timeout lost (not during the grace period after
/// a restart), and replaces their workers.
pub(crate) fn lose_agents(state: &mut State, config: &ControlConfig, grace: bool, now_ms: i64) -> Vec<JobKey> {
    if grace {
        return Vec::new();
    }
    let mut lost = Vec::new();
    for (id, entry) in &mut state.agents {
        if !entry.lost && entry.last_seen.elapsed() > config.agent_timeout {
            entry.lost = true;
            tracing::warn!(agent = %id, "agent lost: no heartbeat in {:?}", config.agent_timeout);
            lost.push(id.clone());
        }
    }
    // Workers assigned to agents the master has never heard of since it started are lost too.
    let known: Vec<AgentId> = state.agents.keys().cloned().collect();
    let mut dirty = Vec::new();
    for job in state.jobs.values_mut().filter(|j| !j.state.is_terminal()) {
        let mut replaced = false;
        for s in 0..job.stages.len() {
            for i in 0..job.stages[s].workers.len() {
                let Some(agent) = job.stages[s].workers[i].agent.clone() else { continue };
                if lost.contains(&agent) || !known.contains(&agent) {
                    replace(job, s, i, format!("agent `{agent}` lost"), false, config, now_ms);
                    replaced = true;
                }
            }
        }
        if replaced {
            dirty.push(job.key());
        }
    }
    dirty
}

/// Forgets the failures of slots that have run well for a while.
pub(crate) fn forgive(state: &mut State, config: &ControlConfig, now_ms: i64) -> Vec<JobKey> {
    let mut dirty = Vec::new();
    for job in state.jobs.values_mut().filter(|j| !j.state.is_terminal()) {
        let mut changed = false;
        for w in job.stages.iter_mut().flat_map(|s| s.workers.iter_mut()) {
            let healthy = w.running_since_ms.is_some_and(|t| now_ms - t >= config.healthy_after.as_millis() as i64);
            if healthy && (w.failures > 0 || w.attempts > 0) {
                w.failures = 0;
                w.attempts = 0;
                changed = true;
            }
        }
        if changed {
            dirty.push(job.key());
        }
    }
    dirty
}
