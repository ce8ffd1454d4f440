//! Compiled artifacts, kept per sha256: in memory for the agent's life, and optionally on
//! disk across restarts.
//!
//! Compiling a component is the expensive step (milliseconds for a Rust stage, ~25 s for a
//! Python or JavaScript one), so it happens once per content hash, on a thread of its own with
//! a time limit, never on a caller's hot path twice.
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
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use wasmtime::component::Component;

use crate::artifact::Sha256;
use crate::error::ArtifactError;
use crate::{Artifact, Runtime};

type HmacSha256 = Hmac<sha2::Sha256>;

/// Bytes of the HMAC at the start of every cache file.
const TAG_BYTES: usize = 32;

/// Default limit on one compilation (a Python component takes ~25 s on two cores).
pub const COMPILE_TIMEOUT: Duration = Duration::from_secs(120);

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
}

/// Compiled artifacts by sha256.
pub struct ArtifactCache {
    runtime: Runtime,
    dir: Option<PathBuf>,
    key: [u8; 32],
    compile_timeout: Duration,
    artifacts: Mutex<HashMap<Sha256, Artifact>>,
    compiled: AtomicU64,
    loaded: AtomicU64,
    hits: AtomicU64,
    rejected: AtomicU64,
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
            compile_timeout: COMPILE_TIMEOUT,
            artifacts: Mutex::new(HashMap::new()),
            compiled: AtomicU64::new(0),
            loaded: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
        }
    }

    /// Sets the limit on one compilation (default [`COMPILE_TIMEOUT`]).
    pub fn with_compile_timeout(mut self, timeout: Duration) -> Self {
        self.compile_timeout = timeout;
        self
    }

    /// The artifact already known by `sha256`, if any.
    pub fn get(&self, sha256: &Sha256) -> Option<Artifact> {
        self.artifacts.lock().expect("cache lock").get(sha256).cloned()
    }

    /// The artifact for `bytes`: from memory, else from a verified disk file, else compiled
    /// (on its own thread, within the time limit) and written to disk.
    pub fn get_or_compile(&self, bytes: &[u8]) -> Result<Artifact, ArtifactError> {
        Artifact::check_header(&self.runtime, bytes)?;
        let sha256 = Sha256::of(bytes);
        if let Some(artifact) = self.get(&sha256) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(artifact);
        }
        let component = match self.load(&sha256) {
            Some(component) => {
                self.loaded.fetch_add(1, Ordering::Relaxed);
                component
            }
            None => {
                let component = self.compile(bytes)?;
                self.compiled.fetch_add(1, Ordering::Relaxed);
                self.store(&sha256, &component);
                component
            }
        };
        let artifact = Artifact::from_component(&self.runtime, sha256, bytes.len(), component)?;
        let mut artifacts = self.artifacts.lock().expect("cache lock");
        // Two callers may have raced to compile the same bytes; keep the first.
        Ok(artifacts.entry(sha256).or_insert(artifact).clone())
    }

    /// Counts of what the cache has done.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            compiled: self.compiled.load(Ordering::Relaxed),
            loaded: self.loaded.load(Ordering::Relaxed),
            hits: self.hits.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
        }
    }

    fn compile(&self, bytes: &[u8]) -> Result<Component, ArtifactError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let engine = self.runtime.engine.clone();
        let owned = bytes.to_vec();
        std::thread::Builder::new()
            .name("squilla-compile".into())
            .spawn(move || {
                let _ = tx.send(Component::new(&engine, &owned));
            })
            .map_err(ArtifactError::engine)?;
        match rx.recv_timeout(self.compile_timeout) {
            Ok(result) => result.map_err(|e| ArtifactError::Invalid { detail: format!("{e:#}") }),
            // The compile thread cannot be cancelled; it finishes in the background and its
            // result is dropped.
            Err(_) => Err(ArtifactError::CompileTimeout { seconds: self.compile_timeout.as_secs() }),
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
    if let Ok(bytes) = std::fs::read(path) {
        if let Ok(key) = <[u8; 32]>::try_from(bytes.as_slice()) {
            return Ok(key);
        }
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
