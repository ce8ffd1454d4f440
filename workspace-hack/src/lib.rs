//! No code: this crate's dependencies give `cargo build -p squilla` the features that
//! `cargo test --workspace` turns on through dev-dependencies, so that the README's demo and
//! test commands share one build of wasmtime and everything else. `.ci/features-agree`
//! checks that nothing is missing.
