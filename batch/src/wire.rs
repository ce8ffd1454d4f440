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
    /// Every event's fields, event after event, each already in its archived form (archiving
    /// the batch copies the array whole).
    pub fields: Vec<PackedField>,
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

/// Bytes of an archived [`Field`]: the name (`u32`, little-endian), the value's tag (its
/// variant's position in [`Value`]) and eight bytes of payload, unaligned.
pub const FIELD_BYTES: usize = 13;

// What `PackedField` stands on: rkyv's archived field is exactly those bytes.
const _: () = assert!(size_of::<ArchivedField>() == FIELD_BYTES && align_of::<ArchivedField>() == 1);

/// A [`Field`] held as the bytes of its archived form ([`ArchivedField`]), so that archiving a
/// batch copies its fields as one array instead of resolving them one by one. Padding after a
/// short payload is zero, as rkyv writes it (a test compares the two encodings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(transparent)]
pub struct PackedField([u8; FIELD_BYTES]);

impl PackedField {
    /// Packs a field.
    #[inline]
    pub fn new(name: u32, value: Value) -> Self {
        let mut b = [0u8; FIELD_BYTES];
        b[..4].copy_from_slice(&name.to_le_bytes());
        let (tag, payload): (u8, [u8; 8]) = match value {
            Value::Null => (0, [0; 8]),
            Value::Bool(v) => (1, [u8::from(v), 0, 0, 0, 0, 0, 0, 0]),
            Value::Int(i) => (2, i.to_le_bytes()),
            Value::Float(f) => (3, f.to_le_bytes()),
            Value::Text { offset, len } => (4, pair(offset, len)),
            Value::Bytes { offset, len } => (5, pair(offset, len)),
        };
        b[4] = tag;
        b[5..].copy_from_slice(&payload);
        PackedField(b)
    }
}

fn pair(offset: u32, len: u32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&offset.to_le_bytes());
    b[4..].copy_from_slice(&len.to_le_bytes());
    b
}

impl From<Field> for PackedField {
    fn from(field: Field) -> Self {
        PackedField::new(field.name, field.value)
    }
}

impl Archive for PackedField {
    // SAFETY: a `PackedField` is an initialised byte array (no padding) whose bytes are those
    // of the `ArchivedField` it archives to (same size, alignment 1; checked above and by a
    // test), so rkyv may copy an array of them as they are.
    const COPY_OPTIMIZATION: rkyv::traits::CopyOptimization<Self> = unsafe { rkyv::traits::CopyOptimization::enable() };
    type Archived = ArchivedField;
    type Resolver = ();

    fn resolve(&self, _: (), out: rkyv::Place<ArchivedField>) {
        // SAFETY: as above; the place holds `FIELD_BYTES` bytes, written whole.
        unsafe { out.ptr().cast::<[u8; FIELD_BYTES]>().write(self.0) }
    }
}

impl<S: rkyv::rancor::Fallible + ?Sized> Serialize<S> for PackedField {
    fn serialize(&self, _: &mut S) -> Result<(), S::Error> {
        Ok(())
    }
}

impl<D: rkyv::rancor::Fallible + ?Sized> Deserialize<PackedField, D> for ArchivedField {
    fn deserialize(&self, deserializer: &mut D) -> Result<PackedField, D::Error> {
        let field: Field = Deserialize::<Field, D>::deserialize(self, deserializer)?;
        Ok(field.into())
    }
}
