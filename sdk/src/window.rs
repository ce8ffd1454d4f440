//! Keyed state and time windows: the building blocks of aggregating stages.
//!
//! - [`KeyedState`]: a value per key (device type, country…), created on first use.
//! - [`RollingWindow`]: per key, an aggregate over the last `width` of event time, kept as
//!   fixed buckets so that adding is O(1) and sliding drops whole buckets.
//! - [`TumblingWindows`]: per key, aggregates over consecutive fixed windows that close when
//!   the clock passes their end, so a stage emits each window once, on `tick`.
//!
//! Windows run on event time (each event's `timestamp_ms`) and are advanced by the clock the
//! platform passes to `tick`. An event older than what a window still holds is *late*: it is
//! not counted, and [`RollingWindow::late`] / [`TumblingWindows::late`] say how many were.
//! State lives in the worker's memory, capped by the job; it does not survive a trap.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

/// A fast, deterministic hasher for short keys (the FxHash mix used by rustc). Keys come from
/// the tenant's own data inside its own sandbox, so resistance to crafted collisions buys
/// nothing here, while speed matters on every event.
#[derive(Default, Clone, Copy)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let word = u64::from_le_bytes(chunk.try_into().expect("chunks_exact yields 8 bytes"));
            self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(K);
        }
        for &byte in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(byte)).wrapping_mul(K);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A value per text key.
#[derive(Debug, Clone)]
pub struct KeyedState<V> {
    map: HashMap<String, V, BuildHasherDefault<KeyHasher>>,
}

impl<V> Default for KeyedState<V> {
    fn default() -> Self {
        KeyedState { map: HashMap::default() }
    }
}

impl<V> KeyedState<V> {
    /// No keys.
    pub fn new() -> Self {
        Self::default()
    }

    /// The value for `key`, created with `V::default()` on first use. Only a new key
    /// allocates.
    pub fn get_or_default(&mut self, key: &str) -> &mut V
    where
        V: Default,
    {
        if !self.map.contains_key(key) {
            self.map.insert(key.to_owned(), V::default());
        }
        self.map.get_mut(key).expect("inserted above if it was missing")
    }

    /// The value for `key`, if any.
    pub fn get(&self, key: &str) -> Option<&V> {
        self.map.get(key)
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<V> {
        self.map.remove(key)
    }

    /// How many keys there are.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there is no key.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Every key and value, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &V)> {
        self.map.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Every key and value, sorted by key: use it to emit results in a stable order.
    pub fn sorted(&self) -> Vec<(&str, &V)> {
        let mut all: Vec<_> = self.iter().collect();
        all.sort_unstable_by(|a, b| a.0.cmp(b.0));
        all
    }

    /// Sets the value of `key`, returning the one it replaces.
    pub fn insert(&mut self, key: String, value: V) -> Option<V> {
        self.map.insert(key, value)
    }

    /// Removes and returns the entries whose key `take` picks.
    pub fn take_where(&mut self, mut take: impl FnMut(&str) -> bool) -> Vec<(String, V)> {
        self.map.extract_if(|k, _| take(k)).collect()
    }

    /// Keeps only the entries for which `keep` returns true.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &mut V) -> bool) {
        self.map.retain(|k, v| keep(k, v));
    }
}

/// An aggregate that can absorb another of its kind: what a [`RollingWindow`] sums over its
/// buckets.
pub trait Merge: Default {
    /// Adds `other` into `self`.
    fn merge(&mut self, other: &Self);
}

macro_rules! merge_by_add {
    ($($t:ty),*) => {$(
        impl Merge for $t {
            fn merge(&mut self, other: &Self) { *self += *other; }
        }
    )*};
}
merge_by_add!(u64, i64, f64, u32, usize);

impl<V: Merge> Merge for KeyedState<V> {
    fn merge(&mut self, other: &Self) {
        for (key, value) in other.iter() {
            self.get_or_default(key).merge(value);
        }
    }
}

/// Counts of matching events among all events: an error rate, a hit ratio.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ratio {
    /// Events that matched.
    pub hits: u64,
    /// All events.
    pub total: u64,
}

impl Ratio {
    /// Counts one event.
    pub fn record(&mut self, hit: bool) {
        self.total += 1;
        self.hits += u64::from(hit);
    }

    /// `hits / total`, or 0 when there is no event.
    pub fn ratio(&self) -> f64 {
        if self.total == 0 { 0.0 } else { self.hits as f64 / self.total as f64 }
    }
}

impl Merge for Ratio {
    fn merge(&mut self, other: &Self) {
        self.hits += other.hits;
        self.total += other.total;
    }
}

