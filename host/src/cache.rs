//! Compiled artifacts, kept per sha256: in memory for the agent's life, and optionally on
//! disk across restarts.
//!
//! Compiling a component is the expensive step (milliseconds for a Rust stage, ~25 s for a
//! Python or JavaScript one), so it happens once per content hash — callers asking for bytes
//! that are being compiled wait for that compile — within the budget and admission rules of
//! [`CompileConfig`] (see [`crate::compile`]), never on a caller's hot path twice. A failure is
//! remembered by sha256 and answered at once afterwards.
//!
//! Loading compiled code from disk is `unsafe` in wasmtime for a good reason: those bytes
//! become machine code. So the disk cache only ever loads code this host produced: every
//! file carries an HMAC-SHA256 of its contents under a key that is generated on first use,
//! kept in the cache directory with owner-only permissions, and never leaves the host. A file
//! that does not verify — corrupted, truncated, written by another host or by anyone without
//! the key — is ignored (and replaced by a fresh compile).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use hmac::{Hmac, Mac};
use wasmtime::component::Component;

use crate::artifact::Sha256;
use crate::compile::{self, CompileConfig, Slots};
use crate::error::ArtifactError;
use crate::{Artifact, Runtime};

type HmacSha256 = Hmac<sha2::Sha256>;

/// Bytes of the HMAC at the start of every cache file.
const TAG_BYTES: usize = 32;

/// Failures remembered by sha256; past this many, the oldest half is forgotten.
const REMEMBERED_FAILURES: usize = 4096;

/// Callers waiting for one compile: the result, once there is one.
type InFlight = Arc<(Mutex<Option<Result<Artifact, ArtifactError>>>, Condvar)>;

/// What the cache has done, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Components compiled from wasm.
    pub compiled: u64,
    /// Components loaded from verified files on disk.
    pub loaded: u64,
    /// Requests answered from memory.
    pub hits: u64,
    /// Disk files ignored because they did not verify.
    pub rejected: u64,
    /// Requests refused at once because the same bytes had failed before.
    pub refused: u64,
}

/// Compiled artifacts by sha256.
pub struct ArtifactCache {
    runtime: Runtime,
    dir: Option<PathBuf>,
    key: [u8; 32],
    compile: CompileConfig,
    slots: Slots,
    artifacts: Mutex<HashMap<Sha256, Artifact>>,
    failures: Mutex<HashMap<Sha256, (u64, ArtifactError)>>,
    in_flight: Mutex<HashMap<Sha256, InFlight>>,
    compiled: AtomicU64,
    loaded: AtomicU64,
    hits: AtomicU64,
    rejected: AtomicU64,
    refused: AtomicU64,
    failure_seq: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl std::fmt::Debug for ArtifactCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArtifactCache").field("dir", &self.dir).field("stats", &self.stats()).finish()
    }
}

impl ArtifactCache {
    /// A cache in memory only.
    pub fn in_memory(runtime: &Runtime) -> Self {
        Self::build(runtime, None, [0; 32])
    }

    /// A cache that also keeps compiled code under `dir` (created if missing), keyed by the
    /// host key in `dir/host.key` (created with mode 0600 if missing).
    pub fn on_disk(runtime: &Runtime, dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let key = host_key(&dir.join("host.key"))?;
        Ok(Self::build(runtime, Some(dir.to_path_buf()), key))
    }

    fn build(runtime: &Runtime, dir: Option<PathBuf>, key: [u8; 32]) -> Self {
        ArtifactCache {
            runtime: runtime.clone(),
            dir,
            key,
            compile: CompileConfig::default(),
            slots: Slots::default(),
            artifacts: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
            compiled: AtomicU64::new(0),
            loaded: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            failure_seq: AtomicU64::new(0),
        }
    }

    /// Sets how compilations are run and bounded (default [`CompileConfig::default`]).
    pub fn with_compile_config(mut self, config: CompileConfig) -> Self {
        self.compile = config;
        self
    }

    /// The largest component this cache compiles, bytes.
    pub fn max_component_bytes(&self) -> usize {
        self.runtime.config().max_component_bytes
    }

    /// The compile settings in force.
    pub fn compile_config(&self) -> &CompileConfig {
        &self.compile
    }

    /// The artifact already known by `sha256`, if any.
    pub fn get(&self, sha256: &Sha256) -> Option<Artifact> {
        lock(&self.artifacts).get(sha256).cloned()
    }

    /// Why `sha256` failed to compile before, if it did.
    pub fn failure(&self, sha256: &Sha256) -> Option<ArtifactError> {
        lock(&self.failures).get(sha256).map(|(_, e)| e.clone())
    }

    /// [`ArtifactCache::get_or_compile_for`] on behalf of no tenant in particular.
    pub fn get_or_compile(&self, bytes: &[u8]) -> Result<Artifact, ArtifactError> {
        self.get_or_compile_for("", bytes)
    }

