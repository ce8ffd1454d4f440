//! Each example stage, run in wasmtime on known input; outputs checked event by event.

use squilla_batch::{Event, Value, ValueRef};
use squilla_host::{Flavour, InstantiateError, LogLevel};

use crate::{batch, example, runtime, start};

fn play(ts: i64, country: &str, title: &str) -> Event {
    Event::new(ts).with("country", country).with("title", title)
}

#[test]
fn every_example_is_a_raw_stage() {
    for (name, _) in squilla_guests::ALL {
        let artifact = example(name);
        assert_eq!(artifact.flavour(), Flavour::Raw, "{name}");
        assert!(artifact.size_bytes() > 1000);
    }
    let _ = runtime();
}

#[test]
fn device_errors_computes_the_error_rate_over_the_rolling_window() {
    let mut stage = start("device-errors", &[("window-ms", "30000")]);
    let mut events = Vec::new();
    // Too old for the window at t = 100 s: must not count.
    for i in 0..10 {
        events.push(Event::new(10_000 + i).with("device-type", "tv").with("status", 500i64));
    }
    // tv: 20 requests, 5 errors; phone: 8 requests, 2 errors (one of them as a raw log line).
    for i in 0..20 {
        events.push(
            Event::new(80_000 + i * 100).with("device-type", "tv").with("status", if i < 5 { 503i64 } else { 200 }),
        );
    }
    for i in 0..7 {
        events.push(
            Event::new(90_000 + i).with("device-type", "phone").with("status", if i == 0 { 500i64 } else { 200 }),
        );
    }
    events.push(Event::new(95_000).with("line", "device-type=phone status=502 latency-ms=40"));
    events.push(Event::new(95_001).with("unrelated", true));

    let out = stage.process(&batch(&events)).unwrap();
    assert!(out.is_empty(), "device-errors emits only on tick");
    let out = stage.tick(100_000).unwrap();
    let got: Vec<_> = out.view().to_events();
    let expected = vec![
        Event::new(100_000)
            .with("device-type", "phone")
            .with("requests", 8i64)
            .with("errors", 2i64)
            .with("error-rate", 0.25)
            .with("window-ms", 30_000i64),
        Event::new(100_000)
            .with("device-type", "tv")
            .with("requests", 20i64)
            .with("errors", 5i64)
            .with("error-rate", 0.25)
            .with("window-ms", 30_000i64),
    ];
    assert_eq!(got, expected);

    // The skipped event is reported in the worker's log.
    let warnings: Vec<_> =
        stage.log().lines().filter(|l| l.level == LogLevel::Warn).map(|l| l.message.clone()).collect();
    assert_eq!(warnings, ["skipped 1 events without `device-type` and `status`"]);

    // Once the window has slid past everything, nothing is emitted.
    assert!(stage.tick(200_000).unwrap().is_empty());
}

#[test]
fn top_titles_ranks_plays_per_country_per_window() {
    let mut stage = start("top-titles", &[("n", "2"), ("window-ms", "10000")]);
    let mut events = Vec::new();
    for (title, plays) in [("Dark", 3), ("Ozark", 5), ("Lupin", 3), ("Narcos", 1)] {
        for i in 0..plays {
            events.push(play(1_000 + i, "DE", title));
        }
    }
    events.push(play(2_000, "BR", "Narcos"));
    events.push(play(12_000, "BR", "Dark")); // next window
    stage.process(&batch(&events)).unwrap();
    let out = stage.tick(10_000).unwrap().view().to_events();
    let rows: Vec<(String, i64, String, i64)> = out
        .iter()
        .map(|e| {
            (
                e.get("country").unwrap().to_string(),
                e.get("rank").unwrap().as_int().unwrap(),
                e.get("title").unwrap().to_string(),
                e.get("plays").unwrap().as_int().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [("BR".into(), 1, "Narcos".into(), 1), ("DE".into(), 1, "Ozark".into(), 5), ("DE".into(), 2, "Dark".into(), 3),]
    );
    assert!(out.iter().all(|e| e.timestamp_ms == 10_000 && e.get("window-start-ms") == Some(ValueRef::Int(0))));
    let next = stage.tick(20_000).unwrap().view().to_events();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].get("title"), Some(ValueRef::Text("Dark")));
}

#[test]
fn sentiment_counts_classes_of_texts_with_the_keyword() {
    let mut stage = start("sentiment", &[("keyword", "Crown"), ("window-ms", "60000")]);
    let texts = [
        "I love The Crown, great acting",      // +2 positive
        "the crown is boring and slow",        // -2 negative
        "Watching the CROWN tonight",          // 0 neutral
        "the crown: good start, awful ending", // 0 neutral
        "Ozark is the best",                   // no keyword
        "crowned the worst buffering ever",    // keyword as substring; -2 negative
    ];
    let events: Vec<Event> =
        texts.iter().enumerate().map(|(i, t)| Event::new(1_000 + i as i64).with("text", *t)).collect();
    stage.process(&batch(&events)).unwrap();
    let out = stage.tick(60_000).unwrap().view().to_events();
    assert_eq!(
        out,
        [Event::new(60_000)
            .with("keyword", "crown")
            .with("positive", 1i64)
            .with("negative", 2i64)
            .with("neutral", 2i64)
            .with("window-start-ms", 0i64)
            .with("window-end-ms", 60_000i64)]
    );
}

