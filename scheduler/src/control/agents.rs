//! Agents' heartbeats: what they report, and the plan each is handed back.

use std::time::Instant;

use squilla_types::control::{Assignments, Heartbeat, JobAssignment, ReportedState, SlotAssignment, UpstreamSinks};

use squilla_types::ids::{AgentId, JobKey};

use super::config::ControlConfig;
use super::model::{self, WorkerState};
use super::schedule;
use super::state::{AgentEntry, State};

/// The history state of an entry about failed calls (the worker keeps running).
const FAILING: &str = "failing";
/// At most one `failing` history entry per worker per this many ms.
const FAILING_EVERY_MS: i64 = 10_000;

/// Records a heartbeat: the agent is alive (again), and its workers' reports update their
/// slots. Reports about workers the master no longer assigns there are ignored: the agent
/// stops those when it sees its new plan.
pub(crate) fn record(state: &mut State, beat: Heartbeat, config: &ControlConfig, now_ms: i64) -> Vec<JobKey> {
    let agent = beat.agent.clone();
    match state.agents.get_mut(&agent) {
        Some(entry) => {
            if entry.lost {
                tracing::info!(agent = %agent, "lost agent is back; it gets only new work");
                entry.joined = Instant::now();
            }
            entry.lost = false;
            entry.last_seen = Instant::now();
            entry.beat = beat.clone();
        }
        None => {
            tracing::info!(agent = %agent, data = %beat.data, "agent registered");
            state.agents.insert(
                agent.clone(),
                AgentEntry { beat: beat.clone(), last_seen: Instant::now(), lost: false, joined: Instant::now() },
            );
        }
    }
    let mut dirty = Vec::new();
    for report in &beat.workers {
        let Some(job) = state.jobs.get_mut(&report.job) else { continue };
        if job.state.is_terminal() {
            continue;
        }
        let (s, i) = (report.stage as usize, report.index as usize);
        let job_key = job.key();
        let Some(w) = job.stages.get_mut(s).and_then(|st| st.workers.get_mut(i)) else { continue };
        if w.number != report.number || w.agent.as_ref() != Some(&agent) {
            continue;
        }
        state.telemetry.observe(report, now_ms);
        w.events_in = report.events_in;
        w.events_out = report.events_out;
        w.dropped = report.dropped;
        if report.failed_calls > w.failed_calls {
            // Failed calls go into the history, at most one entry per interval, with the count
            // by kind and the last message.
            let recent = w
                .history
                .iter()
                .rev()
                .find(|t| t.state == FAILING)
                .is_some_and(|t| now_ms - t.at_ms < FAILING_EVERY_MS);
            if !recent {
                let kinds: Vec<String> = report.failures.iter().map(|(k, n)| format!("{k} {n}")).collect();
                let reason = format!(
                    "{} failed call(s) ({}); last: {}",
                    report.failed_calls,
                    kinds.join(", "),
                    report.last_failure.as_deref().unwrap_or("unknown")
                );
                w.history.push(model::Transition { at_ms: now_ms, state: FAILING.into(), reason: Some(reason) });
                if w.history.len() > model::HISTORY {
                    w.history.remove(0);
                }
                dirty.push(job_key);
            }
            w.failed_calls = report.failed_calls;
            w.call_failures = report.failures.clone();
            w.last_failure = report.last_failure.clone();
        }
        match report.state {
            ReportedState::Running if w.state != WorkerState::Running => {
                if w.set_state(WorkerState::Running, None) {
                    w.running_since_ms = Some(now_ms);
                    job.refresh_state();
                    dirty.push(job.key());
                }
            }
            ReportedState::Running => {}
            ReportedState::Failed if report.fatal => {
                // It would fail the same way anywhere (its artifact cannot be compiled): no retry.
                let reason = report.message.clone().unwrap_or_else(|| "failed".into());
                tracing::warn!(job = %job.id, stage = s, index = i, %reason, "worker cannot run anywhere; failing the job");
                schedule::fail_job(job, s, i, reason);
                dirty.push(job.key());
            }
            ReportedState::Failed => {
                let reason = report.message.clone().unwrap_or_else(|| "failed".into());
                tracing::warn!(job = %job.id, stage = s, index = i, %reason, "worker failed; replacing it");
                schedule::replace(job, s, i, reason, true, config, now_ms);
                dirty.push(job.key());
            }
        }
    }
    dirty
}

