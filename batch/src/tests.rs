//! Round trips and hostile input, by property.

use proptest::prelude::*;

use crate::{BatchBuilder, BatchBytes, BatchError, BatchView, Event, Value, ValueRef};

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

fn wire_batch(fields: Vec<crate::wire::Field>, events: Vec<crate::wire::Event>, data: &[u8]) -> Vec<u8> {
    let batch = crate::wire::Batch {
        meta: Default::default(),
        names: vec!["only".into()],
        events,
        fields: fields.into_iter().map(Into::into).collect(),
        data: data.to_vec(),
    };
    rkyv::to_bytes::<rkyv::rancor::Error>(&batch).unwrap().to_vec()
}

#[test]
fn references_outside_the_batch_are_refused() {
    use crate::wire::{Event as E, Field as F, Value as V};
    let one = |value| vec![F { name: 0, value }];
    let event = vec![E { timestamp_ms: 1, first_field: 0, field_count: 1 }];
    let cases = [
        (
            wire_batch(vec![F { name: 3, value: V::Null }], event.clone(), b""),
            BatchError::UnknownName { field: 0, index: 3, names: 1 },
        ),
        (
            wire_batch(one(V::Null), vec![E { timestamp_ms: 1, first_field: 1, field_count: 1 }], b""),
            BatchError::FieldRange { event: 0, first: 1, count: 1, fields: 1 },
        ),
        (
            wire_batch(one(V::Text { offset: 2, len: 5 }), event.clone(), b"abcd"),
            BatchError::DataRange { field: 0, offset: 2, len: 5, data: 4 },
        ),
        (
            wire_batch(one(V::Text { offset: 0, len: 2 }), event.clone(), b"\xff\xfe"),
            BatchError::InvalidUtf8 { field: 0 },
        ),
        (
            // Half of a two-byte character, in a data area that is not all ASCII.
            wire_batch(one(V::Text { offset: 1, len: 1 }), event.clone(), "aé".as_bytes()),
            BatchError::InvalidUtf8 { field: 0 },
        ),
    ];
    for (bytes, expected) in cases {
        assert_eq!(BatchView::validate(&bytes).unwrap_err(), expected);
    }
    // The same shapes with in-range references are accepted.
    let ok = wire_batch(one(V::Bytes { offset: 0, len: 2 }), event, b"\xff\xfe");
    assert_eq!(
        BatchView::validate(&ok).unwrap().event(0).unwrap().get("only"),
        Some(crate::ValueRef::Bytes(&[0xff, 0xfe]))
    );
}

#[test]
fn copying_events_between_batches_keeps_names_right() {
    let mut a = BatchBuilder::new();
    a.event(1).field("x", 1i64).field("y", "one");
    a.event(2).field("y", "two").field("z", true);
    let a = a.finish().unwrap();
    let mut b = BatchBuilder::new();
    b.event(0).field("z", false);
    for e in a.view().events() {
        b.push_ref(e);
    }
    let c = b.finish().unwrap();
    let events = c.view().to_events();
    assert_eq!(events[1], Event::new(1).with("x", 1i64).with("y", "one"));
    assert_eq!(events[2], Event::new(2).with("y", "two").with("z", true));
}

#[test]
fn synthetic_events_are_about_130_bytes_and_deterministic() {
    let a = crate::synth::DeviceLogs::new(1).batch(1000, 0, 1).unwrap();
    let b = crate::synth::DeviceLogs::new(1).batch(1000, 0, 1).unwrap();
    assert_eq!(a.as_bytes(), b.as_bytes());
    let per_event = a.as_bytes().len() / 1000;
    assert!((100..=140).contains(&per_event), "{per_event} bytes per event");
    let errors = a.view().events().filter(|e| e.get("error") == Some(crate::ValueRef::Bool(true))).count();
    assert!(errors > 0 && errors < 200, "{errors} errors in 1000");
}

