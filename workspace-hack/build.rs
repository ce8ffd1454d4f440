//! Empty: it exists so that the `[build-dependencies]` of this crate, and their features,
//! take part in the host's feature resolution (see Cargo.toml).

fn main() {}
