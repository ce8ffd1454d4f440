//! Host→guest `process` cost per event, for batches of 1, 64, 1024 and 8192 synthetic
//! ~100-byte events, through the `filter` example (a raw-flavour Rust stage):
//!
//! - `drop-all`: the predicate matches nothing, so this is the cost of handing the batch to
//!   the guest and the guest reading every event in place;
//! - `keep-all`: every event is copied to the output, which the host then validates: the
//!   full round trip.
//!
//! Run: `cargo bench -p squilla-host --bench process`.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use squilla_batch::synth::DeviceLogs;
use squilla_host::{Artifact, Limits, Runtime, RuntimeConfig};

fn process(c: &mut Criterion) {
    let runtime = Runtime::new(RuntimeConfig::default()).unwrap();
    let artifact = Artifact::compile(&runtime, &squilla_guests::read("filter")).unwrap();
    let params = |op: &str, value: &str| {
        vec![
            ("field".to_string(), "device-type".to_string()),
            ("op".to_string(), op.to_string()),
            ("value".to_string(), value.to_string()),
        ]
    };
    let mut group = c.benchmark_group("process");
    for (mode, op, value) in [("drop-all", "eq", "no-such-device"), ("keep-all", "exists", "")] {
        let mut stage = artifact.instantiate(&runtime, &Limits::default(), &params(op, value)).unwrap();
        for size in [1usize, 64, 1024, 8192] {
            let batch = DeviceLogs::new(size as u64).batch(size, 0, 1).unwrap();
            group.throughput(Throughput::Elements(size as u64));
            group.bench_with_input(BenchmarkId::new(mode, size), &batch, |b, batch| {
                b.iter(|| black_box(stage.process(batch).unwrap().len()))
            });
        }
    }
    group.finish();
}

fn instantiate(c: &mut Criterion) {
    let runtime = Runtime::new(RuntimeConfig::default()).unwrap();
    let artifact = Artifact::compile(&runtime, &squilla_guests::read("filter")).unwrap();
    let params = vec![("field".to_string(), "status".to_string()), ("op".to_string(), "exists".to_string())];
    c.bench_function("instantiate+init/filter", |b| {
        b.iter(|| black_box(artifact.instantiate(&runtime, &Limits::default(), &params).unwrap()))
    });
}

criterion_group!(benches, process, instantiate);
criterion_main!(benches);
