//! Keyed state follows its key groups when a stage is rescaled: exact windowed counts across
//! rescales, on the real `window-count` example stage.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use squilla_batch::{BatchBuilder, ValueRef};
use squilla_host::pipeline::{HandOffMetrics, Pipeline};
use squilla_types::{Backpressure, Routing};

use crate::example;
use crate::pipeline::{stage, start};

const KEYS: usize = 300;
const WINDOW_MS: i64 = 1_000;

/// Pushes `batches` batches of 100 events: keys in turn, event times spread over 8 windows.
fn feed(pipeline: &Pipeline, from: usize, batches: usize, expected: &mut BTreeMap<(i64, String), i64>) {
    for b in from..from + batches {
        let mut builder = BatchBuilder::new();
        for i in 0..100 {
            let n = b * 100 + i;
            let key = format!("key-{}", (n * 7) % KEYS);
            let ts = (n as i64 * 13) % (8 * WINDOW_MS);
            builder.event(ts).field("key", key.as_str());
            *expected.entry((ts / WINDOW_MS * WINDOW_MS, key)).or_default() += 1;
        }
        assert!(pipeline.push(builder.finish().unwrap()));
    }
}

/// Every `(window start, key) -> count` the stage emitted (until `expected` windows came and
/// then a quiet second, or 20 s), failing on a window reported twice.
fn emitted(pipeline: &Pipeline, expected: usize) -> BTreeMap<(i64, String), i64> {
    let mut seen = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline && (seen.len() < expected || quiet_since.elapsed() < Duration::from_secs(1)) {
        let Some(batch) = pipeline.recv(Duration::from_millis(100)) else { continue };
        quiet_since = Instant::now();
        for event in batch.view().events() {
            let (Some(ValueRef::Text(key)), Some(start), Some(count)) =
                (event.get("key"), event.int("window-start-ms"), event.int("count"))
            else {
                panic!("unexpected output event");
            };
            let before = seen.insert((start, key.to_owned()), count);
            assert!(before.is_none(), "window {start} of {key} reported twice: {before:?} and {count}");
        }
    }
    seen
}

/// The `window-count` stage on 2 key-hashed workers, 1 s windows that close only when told
/// (a day's grace), so that every count is emitted once, at the end.
fn window_count() -> squilla_host::pipeline::StageConfig {
    stage(
        "count",
        example("window-count"),
        &[("window-ms", "1000"), ("grace-ms", "86400000"), ("key", "key")],
        2,
        Routing::KeyHash { fields: vec!["key".into()] },
    )
}

fn handoff_totals(pipeline: &Pipeline) -> HandOffMetrics {
    let mut total = HandOffMetrics::default();
    for w in pipeline.metrics().stages.iter().flatten() {
        total.groups_out += w.handoff.groups_out;
        total.groups_in += w.handoff.groups_in;
        total.bytes_out += w.handoff.bytes_out;
        total.timeouts += w.handoff.timeouts;
        total.forwarded_events += w.handoff.forwarded_events;
        total.held_events += w.handoff.held_events;
    }
    total
}

#[test]
fn windowed_counts_are_exact_across_a_rescale_from_2_to_5_to_3() {
    // Windows close only when told (grace of a day), so every count is emitted once, at the end.
    let count = window_count();
    let mut pipeline = start(vec![count], Backpressure::Block);
    let mut expected = BTreeMap::new();
    feed(&pipeline, 0, 40, &mut expected);
    pipeline.scale(0, 5).unwrap();
    feed(&pipeline, 40, 40, &mut expected);
    pipeline.scale(0, 3).unwrap();
    feed(&pipeline, 80, 40, &mut expected);
    assert!(pipeline.drain(Duration::from_secs(10)), "the pipeline did not drain");
    pipeline.tick_stage(0, i64::MAX / 2);
    let seen = emitted(&pipeline, expected.len());
    let missing: Vec<String> = expected
        .keys()
        .filter(|k| !seen.contains_key(*k))
        .map(|(w, k)| format!("{w}/{k}/g{}", squilla_batch::keys::text_key_group(k)))
        .collect();
    assert!(
        missing.is_empty(),
        "{} windows never reported: {missing:?}\n{:?}",
        missing.len(),
        handoff_totals(&pipeline)
    );
    let wrong: Vec<String> = expected
        .iter()
        .filter(|(k, v)| seen.get(*k) != Some(*v))
        .map(|(k, v)| format!("{k:?}: sent {v}, emitted {:?}", seen.get(k)))
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} counts wrong: {wrong:#?}\n{:?}",
        wrong.len(),
        expected.len(),
        handoff_totals(&pipeline)
    );
    let moved = handoff_totals(&pipeline);
    // 2 -> 5 moves the groups of workers 2..5 and part of 0 and 1's; 5 -> 3 moves some back.
    assert!(moved.groups_out > 2_000, "{moved:?}");
    assert_eq!(moved.groups_out, moved.groups_in, "{moved:?}");
    assert!(moved.bytes_out > 0);
    assert_eq!(moved.timeouts, 0);
    pipeline.stop(Duration::from_secs(1));
}

