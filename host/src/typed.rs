//! Conversions between archived batches and the typed flavour's WIT records.
//!
//! The typed flavour pays for a copy in each direction (field names and text become owned
//! strings on the way in, and the output is archived again on the way out); that is the price
//! of letting any language's bindings generator implement a stage.

use squilla_batch::{BatchBuilder, BatchBytes, BatchError, BatchView, ValueRef};

use crate::bindings::{WitEvent, WitField, WitValue};

/// The events of `batch` as WIT records.
pub(crate) fn to_wit(batch: BatchView<'_>) -> Vec<WitEvent> {
    batch
        .events()
        .map(|event| WitEvent {
            timestamp_ms: event.timestamp_ms(),
            fields: event
                .fields()
                .map(|(name, value)| WitField {
                    name: name.to_owned(),
                    value: match value {
                        ValueRef::Null => WitValue::Null,
                        ValueRef::Bool(b) => WitValue::Boolean(b),
                        ValueRef::Int(i) => WitValue::Int(i),
                        ValueRef::Float(f) => WitValue::Float(f),
                        ValueRef::Text(t) => WitValue::Text(t.to_owned()),
                        ValueRef::Bytes(b) => WitValue::Bytes(b.to_vec()),
                    },
                })
                .collect(),
        })
        .collect()
}

/// WIT records archived as a batch.
pub(crate) fn from_wit(events: &[WitEvent]) -> Result<BatchBytes, BatchError> {
    let mut builder = BatchBuilder::with_capacity(events.len());
    for event in events {
        let mut out = builder.event(event.timestamp_ms);
        for field in &event.fields {
            let value = match &field.value {
                WitValue::Null => ValueRef::Null,
                WitValue::Boolean(b) => ValueRef::Bool(*b),
                WitValue::Int(i) => ValueRef::Int(*i),
                WitValue::Float(f) => ValueRef::Float(*f),
                WitValue::Text(t) => ValueRef::Text(t),
                WitValue::Bytes(b) => ValueRef::Bytes(b),
            };
            out.field(&field.name, value);
        }
    }
    builder.finish()
}
