//! The master's state: the `squilla-store` crate (redb on one machine, etcd for a fleet).

pub use squilla_store::*;
