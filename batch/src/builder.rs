//! Writing batches.

use std::collections::HashMap;

use crate::{BatchBytes, BatchError, Event, EventRef, ValueRef, wire};

/// Up to this many distinct names, a name is looked up by a linear scan of the batch's name
/// table (faster than hashing for the handful of names a typical event has); past it, a hash
/// index is built, so that a producer with many distinct names stays linear overall.
const LINEAR_NAMES: usize = 16;

/// Builds one batch, event by event.
///
/// ```
/// use squilla_batch::{BatchBuilder, BatchView};
///
/// let mut batch = BatchBuilder::new().source("devices");
/// batch.event(1_700_000_000_000).field("device", "tv").field("status", 500);
/// let bytes = batch.finish().unwrap();
/// let view = bytes.view();
/// assert_eq!(view.len(), 1);
/// let event = view.events().next().unwrap();
/// assert_eq!(event.get("status").and_then(|v| v.as_int()), Some(500));
/// ```
#[derive(Debug, Default, Clone)]
pub struct BatchBuilder {
    batch: wire::Batch,
    index: HashMap<String, u32>,
    /// For [`BatchBuilder::push_ref`]: the name table of the batch events were last copied
    /// from (by address, for identity only) and its names' indexes here.
    remap_from: usize,
    remap: Vec<u32>,
    /// Whether the builder holds only (deferred) copies of a prefix of its stage call's input
    /// (see [`BatchBuilder::is_copy_of`]).
    copied: Copied,
    /// The name most likely asked for next: the one after the last interned. Events of one
    /// batch usually repeat one schema in one order, so this makes interning one comparison.
    next_name: usize,
}

/// Marks a name of the source batch not yet mapped into this one.
const UNMAPPED: u32 = u32::MAX;

/// What a builder holds, as far as passing a batch through unchanged is concerned.
#[derive(Debug, Clone, Default)]
enum Copied {
    /// Nothing yet, default metadata.
    #[default]
    Nothing,
    /// The first `events` events of the registered stage input `batch` (see [`crate::live`]),
    /// copied with [`BatchBuilder::push_ref`] in order, and nothing else; the copies are made
    /// only when something needs them — never, if the stage passes its whole input through.
    Deferred { batch: BatchBytes, events: usize },
    /// Anything else (events copied or built, metadata set).
    Other,
}

impl BatchBuilder {
    /// An empty batch with empty metadata.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty batch with room for `events` events of about eight fields.
    pub fn with_capacity(events: usize) -> Self {
        let mut builder = Self::default();
        builder.batch.events.reserve(events);
        builder.batch.fields.reserve(events * 8);
        builder.batch.data.reserve(events * 48);
        builder
    }

    /// Sets who produced the batch.
    pub fn source(mut self, source: impl Into<String>) -> Self {
        self.materialize();
        self.batch.meta.source = source.into();
        self.copied = Copied::Other;
        self
    }

    /// Sets the producer's sequence number for this batch.
    pub fn sequence(mut self, sequence: u64) -> Self {
        self.materialize();
        self.batch.meta.sequence = sequence;
        self.copied = Copied::Other;
        self
    }

    /// Sets when the batch was cut (ms since the Unix epoch).
    pub fn created_at_ms(mut self, created_at_ms: i64) -> Self {
        self.materialize();
        self.batch.meta.created_at_ms = created_at_ms;
        self.copied = Copied::Other;
        self
    }

    /// How many events the batch holds so far.
    pub fn len(&self) -> usize {
        match &self.copied {
            Copied::Deferred { events, .. } => *events,
            _ => self.batch.events.len(),
        }
    }

    /// Whether the batch holds no event yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// About how many bytes the archived batch will take, from the events built so far (not
    /// counting deferred copies): what `take` reserves for the archive.
    pub fn estimated_bytes(&self) -> usize {
        let b = &self.batch;
        128 + b.events.len() * 16 + b.fields.len() * 24 + b.data.len() + b.names.len() * 16
    }

