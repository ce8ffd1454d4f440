//! Each construct of the language against known inputs, and bad queries with positions.

use std::sync::Arc;

use serde_json::{Value, json};
use squilla_batch::{BatchBuilder, BatchBytes};

use crate::{Query, Runner};

fn events() -> BatchBytes {
    let mut b = BatchBuilder::new();
    let rows: [(&str, i64, f64, &str); 6] = [
        ("tv", 200, 12.0, "/play/1"),
        ("tv", 500, 80.0, "/play/2"),
        ("phone", 503, 40.0, "/browse"),
        ("phone", 200, 10.0, "/play/3"),
        ("console", 500, 95.5, "/search"),
        ("tv", 404, 20.0, "/PLAY/4"),
    ];
    for (i, (device, status, latency, path)) in rows.iter().enumerate() {
        b.event(1000 + i as i64)
            .field("device-type", *device)
            .field("status", *status)
            .field("latency", *latency)
            .field("path", *path)
            .field("user.id", i as i64);
    }
    b.finish().unwrap()
}

/// Runs `sql` over the events; for an aggregating query, closes its window.
fn run(sql: &str) -> Vec<Value> {
    let query = Arc::new(Query::parse(sql).unwrap_or_else(|e| panic!("{sql}: {e:?}")));
    let mut runner = Runner::new(query.clone(), 0, 42);
    let mut out = Vec::new();
    let batch = events();
    for event in batch.view().events() {
        runner.push(&event, &mut out).unwrap();
    }
    runner.tick(query.window_ms().unwrap_or(0) as i64, &mut out);
    out.into_iter().map(Value::Object).collect()
}

fn column(rows: &[Value], name: &str) -> Vec<Value> {
    rows.iter().map(|r| r[name].clone()).collect()
}