/// Where the output of the upstream job of `job` (whose source reads another job cluster's
/// output) is made now: the data ports of the agents running the last stage of the
/// cluster's newest active job. Recomputed on every heartbeat, so the downstream source
/// follows the upstream's resubmits, re-placements and rescales within one heartbeat.
fn upstream_of(state: &State, job: &super::model::Job) -> Option<UpstreamSinks> {
    let squilla_types::SourceSpec::Job { cluster, .. } = &job.spec.source else { return None };
    let upstream = state
        .jobs
        .values()
        .filter(|j| j.tenant == job.tenant && j.cluster.as_str() == cluster.as_str() && !j.state.is_terminal())
        .max_by_key(|j| (j.submitted_at_ms, j.id.clone()))?;
    let mut data: Vec<String> = upstream
        .stages
        .last()
        .into_iter()
        .flat_map(|s| s.workers.iter())
        .filter_map(|w| w.agent.as_ref())
        .filter_map(|a| state.agents.get(a).filter(|e| !e.lost).map(|e| e.beat.data.clone()))
        .collect();
    data.sort();
    data.dedup();
    Some(UpstreamSinks { job: upstream.key(), data })
}

/// Per stage of `job`, its worker count before a rescale still in [`State::rescaled`]'s
/// window (0: none); empty if none is.
fn rescaled_from(state: &State, job: &super::model::Job) -> Vec<u32> {
    let now = std::time::Instant::now();
    let key = job.key();
    let from: Vec<u32> = (0..job.stages.len())
        .map(|s| state.rescaled.get(&(key.clone(), s)).filter(|(_, until)| *until > now).map_or(0, |(n, _)| *n))
        .collect();
    if from.iter().all(|n| *n == 0) { Vec::new() } else { from }
}

/// Every active job with a worker on `agent` (or that a scale-down is taking away from it:
/// [`State::leaving`]), with where all of its slots run.
pub(crate) fn assignments(state: &State, agent: &AgentId, config: &ControlConfig) -> Assignments {
    let data = |id: &AgentId| state.agents.get(id).filter(|e| !e.lost).map(|e| e.beat.data.clone());
    let jobs = state
        .jobs
        .values()
        .filter(|j| !j.state.is_terminal())
        .filter(|j| {
            j.workers().any(|(_, w)| w.agent.as_ref() == Some(agent))
                || state.leaving.get(&(j.key(), agent.clone())).is_some_and(|until| *until > std::time::Instant::now())
        })
        .map(|job| {
            let source =
                job.stages.first().and_then(|s| s.workers.first()).is_some_and(|w| w.agent.as_ref() == Some(agent));
            JobAssignment {
                job: job.key(),
                tenant: job.tenant.clone(),
                spec: job.spec.clone(),
                params: job.params.clone(),
                artifacts: job.artifacts.clone(),
                slots: job
                    .stages
                    .iter()
                    .map(|s| {
                        s.workers
                            .iter()
                            .map(|w| SlotAssignment {
                                agent: w.agent.clone(),
                                data: w.agent.as_ref().and_then(data),
                                number: w.number,
                            })
                            .collect()
                    })
                    .collect(),
                upstream: if source { upstream_of(state, job) } else { None },
                source,
                rescaled_from: rescaled_from(state, job),
            }
        })
        .collect();
    // The lease ends a tenth of the timeout before the master could declare the agent lost
    // (counted from the heartbeat's send time on the agent, from its receipt here).
    let lease_ms = (config.agent_timeout.as_millis() as u64).saturating_mul(9) / 10;
    Assignments { heartbeat_ms: config.heartbeat.as_millis() as u64, jobs, lease_ms }
}
