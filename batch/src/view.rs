//! Reading batches in place.

use std::sync::Arc;

use rkyv::string::ArchivedString;
use rkyv::vec::ArchivedVec;

use crate::{BatchError, Event, ValueRef, wire};

/// A batch read in place from bytes that passed validation.
#[derive(Clone, Copy)]
pub struct BatchView<'a> {
    batch: &'a wire::ArchivedBatch,
}

impl std::fmt::Debug for BatchView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchView").field("source", &self.meta().source()).field("events", &self.len()).finish()
    }
}

impl<'a> BatchView<'a> {
    /// Checks that `bytes` hold a well-formed batch and returns a view of it.
    ///
    /// This is the entry point for untrusted bytes: anything truncated, corrupt or of another
    /// type is refused with a [`BatchError`]; no input makes it panic.
    pub fn validate(bytes: &'a [u8]) -> Result<Self, BatchError> {
        let batch = rkyv::access::<wire::ArchivedBatch, rkyv::rancor::Error>(bytes)
            .map_err(|e| BatchError::Malformed { len: bytes.len(), detail: e.to_string() })?;
        if let Some((index, name)) = duplicate_name(&batch.names) {
            return Err(BatchError::DuplicateName { index, name: name.to_owned() });
        }
        let (names, fields, data) = (batch.names.len(), batch.fields.len(), batch.data.as_slice());
        // Any slice of ASCII is UTF-8: one fast pass over the data area usually spares
        // checking each text value on its own.
        let ascii = data.is_ascii();
        for (event, e) in batch.events.iter().enumerate() {
            let (first, count) = (e.first_field.to_native(), e.field_count.to_native());
            if u64::from(first) + u64::from(count) > fields as u64 {
                return Err(BatchError::FieldRange { event, first, count, fields });
            }
        }
        for (field, f) in batch.fields.iter().enumerate() {
            let index = f.name.to_native();
            if index as usize >= names {
                return Err(BatchError::UnknownName { field, index, names });
            }
            let (offset, len, text) = match &f.value {
                wire::ArchivedValue::Text { offset, len } => (offset.to_native(), len.to_native(), true),
                wire::ArchivedValue::Bytes { offset, len } => (offset.to_native(), len.to_native(), false),
                _ => continue,
            };
            let Some(slice) = data.get(offset as usize..offset as usize + len as usize) else {
                return Err(BatchError::DataRange { field, offset, len, data: data.len() });
            };
            if text && !ascii && std::str::from_utf8(slice).is_err() {
                return Err(BatchError::InvalidUtf8 { field });
            }
        }
        Ok(BatchView { batch })
    }

    /// A view of bytes without checking them.
    ///
    /// # Safety
    ///
    /// `bytes` must be exactly bytes that [`BatchView::validate`] accepted, or bytes written
    /// by [`crate::BatchBuilder`]; otherwise reading the view is undefined behaviour.
    pub unsafe fn new_unchecked(bytes: &'a [u8]) -> Self {
        // SAFETY: the caller promises the bytes hold a valid archived batch.
        let batch = unsafe { rkyv::access_unchecked::<wire::ArchivedBatch>(bytes) };
        BatchView { batch }
    }

    /// How many events the batch holds.
    pub fn len(&self) -> usize {
        self.batch.events.len()
    }

    /// The address of the archived batch: an identity while it lives.
    pub(crate) fn address(&self) -> usize {
        self.batch as *const wire::ArchivedBatch as usize
    }

    /// Whether the batch holds no event.
    pub fn is_empty(&self) -> bool {
        self.batch.events.is_empty()
    }