    /// Starts a new event at `timestamp_ms`; add its fields through the returned builder.
    pub fn event(&mut self, timestamp_ms: i64) -> EventBuilder<'_> {
        self.materialize();
        self.copied = Copied::Other;
        let first_field = self.batch.fields.len() as u32;
        self.batch.events.push(wire::Event { timestamp_ms, first_field, field_count: 0 });
        EventBuilder { builder: self }
    }

    /// Appends a copy of an event read from another batch. Copying many events from one
    /// batch maps each of its field names once.
    #[inline]
    pub fn push_ref(&mut self, event: EventRef<'_>) {
        let (batch, index) = event.position();
        // Events of the stage call's input, in order from its first: only counted for now.
        match &mut self.copied {
            Copied::Nothing if index == 0 => {
                if let Some(input) = crate::live::input_at(batch) {
                    self.copied = Copied::Deferred { batch: input, events: 1 };
                    return;
                }
            }
            Copied::Deferred { batch: input, events } if input.view().address() == batch && *events == index => {
                *events += 1;
                return;
            }
            _ => {}
        }
        self.materialize();
        self.copied = Copied::Other;
        self.push_ref_fields(event);
    }

    /// Whether the builder holds exactly all of `view`'s events, copied in order with
    /// [`BatchBuilder::push_ref`] while `view` was the registered stage input, and nothing
    /// else (no other event, no metadata set). A stage's glue then returns the input bytes as
    /// they are, sparing the copies, the archiving here and the validation in the host.
    pub fn is_copy_of(&self, view: &crate::BatchView<'_>) -> bool {
        match &self.copied {
            // The builder holds its own reference to those bytes: no other batch can be at
            // their address while it does.
            Copied::Deferred { batch, events } => batch.view().address() == view.address() && *events == view.len(),
            _ => false,
        }
    }

    /// Makes the copies [`Copied::Deferred`] stands for.
    fn materialize(&mut self) {
        if !matches!(self.copied, Copied::Deferred { .. }) {
            return;
        }
        let Copied::Deferred { batch, events } = std::mem::replace(&mut self.copied, Copied::Other) else {
            return;
        };
        for event in batch.view().events().take(events) {
            self.push_ref_fields(event);
        }
    }

    fn push_ref_fields(&mut self, event: EventRef<'_>) {
        let (names, table) = event.name_table();
        if table != self.remap_from {
            self.remap_from = table;
            self.remap.clear();
            self.remap.resize(names.len(), UNMAPPED);
        }
        let mut out = self.event(event.timestamp_ms());
        for (index, value) in event.raw_fields() {
            let builder = &mut *out.builder;
            let name = names.get(index as usize).map_or("", |n| n.as_str());
            // The cache is keyed by the name table's address, which another batch may reuse
            // once the first is gone: a hit counts only if the names agree.
            let cached = builder.remap.get(index as usize).copied().filter(|&mapped| {
                mapped != UNMAPPED && builder.batch.names.get(mapped as usize).is_some_and(|n| n == name)
            });
            let name = match cached {
                Some(mapped) => mapped,
                None => {
                    let mapped = builder.intern(name);
                    if let Some(slot) = builder.remap.get_mut(index as usize) {
                        *slot = mapped;
                    }
                    mapped
                }
            };
            out.push(name, value);
        }
    }

    /// Appends a copy of an owned event.
    pub fn push(&mut self, event: &Event) {
        let mut out = self.event(event.timestamp_ms);
        for (name, value) in &event.fields {
            out.field(name, value);
        }
    }

    /// Archives the batch into bytes ready for any reader.
    pub fn into_vec(mut self) -> Result<Vec<u8>, BatchError> {
        self.materialize();
        self.archive()
    }

    /// Archives the batch built so far and empties the builder for the next one, keeping its
    /// metadata and the room its buffers have grown to: a producer that makes batch after
    /// batch then allocates only the archives.
    pub fn take(&mut self) -> Result<BatchBytes, BatchError> {
        self.materialize();
        let bytes = self.archive()?;
        let b = &mut self.batch;
        b.events.clear();
        b.fields.clear();
        b.data.clear();
        b.names.clear();
        self.index.clear();
        self.remap_from = 0;
        self.remap.clear();
        self.next_name = 0;
        Ok(BatchBytes::from_trusted(bytes))
    }

    fn archive(&self) -> Result<Vec<u8>, BatchError> {
        let estimate = self.estimated_bytes();
        rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(&self.batch, Vec::with_capacity(estimate))
            .map_err(|e| BatchError::Encode { detail: e.to_string() })
    }

    /// Archives the batch into shareable bytes.
    pub fn finish(self) -> Result<BatchBytes, BatchError> {
        self.into_vec().map(BatchBytes::from_trusted)
    }

    pub(crate) fn intern(&mut self, name: &str) -> u32 {
        let i = self.lookup(name);
        self.next_name = i as usize + 1;
        i
    }

    fn lookup(&mut self, name: &str) -> u32 {
        let names = &mut self.batch.names;
        let guess = if self.next_name < names.len() { self.next_name } else { 0 };
        if names.get(guess).is_some_and(|n| n == name) {
            return guess as u32;
        }
        if names.len() <= LINEAR_NAMES {
            if let Some(i) = names.iter().position(|n| n == name) {
                return i as u32;
            }
        } else {
            if self.index.is_empty() {
                self.index = names.iter().enumerate().map(|(i, n)| (n.clone(), i as u32)).collect();
            }
            if let Some(&i) = self.index.get(name) {
                return i;
            }
        }
        let i = names.len() as u32;
        names.push(name.to_owned());
        if !self.index.is_empty() {
            self.index.insert(name.to_owned(), i);
        }
        i
    }

    /// Stores bytes in the data area and returns their `(offset, len)`.
    fn store(&mut self, bytes: &[u8]) -> (u32, u32) {
        let offset = self.batch.data.len() as u32;
        self.batch.data.extend_from_slice(bytes);
        (offset, bytes.len() as u32)
    }
}