#[test]
fn a_stage_without_keyed_state_keeps_its_state_where_it_is() {
    // top-titles does not export `keyed-state`: a rescale moves no state, and (as documented)
    // a key's window is then reported by two workers.
    let top = stage(
        "top",
        example("top-titles"),
        &[("n", "1"), ("window-ms", "1000")],
        2,
        Routing::KeyHash { fields: vec!["country".into()] },
    );
    let mut pipeline = start(vec![top], Backpressure::Block);
    let mut plays = BatchBuilder::new();
    for i in 0..500 {
        plays.event(i).field("country", squilla_batch::synth::COUNTRIES[i as usize % 5]).field("title", "Dark");
    }
    pipeline.push(plays.finish().unwrap());
    pipeline.scale(0, 3).unwrap();
    assert!(pipeline.drain(Duration::from_secs(5)));
    let moved = handoff_totals(&pipeline);
    assert_eq!((moved.groups_out, moved.groups_in, moved.forwarded_events), (0, 0, 0));
    pipeline.stop(Duration::from_secs(1));
}

#[test]
fn a_stage_reports_its_own_gauges_with_its_metrics() {
    // window-count reports `open-keys` on every tick: keys held in its open windows.
    let count = window_count();
    let mut pipeline = start(vec![count], Backpressure::Block);
    let mut expected = BTreeMap::new();
    feed(&pipeline, 0, 10, &mut expected);
    assert!(pipeline.drain(Duration::from_secs(10)));
    pipeline.tick_stage(0, 1);
    let deadline = Instant::now() + Duration::from_secs(5);
    let reported = loop {
        let workers = pipeline.metrics().stages[0].clone();
        let gauges: Vec<f64> =
            workers.iter().filter_map(|w| w.user.iter().find(|(n, _)| n == "open-keys").map(|(_, v)| *v)).collect();
        if gauges.len() == 2 || Instant::now() > deadline {
            break gauges;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // Every (window, key) pair sent is open on exactly one of the two workers.
    assert_eq!(reported.iter().sum::<f64>(), expected.len() as f64, "{reported:?}");
    pipeline.stop(Duration::from_secs(1));
}

#[test]
fn counts_stay_exact_when_the_new_workers_start_on_another_agent() {
    use squilla_host::pipeline::{PipelineConfig, SlotPlan};
    use squilla_host::transport::{Auth, Transport, TransportConfig};

    let config = |rescaled_from: Vec<usize>| PipelineConfig {
        rescaled_from,
        ..PipelineConfig::new("moved", vec![window_count()], Backpressure::Block)
    };
    let transport = |agent: &str| {
        let config = TransportConfig { agent: agent.into(), auth: Auth::Open, ..Default::default() };
        Transport::bind("127.0.0.1:0".parse().unwrap(), config).unwrap()
    };
    let (a, b) = (transport("a"), transport("b"));
    let local = |n: u64| SlotPlan::Local { number: n };
    let runtime = crate::runtime();
    let executor = crate::pipeline::executor();
    let on_a = Pipeline::start_placed(runtime, executor, config(Vec::new()), vec![vec![local(1), local(2)]]).unwrap();
    a.register("moved", on_a.handle());
    let mut expected = BTreeMap::new();
    feed(&on_a, 0, 40, &mut expected);
    // The stage goes from 2 to 5 workers, the three new ones on agent B, which starts the job
    // as the rescale happens (told the count before) while A keeps being fed.
    let to_a = |i: u32| SlotPlan::Remote(b.outlet(a.local_addr(), "moved", 0, i).unwrap());
    let plan_b = vec![vec![to_a(0), to_a(1), local(3), local(4), local(5)]];
    let on_b = Pipeline::start_placed(runtime, executor, config(vec![2]), plan_b).unwrap();
    b.register("moved", on_b.handle());
    let to_b = |i: u32| SlotPlan::Remote(a.outlet(b.local_addr(), "moved", 0, i).unwrap());
    on_a.set_slots(0, vec![local(1), local(2), to_b(2), to_b(3), to_b(4)]).unwrap();
    feed(&on_a, 40, 40, &mut expected);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(on_a.drain(Duration::from_millis(100)) && on_b.drain(Duration::from_millis(100))) {
        assert!(Instant::now() < deadline, "the pipelines did not drain");
    }
    on_a.tick_stage(0, i64::MAX / 2);
    on_b.tick_stage(0, i64::MAX / 2);
    let mut seen = emitted(&on_a, 0);
    for (k, v) in emitted(&on_b, expected.len() - seen.len()) {
        assert!(seen.insert(k.clone(), v).is_none(), "{k:?} reported on both agents");
    }
    assert_eq!(seen, expected);
    // Every group B's workers own came with its state from A (none timed out).
    let b_groups =
        (0..squilla_batch::keys::KEY_GROUPS).filter(|&g| squilla_batch::keys::group_owner(g, 5) >= 2).count();
    let m = on_b.metrics();
    let received: u64 = m.stages[0].iter().map(|w| w.handoff.groups_in).sum();
    assert_eq!(received, b_groups as u64);
    assert!(m.stages[0].iter().all(|w| w.handoff.timeouts == 0));
}
