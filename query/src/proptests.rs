//! Random queries from the grammar over random events: whatever the compiler accepts runs
//! without panicking, through every window shape, tick and limit.

use std::sync::Arc;

use proptest::prelude::*;
use squilla_batch::BatchBuilder;

use crate::{Query, Runner};

fn field() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "a",
        "b",
        "s",
        "user.id",
        "user",
        "\"device-type\"",
        "\"timestamp-ms\"",
        "missing",
        "a[0]",
        "a[*]",
        "user[*].id",
    ])
    .prop_map(str::to_owned)
}

fn literal() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|i| i.to_string()),
        prop::sample::select(vec!["0", "1", "-1", "2.5", "1e308", "NULL", "true", "'tv'", "''", "9223372036854775807"])
            .prop_map(str::to_owned),
    ]
}

fn expr() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![field(), literal()];
    leaf.prop_recursive(4, 24, 3, |inner| {
        let binary = prop::sample::select(vec!["+", "-", "*", "/", "%", "=", "<>", "<", ">=", "AND", "OR"]);
        let aggregate = prop::sample::select(vec![
            "count",
            "sum",
            "min",
            "max",
            "avg",
            "list",
            "approx_count_distinct",
            "count(DISTINCT",
        ]);
        prop_oneof![
            (inner.clone(), binary, inner.clone()).prop_map(|(a, op, b)| format!("({a} {op} {b})")),
            inner.clone().prop_map(|a| format!("NOT {a}")),
            inner.clone().prop_map(|a| format!("{a} IS NULL")),
            inner.clone().prop_map(|a| format!("{a} ~ '^t'")),
            (aggregate, inner.clone()).prop_map(|(f, a)| if f.ends_with("DISTINCT") {
                format!("{f} {a})")
            } else {
                format!("{f}({a})")
            }),
            Just("count(*)".to_owned()),
            inner.clone().prop_map(|a| format!("percentile({a}, 0.9)")),
            inner.clone().prop_map(|a| format!("anomaly({a}, 2)")),
            Just("sample(50)".to_owned()),
        ]
    })
}

fn query() -> impl Strategy<Value = String> {
    let items = prop::collection::vec(
        prop_oneof![Just("*".to_owned()), expr(), expr().prop_map(|e| format!("{e} AS x")), Just("user.*".to_owned())],
        1..4,
    );
    let window =
        prop::sample::select(vec!["", "window(100)", "count_window(3)", "event_window(100, 50)", "event_window(100)"]);
    (
        items,
        prop::option::of(expr()),
        prop::collection::vec(field(), 0..3),
        window,
        prop::option::of(expr()),
        prop::option::of((prop_oneof![expr(), Just("1".to_owned()), Just("x".to_owned())], any::<bool>())),
        prop::option::of(1u64..5),
    )
        .prop_map(|(items, filter, keys, window, having, order, limit)| {
            let mut sql = format!("SELECT {}", items.join(", "));
            if let Some(f) = filter {
                sql += &format!(" WHERE {f}");
            }
            let mut group: Vec<String> = keys;
            if !window.is_empty() {
                group.push(window.to_owned());
            }
            if !group.is_empty() {
                sql += &format!(" GROUP BY {}", group.join(", "));
            }
            if let Some(h) = having {
                sql += &format!(" HAVING {h}");
            }
            if let Some((o, desc)) = order {
                sql += &format!(" ORDER BY {o}{}", if desc { " DESC" } else { "" });
            }
            if let Some(n) = limit {
                sql += &format!(" LIMIT {n}");
            }
            sql
        })
}

fn value() -> impl Strategy<Value = Option<Result<i64, Result<f64, String>>>> {
    prop::option::of(prop_oneof![
        any::<i64>().prop_map(Ok),
        prop_oneof![any::<f64>(), Just(f64::NAN), Just(0.0)].prop_map(|f| Err(Ok(f))),
        prop::sample::select(vec!["tv", "phone", "", "t"]).prop_map(|s| Err(Err(s.to_owned()))),
    ])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn accepted_queries_run_without_panicking(
        sql in query(),
        events in prop::collection::vec((prop_oneof![any::<i64>(), -1000i64..1000], value(), value(), value()), 0..40),
        ticks in prop::collection::vec(prop_oneof![any::<i64>(), 0i64..2000], 0..4),
    ) {
        let Ok(query) = Query::parse(&sql) else { return Ok(()) };
        let mut runner = Runner::new(Arc::new(query), 0, 9).with_state_limit(64 << 10);
        let mut b = BatchBuilder::new();
        for (ts, a, bv, s) in &events {
            let mut e = b.event(*ts);
            let e = &mut e;
            for (name, v) in [("a", a), ("b", bv), ("user.id", s), ("s", s)] {
                match v {
                    None => {}
                    Some(Ok(i)) => drop(e.field(name, *i)),
                    Some(Err(Ok(f))) => drop(e.field(name, *f)),
                    Some(Err(Err(t))) => drop(e.field(name, t.as_str())),
                }
            }
        }
        let batch = b.finish().unwrap();
        let mut out = Vec::new();
        for (i, event) in batch.view().events().enumerate() {
            if runner.push(&event, &mut out).is_err() {
                break;
            }
            if let Some(t) = ticks.get(i % 7) {
                runner.tick(*t, &mut out);
            }
        }
        runner.tick(i64::MAX, &mut out);
        runner.tick(i64::MIN, &mut out);
        for result in &out {
            prop_assert!(serde_json::to_string(result).is_ok());
        }
    }
}
