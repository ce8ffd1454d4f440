//! The cost of a subscription's query per event, read in place from a synthetic device-log
//! batch: a filter, a filter with a regular expression, a projection, grouped aggregates,
//! top-N per window, distinct counts (exact and HyperLogLog) and an event-time window,
//! including making the JSON of what passes, as an agent's sink does. Windows stay open over
//! the measurement (their results are made once per window, not per event), except that
//! `top-n-rows` keeps every matching event's row until its window closes.
//! `cargo bench --workspace --bench query`.

use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use squilla_batch::synth::DeviceLogs;
use squilla_query::{Query, Runner};

fn bench(c: &mut Criterion) {
    let batch = DeviceLogs::new(1).batch(1024, 0, 0).unwrap();
    let mut group = c.benchmark_group("query per event");
    group.throughput(Throughput::Elements(1024));
    for (name, sql) in [
        ("filter", "SELECT * WHERE status >= 500"),
        ("filter-regex", r#"SELECT * WHERE status >= 500 AND "device-type" ~ '^(tv|phone)$'"#),
        ("filter-and-project", r#"SELECT "device-type" AS d, status WHERE status >= 500"#),
        ("group-by", r#"SELECT "device-type", count(*), avg(status) GROUP BY "device-type", window(10000)"#),
        (
            "top-n",
            r#"SELECT "device-type", count(*) AS n GROUP BY "device-type", window(10000) ORDER BY n DESC LIMIT 3"#,
        ),
        ("top-n-rows", r#"SELECT "device-id", status GROUP BY window(10000) ORDER BY status DESC LIMIT 10"#),
        (
            "count-distinct",
            r#"SELECT "device-type", count(DISTINCT "device-id") GROUP BY "device-type", window(10000)"#,
        ),
        (
            "approx-count-distinct",
            r#"SELECT "device-type", approx_count_distinct("device-id") GROUP BY "device-type", window(10000)"#,
        ),
        ("event-window", r#"SELECT "device-type", count(*) GROUP BY "device-type", event_window(10000, 1000)"#),
    ] {
        let query = Arc::new(Query::parse(sql).unwrap());
        group.bench_function(name, |b| {
            let mut runner = Runner::new(query.clone(), 0, 1);
            let mut out = Vec::with_capacity(1024);
            let mut json = Vec::with_capacity(256 * 1024);
            b.iter(|| {
                out.clear();
                json.clear();
                let nested = batch.view().names().any(|n| n.contains('.'));
                for event in batch.view().events() {
                    // As an agent's sink runs them: a `SELECT *` filter's matches are written
                    // straight from the batch; other queries make their results.
                    if query.selects_events() {
                        if runner.matches(&event) {
                            if nested {
                                squilla_batch::json::write_json_nested(&event, &mut json);
                            } else {
                                squilla_batch::json::write_json_flat(&event, &mut json);
                            }
                        }
                    } else {
                        runner.push(&event, &mut out).unwrap();
                    }
                }
                out.len() + json.len()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
