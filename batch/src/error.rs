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
    /// A field refers to a name the batch's name table does not hold.
    #[error("event {event}, field {field}: name index {index} is outside the name table ({names} names)")]
    UnknownName {
        /// Position of the event in the batch.
        event: usize,
        /// Position of the field in the event.
        field: usize,
        /// The name index the field holds.
        index: u32,
        /// How many names the batch has.
        names: usize,
    },
}
