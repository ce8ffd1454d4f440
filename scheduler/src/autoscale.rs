//! The autoscaler's decisions, as pure functions: a stage's policy, its recent samples and its
//! worker count in, at most one decision out, with the reason and the numbers it saw.
//! Nothing here reads a clock or the store, so every rule is tested on its own
//! (`tests` below: bounds, cooldown, dead band, k-of-n against spikes, simulated loops).
//!
//! Two controllers:
//!
//! - [`decide`], Mantis's rules: each strategy votes up when `k` of its last `of` samples are
//!   above `scale-up-above`, down when `k` are below `scale-down-below`. Any vote up scales up
//!   by `increment`; the stage scales down by `decrement` only when every strategy votes down.
//!   After any scaling, nothing for `cooldown-secs`. A count outside `[min, max]` (the policy
//!   changed) is brought back at once.
//! - [`decide_set_point`], a set-point controller: it sizes the stage so that the mean of the
//!   last samples of a per-worker signal lands on a target (`workers × mean / target`,
//!   rounded up), within a tolerance band, in one step of any size, with the same bounds and
//!   cooldown. `benches/autoscale.rs` compares the two on synthetic load traces.

use std::collections::BTreeMap;

use squilla_types::scaling::{Reason, ScalingPolicy, Strategy};

/// What one strategy measures: its reason, and for `user` the metric's name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Signal {
    /// The reason.
    pub reason: Reason,
    /// The user metric, for `Reason::User`.
    pub metric: Option<String>,
}

impl Signal {
    /// The signal a strategy reads.
    pub fn of(strategy: &Strategy) -> Signal {
        Signal { reason: strategy.reason, metric: strategy.metric.clone() }
    }

    fn name(&self) -> String {
        let reason = format!("{:?}", self.reason).to_lowercase();
        match &self.metric {
            Some(m) => format!("{reason}:{m}"),
            None => reason,
        }
    }
}

/// One sample of a stage: when, and each signal's value per worker over the period before.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    /// When it was taken, ms.
    pub at_ms: i64,
    /// The values measured (a signal that could not be measured is absent).
    pub values: BTreeMap<Signal, f64>,
}

/// A decision: the new worker count, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// How many workers the stage should have.
    pub workers: u32,
    /// Why, for a person (recorded in the job's history).
    pub reason: String,
    /// The samples the decision rests on, per signal, oldest first.
    pub seen: Vec<(String, Vec<f64>)>,
}

/// Where a stage stands when a decision is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Its workers.
    pub workers: u32,
    /// When it was last scaled (by the autoscaler or by hand), ms.
    pub last_scaled_ms: Option<i64>,
    /// The time, ms.
    pub at_ms: i64,
}

/// The answer when the bounds or the cooldown settle it before any signal is read.
fn settled(policy: &ScalingPolicy, now: Now) -> Option<Option<Decision>> {
    if let Some(decision) = bounds(policy, now.workers) {
        return Some(Some(decision));
    }
    cooling(policy, now.last_scaled_ms, now.at_ms).then_some(None)
}

fn bounds(policy: &ScalingPolicy, workers: u32) -> Option<Decision> {
    let target = workers.clamp(policy.min, policy.max);
    (target != workers).then(|| Decision {
        workers: target,
        reason: format!("{workers} workers is outside the policy's {}..={}", policy.min, policy.max),
        seen: Vec::new(),
    })
}

