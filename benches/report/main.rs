//! Every headline figure in one report: `cargo bench --workspace --bench report`.
//!
//! Runs the benchmarks that measure the figures users ask about (each with
//! `cargo bench --workspace --bench NAME`, so each builds and runs exactly as it does alone),
//! reads their results — the JSON a custom benchmark prints, or criterion's
//! `criterion/<group>/<id>/new/estimates.json` (median) — and writes one JSON document and one
//! Markdown table, each figure beside its target, to `<target dir>/squilla-report/`.
//!
//! With `SQUILLA_REPORT_RECORD=1` it also appends the run (date, commit, figures) to
//! `docs/benchmarks-history.json` and rewrites the table between the report markers of
//! `docs/benchmarks.md`, with each figure's earlier values. A benchmark that fails leaves its
//! figures empty and the report's exit status non-zero; the others are still reported.
//!
//! About 6 minutes on 2 cores once built. `SQUILLA_REPORT_ONLY=agent,query` runs only the
//! named benchmarks (for trying a change; do not record such a run).

mod figures;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use figures::{Figure, Source, figures};
use serde_json::{Value, json};

/// One benchmark run: its name, its environment, and for a criterion benchmark the filter
/// that picks the figures' benchmarks.
struct Run {
    bench: &'static str,
    env: &'static [(&'static str, &'static str)],
    criterion: Option<&'static str>,
}

/// Criterion's times are cut to 1 s of warm-up and 3 s of measurement: enough for per-event
/// figures of batches of 1,024, which vary far less than the machine does.
const CRITERION_TIMES: &[&str] = &["--warm-up-time", "1", "--measurement-time", "3"];

const RUNS: &[Run] = &[
    Run { bench: "batch", env: &[], criterion: Some("json-lines") },
    Run { bench: "process", env: &[], criterion: Some("keep-all/1024") },
    Run { bench: "query", env: &[], criterion: Some("group-by") },
    Run { bench: "agent", env: &[("SQUILLA_BENCH", "report")], criterion: None },
    Run { bench: "languages", env: &[], criterion: None },
    Run { bench: "streams", env: &[("SQUILLA_BENCH", "hop,ingest")], criterion: None },
];

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let only = std::env::var("SQUILLA_REPORT_ONLY").unwrap_or_default();
    let mut outputs = serde_json::Map::new();
    let mut failed = Vec::new();
    for run in RUNS.iter().filter(|r| only.is_empty() || only.split(',').any(|o| o.trim() == r.bench)) {
        eprintln!("report: running --bench {}", run.bench);
        match bench(run) {
            Ok(output) => {
                outputs.insert(run.bench.to_owned(), output);
            }
            Err(error) => {
                eprintln!("report: --bench {} failed: {error}", run.bench);
                failed.push(run.bench);
            }
        }
    }
    let criterion = target.join("criterion");
    let mut figures = figures();
    for figure in &mut figures {
        let (Source::Json { bench, .. } | Source::Criterion { bench, .. }) = &figure.source;
        let Some(output) = outputs.get(*bench) else { continue };
        figure.value = match &figure.source {
            Source::Json { pointer, scale, .. } => output.pointer(pointer).and_then(Value::as_f64).map(|v| v * scale),
            Source::Criterion { id, per_events, .. } => criterion_median_ns(&criterion, id).map(per_events),
        };
    }

    let (date, commit) = (date(), commit(&root));
    let document = json!({
        "date": date,
        "commit": commit,
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "failed": failed,
        "figures": figures.iter().map(Figure::to_json).collect::<Vec<_>>(),
        "outputs": outputs,
    });
    let history_path = root.join("docs/benchmarks-history.json");
    let mut history: Vec<Value> =
        std::fs::read(&history_path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
    let table = figures::markdown(&figures, &history, &date, &commit);
    let out = target.join("squilla-report");
    std::fs::create_dir_all(&out).expect("report directory");
    std::fs::write(out.join("report.json"), serde_json::to_string_pretty(&document).unwrap()).expect("report.json");
    std::fs::write(out.join("report.md"), &table).expect("report.md");
    println!("{table}");
    println!("written: {} and report.md", out.join("report.json").display());

    if std::env::var("SQUILLA_REPORT_RECORD").as_deref() == Ok("1") {
        if !only.is_empty() {
            eprintln!("report: not recorded (SQUILLA_REPORT_ONLY ran only some benchmarks)");
        } else {
            let values: serde_json::Map<String, Value> =
                figures.iter().filter_map(|f| Some((f.key.to_owned(), json!(f.value?)))).collect();
            history.push(json!({ "date": date, "commit": commit, "figures": values }));
            std::fs::write(&history_path, serde_json::to_string_pretty(&history).unwrap() + "\n").expect("history");
            record(&root.join("docs/benchmarks.md"), &table);
            println!("recorded in docs/benchmarks.md and docs/benchmarks-history.json");
        }
    }
    if !failed.is_empty() {
        eprintln!("report: failed: {failed:?}");
        std::process::exit(1);
    }
}

