//! A stage's scaling policy (`stages[i].scaling` in the job spec), in Mantis's shape: bounds,
//! step sizes, a cooldown, and strategies by reason, each with thresholds and a rolling
//! count of samples (`k` of the last `n` must agree) so that one noisy sample moves nothing.
//! The master's autoscaler (`squilla_scheduler::autoscale`) reads it.

use serde::{Deserialize, Serialize};

use crate::spec::{SpecError, limits};

/// How a stage scales itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ScalingPolicy {
    /// The fewest workers (default 1).
    #[serde(default = "one")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1000))]
    pub min: u32,
    /// The most workers.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1000))]
    pub max: u32,
    /// Workers added per scale-up (default 1).
    #[serde(default = "one")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub increment: u32,
    /// Workers removed per scale-down (default 1).
    #[serde(default = "one")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub decrement: u32,
    /// Seconds after any scaling of the stage before the next (default 60).
    #[serde(default = "default_cooldown")]
    #[cfg_attr(feature = "openapi", schema(maximum = 86_400))]
    pub cooldown_secs: u64,
    /// Why to scale: any strategy that votes up scales up; the stage scales down only when
    /// every strategy votes down. Required (1 to 5) unless `set-point` is given.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_items = 5))]
    pub strategies: Vec<Strategy>,
    /// Instead of the strategies' thresholds, size the stage so that a signal's mean per
    /// worker lands on a target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_point: Option<SetPoint>,
}

/// A target for one signal per worker: the stage is sized in one step so that the mean of the
/// signal's last `samples` samples lands on `target` (`workers × mean / target`, rounded up),
/// unless the mean is within `tolerance` (a fraction of the target) of it already.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SetPoint {
    /// What is measured.
    pub reason: Reason,
    /// For `user`: the name of the metric the stage emits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    /// The wanted mean per worker (above 0; at most 1 for `cpu`).
    #[cfg_attr(feature = "openapi", schema(exclusive_minimum = 0))]
    pub target: f64,
    /// How far from the target the mean may be before the stage is resized, as a fraction of
    /// the target (default 0.15).
    #[serde(default = "default_tolerance")]
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 1))]
    pub tolerance: f64,
    /// How many of the latest samples are averaged (default 5).
    #[serde(default = "default_window")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 100))]
    pub samples: u32,
}

fn default_tolerance() -> f64 {
    0.15
}

fn default_window() -> u32 {
    5
}

/// Checks a strategy's or set-point's `reason` and `metric` at `path`.
fn check_metric(path: &str, reason: Reason, metric: &Option<String>) -> Result<(), SpecError> {
    match (reason, metric) {
        (Reason::User, None) => Err(err(&format!("{path}.metric"), "a user signal names its metric")),
        (Reason::User, Some(m)) if !crate::ids::is_name(m) => {
            Err(err(&format!("{path}.metric"), "1 to 63 of a-z, 0-9 and '-', starting with a letter"))
        }
        (Reason::User, Some(_)) | (_, None) => Ok(()),
        (_, Some(_)) => Err(err(&format!("{path}.metric"), "only a user signal names a metric")),
    }
}

/// One reason to scale, with its thresholds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Strategy {
    /// What is measured.
    pub reason: Reason,
    /// For `user`: the name of the metric the stage emits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    /// Vote up when a sample is above this.
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub scale_up_above: f64,
    /// Vote down when a sample is below this (at most `scale-up-above`).
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub scale_down_below: f64,
    /// How many of the last `of` samples must pass a threshold (default 3 of 5).
    #[serde(default)]
    pub samples: Samples,
}

/// A rolling count: `k` of the last `of` samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Samples {
    /// How many must agree.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 100))]
    pub k: u32,
    /// Out of how many of the latest.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 100))]
    pub of: u32,
}

impl Default for Samples {
    fn default() -> Self {
        Samples { k: 3, of: 5 }
    }
}

