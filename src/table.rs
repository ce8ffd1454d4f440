//! What the client commands print for people: aligned tables of jobs, agents and metrics, and
//! job summaries, made from the API's JSON documents — the same documents `--output json`
//! prints whole (a job's fields are snake_case, the metrics' and agents' kebab-case).
//! Pure functions of JSON to text, so that they are tested without a master.

use serde_json::Value;

/// Rows under a header, each column as wide as its widest cell, two spaces apart.
pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, cell) in cells.enumerate() {
            let width = widths.get(i).copied().unwrap_or(0);
            text.push_str(cell);
            text.extend(std::iter::repeat_n(' ', (width + 2).saturating_sub(cell.chars().count())));
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut out, &mut header.iter().copied());
    for row in rows {
        line(&mut out, &mut row.iter().map(String::as_str));
    }
    out
}

/// A duration in ms as people say it: `42s`, `5m`, `3h`, `2d`.
pub fn age(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// A rate, short: `0`, `12.5`, `980`, `12.3k`, `4.56M`.
pub fn rate(x: f64) -> String {
    match x {
        x if x <= 0.0 || !x.is_finite() => "0".into(),
        x if x < 100.0 => format!("{x:.1}"),
        x if x < 10_000.0 => format!("{x:.0}"),
        x if x < 1e6 => format!("{:.1}k", x / 1e3),
        x => format!("{:.2}M", x / 1e6),
    }
}

/// Bytes, short: `512B`, `64KiB`, `3.2MiB`.
pub fn bytes(n: u64) -> String {
    match n {
        0..1024 => format!("{n}B"),
        1024..1_048_576 => format!("{}KiB", n / 1024),
        _ => format!("{:.1}MiB", n as f64 / 1_048_576.0),
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// `(running, total)` workers of a job document.
fn workers(job: &Value) -> (usize, usize) {
    let all: Vec<&Value> = job["stages"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["workers"].as_array().into_iter().flatten())
        .collect();
    (all.iter().filter(|w| w["state"] == "running").count(), all.len())
}

/// The jobs table: id, cluster, state, workers, age, events/s (the first stage's input over
/// the last 10 s, from `rates`, by job id; `-` where unknown).
pub fn jobs(jobs: &[Value], rates: &std::collections::BTreeMap<String, f64>, now_ms: i64) -> String {
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|job| {
            let id = text(&job["id"]);
            let (running, total) = workers(job);
            vec![
                id.clone(),
                format!("{} v{}", text(&job["cluster"]), text(&job["version"])),
                text(&job["state"]),
                format!("{running}/{total}"),
                age(now_ms - job["submitted_at_ms"].as_i64().unwrap_or(now_ms)),
                rates.get(&id).map(|r| rate(*r)).unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    render(&["ID", "CLUSTER", "STATE", "WORKERS", "AGE", "EVENTS/S"], &rows)
}

/// A job's summary: what it is, its stages' workers, and its recent history.
pub fn job(job: &Value, now_ms: i64) -> String {
    let (running, total) = workers(job);
    let mut out = format!(
        "job       {}\ncluster   {} v{}\nstate     {}\nworkers   {running}/{total} running\nage       {}\n\n",
        text(&job["id"]),
        text(&job["cluster"]),
        text(&job["version"]),
        text(&job["state"]),
        age(now_ms - job["submitted_at_ms"].as_i64().unwrap_or(now_ms)),
    );
    let mut rows = Vec::new();
    for stage in job["stages"].as_array().into_iter().flatten() {
        for w in stage["workers"].as_array().into_iter().flatten() {
            let reason = w["pending_reason"].as_str().or_else(|| w["last_failure"].as_str()).unwrap_or("");
            rows.push(vec![
                text(&stage["name"]),
                text(&w["index"]),
                text(&w["number"]),
                text(&w["state"]),
                text(&w["agent"]),
                text(&w["events_in"]),
                text(&w["events_out"]),
                text(&w["dropped"]),
                text(&w["failed_calls"]),
                reason.chars().take(60).collect(),
            ]);
        }
    }
    out.push_str(&render(
        &["STAGE", "WORKER", "NUMBER", "STATE", "AGENT", "IN", "OUT", "DROPPED", "FAILED", "REASON"],
        &rows,
    ));
    let history: Vec<&Value> = job["history"].as_array().into_iter().flatten().collect();
    if !history.is_empty() {
        out.push_str("\nhistory (newest last)\n");
        for t in history.iter().rev().take(5).rev() {
            let at = t["at_ms"].as_i64().unwrap_or(0);
            let reason = t["reason"].as_str().map(|r| format!(": {r}")).unwrap_or_default();
            out.push_str(&format!("  {} ago  {}{reason}\n", age(now_ms - at), text(&t["state"])));
        }
    }
    out
}

/// A job's metrics: one row per worker and one per stage (its sum), rates over `window`
/// (`10s`, `1m` or `5m`).
pub fn metrics(m: &Value, window: &str) -> String {
    let mut rows = Vec::new();
    let row = |name: String, who: String, state: String, v: &Value| {
        let r = &v["rates"][window];
        vec![
            name,
            who,
            state,
            rate(r["events-in"].as_f64().unwrap_or(0.0)),
            rate(r["events-out"].as_f64().unwrap_or(0.0)),
            rate(r["dropped"].as_f64().unwrap_or(0.0)),
            rate(r["failed-calls"].as_f64().unwrap_or(0.0)),
            format!("{:.1}%", r["guest-cpu"].as_f64().unwrap_or(0.0) * 100.0),
            format!("{}µs", v["call-micros"]["p50"].as_u64().unwrap_or(0)),
            format!("{}µs", v["call-micros"]["p99"].as_u64().unwrap_or(0)),
            text(&v["queue-depth"]),
            bytes(v["memory-bytes"].as_u64().unwrap_or(0)),
            text(&v["totals"]["events-in"]),
            text(&v["totals"]["events-out"]),
        ]
    };
    for stage in m["stages"].as_array().into_iter().flatten() {
        let name = text(&stage["name"]);
        for w in stage["workers"].as_array().into_iter().flatten() {
            rows.push(row(name.clone(), format!("#{}", text(&w["index"])), text(&w["state"]), w));
        }
        rows.push(row(name, "all".into(), String::new(), stage));
    }
    render(
        &[
            "STAGE", "WORKER", "STATE", "IN/S", "OUT/S", "DROPS/S", "FAILS/S", "CPU", "P50", "P99", "QUEUE", "MEMORY",
            "IN", "OUT",
        ],
        &rows,
    )
}

/// The agents table.
pub fn agents(agents: &[Value]) -> String {
    let rows: Vec<Vec<String>> = agents
        .iter()
        .map(|a| {
            let u = &a["utilization"];
            let pct = |k: &str| format!("{:.0}%", u[k].as_f64().unwrap_or(0.0) * 100.0);
            vec![
                text(&a["id"]),
                text(&a["zone"]),
                if a["lost"] == true { "lost".into() } else { "alive".into() },
                format!("{}/{}", text(&a["reserved"]["slots"]), text(&a["capacity"]["slots"])),
                pct("cpu"),
                pct("memory"),
                bytes(a["usage"]["memory-bytes"].as_u64().unwrap_or(0)),
                age(a["silent-ms"].as_i64().unwrap_or(0)),
            ]
        })
        .collect();
    render(&["ID", "ZONE", "STATE", "SLOTS", "CPU", "MEMORY", "LINEAR MEMORY", "LAST SEEN"], &rows)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn columns_line_up() {
        let text =
            super::render(&["A", "LONGER"], &[vec!["wide cell".into(), "x".into()], vec!["y".into(), "z".into()]]);
        assert_eq!(text, "A          LONGER\nwide cell  x\ny          z\n");
    }

    #[test]
    fn the_jobs_table_counts_running_workers_and_shows_rates() {
        let job = json!({"id": "demo-1", "cluster": "demo", "version": 2, "state": "running",
            "submitted_at_ms": 1_000,
            "stages": [{"name": "a", "workers": [{"state": "running"}, {"state": "waiting"}]}]});
        let rates = [("demo-1".to_owned(), 12_345.0)].into_iter().collect();
        let text = super::jobs(&[job], &rates, 181_000);
        let row = text.lines().nth(1).unwrap();
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells, ["demo-1", "demo", "v2", "running", "1/2", "3m", "12.3k"]);
    }

    #[test]
    fn numbers_read_short() {
        assert_eq!(super::rate(0.0), "0");
        assert_eq!(super::rate(f64::NAN), "0");
        assert_eq!(super::rate(12.34), "12.3");
        assert_eq!(super::rate(4_560_000.0), "4.56M");
        assert_eq!(super::bytes(3 << 20), "3.0MiB");
        assert_eq!(super::age(90_000), "1m");
        assert_eq!(super::age(-5), "0s");
    }
}
