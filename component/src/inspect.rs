//! Checking an upload without compiling it: a Python component takes ~25 s to compile, far too
//! long for a request.

use wasmparser::{Parser, Payload, Validator, WasmFeatures};

use crate::{ComponentError, Flavour, check_header, stage_flavour};

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
pub fn inspect(bytes: &[u8], max_bytes: usize) -> Result<Inspection, ComponentError> {
    check_header(bytes, max_bytes)?;
    let types = Validator::new_with_features(WasmFeatures::all())
        .validate_all(bytes)
        .map_err(|e| ComponentError::Invalid { detail: e.to_string() })?;
    let (mut imports, mut exports) = (Vec::new(), Vec::new());
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.map_err(|e| ComponentError::Invalid { detail: e.to_string() })? {
            Payload::Version { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(reader) if depth == 1 => {
                for import in reader {
                    let import = import.map_err(|e| ComponentError::Invalid { detail: e.to_string() })?;
                    imports.push(import.name.name.to_owned());
                }
            }
            Payload::ComponentExportSection(reader) if depth == 1 => {
                for export in reader {
                    let export = export.map_err(|e| ComponentError::Invalid { detail: e.to_string() })?;
                    exports.push(export.name.name.to_owned());
                }
            }
            _ => {}
        }
    }
    let flavour = stage_flavour(&imports, exports.clone())?;
    let interface = flavour.export();
    crate::contract::check_exports(&types.as_ref(), interface, flavour)
        .map_err(|detail| ComponentError::WrongSignature { interface: interface.to_owned(), detail })?;
    Ok(Inspection { flavour, imports, exports })
}
