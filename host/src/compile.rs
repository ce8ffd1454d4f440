//! Compiling components within a budget, off the control path.
//!
//! Cranelift's time and memory grow with what a component holds, and a tenant controls that: a
//! module of deeply nested blocks can take minutes and gigabytes. So a compilation is treated
//! as tenant work with a budget ([`CompileConfig`]):
//!
//! - **Isolation.** With [`CompileIsolation::Process`] each compile runs in a child process
//!   (the `squilla` binary's hidden `compile-worker` command, see [`run_worker`]) at a lower
//!   scheduling priority than the agent's workers (`nice` 10), with `RLIMIT_CPU` and
//!   `RLIMIT_AS` set to the budget, and killed when it passes its wall-clock budget: a compile
//!   past its budget is really stopped, and its memory goes back to the system. The child
//!   writes the compiled code to its standard output; the agent loads it (the code is this
//!   host's own binary's output, on a pipe nobody else holds). [`CompileIsolation::Thread`]
//!   compiles on a thread of the agent's own process, for tests and embedding: there the
//!   wall-clock budget only stops the wait (the compile finishes in the background) and the
//!   CPU and memory budgets do not apply.
//! - **Admission.** At most [`CompileConfig::concurrency`] compiles run at once on an agent,
//!   and at most [`CompileConfig::per_tenant`] for one tenant, so one tenant's compile bomb
//!   cannot hold every slot while another tenant's job waits to start.
//! - **Memory of failures.** A component that failed to compile (invalid, or over a budget)
//!   is remembered by sha256 for the agent's life and refused at once the next time.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use wasmtime::component::Component;

use crate::error::{ArtifactError, WALL_CLOCK};
use crate::{Runtime, RuntimeConfig};

/// Where a compilation runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompileIsolation {
    /// On a thread of this process: cannot be stopped (a compile past its wall budget is
    /// abandoned and finishes in the background); the CPU and memory budgets do not apply.
    Thread,
    /// In a child process started as `program args…`, which must call [`run_worker`] with the
    /// arguments that follow (the `squilla` binary does for `squilla compile-worker`).
    Process {
        /// The program (e.g. the running `squilla` binary).
        program: PathBuf,
        /// Arguments before the worker's own (e.g. `["compile-worker"]`).
        args: Vec<String>,
    },
}

/// The budget and admission of compilations. `Default` gives the documented values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileConfig {
    /// Where compiles run (default [`CompileIsolation::Thread`]; the `squilla` agent uses a
    /// child process).
    pub isolation: CompileIsolation,
    /// CPU time one compile may use, over all its threads (default 120 s; a Python or
    /// JavaScript component takes about 40 s of CPU on two cores). Child processes only.
    pub cpu: Duration,
    /// Wall-clock time one compile may take, waiting for a slot excluded (default 180 s).
    pub wall: Duration,
    /// Address space of a compiling child process, bytes (default 4 GiB). Child processes
    /// only.
    pub memory_bytes: u64,
    /// Compiles that may run at once on the agent (default: one per two cores, at least 2, so
    /// that one tenant's slow compile never holds every slot).
    pub concurrency: usize,
    /// Compiles that may run at once for one tenant (default 1).
    pub per_tenant: usize,
}

impl Default for CompileConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        CompileConfig {
            isolation: CompileIsolation::Thread,
            cpu: Duration::from_secs(120),
            wall: Duration::from_secs(180),
            memory_bytes: 4 << 30,
            concurrency: (cores / 2).max(2),
            per_tenant: 1,
        }
    }
}

/// Compile slots: at most `concurrency` in all and `per_tenant` per tenant.
#[derive(Debug, Default)]
pub(crate) struct Slots {
    held: Mutex<(usize, HashMap<String, usize>)>,
    freed: Condvar,
}

/// A held compile slot, given back when dropped.
pub(crate) struct Slot<'a> {
    slots: &'a Slots,
    tenant: String,
}

impl Slots {
    /// Waits for a slot for `tenant`.
    pub fn acquire<'a>(&'a self, tenant: &str, config: &CompileConfig) -> Slot<'a> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            let mine = held.1.get(tenant).copied().unwrap_or(0);
            if held.0 < config.concurrency.max(1) && mine < config.per_tenant.max(1) {
                held.0 += 1;
                *held.1.entry(tenant.to_owned()).or_default() += 1;
                return Slot { slots: self, tenant: tenant.to_owned() };
            }
            held = self.freed.wait(held).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut held = self.slots.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.0 -= 1;
        if let Some(n) = held.1.get_mut(&self.tenant) {
            *n -= 1;
            if *n == 0 {
                held.1.remove(&self.tenant);
            }
        }
        self.slots.freed.notify_all();
    }
}

