//! A hostile guest is contained at the level of one instance: the call fails with a typed
//! error, the instance is poisoned, and the runtime (and a neighbour's instance) carries on.

use std::time::{Duration, Instant};

use squilla_batch::Event;
use squilla_host::ComponentError;
use squilla_host::{Artifact, ArtifactError, CallError, Limits, StageInstance};

use crate::{batch, runtime, start};

fn program(name: &str, limits: &Limits) -> StageInstance {
    Artifact::compile(runtime(), &squilla_guests::read(name)).unwrap().instantiate(runtime(), limits, &[]).unwrap()
}

/// A neighbour that must keep producing correct output whatever happens next door.
fn neighbour_still_works() {
    let mut filter = start("filter", &[("field", "status"), ("op", "ge"), ("value", "500")]);
    let out = filter.process(&batch(&[Event::new(1).with("status", 500i64), Event::new(2).with("status", 200i64)]));
    assert_eq!(out.unwrap().view().events().map(|e| e.timestamp_ms()).collect::<Vec<_>>(), [1]);
}

#[test]
fn an_endless_loop_is_interrupted_within_twice_the_deadline() {
    let deadline = Duration::from_millis(200);
    let mut spin = program("spin", &Limits { call_deadline: deadline, ..Limits::default() });
    // Before the bad event the stage works.
    assert_eq!(spin.process(&batch(&[Event::new(1).with("spin", false)])).unwrap().len(), 1);
    let started = Instant::now();
    let err = spin.process(&batch(&[Event::new(2).with("spin", true)])).unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, CallError::Deadline { deadline_ms: 200 }), "{err:?}");
    assert!(took < deadline * 2, "interrupted after {took:?}");
    assert!(spin.is_poisoned());
    assert!(matches!(spin.tick(0), Err(CallError::Poisoned)));
    neighbour_still_works();
}

#[test]
fn a_memory_bomb_traps_at_the_cap() {
    let mut bomb = program("memory-bomb", &Limits { memory_bytes: 16 << 20, ..Limits::default() });
    let err = bomb.process(&batch(&[])).unwrap_err();
    match &err {
        CallError::Trap { message } => assert!(message.contains("worker memory limit of 16 MiB exceeded"), "{message}"),
        other => panic!("expected a trap, got {other:?}"),
    }
    assert!(bomb.memory_bytes() <= 16 << 20);
    neighbour_still_works();
}

#[test]
fn deep_recursion_traps_without_killing_the_process() {
    let mut deep = program("deep-recursion", &Limits::default());
    let err = deep.process(&batch(&[])).unwrap_err();
    match &err {
        CallError::Trap { message } => {
            assert!(message.starts_with("wasm trap: call stack exhausted"), "{message}");
            assert!(message.lines().count() <= 10, "the message keeps a few frames: {message}");
        }
        other => panic!("expected a trap, got {other:?}"),
    }
    neighbour_still_works();
}

#[test]
fn a_component_importing_the_filesystem_is_refused_at_load() {
    let err = Artifact::compile(runtime(), &squilla_guests::read("fs-reader")).unwrap_err();
    match err {
        ArtifactError::Component(ComponentError::ForbiddenImport { import }) => {
            assert!(import.starts_with("wasi:filesystem/"), "{import}")
        }
        other => panic!("expected a forbidden import, got {other:?}"),
    }
}
