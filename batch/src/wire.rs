//! The archived structures: what the bytes of a batch hold.
//!
//! These are plain data types so that rkyv derives their archived forms; code reads them
//! through [`crate::BatchView`] and writes them through [`crate::BatchBuilder`], which keep
//! the invariant the validator checks: every field's `name` indexes `Batch::names`.

use rkyv::{Archive, Deserialize, Serialize};

use crate::Value;

/// A batch: metadata, the table of field names, the events.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct Batch {
    /// Where the batch was cut: its source, sequence and creation time.
    pub meta: Meta,
    /// Field names, each once; fields refer to them by index.
    pub names: Vec<String>,
    /// The events, in order.
    pub events: Vec<Event>,
}

/// Batch-level metadata.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct Meta {
    /// Who produced the batch (a source name, a stage, a job); free text.
    pub source: String,
    /// The producer's sequence number for this batch, counting from 0.
    pub sequence: u64,
    /// When the batch was cut, in ms since the Unix epoch.
    pub created_at_ms: i64,
}

/// One event.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct Event {
    /// Event time in ms since the Unix epoch.
    pub timestamp_ms: i64,
    /// The fields, in the order they were written.
    pub fields: Vec<Field>,
}

/// One field: an index into the batch's names and a value.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Field {
    /// Index into [`Batch::names`].
    pub name: u32,
    /// The value.
    pub value: Value,
}
