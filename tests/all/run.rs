//! `squilla run`, as a newcomer runs it from the README: a real process, real output.

use std::io::Write;
use std::process::Stdio;

use crate::squilla;

/// Runs `squilla ARGS` with `input` on standard input.
fn run_with_input(args: &[&str], input: &[u8]) -> std::process::Output {
    let mut child =
        squilla().args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn the_device_errors_demo_prints_error_rates() {
    let output = squilla().args(["run", "examples/device-errors/job.json", "--seconds", "3"]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let lines: Vec<serde_json::Value> =
        String::from_utf8(output.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(lines.len() >= 6, "expected a tick's worth of device types, got {lines:?}");
    for line in &lines {
        let rate = line["error-rate"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&rate));
        assert_eq!(line["window-ms"], 30_000);
        assert!(line["requests"].as_i64().unwrap() >= line["errors"].as_i64().unwrap());
    }
}

#[test]
fn an_ingest_job_reads_json_lines_and_flushes_its_windows_at_the_end() {
    let input = "{\"text\": \"I love The Crown\"}\n{\"text\": \"the crown is boring\"}\n\n{\"text\": \"crown\"}\n{\"text\": \"no\"}\n";
    let output = run_with_input(&["run", "examples/sentiment/job.json", "--param", "keyword=crown"], input.as_bytes());
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let line: serde_json::Value = serde_json::from_str(String::from_utf8(output.stdout).unwrap().trim()).unwrap();
    assert_eq!(
        (line["positive"].as_i64(), line["negative"].as_i64(), line["neutral"].as_i64()),
        (Some(1), Some(1), Some(1))
    );
}

#[test]
fn bad_input_is_refused_with_the_line_number_and_bad_parameters_by_name() {
    // Arrays and objects are carried (flattened); nesting deeper than 8 levels is not.
    let input = b"{\"text\": \"ok\"}\n{\"text\": [[[[[[[[[1]]]]]]]]]}\n";
    let output = run_with_input(&["run", "examples/sentiment/job.json", "--param", "keyword=crown"], input);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("standard input, line 2") && stderr.contains("nest at most 8 deep"), "{stderr}");

    let output = squilla().args(["run", "examples/sentiment/job.json"]).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("parameter `keyword` is required"));
    let output = squilla().args(["run", "examples/top-titles/job.json", "--param", "n=many"]).output().unwrap();
    assert!(String::from_utf8_lossy(&output.stderr).contains("parameter `n`: `many` is not a valid Int"));
}
