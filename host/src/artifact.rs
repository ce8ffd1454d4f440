//! Stage artifacts: components compiled once per content hash and pre-linked.

use std::sync::Arc;

use sha2::Digest;
use wasmtime::component::Component;

use crate::Runtime;
use crate::bindings::{raw, typed};
use crate::error::ArtifactError;
use crate::instance::WorkerState;

/// The export that marks a raw-flavour stage.
pub const RAW_EXPORT: &str = "squilla:stage/raw-handler@0.1.0";
/// The export that marks a typed-flavour stage.
pub const TYPED_EXPORT: &str = "squilla:stage/typed-handler@0.1.0";

/// The interfaces a stage may import. A stage gets no capability through them: the WASI
/// context it runs with has no environment, no arguments, an empty standard input and
/// discarded standard output; they are here because language tool-chains link them into every
/// component (Rust's `std` for `wasm32-wasip2` imports all of these but clocks). Clocks and
/// random numbers are real. Anything else — files, sockets, HTTP — is refused at load.
pub const ALLOWED_IMPORTS: &[&str] = &[
    "squilla:stage/log@",
    "squilla:stage/types@",
    "wasi:io/",
    "wasi:clocks/",
    "wasi:random/",
    "wasi:cli/environment@",
    "wasi:cli/exit@",
    "wasi:cli/stdin@",
    "wasi:cli/stdout@",
    "wasi:cli/stderr@",
    "wasi:cli/terminal-",
];

/// A component's sha256: the artifact's content address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256(pub [u8; 32]);

impl Sha256 {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Sha256(sha2::Sha256::digest(bytes).into())
    }

    /// Parses 64 hex digits; `None` for anything else.
    pub fn from_hex(hex: &str) -> Option<Self> {
        if hex.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Sha256(out))
    }
}

impl std::fmt::Display for Sha256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl std::fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sha256({self})")
    }
}

/// Which flavour of the stage contract a component implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// Batches cross as archived bytes (`raw-stage`).
    Raw,
    /// Batches cross as WIT records (`typed-stage`).
    Typed,
}

pub(crate) enum Pre {
    Raw(raw::RawStagePre<WorkerState>),
    Typed(typed::TypedStagePre<WorkerState>),
}

struct Inner {
    sha256: Sha256,
    flavour: Flavour,
    size: usize,
    imports: Vec<String>,
    pre: Pre,
}

/// A compiled, validated, pre-linked stage component. Cheap to clone; every worker of the
/// artifact instantiates from the same compiled code.
#[derive(Clone)]
pub struct Artifact {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Artifact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Artifact")
            .field("sha256", &self.inner.sha256)
            .field("flavour", &self.inner.flavour)
            .field("size", &self.inner.size)
            .finish()
    }
}

impl Artifact {
    /// Validates and compiles `bytes` as a stage component.
    ///
    /// Refuses, with an [`ArtifactError`] saying why: anything that is not a component, is
    /// over [`crate::RuntimeConfig::max_component_bytes`], does not export a stage interface
    /// with the contract's types, or imports something outside [`ALLOWED_IMPORTS`].
    pub fn compile(runtime: &Runtime, bytes: &[u8]) -> Result<Self, ArtifactError> {
        Self::check_header(runtime, bytes)?;
        let sha256 = Sha256::of(bytes);
        let component =
            Component::new(&runtime.engine, bytes).map_err(|e| ArtifactError::Invalid { detail: format!("{e:#}") })?;
        Self::from_component(runtime, sha256, bytes.len(), component)
    }

    /// Checks the header of `bytes` (wasm magic, component layer, size cap) without
    /// compiling.
    pub(crate) fn check_header(runtime: &Runtime, bytes: &[u8]) -> Result<(), ArtifactError> {
        check_header(bytes, runtime.config.max_component_bytes)
    }

    /// Wraps a compiled component as an artifact, checking its imports and exports.
    pub(crate) fn from_component(
        runtime: &Runtime,
        sha256: Sha256,
        size: usize,
        component: Component,
    ) -> Result<Self, ArtifactError> {
        let ty = component.component_type();
        let imports: Vec<String> = ty.imports(&runtime.engine).map(|(name, _)| name.to_owned()).collect();
        let exports: Vec<String> = ty.exports(&runtime.engine).map(|(name, _)| name.to_owned()).collect();
        let flavour = stage_flavour(&imports, exports)?;
        let instance_pre = runtime
            .linker
            .instantiate_pre(&component)
            .map_err(|e| ArtifactError::Invalid { detail: format!("{e:#}") })?;
        let wrong = |interface: &str, e: wasmtime::Error| ArtifactError::WrongSignature {
            interface: interface.to_owned(),
            detail: format!("{e:#}"),
        };
        let pre = match flavour {
            Flavour::Raw => Pre::Raw(raw::RawStagePre::new(instance_pre).map_err(|e| wrong(RAW_EXPORT, e))?),
            Flavour::Typed => Pre::Typed(typed::TypedStagePre::new(instance_pre).map_err(|e| wrong(TYPED_EXPORT, e))?),
        };
        Ok(Artifact { inner: Arc::new(Inner { sha256, flavour, size, imports, pre }) })
    }

    /// The component's content address.
    pub fn sha256(&self) -> Sha256 {
        self.inner.sha256
    }

    /// Which flavour of the stage contract it implements.
    pub fn flavour(&self) -> Flavour {
        self.inner.flavour
    }

    /// Size of the component, in bytes.
    pub fn size_bytes(&self) -> usize {
        self.inner.size
    }

    /// The interfaces it imports (all within [`ALLOWED_IMPORTS`]).
    pub fn imports(&self) -> &[String] {
        &self.inner.imports
    }

    /// Whether `self` and `other` share one compiled component (cheap clones of each other).
    pub fn same(&self, other: &Artifact) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    pub(crate) fn pre(&self) -> &Pre {
        &self.inner.pre
    }
}

/// Refuses what is over `limit` bytes, not WebAssembly, or a core module.
pub(crate) fn check_header(bytes: &[u8], limit: usize) -> Result<(), ArtifactError> {
    if bytes.len() > limit {
        return Err(ArtifactError::TooLarge { len: bytes.len(), limit });
    }
    match bytes.get(..8) {
        Some([0, b'a', b's', b'm', _, _, 0, 0]) => Err(ArtifactError::CoreModule),
        Some([0, b'a', b's', b'm', ..]) => Ok(()),
        _ => Err(ArtifactError::NotWasm),
    }
}

/// The stage flavour a component's top-level imports and exports make it, or why they make
/// it no stage.
pub(crate) fn stage_flavour(imports: &[String], exports: Vec<String>) -> Result<Flavour, ArtifactError> {
    if let Some(import) = imports.iter().find(|i| !ALLOWED_IMPORTS.iter().any(|a| i.starts_with(a))) {
        return Err(ArtifactError::ForbiddenImport { import: import.clone() });
    }
    if exports.iter().any(|e| e == RAW_EXPORT) {
        Ok(Flavour::Raw)
    } else if exports.iter().any(|e| e == TYPED_EXPORT) {
        Ok(Flavour::Typed)
    } else {
        Err(ArtifactError::NotAStage { exports })
    }
}