/// Adds fields to the event most recently started with [`BatchBuilder::event`].
#[derive(Debug)]
pub struct EventBuilder<'b> {
    builder: &'b mut BatchBuilder,
}

impl EventBuilder<'_> {
    /// Adds a field. Any of `bool`, `i64`, `i32`, `u32`, `f64`, `&str`, `&[u8]`, a
    /// [`ValueRef`] or a `&Value` is accepted.
    pub fn field<'v>(&mut self, name: &str, value: impl Into<ValueRef<'v>>) -> &mut Self {
        let name = self.builder.intern(name);
        self.push(name, value.into());
        self
    }

    /// Adds a null field.
    pub fn null(&mut self, name: &str) -> &mut Self {
        self.field(name, ValueRef::Null)
    }

    pub(crate) fn push(&mut self, name: u32, value: ValueRef<'_>) {
        let value = match value {
            ValueRef::Null => wire::Value::Null,
            ValueRef::Bool(b) => wire::Value::Bool(b),
            ValueRef::Int(i) => wire::Value::Int(i),
            ValueRef::Float(f) => wire::Value::Float(f),
            ValueRef::Text(t) => {
                let (offset, len) = self.builder.store(t.as_bytes());
                wire::Value::Text { offset, len }
            }
            ValueRef::Bytes(b) => {
                let (offset, len) = self.builder.store(b);
                wire::Value::Bytes { offset, len }
            }
        };
        let batch = &mut self.builder.batch;
        batch.fields.push(wire::PackedField::new(name, value));
        if let Some(event) = batch.events.last_mut() {
            event.field_count += 1;
        }
    }
}
