//! Batch build and validated read, per event, for synthetic ~100-byte device-log events.
//!
//! Run: `cargo bench -p squilla-batch`. Criterion reports time per batch of 1,024 events and
//! events/s; divide the time by 1,024 for ns per event.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use squilla_batch::{BatchBuilder, BatchView, ValueRef, synth::DeviceLogs};

const EVENTS: usize = 1024;

fn build(c: &mut Criterion) {
    let mut group = c.benchmark_group("batch");
    group.throughput(Throughput::Elements(EVENTS as u64));
    group.bench_function("build-1024", |b| {
        let mut generator = DeviceLogs::new(7);
        b.iter(|| {
            let mut builder = BatchBuilder::with_capacity(EVENTS);
            generator.fill(&mut builder, EVENTS, 0, 1);
            black_box(builder.into_vec().unwrap())
        })
    });

    // What a job's synthetic source does: batch after batch from one generator.
    group.bench_function("synthetic-1024", |b| {
        let mut generator = DeviceLogs::new(7);
        b.iter(|| black_box(generator.batch(EVENTS, 0, 1).unwrap()))
    });

    let bytes = DeviceLogs::new(7).batch(EVENTS, 0, 1).unwrap();
    let raw = bytes.as_bytes().to_vec();
    println!("batch of {EVENTS} events: {} bytes ({} per event)", raw.len(), raw.len() / EVENTS);
    group
        .bench_function("validate-1024", |b| b.iter(|| black_box(BatchView::validate(black_box(&raw)).unwrap().len())));
    group.bench_function("validate-and-read-1024", |b| {
        b.iter(|| {
            let view = BatchView::validate(black_box(&raw)).unwrap();
            let mut errors = 0u32;
            let mut bytes = 0usize;
            for event in view.events() {
                for (name, value) in event.fields() {
                    bytes += name.len();
                    match value {
                        ValueRef::Text(t) => bytes += t.len(),
                        ValueRef::Bool(true) => errors += 1,
                        _ => {}
                    }
                }
            }
            black_box((errors, bytes))
        })
    });
    group.bench_function("lookup-by-name-1024", |b| {
        let view = bytes.view();
        b.iter(|| black_box(view.events().filter(|e| e.int("status") == Some(500)).count()))
    });
    #[cfg(feature = "json")]
    {
        // The same events as JSON lines (what HTTP ingest and `squilla run` read).
        let lines: Vec<String> = bytes
            .view()
            .events()
            .map(|e| {
                let mut out = Vec::new();
                squilla_batch::json::write_json(&e, &mut out);
                String::from_utf8(out).unwrap()
            })
            .collect();
        let size = lines.iter().map(String::len).sum::<usize>() / lines.len();
        println!("JSON lines of {size} bytes on average, e.g. {}", lines[0]);
        // One batcher making batch after batch, as `squilla run` and an ingest request do.
        group.bench_function("json-lines-to-batch-1024", |b| {
            let mut batcher = squilla_batch::json::JsonBatcher::new("bench", EVENTS, usize::MAX);
            b.iter(|| {
                for line in &lines {
                    black_box(batcher.push(line, 0).unwrap());
                }
                black_box(batcher.take().unwrap())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, build);
criterion_main!(benches);
