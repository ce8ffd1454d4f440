//! What the host refuses, and how: components that are not stages, and stages that break the
//! contract at run time.

use squilla_batch::{BatchError, Event};
use squilla_host::ComponentError;
use squilla_host::{Artifact, ArtifactError, CallError, Flavour, Limits};

use crate::{batch, runtime};

fn compile_wat(wat: &str) -> Result<Artifact, ArtifactError> {
    Artifact::compile(runtime(), &wat::parse_str(wat).expect("test WAT parses"))
}

#[test]
fn a_component_without_a_stage_export_is_refused_naming_its_exports() {
    let err = compile_wat(
        r#"(component
            (core module $m (func (export "f") (result i32) i32.const 1))
            (core instance $i (instantiate $m))
            (func $f (result u32) (canon lift (core func $i "f")))
            (export "hello" (func $f)))"#,
    )
    .unwrap_err();
    assert!(
        matches!(&err, ArtifactError::Component(ComponentError::NotAStage { exports }) if exports == &["hello"]),
        "{err:?}"
    );
    assert!(err.to_string().contains("squilla:stage/raw-handler@0.1.0"), "{err}");
}

#[test]
fn a_stage_export_with_the_wrong_types_is_refused() {
    let err = compile_wat(
        r#"(component
            (core module $m (func (export "f") (result i32) i32.const 1))
            (core instance $i (instantiate $m))
            (func $f (result u32) (canon lift (core func $i "f")))
            (instance $h (export "init" (func $f)))
            (export "squilla:stage/raw-handler@0.1.0" (instance $h)))"#,
    )
    .unwrap_err();
    assert!(
        matches!(&err, ArtifactError::Component(ComponentError::WrongSignature { interface, .. }) if interface == "squilla:stage/raw-handler@0.1.0"),
        "{err:?}"
    );
}

#[test]
fn core_modules_garbage_and_oversized_input_are_refused() {
    let core = wat::parse_str("(module)").unwrap();
    assert!(matches!(Artifact::compile(runtime(), &core), Err(ArtifactError::Component(ComponentError::CoreModule))));
    assert!(matches!(
        Artifact::compile(runtime(), b"PK\x03\x04 a zip file"),
        Err(ArtifactError::Component(ComponentError::NotWasm))
    ));
    let mut truncated = squilla_guests::read("filter");
    truncated.truncate(truncated.len() / 2);
    assert!(matches!(
        Artifact::compile(runtime(), &truncated),
        Err(ArtifactError::Component(ComponentError::Invalid { .. }))
    ));
    let limit = runtime().config().max_component_bytes;
    let huge = vec![0u8; limit + 1];
    assert!(
        matches!(Artifact::compile(runtime(), &huge), Err(ArtifactError::Component(ComponentError::TooLarge { len, .. })) if len == limit + 1)
    );
}

#[test]
fn an_import_outside_the_allowlist_is_refused_by_name() {
    let err = compile_wat(r#"(component (import "wasi:sockets/tcp@0.2.0" (instance)))"#).unwrap_err();
    assert!(
        matches!(&err, ArtifactError::Component(ComponentError::ForbiddenImport { import }) if import == "wasi:sockets/tcp@0.2.0"),
        "{err:?}"
    );
}

#[test]
fn a_guest_returning_corrupt_bytes_gets_a_typed_error_and_stays_usable() {
    // `process` returns three bytes that are not a batch; `tick` returns a stage error.
    let artifact = Artifact::compile(runtime(), &squilla_guests::read("corrupt-output")).unwrap();
    assert_eq!(artifact.flavour(), Flavour::Raw);
    let mut stage = artifact.instantiate(runtime(), &Limits::default(), &[]).unwrap();
    let input = batch(&[Event::new(1).with("a", 1i64)]);
    match stage.process(&input) {
        Err(CallError::InvalidOutput(BatchError::Malformed { len: 3, .. })) => {}
        other => panic!("expected a malformed-output error, got {other:?}"),
    }
    assert!(!stage.is_poisoned());
    match stage.tick(5) {
        Err(CallError::Stage { message, retryable: true }) => assert_eq!(message, "tick failed"),
        other => panic!("expected the stage's error, got {other:?}"),
    }
    // Both failures leave the instance usable: it answers the next call.
    assert!(matches!(stage.process(&input), Err(CallError::InvalidOutput(_))));
}

#[test]
fn inspection_agrees_with_compilation_without_compiling() {
    use squilla_component::inspect;
    let limit = runtime().config().max_component_bytes;
    for (name, _) in squilla_guests::ALL {
        let found = inspect(&squilla_guests::read(name), limit).unwrap();
        assert_eq!(found.flavour, Flavour::Raw, "{name}");
    }
    let fs = inspect(&squilla_guests::read("fs-reader"), limit).unwrap_err();
    assert!(
        matches!(fs, ComponentError::ForbiddenImport { ref import } if import.starts_with("wasi:filesystem/")),
        "{fs:?}"
    );
    let hello = wat::parse_str(
        r#"(component
            (core module $m (func (export "f") (result i32) i32.const 1))
            (core instance $i (instantiate $m))
            (func $f (result u32) (canon lift (core func $i "f")))
            (export "hello" (func $f)))"#,
    )
    .unwrap();
    assert!(matches!(inspect(&hello, limit), Err(ComponentError::NotAStage { exports }) if exports == ["hello"]));
    let mut truncated = squilla_guests::read("filter");
    truncated.truncate(1000);
    assert!(matches!(inspect(&truncated, limit), Err(ComponentError::Invalid { .. })));
    assert!(matches!(inspect(&truncated, 10), Err(ComponentError::TooLarge { .. })));
}
