//! Numbers a stage reports about itself (the `metrics` interface of the WIT): a backlog, a lag,
//! keys held. Autoscaling policies scale on them (`user` strategies and set-points), and the
//! API shows them with the worker's metrics.

/// Sets this worker's gauge `name` to `value`; the latest value counts. A name is 1 to 63 of
/// `a-z`, `0-9` and `-`, starting with a letter; a worker keeps at most 16 names. Another name,
/// a 17th name or a value that is not finite is ignored. Off WebAssembly (native unit tests of
/// a stage) it does nothing.
pub fn gauge(name: &str, value: f64) {
    #[cfg(target_family = "wasm")]
    crate::__private::bindings::squilla::stage::metrics::gauge(name, value);
    #[cfg(not(target_family = "wasm"))]
    let _ = (name, value);
}