/// Per key, an aggregate `A` over the last `width_ms` of event time.
///
/// Time is cut into buckets of `bucket_ms`; the window covers the buckets that overlap
/// `(watermark - width_ms, watermark]`, where the watermark is the latest event time or clock
/// seen. So the window is exact to one bucket: with a 30 s window and 1 s buckets, between 29
/// and 30 s of events count.
#[derive(Debug, Clone)]
pub struct RollingWindow<A> {
    width_ms: i64,
    bucket_ms: i64,
    watermark: i64,
    keys: KeyedState<VecDeque<(i64, A)>>,
    late: u64,
}

impl<A: Merge> RollingWindow<A> {
    /// A window `width_ms` wide made of `bucket_ms` buckets. Both are at least 1 ms; a bucket
    /// wider than the window is narrowed to it.
    pub fn new(width_ms: i64, bucket_ms: i64) -> Self {
        let width_ms = width_ms.max(1);
        RollingWindow {
            width_ms,
            bucket_ms: bucket_ms.clamp(1, width_ms),
            watermark: i64::MIN,
            keys: KeyedState::new(),
            late: 0,
        }
    }

    /// The aggregate to update for an event of `key` at `timestamp_ms`, or `None` if the event
    /// is older than the window (it is then counted as late).
    pub fn add(&mut self, key: &str, timestamp_ms: i64) -> Option<&mut A> {
        self.watermark = self.watermark.max(timestamp_ms);
        let start = timestamp_ms.div_euclid(self.bucket_ms) * self.bucket_ms;
        if start + self.bucket_ms <= self.watermark.saturating_sub(self.width_ms) {
            self.late += 1;
            return None;
        }
        let buckets = self.keys.get_or_default(key);
        // Events arrive mostly in order: the bucket is the newest one or a new one at the back.
        let position = buckets.iter().rposition(|(s, _)| *s <= start);
        match position {
            Some(i) if buckets[i].0 == start => Some(&mut buckets[i].1),
            Some(i) => {
                buckets.insert(i + 1, (start, A::default()));
                Some(&mut buckets[i + 1].1)
            }
            None => {
                buckets.push_front((start, A::default()));
                Some(&mut buckets[0].1)
            }
        }
    }

    /// Moves the window to `now_ms` (if later than the latest event) and drops what fell out.
    pub fn advance(&mut self, now_ms: i64) {
        self.watermark = self.watermark.max(now_ms);
        let horizon = self.watermark.saturating_sub(self.width_ms);
        let bucket_ms = self.bucket_ms;
        self.keys.retain(|_, buckets| {
            while buckets.front().is_some_and(|(start, _)| start + bucket_ms <= horizon) {
                buckets.pop_front();
            }
            !buckets.is_empty()
        });
    }

    /// The aggregate of each key over the window, sorted by key. Keys with nothing in the
    /// window are absent.
    pub fn totals(&self) -> Vec<(&str, A)> {
        self.keys
            .sorted()
            .into_iter()
            .map(|(key, buckets)| {
                let mut total = A::default();
                buckets.iter().for_each(|(_, a)| total.merge(a));
                (key, total)
            })
            .collect()
    }

    /// How many events arrived too late to count.
    pub fn late(&self) -> u64 {
        self.late
    }

    pub(crate) fn watermark(&self) -> i64 {
        self.watermark
    }

    pub(crate) fn keys_mut(&mut self) -> &mut KeyedState<VecDeque<(i64, A)>> {
        &mut self.keys
    }

    /// Merges buckets of `key` handed over from another worker, whose watermark was
    /// `watermark`.
    pub(crate) fn merge_buckets(&mut self, watermark: i64, key: &str, incoming: Vec<(i64, A)>) {
        self.watermark = self.watermark.max(watermark);
        crate::handoff::merge_sorted(self.keys.get_or_default(key), incoming);
    }
}

/// Consecutive fixed windows of `size_ms`, each with an aggregate `A` per key.
#[derive(Debug, Clone)]
pub struct TumblingWindows<A> {
    size_ms: i64,
    open: BTreeMap<i64, KeyedState<A>>,
    closed_until: i64,
    late: u64,
}

/// A window that has closed: its bounds and its aggregates.
#[derive(Debug, Clone)]
pub struct ClosedWindow<A> {
    /// Start of the window (inclusive), ms since the Unix epoch.
    pub start_ms: i64,
    /// End of the window (exclusive).
    pub end_ms: i64,
    /// The aggregate of each key seen in the window.
    pub keys: KeyedState<A>,
}

