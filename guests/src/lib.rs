//! Paths of the example stage components and the hostile test programs, built by this
//! crate's build script from `examples/` and `guests/programs/` for `wasm32-wasip2`. Depend on it (as a dev-dependency) to get real guests in
//! tests and benchmarks with no manual step.

include!(concat!(env!("OUT_DIR"), "/guests.rs"));

/// Reads an example or test-program component by crate name (`"device-errors"`, `"spin"`…).
///
/// # Panics
///
/// If there is no such guest or its file cannot be read: both mean the build is broken.
pub fn read(name: &str) -> Vec<u8> {
    let (_, path) =
        ALL.iter().chain(programs::ALL).find(|(n, _)| *n == name).unwrap_or_else(|| panic!("no guest named {name}"));
    std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}
