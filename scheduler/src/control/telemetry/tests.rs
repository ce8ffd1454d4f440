use squilla_types::control::WorkerReport;
use squilla_types::ids::{JobKey, WorkerNumber};

use super::*;

fn key() -> JobKey {
    JobKey::new("acme".parse().unwrap(), "demo-1".parse().unwrap())
}

fn report(stage: u32, index: u32, number: u64, events_in: u64, nanos: u64) -> WorkerReport {
    let mut r = WorkerReport::new(key(), stage, index, WorkerNumber(number));
    r.events_in = events_in;
    r.events_out = events_in / 2;
    r.counters.guest_nanos = nanos;
    r.counters.call_micros_log2 = vec![0, events_in / 100];
    r
}

fn info(n: usize) -> Vec<(String, Vec<WorkerInfo>)> {
    let w = WorkerInfo { number: WorkerNumber(1), agent: None, state: "running".into() };
    vec![("s".into(), vec![w; n])]
}

#[test]
fn totals_survive_new_incarnations_and_resets() {
    let mut t = Telemetry::default();
    t.observe(&report(0, 0, 1, 100, 0), 1_000);
    t.observe(&report(0, 0, 1, 150, 0), 2_000);
    // A new incarnation starts from zero: its 30 add to the slot's 150.
    t.observe(&report(0, 0, 2, 30, 0), 3_000);
    // The same incarnation reporting less (an agent restarted it) counts from zero too.
    t.observe(&report(0, 0, 2, 10, 0), 4_000);
    let view = t.view(&key(), &info(1), 4_000);
    assert_eq!(view.stages[0].totals.events_in, 190);
    assert_eq!(view.stages[0].workers[0].totals.events_out, 75 + 15 + 5);
    assert_eq!(
        view.stages[0].workers[0].call_micros_log2,
        vec![0, 1],
        "the first incarnation called once; the others never reached a bucket"
    );
}

#[test]
fn rates_over_each_window() {
    let mut t = Telemetry::default();
    // 1,000 events and 0.25 s of guest time per second, for 10 minutes.
    for s in 0..=600 {
        t.observe(&report(0, 0, 1, s * 1_000, s * 250_000_000), s as i64 * 1_000);
    }
    let view = t.view(&key(), &info(1), 600_000);
    for window in ["10s", "1m", "5m"] {
        let r = view.stages[0].rates[window];
        assert!((r.events_in - 1_000.0).abs() < 1e-6, "{window}: {r:?}");
        assert!((r.events_out - 500.0).abs() < 1e-6, "{window}: {r:?}");
        assert!((r.guest_cpu - 0.25).abs() < 1e-9, "{window}: {r:?}");
    }
    assert_eq!(view.stages[0].rates["10s"].span_ms, 10_000);
    assert_eq!(view.stages[0].rates["1m"].span_ms, 60_000);
    assert_eq!(view.stages[0].rates["5m"].span_ms, 300_000);
}

#[test]
fn a_burst_shows_in_the_short_window_first() {
    let mut t = Telemetry::default();
    let mut total = 0;
    for s in 0..=300 {
        total += if s > 295 { 10_000 } else { 100 };
        t.observe(&report(0, 0, 1, total, 0), s * 1_000);
    }
    let view = t.view(&key(), &info(1), 300_000);
    let rates = &view.stages[0].rates;
    assert!(rates["10s"].events_in > rates["1m"].events_in);
    assert!(rates["1m"].events_in > rates["5m"].events_in);
}

#[test]
fn memory_is_bounded_however_long_a_job_runs() {
    let mut t = Telemetry::default();
    for s in 0..20_000u64 {
        for i in 0..3 {
            t.observe(&report(0, i, 1, s, 0), s as i64 * 500);
        }
    }
    assert!(t.samples() <= 3 * (FINE + COARSE), "{}", t.samples());
}

#[test]
fn scaled_down_slots_fold_into_their_stage_and_ended_jobs_keep_totals() {
    let mut t = Telemetry::default();
    t.observe(&report(0, 0, 1, 100, 0), 1_000);
    t.observe(&report(0, 1, 2, 40, 0), 1_000);
    t.prune(|_| Some((vec![1], false)));
    let view = t.view(&key(), &info(1), 2_000);
    assert_eq!(view.stages[0].totals.events_in, 140);
    assert_eq!(view.stages[0].workers.len(), 1);
    t.prune(|_| Some((vec![1], true)));
    t.observe(&report(0, 0, 1, 500, 0), 3_000);
    assert_eq!(t.samples(), 0);
    assert_eq!(t.view(&key(), &info(1), 3_000).stages[0].totals.events_in, 140);
    t.prune(|_| None);
    assert_eq!(t.view(&key(), &info(1), 3_000).stages[0].totals.events_in, 0);
}
