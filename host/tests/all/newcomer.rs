//! A newcomer copies the stage and the `Cargo.toml` from the SDK's README into an empty
//! folder and builds it for wasm32-wasip2: it must compile unchanged and run as a stage.

use std::path::Path;
use std::process::Command;

use squilla_batch::Event;
use squilla_host::{Artifact, Limits};

use crate::{batch, runtime};

/// The fenced blocks of `lang` in `markdown`, in order.
fn blocks<'m>(markdown: &'m str, lang: &str) -> Vec<&'m str> {
    let fence = format!("```{lang}\n");
    markdown
        .split(fence.as_str())
        .skip(1)
        .map(|rest| rest.split("```").next().expect("a fenced block is closed"))
        .collect()
}

#[test]
fn the_sdk_readme_stage_compiles_unchanged_and_runs() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let readme = std::fs::read_to_string(repo.join("sdk/README.md")).unwrap();
    let code = blocks(&readme, "rust")[0];
    let manifest = blocks(&readme, "toml")[0].replace("path/to/squilla/sdk", &repo.join("sdk").display().to_string());

    let dir = std::env::temp_dir().join(format!("squilla-newcomer-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(dir.join("Cargo.toml"), format!("{manifest}\n[workspace]\n")).unwrap();
    std::fs::write(dir.join("src/lib.rs"), code).unwrap();
    // Same dependency versions as the examples, so the build reuses what they compiled and
    // needs no network.
    std::fs::copy(repo.join("examples/Cargo.lock"), dir.join("Cargo.lock")).unwrap();

    let target_dir = Path::new(squilla_guests::GUEST_TARGET_DIR).join("newcomer");
    let output = Command::new(env!("CARGO"))
        .current_dir(&dir)
        .args(["build", "--offline", "--release", "--target", "wasm32-wasip2", "--target-dir"])
        .arg(&target_dir)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .output()
        .expect("run cargo");
    assert!(output.status.success(), "the README stage does not build:\n{}", String::from_utf8_lossy(&output.stderr));

    let wasm = std::fs::read(target_dir.join("wasm32-wasip2/release/errors.wasm")).unwrap();
    let artifact = Artifact::compile(runtime(), &wasm).unwrap();
    let mut stage =
        artifact.instantiate(runtime(), &Limits::default(), &[("min-status".into(), "500".into())]).unwrap();
    let input = batch(&[
        Event::new(1).with("status", 200i64),
        Event::new(2).with("status", 500i64),
        Event::new(3).with("status", 404i64),
        Event::new(4).with("status", 503i64),
    ]);
    let kept: Vec<i64> = stage.process(&input).unwrap().view().events().map(|e| e.timestamp_ms()).collect();
    assert_eq!(kept, [2, 4]);
    let _ = std::fs::remove_dir_all(&dir);
}
