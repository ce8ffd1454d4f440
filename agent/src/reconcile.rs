//! What the agent must do to match the master's plan, decided by pure functions.
//!
//! [`jobs`] compares the jobs the agent runs with the plan and says, per job, whether to
//! start it, hand it a new assignment, or stop it; [`job`] compares what a job's thread has
//! applied with its latest assignment and says which stages to re-plan and what to do with the
//! source. The executors ([`crate::jobs::Jobs::apply`] and the job threads, [`crate::job`])
//! only carry the actions out, so every transition is tested here without threads, sockets or
//! guests.

use std::collections::BTreeSet;

use squilla_types::control::JobAssignment;
use squilla_types::ids::JobKey;

/// What the dispatcher does with one job of the plan (or of the agent).
#[derive(Debug, Clone, PartialEq)]
pub enum JobsAction {
    /// A job new here: start its thread with this assignment.
    Start(JobAssignment),
    /// A job already here: hand its thread this assignment (the thread decides what changed).
    Assign(JobAssignment),
    /// A job no longer in the plan: stop it.
    Stop(JobKey),
}

/// The actions that make the agent, running `running`, match `plan`: stops first, then
/// starts and assignments in the plan's order.
pub fn jobs(running: &BTreeSet<JobKey>, plan: &[JobAssignment]) -> Vec<JobsAction> {
    let wanted: BTreeSet<&JobKey> = plan.iter().map(|a| &a.job).collect();
    let mut actions: Vec<JobsAction> =
        running.iter().filter(|id| !wanted.contains(id)).map(|id| JobsAction::Stop(id.clone())).collect();
    for assignment in plan {
        actions.push(if running.contains(&assignment.job) {
            JobsAction::Assign(assignment.clone())
        } else {
            JobsAction::Start(assignment.clone())
        });
    }
    actions
}

/// What a job's thread does to match an assignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobAction {
    /// Nothing runs yet: fetch and compile the artifacts, start the pipeline (with the
    /// source, if the assignment gives it here).
    Start,
    /// Re-plan stage `stage` (set its slots on the pipeline): its slots moved, were replaced or
    /// scaled (unchanged workers keep their state).
    SetSlots {
        /// The stage.
        stage: usize,
    },
    /// The source now runs here.
    AttachSource,
    /// The source moved away.
    DetachSource,
}

/// The actions that take a job from `applied` (what its pipeline matches, `None` when none
/// runs) with its source attached or not, to `wanted`.
pub fn job(applied: Option<&JobAssignment>, source_attached: bool, wanted: &JobAssignment) -> Vec<JobAction> {
    let Some(applied) = applied else { return vec![JobAction::Start] };
    let mut actions: Vec<JobAction> = wanted
        .slots
        .iter()
        .enumerate()
        .filter(|(stage, slots)| applied.slots.get(*stage) != Some(*slots))
        .map(|(stage, _)| JobAction::SetSlots { stage })
        .collect();
    match (wanted.source, source_attached) {
        (true, false) => actions.push(JobAction::AttachSource),
        (false, true) => actions.push(JobAction::DetachSource),
        _ => {}
    }
    actions
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use squilla_types::control::SlotAssignment;

    use super::*;

    fn slot(agent: &str, number: u64) -> SlotAssignment {
        SlotAssignment {
            agent: Some(agent.parse().unwrap()),
            data: Some("127.0.0.1:9".into()),
            number: squilla_types::ids::WorkerNumber(number),
        }
    }

    fn assignment(job: &str, slots: Vec<Vec<SlotAssignment>>, source: bool) -> JobAssignment {
        let spec = squilla_types::JobSpec::parse(
            r#"{"name": "errors", "source": {"kind": "ingest"},
                "stages": [{"name": "a", "artifact": "f@1"}, {"name": "b", "artifact": "f@1"}]}"#,
        )
        .unwrap();
        JobAssignment {
            job: job.parse().unwrap(),
            tenant: "acme".parse().unwrap(),
            spec,
            params: BTreeMap::new(),
            artifacts: vec![squilla_types::ids::Sha256::of(b"x"); 2],
            slots,
            source,
            upstream: None,
            rescaled_from: Vec::new(),
        }
    }

    #[test]
    fn the_dispatcher_starts_new_jobs_assigns_known_ones_and_stops_the_rest() {
        let a = assignment("acme.a-1", vec![vec![slot("me", 1)], vec![slot("me", 2)]], true);
        let b = assignment("acme.b-1", vec![vec![slot("me", 1)], vec![slot("me", 2)]], true);
        let running: BTreeSet<JobKey> = ["acme.a-1".parse().unwrap(), "acme.gone-1".parse().unwrap()].into();
        assert_eq!(
            jobs(&running, &[a.clone(), b.clone()]),
            vec![JobsAction::Stop("acme.gone-1".parse().unwrap()), JobsAction::Assign(a), JobsAction::Start(b)]
        );
        assert_eq!(jobs(&BTreeSet::new(), &[]), vec![]);
        assert_eq!(jobs(&running, &[]).len(), 2, "an empty plan stops everything");
    }

    #[test]
    fn a_job_thread_starts_replans_changed_stages_and_moves_its_source() {
        let base = assignment("acme.a-1", vec![vec![slot("me", 1)], vec![slot("me", 2), slot("other", 3)]], true);
        // Nothing runs yet (new, or the last start failed): start.
        assert_eq!(job(None, false, &base), vec![JobAction::Start]);
        // The same assignment: nothing to do.
        assert_eq!(job(Some(&base), true, &base), vec![]);
        // A worker moved (stage 1, slot 1 now here with a new number).
        let mut moved = base.clone();
        moved.slots[1][1] = slot("me", 4);
        assert_eq!(job(Some(&base), true, &moved), vec![JobAction::SetSlots { stage: 1 }]);
        // A worker replaced on the same agent (new number): its stage only.
        let mut replaced = base.clone();
        replaced.slots[0][0] = slot("me", 5);
        assert_eq!(job(Some(&base), true, &replaced), vec![JobAction::SetSlots { stage: 0 }]);
        // A stage scaled up and down.
        let mut scaled = base.clone();
        scaled.slots[0].push(slot("other", 6));
        scaled.slots[1].pop();
        assert_eq!(
            job(Some(&base), true, &scaled),
            vec![JobAction::SetSlots { stage: 0 }, JobAction::SetSlots { stage: 1 }]
        );
        // The source moved away, and back.
        let mut away = base.clone();
        away.source = false;
        assert_eq!(job(Some(&base), true, &away), vec![JobAction::DetachSource]);
        assert_eq!(job(Some(&away), false, &base), vec![JobAction::AttachSource]);
        // The source is not attached although it should be (its start failed): attach it.
        assert_eq!(job(Some(&base), false, &base), vec![JobAction::AttachSource]);
    }
}