#[test]
fn a_builder_knows_when_it_holds_exactly_a_copy_of_a_batch() {
    let bytes = crate::synth::DeviceLogs::new(1).batch(5, 0, 1).unwrap();
    let other = crate::synth::DeviceLogs::new(2).batch(5, 0, 1).unwrap();
    let view = bytes.view();
    // Copies count as a pass-through only while the batch is the registered stage input.
    let copy = |pick: &dyn Fn(&mut BatchBuilder)| {
        crate::live::with_input(&bytes, || {
            let mut b = BatchBuilder::new();
            pick(&mut b);
            b.is_copy_of(&view)
        })
    };
    let mut unregistered = BatchBuilder::new();
    view.events().for_each(|e| unregistered.push_ref(e));
    assert!(!unregistered.is_copy_of(&view), "not the registered input");
    assert!(copy(&|b| view.events().for_each(|e| b.push_ref(e))), "all, in order");
    assert!(!copy(&|b| view.events().take(4).for_each(|e| b.push_ref(e))), "a prefix");
    assert!(!copy(&|b| view.events().skip(1).for_each(|e| b.push_ref(e))), "missing the first");
    assert!(!copy(&|b| (0..5).rev().for_each(|i| b.push_ref(view.event(i).unwrap()))), "out of order");
    assert!(!copy(&|b| view.events().chain(view.events().take(1)).for_each(|e| b.push_ref(e))), "one twice");
    assert!(!copy(&|b| other.view().events().for_each(|e| b.push_ref(e))), "another batch");
    assert!(
        !copy(&|b| {
            view.events().for_each(|e| b.push_ref(e));
            b.event(9).field("x", 1i64);
        }),
        "and one more"
    );
    let own_metadata = crate::live::with_input(&bytes, || {
        let mut b = BatchBuilder::new().source("me");
        view.events().for_each(|e| b.push_ref(e));
        b.is_copy_of(&view)
    });
    assert!(!own_metadata, "its own metadata");
}

#[test]
fn copies_of_a_registered_input_are_deferred_and_made_when_needed() {
    use crate::live::with_input;
    let bytes = crate::synth::DeviceLogs::new(4).batch(6, 0, 1).unwrap();
    let view = bytes.view();
    let all = view.to_events();

    let (mut kept, cloned) = with_input(&bytes, || {
        // The whole input, in order: nothing is copied, and archiving still gives the same
        // events.
        let mut whole = BatchBuilder::new();
        view.events().for_each(|e| whole.push_ref(e));
        assert!(whole.is_copy_of(&view));
        assert_eq!(whole.len(), 6);
        let cloned = whole.clone();
        assert_eq!(BatchBytes::validate(whole.into_vec().unwrap()).unwrap().view().to_events(), all);

        // A prefix, then a gap: the prefix is copied when the order breaks.
        let mut gap = BatchBuilder::new();
        for i in [0, 1, 2, 4] {
            gap.push_ref(view.event(i).unwrap());
        }
        assert!(!gap.is_copy_of(&view));
        let kept = [all[0].clone(), all[1].clone(), all[2].clone(), all[4].clone()];
        assert_eq!(gap.finish().unwrap().view().to_events(), kept);

        // A prefix, then an event of its own, then metadata.
        let mut more = BatchBuilder::new();
        more.push_ref(view.event(0).unwrap());
        more.event(99).field("x", 1i64);
        let more = more.source("me").finish().unwrap();
        assert_eq!(more.view().to_events(), [all[0].clone(), crate::Event::new(99).with("x", 1i64)]);

        // Another thread has no registration: its copies are made at once.
        let elsewhere = std::thread::scope(|s| {
            s.spawn(|| {
                let mut b = BatchBuilder::new();
                view.events().for_each(|e| b.push_ref(e));
                assert!(!b.is_copy_of(&view));
                b
            })
            .join()
            .unwrap()
        });
        assert_eq!(elsewhere.finish().unwrap().view().to_events(), all);

        let mut kept = BatchBuilder::new();
        view.events().take(3).for_each(|e| kept.push_ref(e));
        (kept, cloned)
    });
    // A builder kept past the call that filled it holds its own reference to that input: its
    // copies are made when needed, and a later input is never mistaken for it.
    let other = crate::synth::DeviceLogs::new(5).batch(6, 0, 1).unwrap();
    let mut kept = with_input(&other, || {
        assert!(!kept.is_copy_of(&other.view()));
        kept.push_ref(other.view().event(0).unwrap());
        kept
    });
    kept.event(7);
    let expected = [&all[..3], &[other.view().to_events()[0].clone(), crate::Event::new(7)]].concat();
    assert_eq!(kept.finish().unwrap().view().to_events(), expected);
    assert_eq!(cloned.finish().unwrap().view().to_events(), all);
    // The input's bytes come back without a copy once nothing else holds them.
    let address = bytes.as_bytes().as_ptr();
    let owned = bytes.into_vec();
    assert_eq!(owned.as_ptr(), address);
}

