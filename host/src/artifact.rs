//! Stage artifacts: components compiled once per content hash and pre-linked.

use std::sync::Arc;

use wasmtime::component::Component;

use crate::bindings::{keyed, raw, typed};
use crate::engine::Runtime;
use crate::error::ArtifactError;
use crate::store_data::StoreData;
use squilla_component::ComponentError;

pub use squilla_component::{ALLOWED_IMPORTS, Flavour, KEYED_EXPORT, RAW_EXPORT, TYPED_EXPORT};
pub use squilla_types::ids::Sha256;

pub(crate) enum Pre {
    Raw(raw::RawStagePre<StoreData>),
    /// A raw stage that also exports `keyed-state`.
    Keyed(keyed::RawKeyedStagePre<StoreData>),
    Typed(typed::TypedStagePre<StoreData>),
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
        let component = Component::new(&runtime.engine, bytes).map_err(ArtifactError::invalid)?;
        Self::from_component(runtime, sha256, bytes.len(), component)
    }

    /// Checks the header of `bytes` (wasm magic, component layer, size cap) without
    /// compiling.
    pub(crate) fn check_header(runtime: &Runtime, bytes: &[u8]) -> Result<(), ArtifactError> {
        Ok(squilla_component::check_header(bytes, runtime.config.max_component_bytes)?)
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
        let hands_off = exports.iter().any(|e| e == KEYED_EXPORT);
        let flavour = squilla_component::stage_flavour(&imports, exports)?;
        let instance_pre = runtime.linker.instantiate_pre(&component).map_err(ArtifactError::invalid)?;
        let wrong = |interface: &str, e: wasmtime::Error| {
            ArtifactError::Component(ComponentError::WrongSignature {
                interface: interface.to_owned(),
                detail: format!("{e:#}"),
            })
        };
        let pre = match flavour {
            Flavour::Raw if hands_off => {
                Pre::Keyed(keyed::RawKeyedStagePre::new(instance_pre).map_err(|e| wrong(KEYED_EXPORT, e))?)
            }
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

    /// Whether the stage hands its keyed state over when rescaled (it exports
    /// [`KEYED_EXPORT`]).
    pub fn hands_off_state(&self) -> bool {
        matches!(self.inner.pre, Pre::Keyed(_))
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
