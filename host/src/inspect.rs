//! Checking an upload without compiling it.
//!
//! The master must answer an upload quickly and clearly (400 naming what is wrong) without
//! running Cranelift on the request path: a Python component takes ~25 s to compile. So it
//! validates the binary with wasmparser, reads the component's top-level imports and
//! exports, and checks that the stage interface it exports has the contract's function types
//! ([`crate::contract`]); agents compile (once per sha256, within the compile budget) when
//! they first run it.

use wasmparser::{Parser, Payload, Validator, WasmFeatures};

use crate::artifact::{RAW_EXPORT, TYPED_EXPORT, check_header, stage_flavour};
use crate::{ArtifactError, Flavour};

/// What an upload is, as far as can be told without compiling it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    /// Which stage flavour it exports.
    pub flavour: Flavour,
    /// Its top-level imports.
    pub imports: Vec<String>,
    /// Its top-level exports.
    pub exports: Vec<String>,
}

/// Validates `bytes` as a component that exports a stage interface and imports only what
/// stages may; at most `max_bytes` long.
pub fn inspect(bytes: &[u8], max_bytes: usize) -> Result<Inspection, ArtifactError> {
    check_header(bytes, max_bytes)?;
    let types = Validator::new_with_features(WasmFeatures::all())
        .validate_all(bytes)
        .map_err(|e| ArtifactError::Invalid { detail: e.to_string() })?;
    let (mut imports, mut exports) = (Vec::new(), Vec::new());
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.map_err(|e| ArtifactError::Invalid { detail: e.to_string() })? {
            Payload::Version { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(reader) if depth == 1 => {
                for import in reader {
                    let import = import.map_err(|e| ArtifactError::Invalid { detail: e.to_string() })?;
                    imports.push(import.name.name.to_owned());
                }
            }
            Payload::ComponentExportSection(reader) if depth == 1 => {
                for export in reader {
                    let export = export.map_err(|e| ArtifactError::Invalid { detail: e.to_string() })?;
                    exports.push(export.name.name.to_owned());
                }
            }
            _ => {}
        }
    }
    let flavour = stage_flavour(&imports, exports.clone())?;
    let interface = match flavour {
        Flavour::Raw => RAW_EXPORT,
        Flavour::Typed => TYPED_EXPORT,
    };
    crate::contract::check_exports(&types.as_ref(), interface, flavour)
        .map_err(|detail| ArtifactError::WrongSignature { interface: interface.to_owned(), detail })?;
    Ok(Inspection { flavour, imports, exports })
}
