//! Bounded fuzzing of every parser of untrusted bytes: no input may panic. See
//! `squilla_fuzz` for the mutator and the settings (`SQUILLA_FUZZ_SECS`, `SQUILLA_FUZZ_SEED`).
//! Longer runs: `SQUILLA_FUZZ_SECS=600 cargo test --release --workspace --test fuzz`.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;

use squilla_batch::{BatchBuilder, BatchBytes, BatchView};
use squilla_fuzz::{corpus, fuzz};
use squilla_host::transport::frame::{self, Frame};

/// Synthetic batches, a batch of every value kind, and an empty one.
fn batch_seeds() -> Vec<Vec<u8>> {
    let mut seeds = corpus("batch");
    let mut generator = squilla_batch::synth::DeviceLogs::new(7);
    for n in [1, 3, 17] {
        seeds.push(generator.batch(n, 1_000, 1).unwrap().as_bytes().to_vec());
    }
    let mut b = BatchBuilder::new().source("fuzz").sequence(3);
    b.event(-5)
        .null("n")
        .field("b", true)
        .field("i", -42i64)
        .field("f", 1.5f64)
        .field("t", "text ünïcode")
        .field("x", &b"\x00\xff"[..]);
    b.event(i64::MAX).field("i", i64::MIN);
    seeds.push(b.finish().unwrap().as_bytes().to_vec());
    seeds.push(BatchBuilder::new().finish().unwrap().as_bytes().to_vec());
    seeds
}

/// Reads everything a host reads of a batch.
fn read_batch(view: BatchView<'_>) {
    let meta = view.meta();
    let _ = (meta.source(), meta.sequence(), meta.created_at_ms(), view.names().count());
    let mut json = Vec::new();
    for event in view.events() {
        let _ = (event.timestamp_ms(), event.field_count(), event.get("t"), event.int("i"), event.text("t"));
        for field in event.fields() {
            let _ = field;
        }
        squilla_batch::json::write_json(&event, &mut json);
        let _ = squilla_batch::json::to_json(&event);
    }
    let _ = view.to_events();
}

#[test]
fn the_batch_validator_never_panics_and_what_it_accepts_reads_safely() {
    fuzz("batch", batch_seeds(), |bytes| {
        if let Ok(batch) = BatchBytes::validate(bytes.to_vec()) {
            read_batch(batch.view());
        }
        if let Ok(view) = BatchView::validate(bytes) {
            read_batch(view);
        }
    });
}

fn spec_seeds() -> Vec<Vec<u8>> {
    let mut seeds = corpus("spec");
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    for entry in std::fs::read_dir(&examples).unwrap().flatten() {
        for file in std::fs::read_dir(entry.path()).into_iter().flatten().flatten() {
            if file.path().extension().is_some_and(|e| e == "json") {
                seeds.push(std::fs::read(file.path()).unwrap());
            }
        }
    }
    seeds
}

#[test]
fn the_job_spec_parser_never_panics() {
    fuzz("spec", spec_seeds(), |bytes| {
        let text = String::from_utf8_lossy(bytes);
        if let Ok(spec) = squilla_types::JobSpec::parse(&text) {
            let _ = spec.validate();
            let overrides: BTreeMap<String, String> =
                spec.parameters.iter().map(|p| (p.name.clone(), "1".to_owned())).collect();
            for stage in &spec.stages {
                let _ = spec.stage_params(stage, &overrides);
                let _ = stage.artifact.to_string();
            }
            let _ = serde_json::to_string(&spec);
        }
    });
}

#[test]
fn the_ingest_parser_never_panics_and_its_batches_are_valid() {
    fuzz("ingest", corpus("ingest"), |bytes| {
        if let Ok(archived) = squilla_gateway::ingest::batches(bytes, 1_700_000_000_000) {
            for (batch, n) in archived.batches {
                let batch = BatchBytes::validate(batch).expect("ingest makes valid batches");
                assert_eq!(batch.len(), n);
            }
        }
    });
}

#[test]
fn the_query_compiler_never_panics_and_what_it_accepts_runs_safely() {
    let events = batch_seeds().into_iter().filter_map(|b| BatchBytes::validate(b).ok()).collect::<Vec<_>>();
    fuzz("query", corpus("query"), |bytes| {
        let text = String::from_utf8_lossy(bytes);
        let Ok(query) = squilla_query::Query::parse(&text) else { return };
        let query = Arc::new(query);
        let mut runner = squilla_query::Runner::new(query.clone(), 0, 7).with_state_limit(1 << 20);
        let mut out = Vec::new();
        for batch in &events {
            for event in batch.view().events() {
                let _ = runner.matches(&event);
                if runner.push(&event, &mut out).is_err() {
                    break;
                }
            }
        }
        runner.tick(query.window_ms().unwrap_or(0) as i64 + 1, &mut out);
        runner.tick(i64::MAX, &mut out);
    });
}

fn frame_seeds() -> Vec<Vec<u8>> {
    let mut seeds = corpus("frames");
    let batch = batch_seeds().remove(0);
    let frames = [
        Frame::Hello { agent: "agent-1".into() },
        Frame::Open { id: 1, stage: 2, index: 3, job: "acme.errors-1".into() },
        Frame::Data { id: 1, bytes: batch },
        Frame::Credit { id: 1, batches: 16 },
    ];
    let mut all = Vec::new();
    for f in &frames {
        let mut one = Vec::new();
        frame::write(&mut one, f).unwrap();
        all.extend_from_slice(&one);
        seeds.push(one);
    }
    seeds.push(all);
    seeds
}

#[test]
fn the_agent_wire_frames_never_panic_the_reader() {
    fuzz("frames", frame_seeds(), |bytes| {
        let mut input = Cursor::new(bytes);
        // A reader stops at the first error, as a connection does.
        for _ in 0..64 {
            match frame::read(&mut input, 1 << 20) {
                Ok(Frame::Data { bytes, .. }) => {
                    if let Ok(batch) = BatchBytes::validate(bytes) {
                        read_batch(batch.view());
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
}

/// Writes the generated seeds of the binary targets into `fuzz/corpus/` (how the committed
/// binary seeds were made): `SQUILLA_FUZZ_WRITE_SEEDS=1 cargo test --release --workspace
/// --test fuzz seeds`. Without the variable it only checks that every committed seed parses
/// as its target expects (a corpus that no longer reaches the parser is worth little).
#[test]
fn seeds() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    if std::env::var_os("SQUILLA_FUZZ_WRITE_SEEDS").is_some() {
        for (target, seeds) in [("batch", batch_seeds()), ("frames", frame_seeds())] {
            std::fs::create_dir_all(dir.join(target)).unwrap();
            for (i, seed) in seeds.iter().enumerate() {
                std::fs::write(dir.join(target).join(format!("generated-{i}")), seed).unwrap();
            }
        }
    }
    for seed in corpus("batch") {
        assert!(BatchBytes::validate(seed).is_ok(), "a committed batch seed no longer validates");
    }
    for seed in corpus("frames") {
        assert!(frame::read(&mut Cursor::new(&seed), 1 << 20).is_ok(), "a committed frame seed no longer reads");
    }
    for seed in corpus("query") {
        let text = String::from_utf8(seed).unwrap();
        assert!(squilla_query::Query::parse(text.trim()).is_ok(), "{text}");
    }
}