/// Compiles `bytes` within `config`'s budget.
pub(crate) fn compile(runtime: &Runtime, config: &CompileConfig, bytes: &[u8]) -> Result<Component, ArtifactError> {
    match &config.isolation {
        CompileIsolation::Thread => compile_on_thread(runtime, config, bytes),
        CompileIsolation::Process { program, args } => compile_in_child(runtime, config, program, args, bytes),
    }
}

fn compile_on_thread(runtime: &Runtime, config: &CompileConfig, bytes: &[u8]) -> Result<Component, ArtifactError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let engine = runtime.engine.clone();
    let owned = bytes.to_vec();
    std::thread::Builder::new()
        .name("squilla-compile".into())
        .spawn(move || {
            let _ = tx.send(Component::new(&engine, &owned));
        })
        .map_err(ArtifactError::engine)?;
    match rx.recv_timeout(config.wall) {
        Ok(result) => result.map_err(ArtifactError::invalid),
        // A thread cannot be cancelled; it finishes in the background and its result is dropped.
        Err(_) => Err(ArtifactError::CompileBudget { budget: WALL_CLOCK, limit: secs(config.wall) }),
    }
}

fn secs(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

/// The largest compiled output accepted from a child, bytes.
const MAX_OUTPUT: usize = 1 << 30;

fn compile_in_child(
    runtime: &Runtime,
    config: &CompileConfig,
    program: &PathBuf,
    args: &[String],
    bytes: &[u8],
) -> Result<Component, ArtifactError> {
    let rc = runtime.config();
    let mut child = Command::new(program)
        .args(args)
        .args(["--cpu-secs", &config.cpu.as_secs().max(1).to_string()])
        .args(["--memory-bytes", &config.memory_bytes.to_string()])
        .args(["--epoch-interruption", if rc.epoch_interruption { "1" } else { "0" }])
        .args(["--max-wasm-stack", &rc.max_wasm_stack.to_string()])
        .args(["--max-memory-bytes", &rc.max_memory_bytes.to_string()])
        // Compiled code does not depend on how instances are allocated, and a pooling engine
        // reserves more address space than a compile's budget: the worker's engine is on-demand.
        .args(["--pooling", "0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| ArtifactError::Engine { detail: format!("cannot start a compile worker: {e}") })?;
    let started = Instant::now();
    let mut stdin = child.stdin.take();
    let input = bytes.to_vec();
    let writer = std::thread::Builder::new().name("squilla-compile-in".into()).spawn(move || {
        if let Some(stdin) = stdin.as_mut() {
            let _ = stdin.write_all(&input);
        }
    });
    let mut stdout = child.stdout.take();
    let reader = std::thread::Builder::new().name("squilla-compile-out".into()).spawn(move || {
        let mut out = Vec::new();
        if let Some(stdout) = stdout.as_mut() {
            let _ = stdout.take(MAX_OUTPUT as u64 + 1).read_to_end(&mut out);
        }
        out
    });
    let mut stderr = child.stderr.take();
    let errors = std::thread::Builder::new().name("squilla-compile-err".into()).spawn(move || {
        let mut text = String::new();
        if let Some(stderr) = stderr.as_mut() {
            let _ = stderr.take(64 << 10).read_to_string(&mut text);
        }
        text
    });
    let (writer, reader, errors) = match (writer, reader, errors) {
        (Ok(w), Ok(r), Ok(e)) => (w, r, e),
        (writer, reader, errors) => {
            // Killing the child closes its pipes, so the threads that did start end at once:
            // join them, so that nothing of the compile outlives this call.
            let _ = child.kill();
            let _ = child.wait();
            if let Ok(w) = writer {
                let _ = w.join();
            }
            if let Ok(r) = reader {
                let _ = r.join();
            }
            if let Ok(e) = errors {
                let _ = e.join();
            }
            return Err(ArtifactError::Engine { detail: "cannot start threads for a compile worker".into() });
        }
    };
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if started.elapsed() >= config.wall => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ArtifactError::Engine { detail: format!("waiting for a compile worker: {e}") });
            }
        }
    };
    let _ = writer.join();
    let output = reader.join().unwrap_or_default();
    let message = errors.join().unwrap_or_default();
    let Some(status) = status else {
        return Err(ArtifactError::CompileBudget { budget: WALL_CLOCK, limit: secs(config.wall) });
    };
    if !status.success() {
        return Err(child_failure(status, message.trim(), config));
    }
    if output.len() > MAX_OUTPUT {
        return Err(ArtifactError::CompileBudget { budget: "compiled size", limit: format!("{MAX_OUTPUT} bytes") });
    }
    // SAFETY: these bytes are the output of `Component::serialize` in a child process running
    // this host's own binary (`run_worker`), read from a pipe only that child writes to; the
    // child's engine is configured as this one is, and wasmtime refuses code compiled for
    // another version or configuration of the engine.
    unsafe { Component::deserialize(&runtime.engine, &output) }
        .map_err(|e| ArtifactError::Engine { detail: format!("loading a compile worker's output: {e:#}") })
}