fn cooling(policy: &ScalingPolicy, last_scaled_ms: Option<i64>, now_ms: i64) -> bool {
    let cooldown_ms = i64::try_from(policy.cooldown_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    last_scaled_ms.is_some_and(|at| now_ms.saturating_sub(at) < cooldown_ms)
}

/// The last `n` values of `signal` in `history` (oldest first), if there are `n`.
fn last(history: &[Sample], signal: &Signal, n: usize) -> Option<Vec<f64>> {
    let values: Vec<f64> = history.iter().rev().filter_map(|s| s.values.get(signal).copied()).take(n).collect();
    (values.len() == n).then(|| values.into_iter().rev().collect())
}

/// Mantis's rules (see the module docs): at most one decision, never outside `[min, max]`,
/// none within the cooldown after the last scaling but to restore bounds.
pub fn decide(policy: &ScalingPolicy, history: &[Sample], now: Now) -> Option<Decision> {
    if let Some(answer) = settled(policy, now) {
        return answer;
    }
    let workers = now.workers;
    let mut up = None;
    let mut all_down = true;
    let mut seen = Vec::new();
    for strategy in &policy.strategies {
        let signal = Signal::of(strategy);
        let (k, of) = (strategy.samples.k as usize, strategy.samples.of as usize);
        let Some(values) = last(history, &signal, of) else {
            all_down = false;
            continue;
        };
        let above = values.iter().filter(|v| **v > strategy.scale_up_above).count();
        let below = values.iter().filter(|v| **v < strategy.scale_down_below).count();
        if above >= k && up.is_none() {
            up = Some(format!(
                "{} above {} in {above} of the last {of} samples",
                signal.name(),
                strategy.scale_up_above
            ));
        }
        all_down &= below >= k;
        seen.push((signal.name(), values));
    }
    if let Some(reason) = up {
        let to = workers.saturating_add(policy.increment).min(policy.max);
        return (to != workers).then_some(Decision { workers: to, reason, seen });
    }
    if all_down && !seen.is_empty() {
        let to = workers.saturating_sub(policy.decrement).max(policy.min);
        let reason = "every strategy below its scale-down threshold in enough of the last samples".to_owned();
        return (to != workers).then_some(Decision { workers: to, reason, seen });
    }
    None
}

/// The set-point controller (see the module docs): sizes the stage so that the mean of the
/// last `window` samples of `signal` per worker comes to `target`, unless it is already within
/// `tolerance` (a share of `target`) of it.
pub fn decide_set_point(
    policy: &ScalingPolicy,
    history: &[Sample],
    signal: &Signal,
    (target, tolerance, window): (f64, f64, usize),
    now: Now,
) -> Option<Decision> {
    if let Some(answer) = settled(policy, now) {
        return answer;
    }
    if target.is_nan() || target <= 0.0 || window == 0 {
        return None;
    }
    let workers = now.workers;
    let values = last(history, signal, window)?;
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    if !mean.is_finite() || (mean / target - 1.0).abs() <= tolerance {
        return None;
    }
    let wanted = (f64::from(workers) * mean / target).ceil();
    let to = if wanted.is_finite() { wanted.clamp(1.0, f64::from(u32::MAX)) as u32 } else { policy.max };
    let to = to.clamp(policy.min, policy.max);
    (to != workers).then(|| Decision {
        workers: to,
        reason: format!("{} averaged {mean:.3} per worker over {window} samples; target {target}", signal.name()),
        seen: vec![(signal.name(), values)],
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use squilla_types::scaling::Samples;

    use super::{Now, Reason, Sample, ScalingPolicy, Signal, decide, decide_set_point};

    type Strategy = squilla_types::scaling::Strategy;

    fn policy(min: u32, max: u32, cooldown_secs: u64, k: u32, of: u32) -> ScalingPolicy {
        ScalingPolicy {
            min,
            max,
            increment: 1,
            decrement: 1,
            cooldown_secs,
            strategies: vec![Strategy {
                reason: Reason::Rps,
                metric: None,
                scale_up_above: 1000.0,
                scale_down_below: 200.0,
                samples: Samples { k, of },
            }],
            set_point: None,
        }
    }

    fn at(workers: u32, last_scaled_ms: Option<i64>, at_ms: i64) -> Now {
        Now { workers, last_scaled_ms, at_ms }
    }

    fn rps() -> Signal {
        Signal { reason: Reason::Rps, metric: None }
    }

    fn samples(values: &[f64]) -> Vec<Sample> {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| Sample { at_ms: i as i64 * 1000, values: [(rps(), *v)].into_iter().collect() })
            .collect()
    }

    #[test]
    fn k_of_n_samples_scale_up_and_every_vote_scales_down() {
        let p = policy(1, 10, 60, 3, 5);
        let up = decide(&p, &samples(&[500.0, 1500.0, 1500.0, 400.0, 1200.0]), at(2, None, 10_000)).unwrap();
        assert_eq!(up.workers, 3);
        assert!(up.reason.contains("rps above 1000 in 3 of the last 5"), "{}", up.reason);
        assert_eq!(up.seen[0].1.len(), 5);
        let down = decide(&p, &samples(&[100.0, 100.0, 300.0, 100.0, 250.0]), at(2, None, 10_000)).unwrap();
        assert_eq!(down.workers, 1);
        // Too few samples yet: nothing.
        assert_eq!(decide(&p, &samples(&[5000.0, 5000.0]), at(2, None, 10_000)), None);
    }

    proptest! {
        #[test]
        fn never_outside_the_bounds(min in 1u32..5, span in 0u32..10, workers in 1u32..30, values in proptest::collection::vec(0.0f64..5000.0, 0..20)) {
            let p = policy(min, min + span, 0, 2, 3);
            if let Some(d) = decide(&p, &samples(&values), at(workers, None, 100_000)) {
                prop_assert!((p.min..=p.max).contains(&d.workers), "{d:?}");
            }
            if let Some(d) = decide_set_point(&p, &samples(&values), &rps(), (600.0, 0.1, 3), at(workers, None, 100_000)) {
                prop_assert!((p.min..=p.max).contains(&d.workers), "{d:?}");
            }
        }

        #[test]
        fn nothing_within_the_cooldown_but_restoring_bounds(since in 0i64..59_999, values in proptest::collection::vec(0.0f64..5000.0, 5..20), workers in 1u32..=10) {
            let p = policy(1, 10, 60, 1, 1);
            let now = 1_000_000;
            prop_assert_eq!(decide(&p, &samples(&values), at(workers, Some(now - since), now)), None);
        }

        #[test]
        fn a_signal_inside_the_dead_band_moves_nothing(values in proptest::collection::vec(200.0f64..=1000.0, 5..30), workers in 1u32..=10) {
            let p = policy(1, 10, 0, 1, 5);
            prop_assert_eq!(decide(&p, &samples(&values), at(workers, None, 1_000_000)), None);
        }

        #[test]
        fn one_spike_never_scales_when_k_is_two_or_more(spike in 1000.5f64..1e9, place in 0usize..5, calm in 200.0f64..1000.0) {
            let mut values = vec![calm; 5];
            values[place] = spike;
            prop_assert_eq!(decide(&policy(1, 10, 0, 2, 5), &samples(&values), at(3, None, 1_000_000)), None);
        }

        #[test]
        fn a_noisy_signal_scales_at_most_once_per_cooldown(noise in proptest::collection::vec(0.0f64..3000.0, 600)) {
            // One sample a second for ten minutes, the worst noise, a 60 s cooldown.
            let p = policy(1, 50, 60, 3, 5);
            let (mut workers, mut last_scaled, mut history, mut actions) = (5u32, None, Vec::new(), 0u32);
            for (t, v) in noise.iter().enumerate() {
                let now = t as i64 * 1000;
                history.push(Sample { at_ms: now, values: [(rps(), *v)].into_iter().collect() });
                if let Some(d) = decide(&p, &history, at(workers, last_scaled, now)) {
                    workers = d.workers;
                    last_scaled = Some(now);
                    actions += 1;
                }
            }
            prop_assert!(actions <= 600 / 60 + 1, "{actions} actions in 600 s");
        }
    }

    #[test]
    fn the_set_point_reaches_the_load_in_one_step() {
        let p = policy(1, 100, 60, 3, 5);
        // 4 workers each at 3,000 events/s, target 600 per worker: 20 workers.
        let d = decide_set_point(&p, &samples(&[3000.0; 5]), &rps(), (600.0, 0.1, 5), at(4, None, 10_000)).unwrap();
        assert_eq!(d.workers, 20);
        // Within 10 % of the target: nothing.
        assert_eq!(decide_set_point(&p, &samples(&[640.0; 5]), &rps(), (600.0, 0.1, 5), at(20, None, 10_000)), None);
    }
}
