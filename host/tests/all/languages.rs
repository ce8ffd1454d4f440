//! Stages in Python and JavaScript, built against the typed flavour of the same contract,
//! give exactly the output of their Rust counterparts and run in one job with Rust stages.

use std::sync::OnceLock;
use std::time::Duration;

use squilla_batch::{BatchBytes, Event, Value};
use squilla_host::pipeline::{Pipeline, PipelineConfig, StageConfig};
use squilla_host::{Artifact, ArtifactCache, Flavour, InstantiateError, Limits, StageInstance};
use squilla_types::{Backpressure, Routing};

use crate::{batch, example, runtime};

/// Python and JavaScript components take ~25 s each to compile; compiled code is kept on
/// disk beside the guest builds, so that is paid once per machine, not per test run.
fn polyglot(which: &str) -> Artifact {
    static CACHE: OnceLock<ArtifactCache> = OnceLock::new();
    let cache = CACHE.get_or_init(|| {
        ArtifactCache::on_disk(runtime(), &std::path::Path::new(squilla_guests::GUEST_TARGET_DIR).join("cwasm"))
            .unwrap()
    });
    let path = match which {
        "python" => squilla_guests::SENTIMENT_PY,
        "javascript" => squilla_guests::FILTER_JS,
        other => panic!("no {other} stage"),
    };
    cache.get_or_compile(&std::fs::read(path).unwrap()).unwrap()
}

fn start(artifact: &Artifact, params: &[(&str, &str)]) -> Result<StageInstance, InstantiateError> {
    let params: Vec<(String, String)> = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    artifact.instantiate(runtime(), &Limits { memory_bytes: 256 << 20, ..Limits::default() }, &params)
}

/// Runs both stages over the same batches and ticks and returns their outputs.
fn both(
    a: &mut StageInstance,
    b: &mut StageInstance,
    batches: &[BatchBytes],
    ticks: &[i64],
) -> (Vec<Event>, Vec<Event>) {
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for input in batches {
        x.extend(a.process(input).unwrap().view().to_events());
        y.extend(b.process(input).unwrap().view().to_events());
    }
    for &now in ticks {
        x.extend(a.tick(now).unwrap().view().to_events());
        y.extend(b.tick(now).unwrap().view().to_events());
    }
    (x, y)
}

fn texts() -> Vec<BatchBytes> {
    let lines = [
        "I love The Crown, great acting",
        "the crown is boring and slow",
        "Watching the CROWN tonight",
        "the crown: good start, awful ending",
        "Ozark is the best",
        "crowned the worst buffering ever",
        "CROWN don't like it... LIKE it? love-love",
        "ünïcode crown fun",
    ];
    (0..4)
        .map(|b| {
            let events: Vec<Event> = lines
                .iter()
                .enumerate()
                .map(|(i, t)| Event::new(b * 7_000 + i as i64 * 900).with("text", *t).with("n", i as i64))
                .collect();
            batch(&events)
        })
        .collect()
}

#[test]
fn both_polyglot_stages_are_typed() {
    assert_eq!(polyglot("python").flavour(), Flavour::Typed);
    assert_eq!(polyglot("javascript").flavour(), Flavour::Typed);
}

#[test]
fn python_sentiment_matches_rust_exactly() {
    for window in ["5000", "10000"] {
        let params = [("keyword", "Crown"), ("window-ms", window)];
        let mut rust = start(&example("sentiment"), &params).unwrap();
        let mut python = start(&polyglot("python"), &params).unwrap();
        let (r, p) = both(&mut rust, &mut python, &texts(), &[6_000, 14_000, 40_000]);
        assert!(r.len() >= 3, "{r:?}");
        assert_eq!(r, p, "window {window}");
        // Late events (their window closed) are skipped by both.
        let late = batch(&[Event::new(1_000).with("text", "crown good")]);
        let (r, p) = both(&mut rust, &mut python, &[late], &[50_000]);
        assert_eq!((r, p), (vec![], vec![]));
    }
    for bad in [&[][..], &[("keyword", " ")][..]] {
        let rust = start(&example("sentiment"), bad).unwrap_err().to_string();
        let python = start(&polyglot("python"), bad).unwrap_err().to_string();
        assert_eq!(rust, python);
    }
}

