//! Builds the `examples/` and `guests/programs/` workspaces for `wasm32-wasip2` and writes
//! the paths of the resulting components into `$OUT_DIR/guests.rs`.
//!
//! The nested cargo gets its own target directory (beside the outer one, so that it survives
//! `OUT_DIR` hash changes and CI's cached target directory keeps it), and none of the outer
//! build's compiler flags, which are meant for the host.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Example crates (`examples/`).
const EXAMPLES: &[&str] = &["device-errors", "top-titles", "sentiment", "filter", "alert", "window-count"];
/// Test programs (`guests/programs/`).
const PROGRAMS: &[&str] =
    &["corrupt-output", "spin", "memory-bomb", "deep-recursion", "fs-reader", "slow", "hostile", "typed"];

/// The compile bomb: the `hostile` component with an extra core module of this many functions,
/// each a block nested this deep. Valid, exporting the stage contract, and slow to compile.
const BOMB_FUNCTIONS: usize = 48;
const BOMB_DEPTH: usize = 60_000;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let repo = manifest_dir.parent().expect("guests/ sits in the repository root").to_path_buf();
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let examples = repo.join("examples");

    for watched in [
        "examples",
        "guests/programs",
        "sdk",
        "batch/src",
        "batch/Cargo.toml",
        "wit",
        "Cargo.toml",
        "rust-toolchain.toml",
    ] {
        println!("cargo:rerun-if-changed={}", repo.join(watched).display());
    }

    ensure_wasm_target();
    let target_dir = guest_target_dir(&out_dir);
    build_workspace(&examples, &target_dir);
    build_workspace(&repo.join("guests/programs"), &target_dir);
    let wasm_dir = target_dir.join("wasm32-wasip2").join("release");
    let tools = target_dir.join("tools");
    let python = build_python(&repo, &tools, &target_dir.join("python"));
    let javascript = build_javascript(&repo, &tools, &target_dir.join("javascript"));

    let mut code = String::new();
    code.push_str(&list("ALL", "Every example stage", EXAMPLES, &wasm_dir));
    code.push_str(&format!(
        "/// The Python `sentiment` stage (examples/python/sentiment), typed flavour.\npub const SENTIMENT_PY: &str = {:?};\n",
        python.display().to_string()
    ));
    code.push_str(&format!(
        "/// The JavaScript `filter` stage (examples/js/filter), typed flavour.\npub const FILTER_JS: &str = {:?};\n",
        javascript.display().to_string()
    ));
    let bomb = compile_bomb(&wasm_dir.join("hostile.wasm"), &target_dir.join("compile-bomb.wasm"));
    code.push_str("/// Guests that misbehave on purpose, for the host's isolation tests.\npub mod programs {\n");
    code.push_str(&list("ALL", "Every test program", PROGRAMS, &wasm_dir));
    code.push_str(&format!(
        "/// The compile bomb: a valid stage (the `hostile` component) carrying an extra core module of {BOMB_FUNCTIONS} functions of blocks nested {BOMB_DEPTH} deep, which takes Cranelift long to compile.\npub const COMPILE_BOMB: &str = {:?};\n",
        bomb.display().to_string()
    ));
    code.push_str("}\n");
    code.push_str(&format!(
        "/// The `examples/` directory (job specs live beside each example).\npub const EXAMPLES_DIR: &str = {:?};\n",
        examples.display().to_string()
    ));
    code.push_str(&format!(
        "/// The target directory the guest builds use (reused by tests that build a stage).\npub const GUEST_TARGET_DIR: &str = {:?};\n",
        target_dir.display().to_string()
    ));
    std::fs::write(out_dir.join("guests.rs"), code).expect("write guests.rs");
}