#[test]
fn projection_with_aliases_and_nested_fields() {
    let rows = run(r#"SELECT "device-type" AS device, status, user.id FROM events"#);
    assert_eq!(rows.len(), 6);
    assert_eq!(rows[1], json!({"timestamp-ms": 1001, "device": "tv", "status": 500, "user.id": 1}));
    let all = run("SELECT * FROM events");
    assert_eq!(all[2]["path"], "/browse");
    assert_eq!(all[2]["latency"], 40.0);
}

#[test]
fn where_with_comparisons_and_boolean_logic() {
    let ids = |sql: &str| column(&run(sql), "user.id");
    assert_eq!(ids(r#"SELECT user.id WHERE status >= 500"#), [json!(1), json!(2), json!(4)]);
    assert_eq!(ids(r#"SELECT user.id WHERE status = 200 OR latency > 90"#), [json!(0), json!(3), json!(4)]);
    assert_eq!(ids(r#"SELECT user.id WHERE NOT ("device-type" = 'tv') AND status <> 200"#), [json!(2), json!(4)]);
    assert_eq!(ids(r#"SELECT user.id WHERE latency < 12.5 AND latency >= 10"#), [json!(0), json!(3)]);
    assert_eq!(
        ids(r#"SELECT user.id WHERE missing IS NULL AND status != 404 AND latency <= 12"#),
        [json!(0), json!(3)]
    );
    assert_eq!(ids(r#"SELECT user.id WHERE status * 2 > 1000"#), [json!(2)]);
}

#[test]
fn regular_expressions_and_like() {
    let ids = |sql: &str| column(&run(sql), "user.id");
    assert_eq!(ids(r#"SELECT user.id WHERE path ~ '^/play/[0-9]+$'"#), [json!(0), json!(1), json!(3)]);
    assert_eq!(ids(r#"SELECT user.id WHERE path ~* '^/play/'"#), [json!(0), json!(1), json!(3), json!(5)]);
    assert_eq!(ids(r#"SELECT user.id WHERE path !~ 'play'"#), [json!(2), json!(4), json!(5)]);
    assert_eq!(ids(r#"SELECT user.id WHERE path REGEXP 'b.owse'"#), [json!(2)]);
    assert_eq!(ids(r#"SELECT user.id WHERE path LIKE '/play/%'"#), [json!(0), json!(1), json!(3)]);
}

#[test]
fn group_by_with_aggregates_over_a_window() {
    let rows = run(r#"SELECT "device-type", count(*) AS n, sum(latency) AS total, min(status), max(status),
                  avg(latency) AS mean, percentile(latency, 0.5) AS p50
           GROUP BY "device-type", window(5000)"#);
    let mut rows = rows;
    rows.sort_by_key(|r| r["device-type"].as_str().unwrap().to_owned());
    assert_eq!(rows.len(), 3);
    let tv = &rows[2];
    assert_eq!(tv["device-type"], "tv");
    assert_eq!((tv["n"].clone(), tv["total"].clone()), (json!(3), json!(112.0)));
    assert_eq!((tv["min(status)"].clone(), tv["max(status)"].clone()), (json!(200), json!(500)));
    assert!((tv["mean"].as_f64().unwrap() - 112.0 / 3.0).abs() < 1e-9);
    assert_eq!(tv["p50"], 20.0);
    assert_eq!((tv["timestamp-ms"].clone(), tv["window-ms"].clone()), (json!(5000), json!(5000)));
    assert_eq!(rows[0]["device-type"], "console");
    assert_eq!(rows[0]["n"], 1);
    // Aggregates without GROUP BY: one group, the default window; filters apply first.
    let rows = run("SELECT count(*) AS errors, percentile(latency, 0.99) AS p99 WHERE status >= 500");
    assert_eq!(rows, [json!({"timestamp-ms": 10000, "window-ms": 10000, "errors": 3, "p99": 95.5})]);
}

#[test]
fn a_window_emits_only_once_it_has_passed() {
    let query = Arc::new(Query::parse("SELECT count(*) AS n GROUP BY window(1000)").unwrap());
    let mut runner = Runner::new(query, 0, 1);
    let mut out = Vec::new();
    for event in events().view().events() {
        runner.push(&event, &mut out).unwrap();
    }
    runner.tick(999, &mut out);
    assert!(out.is_empty());
    runner.tick(1000, &mut out);
    assert_eq!(out.len(), 1);
    runner.tick(2500, &mut out);
    assert_eq!(out.len(), 1, "an empty window emits nothing");
}

#[test]
fn sampling_keeps_about_the_share_asked_for() {
    let query = Arc::new(Query::parse("SELECT status WHERE sample(10)").unwrap());
    let mut runner = Runner::new(query, 0, 7);
    let mut b = BatchBuilder::new();
    for i in 0..20_000 {
        b.event(i).field("status", 200);
    }
    let batch = b.finish().unwrap();
    let kept = batch.view().events().filter(|e| runner.matches(e)).count();
    assert!((1_700..2_300).contains(&kept), "{kept} of 20,000 at 10 %");
    assert!(run("SELECT status WHERE sample(0)").is_empty());
    assert_eq!(run("SELECT status WHERE sample(100)").len(), 6);
}

#[test]
fn bad_queries_are_refused_with_a_position() {
    let cases = [
        ("SELECT status FROM WHERE x = 1", 1, 28),
        ("SELECT status\nWHERE status >>> 5", 2, 0),
        ("SELECT nope(status)", 1, 8),
        ("SELECT status WHERE path ~ '('", 1, 28),
        ("SELECT count(*) WHERE count(*) > 1", 1, 23),
        ("SELECT status, count(*) GROUP BY path", 0, 0),
        ("SELECT status WHERE sample(150)", 1, 28),
        ("SELECT count(*) GROUP BY window(5)", 1, 33),
        ("DELETE FROM events", 0, 0),
        ("SELECT a FROM x JOIN y ON a = b", 0, 0),
    ];
    for (sql, line, column) in cases {
        let err = Query::parse(sql).expect_err(sql);
        assert!(!err.message.is_empty());
        assert_eq!(err.line, line, "{sql}: {err:?}");
        if column != 0 {
            assert_eq!(err.column, column, "{sql}: {err:?}");
        }
    }
}

#[test]
fn only_star_queries_select_whole_events() {
    for (sql, whole) in [
        ("SELECT *", true),
        ("SELECT * WHERE status >= 500", true),
        ("SELECT *, status AS s", false),
        ("SELECT status", false),
        ("SELECT count(*) GROUP BY window(1000)", false),
    ] {
        assert_eq!(Query::parse(sql).unwrap().selects_events(), whole, "{sql}");
    }
}

#[test]
fn a_window_with_too_many_groups_is_refused_not_grown() {
    let query = Arc::new(Query::parse(r#"SELECT "user.id", count(*) GROUP BY "user.id", window(3600000)"#).unwrap());
    let mut runner = Runner::new(query.clone(), 0, 1).with_state_limit(400);
    let mut out = Vec::new();
    let batch = events();
    let mut refused = None;
    for (i, event) in batch.view().events().enumerate() {
        if let Err(limit) = runner.push(&event, &mut out) {
            refused = Some((i, limit));
            break;
        }
    }
    let (at, limit) = refused.expect("a unique key per event passes 400 bytes of state");
    assert!(at > 0 && limit.limit == 400 && limit.groups == at, "{at} {limit:?}");
    assert!(runner.state_bytes() <= 400);
    runner.tick(3_600_000, &mut out);
    assert_eq!(out.len(), at, "every group counted so far is reported");
    assert_eq!(runner.state_bytes(), 0, "a closed window holds nothing");
}