/// Why a compile worker ended without output.
fn child_failure(status: std::process::ExitStatus, message: &str, config: &CompileConfig) -> ArtifactError {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        match status.signal() {
            // SIGXCPU at the soft limit; SIGKILL at the hard one a second later.
            Some(libc::SIGXCPU) => {
                return ArtifactError::CompileBudget { budget: "CPU time", limit: secs(config.cpu) };
            }
            // Killed from outside (the kernel's out-of-memory killer, an operator): not the
            // component's fault for sure, so not remembered.
            Some(libc::SIGKILL) => {
                return ArtifactError::Engine { detail: "the compile worker was killed".into() };
            }
            Some(libc::SIGABRT) | Some(libc::SIGSEGV) | Some(libc::SIGBUS) => {
                return ArtifactError::CompileBudget {
                    budget: "memory",
                    limit: format!("{} MiB", config.memory_bytes >> 20),
                };
            }
            _ => {}
        }
    }
    match status.code() {
        Some(EXIT_INVALID) => ArtifactError::invalid(message),
        Some(EXIT_MEMORY) => {
            ArtifactError::CompileBudget { budget: "memory", limit: format!("{} MiB", config.memory_bytes >> 20) }
        }
        _ => ArtifactError::Engine { detail: format!("compile worker ended with {status}: {message}") },
    }
}

/// Exit code of a worker whose input is not a valid component.
const EXIT_INVALID: i32 = 3;
/// Exit code of a worker that ran out of memory.
const EXIT_MEMORY: i32 = 4;
/// Exit code of a worker given bad arguments or unable to set itself up.
const EXIT_SETUP: i32 = 2;

/// The compile worker: reads a component from standard input, compiles it with an engine
/// configured from `args` (as [`compile`] passes them), and writes the compiled code to
/// standard output. Returns the process exit code. Call it first thing in a process started
/// for it; it lowers its own priority and sets its CPU and address-space limits.
pub fn run_worker(args: &[String]) -> i32 {
    let mut config = RuntimeConfig::default();
    let (mut cpu, mut memory) = (120u64, 4u64 << 30);
    let mut pooling = false;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let Some(value) = it.next() else {
            eprintln!("compile-worker: {flag} needs a value");
            return EXIT_SETUP;
        };
        let number = value.parse::<u64>();
        match (flag.as_str(), number) {
            ("--cpu-secs", Ok(n)) => cpu = n,
            ("--memory-bytes", Ok(n)) => memory = n,
            ("--epoch-interruption", Ok(n)) => config.epoch_interruption = n != 0,
            ("--max-wasm-stack", Ok(n)) => config.max_wasm_stack = n as usize,
            ("--max-memory-bytes", Ok(n)) => config.max_memory_bytes = n as usize,
            ("--pooling", Ok(n)) => pooling = n != 0,
            _ => {
                eprintln!("compile-worker: bad argument {flag} {value}");
                return EXIT_SETUP;
            }
        }
    }
    limit_self(cpu, memory);
    let mut bytes = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut bytes) {
        eprintln!("compile-worker: reading the component: {e}");
        return EXIT_SETUP;
    }
    let engine = match crate::engine::compile_engine(&config, pooling) {
        Ok(engine) => engine,
        Err(e) => {
            eprintln!("compile-worker: {e}");
            return EXIT_SETUP;
        }
    };
    let component = match Component::new(&engine, &bytes) {
        Ok(c) => c,
        Err(e) => {
            let text = format!("{e:#}");
            eprintln!("{text}");
            return if text.contains("out of memory") || text.contains("allocation") {
                EXIT_MEMORY
            } else {
                EXIT_INVALID
            };
        }
    };
    match component.serialize() {
        Ok(code) => {
            let mut out = std::io::stdout().lock();
            if out.write_all(&code).and_then(|()| out.flush()).is_err() {
                return EXIT_SETUP;
            }
            0
        }
        Err(e) => {
            eprintln!("compile-worker: serializing: {e:#}");
            EXIT_SETUP
        }
    }
}

/// Lowers this process's priority below the agent's workers and caps its CPU time (soft limit:
/// SIGXCPU; hard limit a second later: SIGKILL) and address space.
fn limit_self(cpu_secs: u64, memory_bytes: u64) {
    #[cfg(unix)]
    {
        let cpu = libc::rlimit { rlim_cur: cpu_secs as libc::rlim_t, rlim_max: (cpu_secs + 1) as libc::rlim_t };
        let memory = libc::rlimit { rlim_cur: memory_bytes as libc::rlim_t, rlim_max: memory_bytes as libc::rlim_t };
        // SAFETY: plain system calls on this process with valid, initialised arguments; their
        // failure (reported by the return value) leaves the process as it was.
        unsafe {
            let _ = libc::setpriority(libc::PRIO_PROCESS, 0, 10);
            let _ = libc::setrlimit(libc::RLIMIT_CPU, &cpu);
            let _ = libc::setrlimit(libc::RLIMIT_AS, &memory);
        }
    }
}
