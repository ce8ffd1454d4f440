//! Squilla's event model and batch format.
//!
//! Events move through Squilla in *batches*: many events plus batch metadata, archived with
//! [rkyv] so that every reader — the host routing a batch, a Rust guest processing it, a
//! subscriber's encoder — reads the bytes in place, without deserializing. The same crate
//! builds for the host and for `wasm32-wasip2`, so host and guest agree on one layout.
//!
//! The key types:
//!
//! - [`BatchBuilder`] writes a batch: events with typed named fields; field names are interned
//!   once per batch.
//! - [`BatchView`] reads a batch in place: [`EventRef`]s with [`ValueRef`] fields.
//! - [`BatchBytes`] owns the bytes of a batch that has been validated once, and is cheap to
//!   clone (`Arc`): that is how a batch is shared between stages inside the host.
//! - [`Event`] and [`Value`] are the owned forms, for code that wants to keep an event.
//!
//! Untrusted bytes (from a guest, from the network) enter only through
//! [`BatchView::validate`] or [`BatchBytes::validate`], which reject corrupt or truncated input
//! with a [`BatchError`], never a panic.
//!
//! # Wire format
//!
//! The archived form of [`wire::Batch`] with rkyv 0.8, little-endian, 32-bit relative
//! pointers and no alignment requirement (rkyv's `unaligned` format), so bytes can be read
//! wherever they land: in a guest's linear memory, in a network buffer.

mod builder;
mod error;
pub mod frames;
#[cfg(feature = "json")]
pub mod json;
#[cfg(feature = "json")]
mod json_in;
#[cfg(feature = "json")]
mod json_scan;
pub mod keys;
#[doc(hidden)]
pub mod live;
mod resolved;
pub mod synth;
mod value;
mod view;
// rkyv derives archived twins of these types, whose fields cannot carry docs.
#[allow(missing_docs)]
pub mod wire;

pub use builder::{BatchBuilder, EventBuilder};
pub use error::BatchError;
pub use value::{Event, Value, ValueRef};
pub use view::{BatchBytes, BatchMeta, BatchView, EventRef, Fields, NameIndex};

#[cfg(test)]
mod tests;
