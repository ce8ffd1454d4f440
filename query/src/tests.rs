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
    assert_eq!(ids(r#"SELECT user.id WHERE status IN (404, 503)"#), [json!(2), json!(5)]);
    assert_eq!(ids(r#"SELECT user.id WHERE "device-type" NOT IN ('tv', 'phone')"#), [json!(4)]);
    assert_eq!(ids(r#"SELECT user.id WHERE latency BETWEEN 20 AND 80"#), [json!(1), json!(2), json!(5)]);
    assert_eq!(ids(r#"SELECT user.id WHERE latency NOT BETWEEN 11 AND 95"#), [json!(3), json!(4)]);
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
fn bad_queries_are_refused_with_the_position_of_the_offending_token() {
    let cases = [
        ("SELECT status FROM WHERE x = 1", 1, 28),
        ("SELECT status\nWHERE status >>> 5", 2, 0),
        ("SELECT nope(status)", 1, 8),
        ("SELECT status WHERE path ~ '('", 1, 28),
        ("SELECT count(*) WHERE count(*) > 1", 1, 23),
        ("SELECT status WHERE sample(150)", 1, 28),
        ("SELECT count(*) GROUP BY window(5)", 1, 33),
        ("DELETE FROM events", 1, 1),
        ("SELECT a FROM x JOIN y ON a = b", 1, 17),
        ("SELECT a FROM events TABLESAMPLE (10 PERCENT)", 1, 22),
        ("SELECT DISTINCT a FROM events", 1, 8),
        ("SELECT a ORDER BY a", 1, 19),
        ("SELECT a LIMIT 5 OFFSET 2", 1, 25),
        ("SELECT a LIMIT 0", 1, 16),
        ("SELECT a\nFROM events\nHAVING a > 1", 3, 8),
        ("SELECT *, count(*) GROUP BY window(1000)", 1, 8),
        ("SELECT sum(DISTINCT a) GROUP BY window(1000)", 1, 8),
        ("SELECT count(*) GROUP BY window(1000), count_window(5)", 1, 40),
        ("SELECT a FROM e AS x", 1, 15),
        ("SELECT anomaly(anomaly(a, 3), 3) GROUP BY window(1000)", 1, 16),
        ("SELECT sum(a) OVER () GROUP BY window(1000)", 1, 8),
        ("WITH x AS (SELECT 1) SELECT a", 1, 1),
        ("SELECT a,\n  b AS a", 2, 3),
        ("SELECT a AS \"timestamp-ms\"", 1, 8),
        ("SELECT count(*) AS \"late-events\" GROUP BY event_window(1000)", 1, 8),
        ("SELECT a, count(*) GROUP BY 1, window(1000)", 1, 29),
        ("SELECT a GROUP BY window(1000) ORDER BY -1", 1, 42),
        ("SELECT count() GROUP BY window(1000)", 1, 8),
        ("SELECT count(*) GROUP BY sample(5)", 1, 26),
        ("SELECT * WHERE a >", 1, 19),
        ("SELECT a UNION SELECT b", 1, 10),
        ("SELECT a\nFROM e\nWINDOW w AS (PARTITION BY a)", 3, 1),
        ("SELECT x[*] + ", 1, 15),
    ];
    for (sql, line, column) in cases {
        let err = Query::parse(sql).expect_err(sql);
        assert!(!err.message.is_empty());
        assert!(!err.message.contains("Line:") && !err.message.contains("line "), "{sql}: {err:?}");
        assert!(!err.message.contains("[_]"), "{sql}: {err:?}");
        assert!(err.line > 0 && err.column > 0, "{sql}: {err:?}");
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
        ("SELECT * LIMIT 3", false),
        ("SELECT * GROUP BY window(1000)", false),
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

/// Feeds `rows` (timestamp, device, latency) through `sql`, ticking at `tick` after each
/// batch of events and once at the end.
fn feed(sql: &str, rows: &[(i64, &str, f64)], end: i64) -> Vec<Value> {
    let query = Arc::new(Query::parse(sql).unwrap_or_else(|e| panic!("{sql}: {e:?}")));
    let mut runner = Runner::new(query, 0, 42);
    let mut b = BatchBuilder::new();
    for (ts, device, latency) in rows {
        b.event(*ts).field("device", *device).field("latency", *latency);
    }
    let batch = b.finish().unwrap();
    let mut out = Vec::new();
    for event in batch.view().events() {
        runner.push(&event, &mut out).unwrap();
    }
    runner.tick(end, &mut out);
    out.into_iter().map(Value::Object).collect()
}

#[test]
fn top_n_per_window_and_first_n_of_a_stream() {
    let rows = run(r#"SELECT "device-type" AS d, count(*) AS n GROUP BY "device-type", window(1000)
                      ORDER BY n DESC, d LIMIT 2"#);
    assert_eq!(column(&rows, "d"), [json!("tv"), json!("phone")]);
    assert_eq!(column(&rows, "n"), [json!(3), json!(2)]);
    // Rows: the window's events themselves, sorted.
    let rows = run("SELECT user.id, latency GROUP BY window(1000) ORDER BY latency DESC LIMIT 3");
    assert_eq!(column(&rows, "latency"), [json!(95.5), json!(80.0), json!(40.0)]);
    let rows = run("SELECT *, status GROUP BY window(1000) ORDER BY 2 DESC LIMIT 1");
    assert_eq!((rows.len(), rows[0]["status"].clone(), rows[0]["path"].clone()), (1, json!(503), json!("/browse")));
    let rows = run("SELECT *, latency AS l GROUP BY window(1000) ORDER BY l LIMIT 1");
    assert_eq!((rows[0]["path"].clone(), rows[0]["timestamp-ms"].clone()), (json!("/play/3"), json!(1000)));
    // A stream's LIMIT: the first n results, then the runner is finished.
    let query = Arc::new(Query::parse("SELECT status WHERE status >= 400 LIMIT 2").unwrap());
    let mut runner = Runner::new(query, 0, 1);
    let mut out = Vec::new();
    for event in events().view().events() {
        runner.push(&event, &mut out).unwrap();
    }
    assert!(runner.finished());
    assert_eq!(out.iter().map(|m| m["status"].clone()).collect::<Vec<_>>(), [json!(500), json!(503)]);
}

#[test]
fn distinct_counts_lists_having_and_arithmetic_over_aggregates() {
    let mut rows = run(r#"SELECT "device-type" AS d, count(DISTINCT status) AS statuses,
                          approx_count_distinct(status) AS approx, list(status) AS all_statuses,
                          count(*) * 2 AS doubled, sum(latency) / count(*) AS mean, path
                   GROUP BY "device-type", window(1000) HAVING count(*) >= 2"#);
    rows.sort_by_key(|r| r["d"].as_str().unwrap().to_owned());
    assert_eq!(column(&rows, "d"), [json!("phone"), json!("tv")], "HAVING keeps groups of 2 or more");
    let tv = &rows[1];
    assert_eq!(tv["statuses"], 3);
    assert_eq!(tv["approx"], 3);
    assert_eq!(tv["all_statuses"], json!([200, 500, 404]));
    assert_eq!(tv["doubled"], 6);
    assert!((tv["mean"].as_f64().unwrap() - 112.0 / 3.0).abs() < 1e-9);
    assert_eq!(tv["path"], "/play/1", "a field neither grouped nor aggregated takes its first value");
    // The query from the report: arithmetic over count(*) with no other item.
    assert_eq!(
        run("SELECT count(*) * 2 AS n GROUP BY window(500)"),
        [json!({"timestamp-ms": 500, "window-ms": 500, "n": 12})]
    );
    // Aggregates of nothing.
    let rows = run(
        "SELECT sum(latency) AS s, count(latency) AS c, list(latency) AS l, count(DISTINCT x) AS d WHERE status > 1000 HAVING true",
    );
    assert!(rows.is_empty(), "a window without events emits nothing");
}

#[test]
fn count_windows_close_every_n_events() {
    let rows = run("SELECT count(*) AS n, max(latency) AS top GROUP BY count_window(4)");
    assert_eq!(
        rows,
        [json!({"timestamp-ms": 1003, "window-events": 4, "n": 4, "top": 80.0})],
        "6 events: one full window"
    );
}

#[test]
fn event_time_windows_follow_the_events_clock_and_count_late_events() {
    let rows = [
        (1_000, "tv", 1.0),
        (1_500, "tv", 2.0),
        (2_100, "tv", 3.0), // window [2000, 3000)
        (1_900, "tv", 4.0), // within the 500 ms lateness: still counted in [1000, 2000)
        (2_600, "tv", 5.0), // watermark 2100: [1000, 2000) closes
        (1_200, "tv", 6.0), // late: its window has closed
        (9_000, "tv", 7.0), // closes [2000, 3000)
    ];
    let out = feed("SELECT count(*) AS n, sum(latency) AS s GROUP BY event_window(1000, 500)", &rows, 0);
    assert_eq!(
        out,
        [
            json!({"timestamp-ms": 2000, "window-ms": 1000, "late-events": 0, "n": 3, "s": 7.0}),
            json!({"timestamp-ms": 3000, "window-ms": 1000, "late-events": 1, "n": 2, "s": 8.0}),
        ]
    );
    // Replayed in another order within the lateness, the answer is the same.
    let mut shuffled = rows[..5].to_vec();
    shuffled.swap(0, 3);
    shuffled.push((9_000, "tv", 7.0));
    let again = feed("SELECT count(*) AS n, sum(latency) AS s GROUP BY event_window(1000, 500)", &shuffled, 0);
    assert_eq!(again[0]["n"], 3);
}

#[test]
fn anomaly_flags_outliers_by_median_absolute_deviation() {
    let rows: Vec<(i64, &str, f64)> = [10.0, 11.0, 9.0, 10.5, 9.5, 10.0, 250.0]
        .iter()
        .enumerate()
        .map(|(i, l)| (i as i64, ["a", "b", "c", "d", "e", "f", "g"][i], *l))
        .collect();
    let out = feed("SELECT device, latency GROUP BY window(1000) HAVING anomaly(latency, 3)", &rows, 1000);
    assert_eq!(out, [json!({"timestamp-ms": 1000, "window-ms": 1000, "device": "g", "latency": 250.0})]);
    let out = feed(
        "SELECT device, avg(latency) AS l, anomaly(avg(latency), 3) AS outlier GROUP BY device, window(1000) ORDER BY device",
        &rows,
        1000,
    );
    assert_eq!(column(&out, "outlier"), [false, false, false, false, false, false, true].map(|b| json!(b)));
}

#[test]
fn prefixes_select_objects() {
    assert_eq!(run("SELECT user.* WHERE status = 503")[0]["user"], json!({"id": 2}));
    let rows = run("SELECT user WHERE status = 503");
    assert_eq!(rows[0]["user"], json!({"id": 2}));
}

#[test]
fn arrays_and_nested_objects_are_indexed_and_returned_whole() {
    let mut b = BatchBuilder::new();
    for line in [
        r#"{"timestamp-ms": 1, "id": 1, "calls": [{"latency": 120, "host": "a"}, {"latency": 450, "host": "b"}], "tags": ["x", "y"], "user": {"id": 7, "geo": {"cc": "nl"}}}"#,
        r#"{"timestamp-ms": 2, "id": 2, "calls": [{"latency": 80, "host": "c"}], "tags": [], "user": {"id": 8}}"#,
    ] {
        squilla_batch::json::push_json_line(&mut b, line, 0).unwrap();
    }
    let batch = b.finish().unwrap();
    let run_on = |sql: &str| {
        let query = Arc::new(Query::parse(sql).unwrap_or_else(|e| panic!("{sql}: {e:?}")));
        let mut runner = Runner::new(query, 0, 1);
        let mut out = Vec::new();
        for event in batch.view().events() {
            runner.push(&event, &mut out).unwrap();
        }
        out.into_iter().map(Value::Object).collect::<Vec<_>>()
    };
    // Any element: `calls[*].latency > 300` holds if one call is slow.
    assert_eq!(column(&run_on("SELECT id WHERE calls[*].latency > 300"), "id"), [json!(1)]);
    assert_eq!(column(&run_on("SELECT id WHERE tags[*] = 'y'"), "id"), [json!(1)]);
    // An index, from 0.
    let rows = run_on("SELECT calls[1].host AS second, calls[0].latency AS first, tags[0] AS tag");
    assert_eq!(rows[0], json!({"timestamp-ms": 1, "second": "b", "first": 120, "tag": "x"}));
    assert_eq!(rows[1]["second"], Value::Null);
    // Whole arrays and objects come back as JSON arrays and objects.
    let rows = run_on("SELECT calls, user, calls[*].latency AS latencies");
    assert_eq!(rows[0]["calls"], json!([{"latency": 120, "host": "a"}, {"latency": 450, "host": "b"}]));
    assert_eq!(rows[0]["user"], json!({"id": 7, "geo": {"cc": "nl"}}));
    assert_eq!(rows[0]["latencies"], json!([120, 450]));
    let all = run_on("SELECT *");
    assert_eq!(all[0]["user"]["geo"]["cc"], "nl");
    assert_eq!(all[0]["tags"], json!(["x", "y"]));
    assert_eq!(all[1]["tags"], Value::Null, "an empty array is carried as null");
    // Grouped by an element.
    let query = Arc::new(
        Query::parse("SELECT calls[0].host AS h, count(*) AS n GROUP BY calls[0].host, window(1000)").unwrap(),
    );
    let mut runner = Runner::new(query, 0, 1);
    let mut out = Vec::new();
    for event in batch.view().events() {
        runner.push(&event, &mut out).unwrap();
    }
    runner.tick(1000, &mut out);
    assert_eq!(out.len(), 2);
    // `[*]` inside quotes is text, not a path.
    assert_eq!(run_on("SELECT id WHERE '[*]' = '[*]'").len(), 2);
}

#[test]
fn a_long_top_n_window_keeps_only_about_twice_n_rows() {
    let query =
        Arc::new(Query::parse("SELECT n GROUP BY window(3600000) HAVING n % 2 = 0 ORDER BY n DESC LIMIT 5").unwrap());
    let mut runner = Runner::new(query, 0, 1);
    let mut out = Vec::new();
    let mut most = 0;
    for chunk in 0..20 {
        let mut b = BatchBuilder::new();
        for i in 0..1000 {
            b.event(0).field("n", chunk * 1000 + i);
        }
        for event in b.finish().unwrap().view().events() {
            runner.push(&event, &mut out).unwrap();
        }
        most = most.max(runner.state_bytes());
    }
    assert!(most < 64 * 400, "{most} bytes for a top 5");
    runner.tick(3_600_000, &mut out);
    assert_eq!(
        out.iter().map(|r| r["n"].clone()).collect::<Vec<_>>(),
        [19998, 19996, 19994, 19992, 19990].map(|n| json!(n))
    );
}

#[test]
fn names_aliases_mixed_types_and_equal_numbers() {
    let rows = |sql: &str, values: &[(i64, serde_json::Value)]| {
        let query = Arc::new(Query::parse(sql).unwrap_or_else(|e| panic!("{sql}: {e:?}")));
        let mut runner = Runner::new(query, 0, 1);
        let mut b = BatchBuilder::new();
        for (ts, v) in values {
            let line = json!({"timestamp-ms": ts, "v": v, "d": "x", "a": [1, 2.5, 3]}).to_string();
            squilla_batch::json::push_json_line(&mut b, &line, 0).unwrap();
        }
        let mut out = Vec::new();
        for event in b.finish().unwrap().view().events() {
            runner.push(&event, &mut out).unwrap();
        }
        runner.tick(1000, &mut out);
        out.into_iter().map(Value::Object).collect::<Vec<_>>()
    };
    // HAVING sees the SELECT list's aliases.
    let out = rows("SELECT d, count(*) AS n GROUP BY d, window(1000) HAVING n > 1", &[(1, json!(1)), (2, json!(2))]);
    assert_eq!(column(&out, "n"), [json!(2)]);
    // min and max over mixed types follow ORDER BY's order, whatever the arrival order.
    for values in [[json!("x"), json!(10), json!(20)], [json!(10), json!("x"), json!(20)]] {
        let input: Vec<(i64, Value)> = values.iter().cloned().enumerate().map(|(i, v)| (i as i64, v)).collect();
        let out = rows("SELECT min(v) AS lo, max(v) AS hi GROUP BY window(1000)", &input);
        assert_eq!((out[0]["lo"].clone(), out[0]["hi"].clone()), (json!(10), json!("x")));
    }
    // 1, 1.0 and -0.0 / 0 are one value each for groups and distinct counts, as for `=`.
    let input = [(1, json!(1)), (2, json!(1.0)), (3, json!(0)), (4, json!(-0.0))];
    let out = rows("SELECT count(DISTINCT v) AS n, sum(v) AS s GROUP BY window(1000)", &input);
    assert_eq!(out[0]["n"], 2);
    assert_eq!(out[0]["s"], 2.0);
    assert_eq!(rows("SELECT v, count(*) AS n GROUP BY v, window(1000)", &input).len(), 2);
    // Integer sums stay integers; aggregates over `[*]` take every element.
    let out = rows(
        "SELECT sum(v) AS s, sum(a[*]) AS all_a, count(a[*]) AS elements GROUP BY window(1000)",
        &[(1, json!(2)), (2, json!(3))],
    );
    assert_eq!(
        (out[0]["s"].clone(), out[0]["all_a"].clone(), out[0]["elements"].clone()),
        (json!(5), json!(13.0), json!(6))
    );
    // Result names never show the parser's placeholder for `[*]`.
    let out = rows("SELECT a[*] GROUP BY window(1000) LIMIT 1", &[(1, json!(1))]);
    assert!(out[0].get("a[*]").is_some(), "{:?}", out[0]);
}