/// Writes `component` with an extra core module section appended (see [`BOMB_FUNCTIONS`]) to
/// `out`. A core module that nothing instantiates is still valid, and still compiled.
fn compile_bomb(component: &Path, out: &Path) -> PathBuf {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    fn section(id: u8, body: &[u8], out: &mut Vec<u8>) {
        out.push(id);
        leb(body.len(), out);
        out.extend_from_slice(body);
    }
    let mut module = b"\0asm\x01\0\0\0".to_vec();
    section(1, &[1, 0x60, 0, 0], &mut module); // one type: [] -> []
    let mut funcs = Vec::new();
    leb(BOMB_FUNCTIONS, &mut funcs);
    funcs.extend(std::iter::repeat_n(0u8, BOMB_FUNCTIONS));
    section(3, &funcs, &mut module);
    let mut body = vec![0u8]; // no locals
    for _ in 0..BOMB_DEPTH {
        body.extend_from_slice(&[0x02, 0x40]); // block (empty type)
    }
    body.extend(std::iter::repeat_n(0x0bu8, BOMB_DEPTH + 1)); // the blocks' ends, then the function's
    let mut code = Vec::new();
    leb(BOMB_FUNCTIONS, &mut code);
    for _ in 0..BOMB_FUNCTIONS {
        leb(body.len(), &mut code);
        code.extend_from_slice(&body);
    }
    section(10, &code, &mut module);
    let mut bytes = std::fs::read(component).expect("read the hostile component");
    section(1, &module, &mut bytes); // a component's core module section
    std::fs::write(out, &bytes).expect("write the compile bomb");
    out.to_path_buf()
}

/// Builds one guest workspace for wasm32-wasip2 in release mode.
fn build_workspace(dir: &Path, target_dir: &Path) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(dir)
        .args(["build", "--release", "--target", "wasm32-wasip2", "--workspace"])
        .arg("--target-dir")
        .arg(target_dir);
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_PROFILE_RELEASE_DEBUG",
        "CARGO_PROFILE_RELEASE_INCREMENTAL",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().unwrap_or_else(|e| panic!("cannot run cargo to build {}: {e}", dir.display()));
    assert!(status.success(), "building the guests in {} failed ({status})", dir.display());
}

/// Rust source for a `&[(name, path)]` constant `name` plus one constant per crate.
fn list(name: &str, doc: &str, crates: &[&str], wasm_dir: &Path) -> String {
    let mut all =
        format!("/// {doc}: `(crate name, path of its component)`.\npub const {name}: &[(&str, &str)] = &[\n");
    let mut consts = String::new();
    for krate in crates {
        let path = wasm_dir.join(format!("{}.wasm", krate.replace('-', "_")));
        assert!(path.exists(), "the guest build did not produce {}", path.display());
        let path = path.display().to_string();
        all.push_str(&format!("    ({krate:?}, {path:?}),\n"));
        consts.push_str(&format!(
            "/// The `{krate}` component.\npub const {}: &str = {path:?};\n",
            krate.replace('-', "_").to_uppercase()
        ));
    }
    all.push_str("];\n");
    all + &consts
}

/// The pinned tool versions (see docs/python.md and docs/javascript.md).
const COMPONENTIZE_PY: &str = "0.25.1";

/// Whether `output` exists and is newer than every file in `inputs` (files or directories,
/// searched one level deep).
fn fresh(output: &Path, inputs: &[PathBuf]) -> bool {
    let Ok(built) = std::fs::metadata(output).and_then(|m| m.modified()) else { return false };
    let mut files = Vec::new();
    for input in inputs {
        match std::fs::read_dir(input) {
            Ok(dir) => files.extend(dir.filter_map(|e| e.ok()).map(|e| e.path())),
            Err(_) => files.push(input.clone()),
        }
    }
    files.iter().all(|f| std::fs::metadata(f).and_then(|m| m.modified()).is_ok_and(|m| m <= built))
}

fn run(cmd: &mut Command, what: &str) {
    let status = cmd.status().unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(status.success(), "{what} failed ({status})");
}

/// Installs componentize-py (pinned) in a virtualenv under `tools` if it is not there, and
/// builds the Python sentiment stage.
fn build_python(repo: &Path, tools: &Path, out_dir: &Path) -> PathBuf {
    let output = out_dir.join("sentiment.wasm");
    let app = repo.join("examples/python/sentiment");
    let venv = tools.join("py");
    let cli = venv.join("bin/componentize-py");
    let version =
        Command::new(&cli).arg("--version").output().ok().map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    let installed = version.is_some_and(|v| v.trim() == format!("componentize-py {COMPONENTIZE_PY}"));
    if !installed {
        println!("cargo:warning=installing componentize-py {COMPONENTIZE_PY} into {}", venv.display());
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        run(Command::new(&python).args(["-m", "venv"]).arg(&venv), "python3 -m venv");
        run(
            Command::new(venv.join("bin/pip")).args([
                "install",
                "--quiet",
                &format!("componentize-py=={COMPONENTIZE_PY}"),
            ]),
            "pip install componentize-py",
        );
    }
    if installed && fresh(&output, &[app.clone(), repo.join("wit")]) {
        return output;
    }
    std::fs::create_dir_all(out_dir).expect("create the python output directory");
    run(
        Command::new(&cli)
            .arg("-d")
            .arg(repo.join("wit"))
            .args(["-w", "squilla:stage/typed-stage", "componentize", "--stub-wasi", "-p"])
            .arg(&app)
            .arg("app")
            .arg("-o")
            .arg(&output),
        "componentize-py",
    );
    output
}