    /// The batch's metadata.
    pub fn meta(&self) -> BatchMeta<'a> {
        BatchMeta { meta: &self.batch.meta }
    }

    /// The distinct field names used in the batch.
    pub fn names(&self) -> impl ExactSizeIterator<Item = &'a str> + 'a {
        self.batch.names.iter().map(|n| n.as_str())
    }

    /// `name` resolved against this batch's name table, for reading it from many events with
    /// [`EventRef::get_at`]: one string comparison per name in the table here instead of one
    /// per field of every event. `None` when no event of the batch has a field called `name`.
    pub fn name_index(&self, name: &str) -> Option<NameIndex> {
        let index = self.batch.names.iter().position(|n| same_name(n.as_str(), name))?;
        Some(NameIndex { index: index as u32, names: &self.batch.names as *const _ as usize })
    }

    /// The events, in order.
    #[inline]
    pub fn events(&self) -> impl ExactSizeIterator<Item = EventRef<'a>> + 'a {
        let batch = self.batch;
        batch.events.iter().map(move |event| EventRef { batch, event })
    }

    /// The event at `index`.
    pub fn event(&self, index: usize) -> Option<EventRef<'a>> {
        self.batch.events.get(index).map(|event| EventRef { batch: self.batch, event })
    }

    /// Copies every event out into owned [`Event`]s.
    pub fn to_events(&self) -> Vec<Event> {
        self.events().map(|e| e.to_owned()).collect()
    }
}

/// A batch's metadata, read in place.
#[derive(Clone, Copy)]
pub struct BatchMeta<'a> {
    meta: &'a wire::ArchivedMeta,
}

impl std::fmt::Debug for BatchMeta<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchMeta")
            .field("source", &self.source())
            .field("sequence", &self.sequence())
            .field("created_at_ms", &self.created_at_ms())
            .finish()
    }
}

impl<'a> BatchMeta<'a> {
    /// Who produced the batch.
    pub fn source(&self) -> &'a str {
        self.meta.source.as_str()
    }

    /// The producer's sequence number for the batch.
    pub fn sequence(&self) -> u64 {
        self.meta.sequence.to_native()
    }

    /// When the batch was cut, in ms since the Unix epoch.
    pub fn created_at_ms(&self) -> i64 {
        self.meta.created_at_ms.to_native()
    }
}

/// One event of a batch, read in place.
#[derive(Clone, Copy)]
pub struct EventRef<'a> {
    batch: &'a wire::ArchivedBatch,
    event: &'a wire::ArchivedEvent,
}

impl std::fmt::Debug for EventRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut map = f.debug_map();
        map.entry(&"@timestamp_ms", &self.timestamp_ms());
        for (name, value) in self.fields() {
            map.entry(&name, &value);
        }
        map.finish()
    }
}

/// The first name `names` holds a second time, with its position. A handful of names are
/// compared pairwise, more through a set.
fn duplicate_name(names: &ArchivedVec<ArchivedString>) -> Option<(usize, &str)> {
    if names.len() <= 32 {
        let repeated = |i: usize| names[..i].iter().any(|n| same_name(n, &names[i]));
        return (1..names.len()).find(|&i| repeated(i)).map(|i| (i, names[i].as_str()));
    }
    let mut seen = std::collections::HashSet::with_capacity(names.len());
    names.iter().enumerate().find(|(_, n)| !seen.insert(n.as_str())).map(|(i, n)| (i, n.as_str()))
}

/// A field name resolved against one batch's name table ([`BatchView::name_index`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameIndex {
    index: u32,
    /// The address of the name table it indexes.
    names: usize,
}

/// Whether two field names are equal: lengths first, then eight bytes at a time, which beats a
/// call to `memcmp` for names of a few words (in a Wasm guest, `memcmp` goes byte by byte).
#[inline]
pub(crate) fn same_name(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let word = |c: &[u8]| u64::from_ne_bytes(c.try_into().unwrap_or_default());
    let (mut x, mut y) = (a.chunks_exact(8), b.chunks_exact(8));
    if (&mut x).zip(&mut y).any(|(p, q)| word(p) != word(q)) {
        return false;
    }
    x.remainder().iter().zip(y.remainder()).all(|(p, q)| p == q)
}

impl<'a> EventRef<'a> {
    /// Event time in ms since the Unix epoch.
    pub fn timestamp_ms(&self) -> i64 {
        self.event.timestamp_ms.to_native()
    }