#[test]
fn copying_from_a_batch_at_a_reused_address_maps_its_own_names() {
    // Two batches with the same names in different orders, the second built in the first's
    // freed memory as often as the allocator allows: every copy keeps its field names.
    let mut out = BatchBuilder::new();
    let mut expected = Vec::new();
    for round in 0..50i64 {
        let mut b = BatchBuilder::new();
        let names = if round % 2 == 0 { ["a", "b"] } else { ["b", "a"] };
        b.event(round).field(names[0], round).field(names[1], -round);
        let bytes = b.into_vec().unwrap();
        let batch = BatchBytes::validate(bytes).unwrap();
        out.push_ref(batch.view().event(0).unwrap());
        expected.push(Event::new(round).with(names[0], round).with(names[1], -round));
        drop(batch);
    }
    assert_eq!(out.finish().unwrap().view().to_events(), expected);
}

/// The first field called `name`, by comparing every field's name: what `get` must find.
fn scanned<'a>(event: &crate::EventRef<'a>, name: &str) -> Option<ValueRef<'a>> {
    event.fields().find(|(n, _)| *n == name).map(|(_, v)| v)
}

#[test]
fn field_lookups_stay_right_across_batches_at_a_reused_address() {
    // Batches with the same names in other orders and subsets, each built in the last one's
    // freed memory as often as the allocator allows, read by the same name strings.
    let names = ["a", "bb", "status", "device-type", "x.y"];
    for round in 0..200usize {
        let mut b = BatchBuilder::new();
        for e in 0..4i64 {
            let mut event = b.event(e);
            for k in 0..names.len() {
                let name = names[(round + k * (e as usize + 1)) % names.len()];
                if (round + k) % 3 != 0 {
                    event.field(name, (round * 10 + k) as i64);
                }
            }
        }
        let batch = BatchBytes::validate(b.into_vec().unwrap()).unwrap();
        let view = batch.view();
        for event in view.events() {
            for name in names.iter().chain(&["missing"]) {
                assert_eq!(event.get(name), scanned(&event, name), "round {round}, {name}");
                let at = view.name_index(name).and_then(|i| event.get_at(i));
                assert_eq!(at, scanned(&event, name), "round {round}, {name} by index");
            }
        }
    }
}

#[test]
fn a_name_table_that_repeats_a_name_is_refused() {
    use crate::wire;
    let batch = wire::Batch {
        names: vec!["a".into(), "b".into(), "a".into()],
        events: vec![wire::Event { timestamp_ms: 0, first_field: 0, field_count: 0 }],
        ..wire::Batch::default()
    };
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&batch).unwrap();
    let err = BatchView::validate(&bytes).unwrap_err();
    assert!(matches!(&err, BatchError::DuplicateName { index: 2, name } if name == "a"), "{err}");
    // Past the pairwise limit, through the set.
    let mut names: Vec<String> = (0..40).map(|i| format!("n{i}")).collect();
    names.push("n7".into());
    let batch = wire::Batch { names, ..wire::Batch::default() };
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&batch).unwrap();
    assert!(matches!(BatchView::validate(&bytes), Err(BatchError::DuplicateName { index: 40, .. })));
}

#[test]
fn a_packed_field_is_the_bytes_rkyv_archives_a_field_to() {
    use crate::wire::{Field, PackedField, Value};
    for value in [
        Value::Null,
        Value::Bool(false),
        Value::Bool(true),
        Value::Int(-2),
        Value::Int(i64::MAX),
        Value::Float(-0.5),
        Value::Float(f64::NAN),
        Value::Text { offset: 7, len: 300 },
        Value::Bytes { offset: u32::MAX, len: 1 },
    ] {
        let field = Field { name: 0x0102_0304, value };
        let archived = rkyv::to_bytes::<rkyv::rancor::Error>(&field).unwrap();
        let packed = rkyv::to_bytes::<rkyv::rancor::Error>(&vec![PackedField::from(field)]).unwrap();
        // A one-element vector: its element first, then the vector's own pointer and length.
        assert_eq!(&packed[..crate::wire::FIELD_BYTES], &archived[..], "{value:?}");
    }
}
