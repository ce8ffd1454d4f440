//! The archived structures: what the bytes of a batch hold.
//!
//! The layout is flat on purpose: one array of events, one array of all their fields, and
//! one byte area holding every text and bytes value. Building a batch then allocates nothing
//! per event (three vectors grow), and archiving it copies arrays instead of walking a tree
//! of small allocations. An event's fields are the slice `fields[first_field..][..field_count]`;
//! a text or bytes value is the slice `data[offset..][..len]`.
//!
//! Code reads these through [`crate::BatchView`] and writes them through
//! [`crate::BatchBuilder`], which keep the invariants [`crate::BatchView::validate`] checks:
//! the names in `names` are distinct, every event's field range lies within `fields`, every
//! field's `name` indexes `names`, and every value's byte range lies within `data`, UTF-8 for
//! text.

use rkyv::{Archive, Deserialize, Serialize};

/// A batch: metadata, the table of field names, the events, their fields and their data.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct Batch {
    /// Where the batch was cut: its source, sequence and creation time.
    pub meta: Meta,
    /// Field names, each once; fields refer to them by index.
    pub names: Vec<String>,
    /// The events, in order.
    pub events: Vec<Event>,
    /// Every event's fields, event after event.
    pub fields: Vec<Field>,
    /// The bytes of every text and bytes value.
    pub data: Vec<u8>,
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

/// One event: its time and where its fields are.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Event {
    /// Event time in ms since the Unix epoch.
    pub timestamp_ms: i64,
    /// Index of the event's first field in [`Batch::fields`].
    pub first_field: u32,
    /// How many fields the event has.
    pub field_count: u32,
}

/// One field: an index into the batch's names and a value.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
pub struct Field {
    /// Index into [`Batch::names`].
    pub name: u32,
    /// The value.
    pub value: Value,
}

/// A value; text and bytes live in [`Batch::data`].
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
pub enum Value {
    /// No value.
    Null,
    /// A boolean.
    Bool(bool),
    /// A signed 64-bit integer.
    Int(i64),
    /// A 64-bit float.
    Float(f64),
    /// UTF-8 text at `data[offset..offset + len]`.
    Text {
        /// Start in [`Batch::data`].
        offset: u32,
        /// Length in bytes.
        len: u32,
    },
    /// Bytes at `data[offset..offset + len]`.
    Bytes {
        /// Start in [`Batch::data`].
        offset: u32,
        /// Length in bytes.
        len: u32,
    },
}
