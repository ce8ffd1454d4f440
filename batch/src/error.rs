//! The one error type of the batch codec.

/// Why bytes were not accepted as a batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// The bytes are not an archived batch: truncated, corrupt or of another type.
    #[error("malformed batch ({len} bytes): {detail}")]
    Malformed {
        /// How many bytes were offered.
        len: usize,
        /// What the structural check found, from rkyv's validator.
        detail: String,
    },
    /// The batch could not be archived (it is over the 2 GiB that rkyv's 32-bit relative pointers reach).
    #[error("cannot archive batch: {detail}")]
    Encode {
        /// What the serializer reported.
        detail: String,
    },
    /// An event's field range runs past the batch's fields.
    #[error("event {event}: fields {first}..+{count} run past the {fields} fields of the batch")]
    FieldRange {
        /// Position of the event in the batch.
        event: usize,
        /// Its first field.
        first: u32,
        /// Its field count.
        count: u32,
        /// How many fields the batch has.
        fields: usize,
    },
    /// A field refers to a name the batch's name table does not hold.
    #[error("field {field}: name index {index} is outside the name table ({names} names)")]
    UnknownName {
        /// Position of the field in the batch's fields.
        field: usize,
        /// The name index the field holds.
        index: u32,
        /// How many names the batch has.
        names: usize,
    },
    /// The name table holds a name twice (every name is written once, and fields refer to it).
    #[error("name {index} ({name:?}) is in the batch's name table twice")]
    DuplicateName {
        /// The position of its second entry.
        index: usize,
        /// The name.
        name: String,
    },
    /// A text or bytes value lies outside the batch's data area.
    #[error("field {field}: value bytes {offset}..+{len} run past the {data}-byte data area")]
    DataRange {
        /// Position of the field in the batch's fields.
        field: usize,
        /// Where the value starts.
        offset: u32,
        /// Its length.
        len: u32,
        /// Size of the data area.
        data: usize,
    },
    /// A text value is not UTF-8.
    #[error("field {field}: text is not valid UTF-8")]
    InvalidUtf8 {
        /// Position of the field in the batch's fields.
        field: usize,
    },
}