    /// How many fields the event has.
    #[inline]
    pub fn field_count(&self) -> usize {
        self.event.field_count.to_native() as usize
    }

    /// The event's slice of the batch's fields (empty if out of range, which validation
    /// rules out).
    #[inline]
    fn field_slice(&self) -> &'a [wire::ArchivedField] {
        let first = self.event.first_field.to_native() as usize;
        self.batch.fields.get(first..first + self.field_count()).unwrap_or_default()
    }

    /// The fields, in the order they were written.
    pub fn fields(&self) -> Fields<'a> {
        Fields { names: &self.batch.names, data: self.batch.data.as_slice(), inner: self.field_slice().iter() }
    }

    /// The fields with their names as indexes into the batch's name table.
    pub(crate) fn raw_fields(&self) -> impl Iterator<Item = (u32, ValueRef<'a>)> + 'a {
        let data = self.batch.data.as_slice();
        self.field_slice().iter().map(move |f| (f.name.to_native(), value_ref(&f.value, data)))
    }

    /// The address of its batch (an identity while the batch lives) and its index there.
    #[inline]
    pub(crate) fn position(&self) -> (usize, usize) {
        let base = self.batch.events.as_ptr() as usize;
        let index = (self.event as *const wire::ArchivedEvent as usize - base) / size_of::<wire::ArchivedEvent>();
        (self.batch as *const wire::ArchivedBatch as usize, index)
    }

    /// The batch's name table, and its address as an identity.
    pub(crate) fn name_table(&self) -> (&'a ArchivedVec<ArchivedString>, usize) {
        (&self.batch.names, &self.batch.names as *const _ as usize)
    }

    /// The first field called `name`.
    ///
    /// The name is looked up in the batch's name table once per batch (and thread) and the
    /// event's fields are then compared by index: reading a few fields from every event of a
    /// batch compares strings once per batch, not once per field.
    pub fn get(&self, name: &str) -> Option<ValueRef<'a>> {
        let fields = self.field_slice();
        let field = match crate::resolved::index(&self.batch.names, name) {
            Some(index) => fields.iter().find(|f| f.name.to_native() == index),
            None => {
                let names = &self.batch.names;
                fields.iter().find(|f| names.get(f.name.to_native() as usize).is_some_and(|n| same_name(n, name)))
            }
        }?;
        Some(value_ref(&field.value, self.batch.data.as_slice()))
    }

    /// The first field whose name is `name`, resolved with [`BatchView::name_index`] on this
    /// event's batch (`None` for an index of another batch). The same field as
    /// [`EventRef::get`] finds wherever the batch's name table holds each name once, as every
    /// batch a [`crate::BatchBuilder`] writes does.
    #[inline]
    pub fn get_at(&self, name: NameIndex) -> Option<ValueRef<'a>> {
        if name.names != &self.batch.names as *const _ as usize {
            return None;
        }
        let field = self.field_slice().iter().find(|f| f.name.to_native() == name.index)?;
        Some(value_ref(&field.value, self.batch.data.as_slice()))
    }

    /// The text field called `name`, if it exists and is text.
    pub fn text(&self, name: &str) -> Option<&'a str> {
        self.get(name).and_then(ValueRef::as_str)
    }

    /// The integer field called `name`, if it exists and is an integer.
    pub fn int(&self, name: &str) -> Option<i64> {
        self.get(name).and_then(ValueRef::as_int)
    }

    /// The numeric field called `name` as a float (integers convert).
    pub fn float(&self, name: &str) -> Option<f64> {
        self.get(name).and_then(ValueRef::as_f64)
    }

    /// Copies the event out into an owned [`Event`].
    pub fn to_owned(&self) -> Event {
        Event {
            timestamp_ms: self.timestamp_ms(),
            fields: self.fields().map(|(n, v)| (n.to_owned(), v.to_owned())).collect(),
        }
    }
}

/// Iterator over an event's `(name, value)` fields.
pub struct Fields<'a> {
    names: &'a ArchivedVec<ArchivedString>,
    data: &'a [u8],
    inner: std::slice::Iter<'a, wire::ArchivedField>,
}