impl<A: Default> TumblingWindows<A> {
    /// Windows of `size_ms` (at least 1 ms), aligned to the epoch.
    pub fn new(size_ms: i64) -> Self {
        TumblingWindows { size_ms: size_ms.max(1), open: BTreeMap::new(), closed_until: i64::MIN, late: 0 }
    }

    /// The aggregate to update for an event of `key` at `timestamp_ms`, or `None` if its
    /// window has already closed (the event is then counted as late).
    pub fn add(&mut self, key: &str, timestamp_ms: i64) -> Option<&mut A> {
        if timestamp_ms < self.closed_until {
            self.late += 1;
            return None;
        }
        let start = timestamp_ms.div_euclid(self.size_ms) * self.size_ms;
        Some(self.open.entry(start).or_default().get_or_default(key))
    }

    /// Closes and returns, oldest first, every window that ends at or before `now_ms`.
    pub fn close(&mut self, now_ms: i64) -> Vec<ClosedWindow<A>> {
        let first_open = now_ms.div_euclid(self.size_ms) * self.size_ms - self.size_ms + 1;
        let still_open = self.open.split_off(&first_open);
        let closed = std::mem::replace(&mut self.open, still_open);
        self.closed_until = self.closed_until.max(now_ms.div_euclid(self.size_ms) * self.size_ms);
        let size = self.size_ms;
        closed.into_iter().map(|(start_ms, keys)| ClosedWindow { start_ms, end_ms: start_ms + size, keys }).collect()
    }

    /// How many events arrived after their window closed.
    pub fn late(&self) -> u64 {
        self.late
    }

    /// Keys in the open windows (a key open in two windows counts twice): the state held.
    pub fn open_keys(&self) -> usize {
        self.open.values().map(KeyedState::len).sum()
    }

    pub(crate) fn open_mut(&mut self) -> impl Iterator<Item = (i64, &mut KeyedState<A>)> {
        self.open.iter_mut().map(|(start, keys)| (*start, keys))
    }

    pub(crate) fn forget_empty(&mut self) {
        self.open.retain(|_, keys| !keys.is_empty());
    }

    /// The open window that starts at `start_ms` (state handed over from another worker joins
    /// it even if this worker has closed windows past it: it is emitted at the next close).
    pub(crate) fn window_at(&mut self, start_ms: i64) -> &mut KeyedState<A> {
        self.open.entry(start_ms).or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rolling_window_slides_by_bucket_and_counts_late_events() {
        let mut w = RollingWindow::<Ratio>::new(30_000, 1_000);
        for t in (0..60_000).step_by(500) {
            w.add("tv", t).unwrap().record(t % 10_000 == 0);
        }
        w.advance(60_000);
        // Buckets overlapping (30 s, 60 s]: [30 s, 60 s) holds 60 events, 3 of them hits.
        assert_eq!(w.totals(), vec![("tv", Ratio { hits: 3, total: 60 })]);
        assert!(w.add("tv", 1_000).is_none());
        assert_eq!(w.late(), 1);
        w.advance(200_000);
        assert!(w.totals().is_empty());
    }

    #[test]
    fn rolling_window_accepts_out_of_order_events_inside_the_window() {
        let mut w = RollingWindow::<u64>::new(10_000, 1_000);
        *w.add("a", 9_500).unwrap() += 1;
        *w.add("a", 2_500).unwrap() += 1;
        *w.add("a", 5_500).unwrap() += 1;
        *w.add("b", 9_999).unwrap() += 1;
        assert_eq!(w.totals(), vec![("a", 3), ("b", 1)]);
        w.advance(13_000);
        assert_eq!(w.totals(), vec![("a", 2), ("b", 1)]);
    }

    #[test]
    fn tumbling_windows_close_once_in_order() {
        let mut w = TumblingWindows::<u64>::new(10_000);
        for t in [1_000, 9_999, 10_000, 25_000] {
            *w.add("k", t).unwrap() += 1;
        }
        assert!(w.close(9_999).is_empty());
        let closed = w.close(20_000);
        let summary: Vec<_> = closed.iter().map(|c| (c.start_ms, c.end_ms, *c.keys.get("k").unwrap())).collect();
        assert_eq!(summary, vec![(0, 10_000, 2), (10_000, 20_000, 1)]);
        assert!(w.add("k", 15_000).is_none());
        assert_eq!(w.late(), 1);
        assert_eq!(w.close(30_000)[0].start_ms, 20_000);
    }

    #[test]
    fn keyed_state_sorted_is_stable() {
        let mut s = KeyedState::<u32>::new();
        for k in ["b", "a", "c", "a"] {
            *s.get_or_default(k) += 1;
        }
        assert_eq!(s.sorted(), vec![("a", &2), ("b", &1), ("c", &1)]);
    }
}