/// Installs componentize-js (pinned by examples/js/package-lock.json) under `tools` if it is
/// not there, and builds the JavaScript filter stage.
fn build_javascript(repo: &Path, tools: &Path, out_dir: &Path) -> PathBuf {
    let output = out_dir.join("filter.wasm");
    let source = repo.join("examples/js/filter/filter.js");
    let js_tools = tools.join("js");
    let lock = repo.join("examples/js/package-lock.json");
    let installed_lock = js_tools.join("package-lock.json");
    // npm rewrites the lock file it installs from; what was installed is remembered apart.
    let installed_from = js_tools.join("installed-from.lock");
    let cli = js_tools.join("node_modules/@bytecodealliance/componentize-js/src/cli.js");
    let installed = cli.exists() && std::fs::read(&installed_from).ok() == std::fs::read(&lock).ok();
    if !installed {
        println!("cargo:warning=installing componentize-js into {}", js_tools.display());
        std::fs::create_dir_all(&js_tools).expect("create the js tools directory");
        std::fs::copy(repo.join("examples/js/package.json"), js_tools.join("package.json")).expect("copy package.json");
        std::fs::copy(&lock, &installed_lock).expect("copy package-lock.json");
        // `npm install` with the copied lock file installs the locked versions; `npm ci` would be
        // the stricter choice, but npm 11 refuses lock files that omit other platforms' optional
        // packages, which is every lock file made on one platform.
        run(Command::new("npm").args(["install", "--no-audit", "--no-fund"]).current_dir(&js_tools), "npm install");
        std::fs::copy(&lock, &installed_from).expect("remember the installed lock file");
    }
    if installed && fresh(&output, &[source.clone(), repo.join("wit")]) {
        return output;
    }
    std::fs::create_dir_all(out_dir).expect("create the javascript output directory");
    run(
        Command::new("node")
            .arg(&cli)
            .arg(&source)
            .arg("--wit")
            .arg(repo.join("wit"))
            .args([
                "-n",
                "typed-stage",
                "-d",
                "stdio",
                "-d",
                "random",
                "-d",
                "clocks",
                "-d",
                "http",
                "-d",
                "fetch-event",
            ])
            .arg("-o")
            .arg(&output),
        "componentize-js",
    );
    output
}

/// `<target>/guests` when `OUT_DIR` is the usual `<target>/<profile>/build/<pkg>/out`,
/// otherwise a directory inside `OUT_DIR`.
fn guest_target_dir(out_dir: &Path) -> PathBuf {
    let target =
        out_dir.ancestors().nth(4).filter(|_| out_dir.ancestors().nth(2).is_some_and(|b| b.ends_with("build")));
    match target {
        Some(target) => target.join("guests"),
        None => out_dir.join("guests"),
    }
}

/// Installs the `wasm32-wasip2` standard library with rustup when the toolchain lacks it.
/// `rust-toolchain.toml` lists the target, but rustup adds listed targets only when it
/// installs a toolchain, not to one already present.
fn ensure_wasm_target() {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let sysroot = Command::new(rustc).args(["--print", "sysroot"]).output().ok().filter(|o| o.status.success());
    let present = sysroot.is_some_and(|o| {
        Path::new(String::from_utf8_lossy(&o.stdout).trim()).join("lib/rustlib/wasm32-wasip2").exists()
    });
    if present {
        return;
    }
    println!("cargo:warning=installing the wasm32-wasip2 target with rustup (needed to build the example stages)");
    let status = Command::new("rustup").args(["target", "add", "wasm32-wasip2"]).status();
    if !status.is_ok_and(|s| s.success()) {
        panic!(
            "the wasm32-wasip2 target is missing and `rustup target add wasm32-wasip2` failed; install it and build again"
        );
    }
}
