//! Round trips and hostile input, by property.

use proptest::prelude::*;

use crate::{BatchBuilder, BatchBytes, BatchError, BatchView, Event, Value};

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::Int),
        any::<f64>().prop_map(Value::Float),
        ".{0,24}".prop_map(Value::Text),
        proptest::collection::vec(any::<u8>(), 0..24).prop_map(Value::Bytes),
    ]
}

fn event() -> impl Strategy<Value = Event> {
    (any::<i64>(), proptest::collection::vec(("[a-z-]{1,12}", value()), 0..8))
        .prop_map(|(timestamp_ms, fields)| Event { timestamp_ms, fields })
}

fn build(source: &str, sequence: u64, events: &[Event]) -> Vec<u8> {
    let mut builder = BatchBuilder::new().source(source).sequence(sequence).created_at_ms(42);
    for e in events {
        builder.push(e);
    }
    builder.into_vec().unwrap()
}

proptest! {
    #[test]
    fn any_batch_round_trips(source in ".{0,16}", sequence in any::<u64>(), events in proptest::collection::vec(event(), 0..40)) {
        let bytes = build(&source, sequence, &events);
        let view = BatchView::validate(&bytes).unwrap();
        prop_assert_eq!(view.meta().source(), source.as_str());
        prop_assert_eq!(view.meta().sequence(), sequence);
        prop_assert_eq!(view.meta().created_at_ms(), 42);
        prop_assert_eq!(view.to_events(), events);
    }

    #[test]
    fn any_mutation_validates_or_is_rejected(
        events in proptest::collection::vec(event(), 1..10),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut bytes = build("fuzz", 7, &events);
        for (at, byte) in flips {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len()));
        }
        // Whatever the bytes now are: either an error, or a batch every accessor can read.
        if let Ok(view) = BatchView::validate(&bytes) {
            for event in view.events() {
                let _ = event.timestamp_ms();
                for (name, value) in event.fields() {
                    let _ = (name.len(), value.to_owned());
                }
            }
            let _ = (view.meta().source().len(), view.names().count());
        }
    }
}

#[test]
fn names_are_interned_once_per_batch() {
    let mut builder = BatchBuilder::new();
    for i in 0..100 {
        builder.event(i).field("a", i).field("b", "x");
    }
    let bytes = builder.finish().unwrap();
    assert_eq!(bytes.view().names().collect::<Vec<_>>(), ["a", "b"]);
}

#[test]
fn many_distinct_names_use_the_index_and_stay_correct() {
    let mut builder = BatchBuilder::new();
    for i in 0..200 {
        builder.event(i).field(&format!("f{}", i % 50), i).field("f3", "again");
    }
    let bytes = builder.finish().unwrap();
    let view = bytes.view();
    assert_eq!(view.names().count(), 50);
    let e = view.event(77).unwrap();
    assert_eq!(e.int("f27"), Some(77));
    assert_eq!(e.fields().nth(1).unwrap().0, "f3");
}

#[test]
fn truncated_and_foreign_bytes_are_malformed() {
    let bytes = build("x", 1, &[Event::new(5).with("a", 1i64)]);
    for len in [0, 1, bytes.len() / 2, bytes.len() - 1] {
        let err = BatchView::validate(&bytes[..len]).unwrap_err();
        assert!(matches!(err, BatchError::Malformed { len: l, .. } if l == len), "{len}: {err}");
    }
    let err = BatchBytes::validate(b"{\"not\": \"a batch\"}".to_vec()).unwrap_err();
    assert!(err.to_string().starts_with("malformed batch"), "{err}");
}

#[test]
fn a_field_naming_a_missing_name_is_refused() {
    let batch = crate::wire::Batch {
        meta: Default::default(),
        names: vec!["only".into()],
        events: vec![crate::wire::Event {
            timestamp_ms: 1,
            fields: vec![crate::wire::Field { name: 3, value: Value::Null }],
        }],
    };
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&batch).unwrap();
    let err = BatchView::validate(&bytes).unwrap_err();
    assert_eq!(err, BatchError::UnknownName { event: 0, field: 0, index: 3, names: 1 });
}

#[test]
fn synthetic_events_are_about_100_bytes_and_deterministic() {
    let a = crate::synth::DeviceLogs::new(1).batch(1000, 0, 1).unwrap();
    let b = crate::synth::DeviceLogs::new(1).batch(1000, 0, 1).unwrap();
    assert_eq!(a.as_bytes(), b.as_bytes());
    let per_event = a.as_bytes().len() / 1000;
    assert!((80..=130).contains(&per_event), "{per_event} bytes per event");
    let errors = a.view().events().filter(|e| e.get("error") == Some(crate::ValueRef::Bool(true))).count();
    assert!(errors > 0 && errors < 200, "{errors} errors in 1000");
}