#[test]
fn filter_keeps_events_matching_the_predicate() {
    let events = [
        Event::new(1).with("status", 200i64),
        Event::new(2).with("status", 500i64).with("device-type", "tv"),
        Event::new(3).with("status", 503.0),
        Event::new(4).with("status", "500"),
        Event::new(5),
    ];
    let mut ge = start("filter", &[("field", "status"), ("op", "ge"), ("value", "500")]);
    let kept = ge.process(&batch(&events)).unwrap().view().to_events();
    // Numbers compare as numbers; the text "500" compares as text, and "500" >= "500".
    assert_eq!(kept, [events[1].clone(), events[2].clone(), events[3].clone()]);

    let mut text = start("filter", &[("field", "status"), ("value", "500")]);
    let kept: Vec<i64> = text.process(&batch(&events)).unwrap().view().events().map(|e| e.timestamp_ms()).collect();
    assert_eq!(kept, [2, 4], "eq compares ints as numbers and text as text");

    let mut exists = start("filter", &[("field", "device-type"), ("op", "exists")]);
    assert_eq!(exists.process(&batch(&events)).unwrap().len(), 1);
}

#[test]
fn alert_raises_once_and_clears_below_the_lower_threshold() {
    let mut stage = start("alert", &[("threshold", "0.1"), ("clear-below", "0.08")]);
    let share = |ts: i64, key: &str, rate: f64| Event::new(ts).with("device-type", key).with("error-rate", rate);
    let input = [
        share(1, "tv", 0.05),
        share(2, "tv", 0.12),   // raised
        share(3, "tv", 0.11),   // still raised: nothing
        share(4, "tv", 0.09),   // below the threshold but not below 0.08: nothing
        share(5, "phone", 0.2), // another key, its own state: raised
        share(6, "tv", 0.07),   // cleared
        share(7, "tv", 0.1),    // raised again (at the threshold)
        Event::new(8).with("device-type", "tv"),
        Event::new(9).with("error-rate", 0.5),
    ];
    let out = stage.process(&batch(&input)).unwrap().view().to_events();
    let seen: Vec<(i64, String, String)> = out
        .iter()
        .map(|e| {
            let text = |name: &str| match e.get(name) {
                Some(ValueRef::Text(t)) => t.to_owned(),
                other => panic!("{name}: {other:?}"),
            };
            (e.timestamp_ms, text("device-type"), text("alert"))
        })
        .collect();
    let expected = [(2, "tv", "raised"), (5, "phone", "raised"), (6, "tv", "cleared"), (7, "tv", "raised")];
    assert_eq!(seen, expected.map(|(t, k, a)| (t, k.to_owned(), a.to_owned())));
    assert_eq!(out[2].get("raised-at-ms"), Some(ValueRef::Int(2)), "a clear says since when it was raised");
    assert_eq!(out[0].get("error-rate"), Some(ValueRef::Float(0.12)));
    assert_eq!(out[0].get("threshold"), Some(ValueRef::Float(0.1)));
    assert_eq!(out[0].get("clear-below"), Some(ValueRef::Float(0.08)));
}

#[test]
fn bad_parameters_fail_init_with_the_stages_message() {
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 5] = [
        ("alert", &[], "missing required parameter `threshold`"),
        ("alert", &[("threshold", "0.1"), ("clear-below", "0.2")], "must be a number no greater than `threshold`"),
        ("sentiment", &[], "missing required parameter `keyword`"),
        ("filter", &[("field", "a"), ("op", "like"), ("value", "x")], "parameter `op` = \"like\""),
        ("top-titles", &[("n", "many")], "parameter `n` = \"many\" is not a valid usize"),
    ];
    for (name, params, expected) in cases {
        let params: Vec<(String, String)> = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        match example(name).instantiate(runtime(), &Default::default(), &params) {
            Err(InstantiateError::Init { message }) => {
                assert!(message.contains(expected), "{name}: {message}")
            }
            other => panic!("{name}: expected an init error, got {other:?}"),
        }
    }
}

#[test]
fn instances_of_one_artifact_keep_separate_state() {
    let mut a = start("top-titles", &[]);
    let mut b = start("top-titles", &[]);
    a.process(&batch(&[play(1, "US", "Dark")])).unwrap();
    assert_eq!(a.tick(10_000).unwrap().len(), 1);
    assert!(b.tick(10_000).unwrap().is_empty());
}

#[test]
fn stage_output_keeps_every_value_type() {
    let event = Event::new(7)
        .with("n", Value::Null)
        .with("b", true)
        .with("i", -3i64)
        .with("f", f64::NAN)
        .with("t", "ünïcode")
        .with("x", Value::Bytes(vec![0, 255]));
    let mut stage = start("filter", &[("field", "i"), ("op", "exists")]);
    assert_eq!(stage.process(&batch(std::slice::from_ref(&event))).unwrap().view().to_events(), [event]);
}
