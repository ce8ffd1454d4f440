//! `squilla dev` as the README runs it: one command, results stream in.

use std::path::PathBuf;

use crate::{free_port, squilla, temp_dir};

/// Runs `squilla dev ARGS` on a free port with its own data directory; returns the JSON
/// lines it printed, its standard error and the data directory.
fn dev(name: &str, args: &[&str]) -> (Vec<serde_json::Value>, String, PathBuf) {
    let dir = temp_dir(name);
    let port = free_port().to_string();
    let output = squilla()
        .arg("dev")
        .args(args)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stderr}");
    let lines = String::from_utf8(output.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    (lines, stderr, dir)
}

#[test]
fn squilla_dev_runs_the_device_errors_example_and_prints_its_results() {
    let (lines, stderr, dir) = dev("dev", &["examples/device-errors/job.json", "--seconds", "8"]);
    assert!(stderr.contains("job `device-errors-1` submitted"), "{stderr}");
    assert!(lines.len() >= 6, "a tick's worth of device types, got {lines:?}\n{stderr}");
    for line in &lines {
        let (requests, errors) = (line["requests"].as_i64().unwrap(), line["errors"].as_i64().unwrap());
        assert!(requests >= errors && requests > 0);
        assert!((line["error-rate"].as_f64().unwrap() - errors as f64 / requests as f64).abs() < 1e-9);
    }
    // The dev tenant's token is where the client commands look for it.
    assert_eq!(std::fs::read_to_string(dir.join("data/dev.token")).unwrap().trim().len(), 32);
    // So is the operator's (the agent token it made), and it says so.
    assert_eq!(std::fs::read_to_string(dir.join("data/operator.token")).unwrap().trim().len(), 32);
    assert!(stderr.contains("operator token (for /metrics and /gateway/metrics) in"), "{stderr}");
}

#[test]
fn the_anomaly_chain_runs_three_chained_jobs_and_prints_alerts() {
    let (alerts, stderr, _) = dev(
        "dev-anomaly",
        &[
            "examples/anomaly/1-device-logs.json",
            "examples/anomaly/2-error-share.json",
            "examples/anomaly/3-error-alerts.json",
            "--param",
            "threshold=0.08",
            "--param",
            "clear-below=0.06",
            "--seconds",
            "15",
        ],
    );
    // Consoles fail 10 % of the time, phones 5 %, the others less: over windows of thousands
    // of requests only the consoles pass 0.08, and they stay well above 0.06, so the detector
    // raises exactly one alert and, for its hysteresis, never repeats or clears it.
    assert_eq!(alerts.len(), 1, "{alerts:?}\n{stderr}");
    let alert = &alerts[0];
    assert_eq!((alert["device-type"].as_str(), alert["alert"].as_str()), (Some("console"), Some("raised")), "{alert}");
    assert!(alert["error-rate"].as_f64().unwrap() >= 0.08, "{alert}");
    assert_eq!((alert["threshold"].as_f64(), alert["clear-below"].as_f64()), (Some(0.08), Some(0.06)), "{alert}");
}
