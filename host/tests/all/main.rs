//! The host's integration tests: one binary (one link step), a module per area. Every test
//! runs real components in real wasmtime; the example stages are built by `squilla-guests`.

mod cache;
mod contract;
mod examples;
mod handoff;
mod isolation;
mod languages;
mod newcomer;
mod pipeline;
mod specs;
mod transport;

use std::sync::OnceLock;

use squilla_batch::{BatchBuilder, BatchBytes, Event};
use squilla_host::{Artifact, Limits, Runtime, RuntimeConfig, StageInstance};

/// One runtime for the whole test binary, as an agent has.
pub fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| Runtime::new(RuntimeConfig { max_instances: 200, ..Default::default() }).expect("runtime"))
}

/// Each example compiled once for the whole test binary.
pub fn example(name: &str) -> Artifact {
    static ARTIFACTS: OnceLock<Vec<(&'static str, Artifact)>> = OnceLock::new();
    let all = ARTIFACTS.get_or_init(|| {
        squilla_guests::ALL
            .iter()
            .map(|(name, _)| (*name, Artifact::compile(runtime(), &squilla_guests::read(name)).expect(name)))
            .collect()
    });
    all.iter().find(|(n, _)| *n == name).map(|(_, a)| a.clone()).expect("known example")
}

/// An instance of an example with the given parameters and default limits.
pub fn start(name: &str, params: &[(&str, &str)]) -> StageInstance {
    let params: Vec<(String, String)> = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    example(name).instantiate(runtime(), &Limits::default(), &params).expect("instantiate")
}

/// A batch of owned events.
pub fn batch(events: &[Event]) -> BatchBytes {
    let mut builder = BatchBuilder::new().source("test");
    for e in events {
        builder.push(e);
    }
    builder.finish().unwrap()
}