#[test]
fn javascript_filter_matches_rust_exactly() {
    let events = vec![
        Event::new(1).with("status", 200i64).with("d", "tv"),
        Event::new(2).with("status", 500i64).with("d", "phone"),
        Event::new(3).with("status", 503.5),
        Event::new(4).with("status", "500"),
        Event::new(5).with("status", true),
        Event::new(6).with("status", f64::NAN),
        Event::new(7).with("status", Value::Null),
        Event::new(8).with("status", Value::Bytes(vec![1, 2])),
        Event::new(9).with("d", "téléphone"),
        Event::new(-10).with("status", i64::MIN).with("d", "𝄞 clef"),
        Event::new(11),
    ];
    let input = [batch(&events)];
    let predicates: &[&[(&str, &str)]] = &[
        &[("field", "status"), ("op", "ge"), ("value", "500")],
        &[("field", "status"), ("value", "500")],
        &[("field", "status"), ("op", "ne"), ("value", "500")],
        &[("field", "status"), ("op", "lt"), ("value", "503.4")],
        &[("field", "status"), ("op", "gt"), ("value", "1e2")],
        &[("field", "status"), ("op", "le"), ("value", "-inf")],
        &[("field", "status"), ("op", "eq"), ("value", "true")],
        &[("field", "status"), ("op", "ne"), ("value", "NaN")],
        &[("field", "d"), ("op", "contains"), ("value", "ph")],
        &[("field", "d"), ("op", "gt"), ("value", "tv")],
        &[("field", "d"), ("op", "lt"), ("value", "\u{ffff}")],
        &[("field", "d"), ("op", "exists")],
        &[("field", " status "), ("op", "ge"), ("value", " +200 ")],
    ];
    for params in predicates {
        let mut rust = start(&example("filter"), params).unwrap();
        let mut js = start(&polyglot("javascript"), params).unwrap();
        let (r, j) = both(&mut rust, &mut js, &input, &[100]);
        assert_eq!(r, j, "{params:?}");
    }
    for bad in [&[("field", "a"), ("op", "like"), ("value", "x")][..], &[("field", "a")][..]] {
        let rust = start(&example("filter"), bad).unwrap_err().to_string();
        let js = start(&polyglot("javascript"), bad).unwrap_err().to_string();
        assert_eq!(rust, js);
    }
}

#[test]
fn a_job_mixing_javascript_rust_and_python_runs_end_to_end() {
    let stage = |name: &str, artifact: Artifact, params: &[(&str, &str)]| StageConfig {
        name: name.into(),
        artifact,
        params: params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        workers: 1,
        routing: Routing::RoundRobin,
        limits: Limits { memory_bytes: 256 << 20, ..Limits::default() },
        tick: Duration::from_millis(50),
    };
    let config = PipelineConfig::new(
        "polyglot",
        vec![
            stage("js-has-text", polyglot("javascript"), &[("field", "text"), ("op", "exists")]),
            stage("rust-phones", example("filter"), &[("field", "device"), ("value", "phone")]),
            stage("python-sentiment", polyglot("python"), &[("keyword", "show"), ("window-ms", "1000")]),
        ],
        Backpressure::Block,
    );
    let executor = squilla_host::Executor::start(0).expect("executor threads");
    let mut pipeline = Pipeline::start(runtime(), &executor, config).unwrap();
    let events = [
        Event::new(100).with("device", "phone").with("text", "great show"),
        Event::new(200).with("device", "phone").with("text", "boring show"),
        Event::new(300).with("device", "tv").with("text", "great show"),
        Event::new(400).with("device", "phone").with("text", "a show"),
        Event::new(500).with("device", "phone"),
        Event::new(600).with("device", "phone").with("text", "love this show, love it"),
    ];
    pipeline.push(batch(&events));
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while out.is_empty() && std::time::Instant::now() < deadline {
        if let Some(b) = pipeline.recv(Duration::from_millis(50)) {
            out.extend(b.view().to_events());
        }
    }
    assert_eq!(
        out,
        [Event::new(1000)
            .with("keyword", "show")
            .with("positive", 2i64)
            .with("negative", 1i64)
            .with("neutral", 1i64)
            .with("window-start-ms", 0i64)
            .with("window-end-ms", 1000i64)]
    );
    pipeline.stop(Duration::from_secs(1));
}