    /// The artifact for `bytes`, on behalf of `tenant`: from memory, else refused at once if
    /// the same bytes failed before, else from a verified disk file, else compiled (within the
    /// budget, once a slot is free for the tenant) and written to disk. Callers asking for
    /// bytes that are being compiled wait for that compile.
    pub fn get_or_compile_for(&self, tenant: &str, bytes: &[u8]) -> Result<Artifact, ArtifactError> {
        Artifact::check_header(&self.runtime, bytes)?;
        let sha256 = Sha256::of(bytes);
        if let Some(artifact) = self.get(&sha256) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(artifact);
        }
        if let Some(err) = self.failure(&sha256) {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(err);
        }
        let (cell, leader) = {
            let mut in_flight = lock(&self.in_flight);
            match in_flight.get(&sha256) {
                Some(cell) => (cell.clone(), false),
                None => {
                    let cell: InFlight = Arc::default();
                    in_flight.insert(sha256, cell.clone());
                    (cell, true)
                }
            }
        };
        if !leader {
            // The same bytes are being compiled (for this or another tenant): wait for that
            // result, but no longer than a compile may take plus its wait for a slot.
            let limit = self.compile.wall.saturating_mul(2) + std::time::Duration::from_secs(5);
            let deadline = std::time::Instant::now() + limit;
            let mut result = lock(&cell.0);
            while result.is_none() {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    return Err(ArtifactError::Engine {
                        detail: format!("waited {limit:?} for another compile of the same bytes"),
                    });
                }
                result = cell.1.wait_timeout(result, left).unwrap_or_else(PoisonError::into_inner).0;
            }
            return result.clone().unwrap_or_else(|| Err(ArtifactError::engine("compile result missing")));
        }
        let result = self.load_or_compile(tenant, sha256, bytes);
        match &result {
            Ok(artifact) => {
                lock(&self.artifacts).entry(sha256).or_insert_with(|| artifact.clone());
            }
            Err(err) if err.is_permanent() => self.remember(sha256, err.clone()),
            Err(_) => {}
        }
        *lock(&cell.0) = Some(result.clone());
        cell.1.notify_all();
        lock(&self.in_flight).remove(&sha256);
        result
    }

    fn load_or_compile(&self, tenant: &str, sha256: Sha256, bytes: &[u8]) -> Result<Artifact, ArtifactError> {
        let component = match self.load(&sha256) {
            Some(component) => {
                self.loaded.fetch_add(1, Ordering::Relaxed);
                component
            }
            None => {
                let slot = self.slots.acquire(tenant, &self.compile);
                tracing::info!(%sha256, %tenant, bytes = bytes.len(), "compiling a component");
                let component = compile::compile(&self.runtime, &self.compile, bytes);
                drop(slot);
                let component = component?;
                self.compiled.fetch_add(1, Ordering::Relaxed);
                self.store(&sha256, &component);
                component
            }
        };
        Artifact::from_component(&self.runtime, sha256, bytes.len(), component)
    }

    fn remember(&self, sha256: Sha256, err: ArtifactError) {
        let mut failures = lock(&self.failures);
        if failures.len() >= REMEMBERED_FAILURES {
            let mut ages: Vec<u64> = failures.values().map(|(seq, _)| *seq).collect();
            ages.sort_unstable();
            let cut = ages[ages.len() / 2];
            failures.retain(|_, (seq, _)| *seq > cut);
        }
        failures.insert(sha256, (self.failure_seq.fetch_add(1, Ordering::Relaxed), err));
    }

    /// Counts of what the cache has done.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            compiled: self.compiled.load(Ordering::Relaxed),
            loaded: self.loaded.load(Ordering::Relaxed),
            hits: self.hits.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }

    fn path(&self, sha256: &Sha256) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join(format!("{sha256}.cwasm")))
    }

    fn tag(&self, sha256: &Sha256, code: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(&sha256.0);
        mac.update(code);
        mac
    }

    fn load(&self, sha256: &Sha256) -> Option<Component> {
        let bytes = std::fs::read(self.path(sha256)?).ok()?;
        let (tag, code) = bytes.split_at_checked(TAG_BYTES)?;
        if self.tag(sha256, code).verify_slice(tag).is_err() {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%sha256, "ignoring a compiled-code cache file that does not verify");
            return None;
        }
        // SAFETY: the HMAC verified above proves these bytes were written by `store` on this
        // host (only it holds the key), i.e. they are exactly the output of
        // `Component::serialize` from this host's wasmtime, for this sha256. Wasmtime itself
        // refuses code built by another version or configuration of the engine.
        match unsafe { Component::deserialize(&self.runtime.engine, code) } {
            Ok(component) => Some(component),
            Err(err) => {
                tracing::warn!(%sha256, error = %err, "compiled-code cache file is for another engine; recompiling");
                None
            }
        }
    }

    fn store(&self, sha256: &Sha256, component: &Component) {
        let Some(path) = self.path(sha256) else { return };
        let Ok(code) = component.serialize() else { return };
        let tag = self.tag(sha256, &code).finalize().into_bytes();
        let tmp = path.with_extension("tmp");
        let written =
            std::fs::write(&tmp, [tag.as_slice(), &code].concat()).and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(err) = written {
            tracing::warn!(%sha256, error = %err, "cannot write the compiled-code cache");
        }
    }
}

/// Reads the host key, or creates it (32 random bytes, mode 0600).
fn host_key(path: &Path) -> std::io::Result<[u8; 32]> {
    if let Ok(bytes) = std::fs::read(path)
        && let Ok(key) = <[u8; 32]>::try_from(bytes.as_slice())
    {
        return Ok(key);
    }
    let mut key = [0u8; 32];
    getrandom(&mut key)?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    std::io::Write::write_all(&mut options.open(path)?, &key)?;
    Ok(key)
}

/// Fills `buf` from the operating system's random source.
fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

/// Shared handle, for the agent's components that all need the cache.
pub type SharedCache = Arc<ArtifactCache>;