impl<'a> Iterator for Fields<'a> {
    type Item = (&'a str, ValueRef<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        let field = self.inner.next()?;
        // Validation guarantees the index is in range; `get` keeps this panic-free regardless.
        let name = self.names.get(field.name.to_native() as usize).map_or("", |n| n.as_str());
        Some((name, value_ref(&field.value, self.data)))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

impl ExactSizeIterator for Fields<'_> {}

/// Reads a value; text and bytes are sliced from the batch's data area.
#[inline]
fn value_ref<'a>(value: &wire::ArchivedValue, data: &'a [u8]) -> ValueRef<'a> {
    let slice = |offset: &rkyv::Archived<u32>, len: &rkyv::Archived<u32>| {
        let start = offset.to_native() as usize;
        data.get(start..start + len.to_native() as usize).unwrap_or_default()
    };
    match value {
        wire::ArchivedValue::Null => ValueRef::Null,
        wire::ArchivedValue::Bool(b) => ValueRef::Bool(*b),
        wire::ArchivedValue::Int(i) => ValueRef::Int(i.to_native()),
        wire::ArchivedValue::Float(f) => ValueRef::Float(f.to_native()),
        wire::ArchivedValue::Text { offset, len } => {
            // SAFETY: a view exists only over validated bytes (or bytes the caller of
            // `BatchView::new_unchecked` vouched for), and validation checked that every text
            // range is in bounds and UTF-8; `slice` yields that range.
            let text = unsafe { std::str::from_utf8_unchecked(slice(offset, len)) };
            ValueRef::Text(text)
        }
        wire::ArchivedValue::Bytes { offset, len } => ValueRef::Bytes(slice(offset, len)),
    }
}

/// The bytes of a validated batch, shared: cloning is a reference-count increment.
///
/// This is how a batch travels inside the host: validated once where it entered, then read in
/// place by every stage, router and subscriber that sees it.
#[derive(Clone)]
pub struct BatchBytes {
    bytes: Arc<Vec<u8>>,
}

impl std::fmt::Debug for BatchBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchBytes").field("bytes", &self.bytes.len()).field("events", &self.view().len()).finish()
    }
}

impl BatchBytes {
    /// Validates untrusted bytes and takes ownership of them (no copy).
    pub fn validate(bytes: Vec<u8>) -> Result<Self, BatchError> {
        BatchView::validate(&bytes)?;
        Ok(BatchBytes { bytes: Arc::new(bytes) })
    }

    /// Wraps bytes validated elsewhere — a stage's glue receives its input from the host,
    /// which validated it — without checking them again.
    ///
    /// # Safety
    ///
    /// `bytes` must be bytes that [`BatchView::validate`] accepts; otherwise reading the batch
    /// is undefined behaviour.
    #[doc(hidden)]
    pub unsafe fn from_validated(bytes: Vec<u8>) -> Self {
        BatchBytes { bytes: Arc::new(bytes) }
    }

    /// The archived bytes, owned: without copying them unless the batch is shared.
    pub fn into_vec(self) -> Vec<u8> {
        Arc::try_unwrap(self.bytes).unwrap_or_else(|shared| (*shared).clone())
    }

    /// Wraps bytes this crate's builder wrote.
    pub(crate) fn from_trusted(bytes: Vec<u8>) -> Self {
        BatchBytes { bytes: Arc::new(bytes) }
    }

    /// Reads the batch in place.
    pub fn view(&self) -> BatchView<'_> {
        // SAFETY: `bytes` was either accepted by `BatchView::validate` in `validate`, or written
        // by `BatchBuilder` (`from_trusted`), and it is immutable behind the `Arc`.
        unsafe { BatchView::new_unchecked(&self.bytes) }
    }

    /// The archived bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// How many events the batch holds.
    pub fn len(&self) -> usize {
        self.view().len()
    }

    /// Whether the batch holds no event.
    pub fn is_empty(&self) -> bool {
        self.view().is_empty()
    }
}
