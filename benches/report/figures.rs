//! The report's figures: where each is read from, its target, and the Markdown table.

use serde_json::{Value, json};

/// Where a figure's value comes from.
pub enum Source {
    /// A number in the JSON document a custom benchmark prints, times `scale`.
    Json { bench: &'static str, pointer: &'static str, scale: f64 },
    /// Criterion's median time per iteration of benchmark `id`, turned into the figure.
    Criterion { bench: &'static str, id: &'static str, per_events: fn(f64) -> f64 },
}

/// What a figure should reach.
#[derive(Clone, Copy)]
pub enum Target {
    AtLeast(f64),
    AtMost(f64),
    None,
}

pub struct Figure {
    pub key: &'static str,
    pub label: &'static str,
    pub unit: &'static str,
    pub source: Source,
    pub target: Target,
    pub value: Option<f64>,
}

impl Figure {
    fn met(&self) -> Option<bool> {
        let value = self.value?;
        match self.target {
            Target::AtLeast(t) => Some(value >= t),
            Target::AtMost(t) => Some(value <= t),
            Target::None => None,
        }
    }

    pub fn to_json(&self) -> Value {
        let target = match self.target {
            Target::AtLeast(t) => json!({ "at_least": t }),
            Target::AtMost(t) => json!({ "at_most": t }),
            Target::None => Value::Null,
        };
        json!({ "key": self.key, "label": self.label, "unit": self.unit, "value": self.value,
                "target": target, "met": self.met() })
    }
}

/// Nanoseconds per event from the time of one batch of 1,024 events.
fn ns_per_event(ns: f64) -> f64 {
    ns / 1024.0
}

/// Millions of events per second from the time of one batch of 1,024 events.
fn m_events_per_s(ns: f64) -> f64 {
    1024.0 / ns * 1e3
}

fn figure(key: &'static str, label: &'static str, unit: &'static str, source: Source, target: Target) -> Figure {
    Figure { key, label, unit, source, target, value: None }
}

fn json(bench: &'static str, pointer: &'static str, scale: f64) -> Source {
    Source::Json { bench, pointer, scale }
}

/// Every figure of the report, in the order of the table.
pub fn figures() -> Vec<Figure> {
    use Target::{AtLeast, AtMost};
    vec![
        figure(
            "agent_3_stage_wasm",
            "3-stage Wasm job on the agent's pool (`--bench agent`)",
            "M events/s",
            json("agent", "/throughput/pipeline_3_stage_wasm_events_per_s", 1e-6),
            AtLeast(10.0),
        ),
        figure(
            "wasm_over_native",
            "Wasm / native, the same 3 stages on one thread (`--bench agent`)",
            "×",
            json("agent", "/throughput/native_over_wasm", 1.0),
            AtMost(1.3),
        ),
        figure(
            "keep_all_filter",
            "keep-all `filter`, one call on 1,024 events, per event (`--bench process`)",
            "ns",
            Source::Criterion { bench: "process", id: "process/keep-all/1024", per_events: ns_per_event },
            AtMost(20.0),
        ),
        figure(
            "tcp_hop",
            "TCP hop between two agent processes, TLS (`--bench streams`, `hop`)",
            "M events/s",
            json("streams", "/tcp_hop/events_per_second", 1e-6),
            AtLeast(8.0),
        ),
        figure(
            "epoch_cost",
            "epoch interruption cost, one thread (`--bench agent`)",
            "%",
            json("agent", "/epoch/overhead_pct", 1.0),
            AtMost(3.0),
        ),
        figure(
            "instantiate_p50",
            "instantiate + `init` of a cached stage, p50 (`--bench agent`)",
            "µs",
            json("agent", "/instantiate/p50_us", 1.0),
            Target::None,
        ),
        figure(
            "instantiate_p99",
            "instantiate + `init` of a cached stage, p99 (`--bench agent`)",
            "µs",
            json("agent", "/instantiate/p99_us", 1.0),
            AtMost(10.0),
        ),
        figure(
            "idle_worker",
            "memory (PSS) per idle worker, 10,000 workers in one agent (`--bench agent`)",
            "KiB",
            json("agent", "/idle_memory/per_worker_kib", 1.0),
            AtMost(64.0),
        ),
        figure(
            "python_cold_start",
            "Python stage, empty cache: compile → first batch processed (`--bench languages`)",
            "s",
            json("languages", "/cold_start_ms/python", 1e-3),
            AtMost(1.0),
        ),
        figure(
            "javascript_cold_start",
            "JavaScript stage, empty cache: compile → first batch processed (`--bench languages`)",
            "s",
            json("languages", "/cold_start_ms/javascript", 1e-3),
            AtMost(1.0),
        ),
        figure(
            "json_to_batches",
            "JSON lines → batches, ~160-byte events, one core (`--bench batch`)",
            "M events/s",
            Source::Criterion { bench: "batch", id: "batch/json-lines-to-batch-1024", per_events: m_events_per_s },
            AtLeast(3.0),
        ),
        figure(
            "http_ingest",
            "HTTP ingest into a running job through a gateway, one connection (`--bench streams`, `ingest`)",
            "M events/s",
            json("streams", "/ingest/events_per_second", 1e-6),
            AtLeast(1.5),
        ),
        figure(
            "group_by_query",
            "`SELECT … GROUP BY` query, per event (`--bench query`)",
            "ns",
            Source::Criterion { bench: "query", id: "query per event/group-by", per_events: ns_per_event },
            AtMost(60.0),
        ),
    ]
}

/// A number as the table shows it: three significant digits, at most two decimals.
fn show(value: f64) -> String {
    let decimals = if value.abs() >= 100.0 {
        0
    } else if value.abs() >= 10.0 {
        1
    } else {
        2
    };
    format!("{value:.decimals$}")
}

/// The Markdown table: each figure, its target, whether it is met, and its values in the
/// earlier recorded runs of `history` (newest first, up to four).
pub fn markdown(figures: &[Figure], history: &[Value], date: &str, commit: &str) -> String {
    let mut out = format!(
        "Measured {date} at commit {commit} on {} cores.\n\n| figure | measured | target | met | earlier runs (newest first) |\n| --- | --- | --- | --- | --- |\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for figure in figures {
        let measured = figure.value.map_or_else(|| "failed".to_owned(), |v| format!("**{}** {}", show(v), figure.unit));
        let target = match figure.target {
            Target::AtLeast(t) => format!("≥ {} {}", show(t), figure.unit),
            Target::AtMost(t) => format!("≤ {} {}", show(t), figure.unit),
            Target::None => "—".to_owned(),
        };
        let met = match figure.met() {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "—",
        };
        let earlier: Vec<String> = history
            .iter()
            .rev()
            .filter_map(|run| {
                let value = &run["figures"][figure.key];
                let value = value.as_f64().map(show).or_else(|| value.as_str().map(str::to_owned))?;
                Some(format!("{value} ({}, {})", run["commit"].as_str()?, run["date"].as_str()?))
            })
            .take(4)
            .collect();
        let earlier = if earlier.is_empty() { "—".to_owned() } else { earlier.join("; ") };
        out += &format!("| {} | {measured} | {target} | {met} | {earlier} |\n", figure.label);
    }
    out
}
