//! The two autoscaling controllers on synthetic load traces: Mantis's rules (`decide`, k of n
//! samples past thresholds, one step per cooldown) against the set-point controller
//! (`decide_set_point`, sized in one step to a target per worker). Each trace is a total load
//! in events/s sampled once a second for an hour; a worker handles 1,000 events/s. Printed
//! per controller: scaling actions, seconds under-provisioned (a worker over its 1,000) and
//! worker-seconds used. Prints JSON.
//!
//! Run: `cargo bench --workspace --bench autoscale` (well under a second).

use squilla_scheduler::autoscale::{Now, Sample, Signal, decide, decide_set_point};
use squilla_types::scaling::{Reason, Samples, ScalingPolicy, Strategy};

const CAPACITY: f64 = 1000.0;
const SECONDS: usize = 3600;

fn traces() -> Vec<(&'static str, Vec<f64>)> {
    let mut noise = 0x2545_f491_4f6c_dd1du64;
    let mut jitter = move || {
        noise ^= noise << 13;
        noise ^= noise >> 7;
        noise ^= noise << 17;
        (noise % 2001) as f64 / 1000.0 - 1.0 // -1 ..= 1
    };
    let ramp = (0..SECONDS).map(|t| 2_000.0 + 18_000.0 * (t as f64 / SECONDS as f64)).collect();
    let step = (0..SECONDS).map(|t| if (600..2400).contains(&t) { 25_000.0 } else { 3_000.0 }).collect();
    let daily =
        (0..SECONDS).map(|t| 10_000.0 + 8_000.0 * (t as f64 / SECONDS as f64 * std::f64::consts::TAU).sin()).collect();
    let noisy = (0..SECONDS).map(|_| 8_000.0 * (1.0 + 0.3 * jitter())).collect();
    vec![("ramp 2k to 20k", ramp), ("step 3k, 25k, 3k", step), ("sine 2k to 18k", daily), ("noisy 8k ±30 %", noisy)]
}

fn policy() -> ScalingPolicy {
    ScalingPolicy {
        min: 1,
        max: 60,
        increment: 1,
        decrement: 1,
        cooldown_secs: 30,
        strategies: vec![Strategy {
            reason: Reason::Rps,
            metric: None,
            scale_up_above: 0.8 * CAPACITY,
            scale_down_below: 0.4 * CAPACITY,
            samples: Samples { k: 3, of: 5 },
        }],
        set_point: None,
    }
}

fn run(load: &[f64], set_point: bool) -> serde_json::Value {
    let policy = policy();
    let signal = Signal { reason: Reason::Rps, metric: None };
    let (mut workers, mut last, mut history) = (2u32, None, Vec::new());
    let (mut actions, mut under, mut worker_seconds) = (0u32, 0u32, 0u64);
    for (t, total) in load.iter().enumerate() {
        let now = t as i64 * 1000;
        let per_worker = total / f64::from(workers);
        under += u32::from(per_worker > CAPACITY);
        worker_seconds += u64::from(workers);
        history.push(Sample { at_ms: now, values: [(signal.clone(), per_worker)].into_iter().collect() });
        if history.len() > 100 {
            history.remove(0);
        }
        let moment = Now { workers, last_scaled_ms: last, at_ms: now };
        let decision = if set_point {
            decide_set_point(&policy, &history, &signal, (0.6 * CAPACITY, 0.15, 5), moment)
        } else {
            decide(&policy, &history, moment)
        };
        if let Some(d) = decision {
            workers = d.workers;
            last = Some(now);
            actions += 1;
        }
    }
    serde_json::json!({"actions": actions, "seconds_under_provisioned": under, "worker_seconds": worker_seconds})
}

fn main() {
    let report: serde_json::Map<String, serde_json::Value> = traces()
        .into_iter()
        .map(|(name, load)| {
            (name.to_owned(), serde_json::json!({"rules": run(&load, false), "set_point": run(&load, true)}))
        })
        .collect();
    println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
}
