//! Where `squilla dev` and `squilla run` find a job's stages.
//!
//! A stage's `name@version` artifact is the file `<name>.wasm` (dashes as underscores) in the
//! first of these directories that has it: the ones given with `--artifacts DIR` (or
//! `SQUILLA_ARTIFACTS`, `:`-separated); without any, the example stages of a checkout of this
//! repository, `examples/target/wasm32-wasip2/release/` under the current directory — built
//! there with cargo (`cargo build --release --target wasm32-wasip2` in `examples/`) the first
//! time one is missing. Nothing of the machine that built the `squilla` binary is baked into
//! it.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use squilla_types::ArtifactRef;

/// The example stages' workspace, relative to the current directory.
const EXAMPLES: &str = "examples";
/// Where its build puts the components.
const BUILT: &str = "examples/target/wasm32-wasip2/release";

/// The file of `artifact` in `dirs`; with no `dirs`, in the examples (built if missing).
pub fn resolve(artifact: &ArtifactRef, dirs: &[PathBuf]) -> anyhow::Result<PathBuf> {
    let ArtifactRef::Tag { name, .. } = artifact else {
        bail!("`squilla` finds stages by name; `{artifact}` needs the master's artifact store");
    };
    let file = format!("{}.wasm", name.replace('-', "_"));
    let find = |dirs: &[PathBuf]| dirs.iter().map(|d| d.join(&file)).find(|p| p.exists());
    if !dirs.is_empty() {
        return find(dirs).with_context(|| format!("no {file} for artifact `{artifact}` in {dirs:?}"));
    }
    let built = [PathBuf::from(BUILT)];
    if let Some(path) = find(&built) {
        return Ok(path);
    }
    build_examples()?;
    find(&built).with_context(|| format!("the example stages have no {file} for artifact `{artifact}`"))
}

/// Builds the example stages with cargo, into `examples/target`.
fn build_examples() -> anyhow::Result<()> {
    if !Path::new(EXAMPLES).join("Cargo.toml").exists() {
        bail!(
            "no stage components: give `--artifacts DIR` (a directory of `<name>.wasm` files), or run from a \
             checkout of Squilla, whose examples are built on first use"
        );
    }
    eprintln!("squilla: building the example stages (cargo build --release --target wasm32-wasip2 in examples/) …");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(EXAMPLES)
        .args(["build", "--release", "--target", "wasm32-wasip2", "--workspace", "--target-dir", "target"])
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .context("cannot run cargo to build the example stages")?;
    if !status.success() {
        bail!(
            "building the example stages failed ({status}); is the wasm32-wasip2 target installed? \
             (`rustup target add wasm32-wasip2`)"
        );
    }
    Ok(())
}