/// What a strategy measures, per worker of the stage, over the last sample period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// Share of a core spent in the stage's code, 0 to 1.
    Cpu,
    /// Batches dropped per second.
    Drops,
    /// Events in per second.
    Rps,
    /// Batches waiting in the input queue.
    Queue,
    /// A metric the stage emits (`metric`).
    User,
}

/// The most samples a rolling count may look back over.
pub const MAX_SAMPLES: u32 = 100;

/// The longest cooldown, in seconds (a day).
pub const MAX_COOLDOWN_SECS: u64 = 86_400;

fn one() -> u32 {
    1
}

fn default_cooldown() -> u64 {
    60
}

fn err(path: &str, problem: impl Into<String>) -> SpecError {
    SpecError { path: path.to_owned(), problem: problem.into() }
}

impl ScalingPolicy {
    /// Checks the policy of the stage at `path` (e.g. `stages[1].scaling`).
    pub fn validate(&self, path: &str) -> Result<(), SpecError> {
        if self.min == 0 || self.min > self.max {
            return Err(err(&format!("{path}.min"), "at least 1 and at most `max`"));
        }
        if self.max > limits::WORKERS {
            return Err(err(&format!("{path}.max"), format!("at most {}", limits::WORKERS)));
        }
        if self.increment == 0 || self.decrement == 0 {
            return Err(err(&format!("{path}.increment"), "increment and decrement are at least 1"));
        }
        if self.cooldown_secs > MAX_COOLDOWN_SECS {
            return Err(err(&format!("{path}.cooldown-secs"), format!("at most {MAX_COOLDOWN_SECS}")));
        }
        if (self.strategies.is_empty() && self.set_point.is_none()) || self.strategies.len() > 5 {
            return Err(err(&format!("{path}.strategies"), "1 to 5 strategies (or a `set-point`)"));
        }
        if let Some(sp) = &self.set_point {
            let path = format!("{path}.set-point");
            check_metric(&path, sp.reason, &sp.metric)?;
            if !sp.target.is_finite() || sp.target <= 0.0 || (sp.reason == Reason::Cpu && sp.target > 1.0) {
                return Err(err(&format!("{path}.target"), "above 0 (and at most 1 for cpu)"));
            }
            if !(0.0..=1.0).contains(&sp.tolerance) {
                return Err(err(&format!("{path}.tolerance"), "0 to 1"));
            }
            if sp.samples == 0 || sp.samples > MAX_SAMPLES {
                return Err(err(&format!("{path}.samples"), format!("1 to {MAX_SAMPLES}")));
            }
        }
        for (i, s) in self.strategies.iter().enumerate() {
            let path = format!("{path}.strategies[{i}]");
            if self.strategies[..i].iter().any(|t| t.reason == s.reason && t.metric == s.metric) {
                return Err(err(&format!("{path}.reason"), "each reason (and user metric) once"));
            }
            check_metric(&path, s.reason, &s.metric)?;
            if !s.scale_up_above.is_finite() || !s.scale_down_below.is_finite() || s.scale_down_below < 0.0 {
                return Err(err(&format!("{path}.scale-up-above"), "thresholds are finite and not negative"));
            }
            if s.scale_down_below > s.scale_up_above {
                return Err(err(&format!("{path}.scale-down-below"), "at most `scale-up-above`"));
            }
            if s.reason == Reason::Cpu && s.scale_up_above > 1.0 {
                return Err(err(&format!("{path}.scale-up-above"), "cpu is a share of a core, 0 to 1"));
            }
            let Samples { k, of } = s.samples;
            if k == 0 || k > of || of > MAX_SAMPLES {
                return Err(err(&format!("{path}.samples"), format!("1 <= k <= of <= {MAX_SAMPLES}")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(json: &str) -> Result<ScalingPolicy, String> {
        let policy: ScalingPolicy = serde_json::from_str(json).map_err(|e| e.to_string())?;
        policy.validate("stages[0].scaling").map_err(|e| format!("{}: {}", e.path, e.problem))?;
        Ok(policy)
    }

    #[test]
    fn defaults_and_problems_named_by_path() {
        let p =
            policy(r#"{"max": 8, "strategies": [{"reason": "rps", "scale-up-above": 1000, "scale-down-below": 100}]}"#)
                .unwrap();
        assert_eq!((p.min, p.increment, p.decrement, p.cooldown_secs), (1, 1, 1, 60));
        assert_eq!(p.strategies[0].samples, Samples { k: 3, of: 5 });
        let p = policy(r#"{"max": 8, "set-point": {"reason": "cpu", "target": 0.6}}"#).unwrap();
        let sp = p.set_point.unwrap();
        assert_eq!((sp.tolerance, sp.samples, p.strategies.len()), (0.15, 5, 0));
        for (json, problem) in [
            (r#"{"min": 5, "max": 4, "strategies": []}"#, "stages[0].scaling.min"),
            (r#"{"max": 5000, "strategies": []}"#, "stages[0].scaling.max"),
            (r#"{"max": 4, "strategies": []}"#, "stages[0].scaling.strategies"),
            (r#"{"max": 4, "set-point": {"reason": "cpu", "target": 1.5}}"#, "stages[0].scaling.set-point.target"),
            (r#"{"max": 4, "set-point": {"reason": "user", "target": 10}}"#, "stages[0].scaling.set-point.metric"),
            (
                r#"{"max": 4, "set-point": {"reason": "rps", "target": 10, "tolerance": 2}}"#,
                "stages[0].scaling.set-point.tolerance",
            ),
            (
                r#"{"max": 4, "set-point": {"reason": "rps", "target": 10, "samples": 0}}"#,
                "stages[0].scaling.set-point.samples",
            ),
            (
                r#"{"max": 4, "strategies": [{"reason": "user", "scale-up-above": 1, "scale-down-below": 0}]}"#,
                "stages[0].scaling.strategies[0].metric",
            ),
            (
                r#"{"max": 4, "strategies": [{"reason": "cpu", "scale-up-above": 0.5, "scale-down-below": 0.7}]}"#,
                "stages[0].scaling.strategies[0].scale-down-below",
            ),
            (
                r#"{"max": 4, "strategies": [{"reason": "cpu", "scale-up-above": 0.8, "scale-down-below": 0.2, "samples": {"k": 6, "of": 5}}]}"#,
                "stages[0].scaling.strategies[0].samples",
            ),
            (
                r#"{"max": 4, "strategies": [{"reason": "queue", "scale-up-above": 8, "scale-down-below": 1}, {"reason": "queue", "scale-up-above": 9, "scale-down-below": 1}]}"#,
                "stages[0].scaling.strategies[1].reason",
            ),
        ] {
            let problem_at = policy(json).unwrap_err();
            assert!(problem_at.starts_with(problem), "{json}: {problem_at}");
        }
        assert!(policy(r#"{"max": 4, "strategies": [], "surprise": 1}"#).unwrap_err().contains("surprise"));
    }

    #[test]
    fn a_job_spec_carries_a_policy_and_its_workers_lie_within_it() {
        let spec = |workers: u32| {
            format!(
                r#"{{"name": "scaled", "source": {{"kind": "ingest"}}, "stages": [{{"name": "only",
                "artifact": "sha256:{}", "workers": {workers},
                "scaling": {{"min": 2, "max": 8, "strategies": [{{"reason": "cpu", "scale-up-above": 0.8, "scale-down-below": 0.2}}]}}}}]}}"#,
                "0".repeat(64)
            )
        };
        let parsed = crate::JobSpec::parse(&spec(4)).unwrap();
        assert_eq!(parsed.stages[0].scaling.as_ref().map(|p| (p.min, p.max)), Some((2, 8)));
        let refused = crate::JobSpec::parse(&spec(9)).unwrap_err();
        assert_eq!(refused.path, "stages[0].workers", "{refused}");
    }
}
