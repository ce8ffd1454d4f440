//! What a stage component must be, checked without compiling it.
//!
//! The master answers an upload at once and clearly (400 naming the problem) without running
//! a compiler on the request path, and without linking one: this crate reads a component with
//! `wasmparser` only. [`inspect`] validates the binary, reads its top-level imports and
//! exports, refuses any import outside [`ALLOWED_IMPORTS`], and checks that the stage
//! interface it exports has the contract's function types. Agents run the same
//! checks on what they compile (`squilla-host`), and compile it within a budget.

mod contract;
mod inspect;

pub use inspect::{Inspection, inspect};

/// The export that marks a raw-flavour stage.
pub const RAW_EXPORT: &str = "squilla:stage/raw-handler@0.1.0";
/// The export that marks a typed-flavour stage.
pub const TYPED_EXPORT: &str = "squilla:stage/typed-handler@0.1.0";
/// The optional export of a raw stage whose keyed state moves with its key groups when the
/// stage is rescaled (world `raw-keyed-stage`).
pub const KEYED_EXPORT: &str = "squilla:stage/keyed-state@0.1.0";

/// The interfaces a stage may import. A stage gets no capability through them: the WASI
/// context it runs with has no environment, no arguments, an empty standard input and
/// discarded standard output; they are here because language tool-chains link them into every
/// component (Rust's `std` for `wasm32-wasip2` imports all of these but clocks). Clocks and
/// random numbers are real. Anything else — files, sockets, HTTP — is refused.
pub const ALLOWED_IMPORTS: &[&str] = &[
    "squilla:stage/log@",
    "squilla:stage/metrics@",
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

/// Which flavour of the stage contract a component implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flavour {
    /// Batches cross as archived bytes (`raw-stage`).
    Raw,
    /// Batches cross as WIT records (`typed-stage`).
    Typed,
}

impl Flavour {
    /// `raw` or `typed`, as the API shows it.
    pub fn name(self) -> &'static str {
        match self {
            Flavour::Raw => "raw",
            Flavour::Typed => "typed",
        }
    }

    /// The interface a component of this flavour exports.
    pub fn export(self) -> &'static str {
        match self {
            Flavour::Raw => RAW_EXPORT,
            Flavour::Typed => TYPED_EXPORT,
        }
    }
}

/// Why bytes are not a stage component.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ComponentError {
    /// The bytes are not WebAssembly at all.
    #[error("not a WebAssembly binary (it does not start with the `\\0asm` magic)")]
    NotWasm,
    /// The bytes are a core module, not a component.
    #[error(
        "this is a core WebAssembly module, not a component; build for wasm32-wasip2 or run `wasm-tools component new`"
    )]
    CoreModule,
    /// Over the size cap.
    #[error("component is {len} bytes, over the {limit}-byte limit")]
    TooLarge {
        /// Size offered.
        len: usize,
        /// The cap.
        limit: usize,
    },
    /// The binary does not validate.
    #[error("invalid component: {detail}")]
    Invalid {
        /// The validator's (or compiler's) explanation.
        detail: String,
    },
    /// It exports neither stage interface.
    #[error(
        "component does not export a Squilla stage: expected `squilla:stage/raw-handler@0.1.0` or \
         `squilla:stage/typed-handler@0.1.0`, found exports [{}]",
        exports.join(", ")
    )]
    NotAStage {
        /// What it exports instead.
        exports: Vec<String>,
    },
    /// It exports a stage interface whose functions do not have the contract's types.
    #[error("component exports `{interface}` but does not match it: {detail}")]
    WrongSignature {
        /// The stage interface it claims.
        interface: String,
        /// What did not match.
        detail: String,
    },
    /// It imports something a stage may not use.
    #[error("component imports `{import}`, which stages may not use")]
    ForbiddenImport {
        /// The import's name.
        import: String,
    },
}

/// Refuses what is over `limit` bytes, not WebAssembly, or a core module.
pub fn check_header(bytes: &[u8], limit: usize) -> Result<(), ComponentError> {
    if bytes.len() > limit {
        return Err(ComponentError::TooLarge { len: bytes.len(), limit });
    }
    match bytes.get(..8) {
        Some([0, b'a', b's', b'm', _, _, 0, 0]) => Err(ComponentError::CoreModule),
        Some([0, b'a', b's', b'm', ..]) => Ok(()),
        _ => Err(ComponentError::NotWasm),
    }
}

/// The stage flavour a component's top-level imports and exports make it, or why they make
/// it no stage.
pub fn stage_flavour(imports: &[String], exports: Vec<String>) -> Result<Flavour, ComponentError> {
    if let Some(import) = imports.iter().find(|i| !ALLOWED_IMPORTS.iter().any(|a| i.starts_with(a))) {
        return Err(ComponentError::ForbiddenImport { import: import.clone() });
    }
    if exports.iter().any(|e| e == RAW_EXPORT) {
        Ok(Flavour::Raw)
    } else if exports.iter().any(|e| e == TYPED_EXPORT) {
        Ok(Flavour::Typed)
    } else {
        Err(ComponentError::NotAStage { exports })
    }
}