/// Runs `cargo bench --workspace --bench NAME` and returns the JSON document it printed last
/// (`null` for a criterion benchmark, whose results are read from its files).
fn bench(run: &Run) -> Result<Value, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command.args(["bench", "--workspace", "--bench", run.bench]);
    if let Some(filter) = run.criterion {
        command.arg("--").arg(filter).args(CRITERION_TIMES);
    }
    command.envs(run.env.iter().copied()).stdout(Stdio::piped()).stderr(Stdio::inherit());
    let output = command.output().map_err(|e| format!("cannot run cargo: {e}"))?;
    if !output.status.success() {
        return Err(format!("exit status {}", output.status));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    // A custom benchmark prints one pretty JSON document, starting with a line `{`.
    match stdout.rfind("\n{\n").map(|i| i + 1).or_else(|| stdout.starts_with("{\n").then_some(0)) {
        Some(start) => serde_json::from_str(&stdout[start..]).map_err(|e| format!("its JSON: {e}")),
        None => Ok(Value::Null),
    }
}

/// Criterion's median time per iteration, in nanoseconds, for benchmark `id` (`group/name`).
fn criterion_median_ns(criterion: &Path, id: &str) -> Option<f64> {
    let path = criterion.join(id).join("new/estimates.json");
    let estimates: Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    estimates.pointer("/median/point_estimate")?.as_f64()
}

fn date() -> String {
    let out = Command::new("date").args(["-u", "+%Y-%m-%d"]).output();
    out.ok().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap_or_default()
}

/// The commit measured, `+` appended when the working tree differs from it.
fn commit(root: &Path) -> String {
    let git =
        |args: &[&str]| Command::new("git").args(args).current_dir(root).output().ok().filter(|o| o.status.success());
    let Some(head) = git(&["rev-parse", "--short=7", "HEAD"]) else { return "unknown".into() };
    let head = String::from_utf8_lossy(&head.stdout).trim().to_owned();
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|o| !o.stdout.is_empty());
    if dirty { format!("{head}+") } else { head }
}

const BEGIN: &str =
    "<!-- report:begin (written by `SQUILLA_REPORT_RECORD=1 cargo bench --workspace --bench report`) -->";
const END: &str = "<!-- report:end -->";

/// Replaces the text between the report markers of `docs/benchmarks.md` with `table`.
fn record(doc: &Path, table: &str) {
    let text = std::fs::read_to_string(doc).expect("docs/benchmarks.md");
    let (Some(begin), Some(end)) = (text.find(BEGIN), text.find(END)) else {
        eprintln!("report: {} has no report markers; table not written there", doc.display());
        return;
    };
    let updated = format!("{}{BEGIN}\n{table}{}", &text[..begin], &text[end..]);
    std::fs::write(doc, updated).expect("docs/benchmarks.md");
}
