//! State hand-off: a key group's state leaves one worker and joins another when its stage is
//! rescaled (the `keyed-state` interface of the WIT).
//!
//! A stage opts in by returning its keyed structure from [`crate::Stage::state`]; `#[stage]`
//! then exports `keyed-state`, and the host moves the state of every key group whose worker
//! changes. [`KeyedState`], [`TumblingWindows`] and [`RollingWindow`] implement [`HandOff`]
//! when their values implement [`StateCodec`] (how a value is written to bytes) and
//! [`Merge`] (how state that arrives joins what the new worker already holds).
//!
//! A key's group is computed from the key text ([`key_group`]): it is the group the host
//! routes an event to when the stage is routed `key-hash` by **one text field** and the state
//! is keyed by that field's text. State keyed otherwise would be handed to the wrong worker:
//! implement [`HandOff`] yourself with [`squilla_batch::keys::key_hash`] for such a stage.

use std::collections::VecDeque;

use crate::StageError;
use crate::window::{KeyedState, Merge, Ratio, RollingWindow, TumblingWindows};

pub use squilla_batch::keys::{KEY_GROUPS, text_key_group as key_group};

/// A set of key groups (a bitmap of [`KEY_GROUPS`] bits).
#[derive(Clone, PartialEq, Eq)]
pub struct KeyGroups([u64; KEY_GROUPS as usize / 64]);

impl KeyGroups {
    /// The groups listed (numbers past [`KEY_GROUPS`] are ignored).
    pub fn from_list(groups: &[u32]) -> Self {
        let mut set = KeyGroups([0; KEY_GROUPS as usize / 64]);
        for &g in groups.iter().filter(|&&g| g < KEY_GROUPS) {
            set.0[g as usize / 64] |= 1 << (g % 64);
        }
        set
    }

    /// Whether `group` is in the set.
    pub fn contains(&self, group: u32) -> bool {
        group < KEY_GROUPS && self.0[group as usize / 64] & (1 << (group % 64)) != 0
    }

    /// Whether the key `key` (see [`key_group`]) falls in one of the groups.
    pub fn holds_key(&self, key: &str) -> bool {
        self.contains(key_group(key))
    }
}

impl std::fmt::Debug for KeyGroups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let count: u32 = self.0.iter().map(|w| w.count_ones()).sum();
        write!(f, "KeyGroups({count} groups)")
    }
}

/// State that can leave a worker by key group and join another's.
pub trait HandOff {
    /// Removes the state of every key in `groups`, encoded per group (groups without state
    /// may be left out).
    fn take_groups(&mut self, groups: &KeyGroups) -> Vec<(u32, Vec<u8>)>;

    /// Merges in one group's state, as [`HandOff::take_groups`] encoded it on another worker.
    fn restore_group(&mut self, group: u32, bytes: &[u8]) -> Result<(), StageError>;
}

/// A value written to bytes and read back, for hand-off. Readers get the bytes a writer of the
/// same stage made, so the format needs no versioning; it must only refuse (not panic on)
/// bytes that end early.
pub trait StateCodec: Sized {
    /// Appends `self` to `out`.
    fn encode(&self, out: &mut Vec<u8>);
    /// Reads one value from the front of `input`, advancing it.
    fn decode(input: &mut &[u8]) -> Result<Self, StageError>;
}

fn take<'a>(input: &mut &'a [u8], n: usize) -> Result<&'a [u8], StageError> {
    if input.len() < n {
        return Err(StageError::new("handed-over state ends early"));
    }
    let (head, rest) = input.split_at(n);
    *input = rest;
    Ok(head)
}

macro_rules! codec_le {
    ($($t:ty),*) => {$(
        impl StateCodec for $t {
            fn encode(&self, out: &mut Vec<u8>) { out.extend_from_slice(&self.to_le_bytes()); }
            fn decode(input: &mut &[u8]) -> Result<Self, StageError> {
                let bytes = take(input, size_of::<$t>())?;
                Ok(<$t>::from_le_bytes(bytes.try_into().expect("took exactly its size")))
            }
        }
    )*};
}
codec_le!(u64, i64, u32, i32, f64);

impl StateCodec for usize {
    fn encode(&self, out: &mut Vec<u8>) {
        (*self as u64).encode(out);
    }
    fn decode(input: &mut &[u8]) -> Result<Self, StageError> {
        usize::try_from(u64::decode(input)?).map_err(|_| StageError::new("handed-over count out of range"))
    }
}

impl StateCodec for bool {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(u8::from(*self));
    }
    fn decode(input: &mut &[u8]) -> Result<Self, StageError> {
        Ok(take(input, 1)?[0] != 0)
    }
}

impl StateCodec for String {
    fn encode(&self, out: &mut Vec<u8>) {
        (self.len() as u64).encode(out);
        out.extend_from_slice(self.as_bytes());
    }
    fn decode(input: &mut &[u8]) -> Result<Self, StageError> {
        let len = usize::decode(input)?;
        let bytes = take(input, len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| StageError::new("handed-over text is not UTF-8"))
    }
}

impl StateCodec for Ratio {
    fn encode(&self, out: &mut Vec<u8>) {
        self.hits.encode(out);
        self.total.encode(out);
    }
    fn decode(input: &mut &[u8]) -> Result<Self, StageError> {
        Ok(Ratio { hits: u64::decode(input)?, total: u64::decode(input)? })
    }
}

impl<A: StateCodec, B: StateCodec> StateCodec for (A, B) {
    fn encode(&self, out: &mut Vec<u8>) {
        self.0.encode(out);
        self.1.encode(out);
    }
    fn decode(input: &mut &[u8]) -> Result<Self, StageError> {
        Ok((A::decode(input)?, B::decode(input)?))
    }
}

impl<T: StateCodec> StateCodec for Vec<T> {
    fn encode(&self, out: &mut Vec<u8>) {
        self.len().encode(out);
        self.iter().for_each(|v| v.encode(out));
    }
    fn decode(input: &mut &[u8]) -> Result<Self, StageError> {
        let len = usize::decode(input)?;
        // Never trust a length for an allocation: each element takes at least a byte.
        let mut all = Vec::with_capacity(len.min(input.len()));
        for _ in 0..len {
            all.push(T::decode(input)?);
        }
        Ok(all)
    }
}

impl<V: StateCodec> StateCodec for KeyedState<V> {
    fn encode(&self, out: &mut Vec<u8>) {
        self.len().encode(out);
        for (k, v) in self.sorted() {
            k.to_owned().encode(out);
            v.encode(out);
        }
    }
    fn decode(input: &mut &[u8]) -> Result<Self, StageError> {
        let mut state = KeyedState::new();
        for _ in 0..usize::decode(input)? {
            let key = String::decode(input)?;
            state.insert(key, V::decode(input)?);
        }
        Ok(state)
    }
}

/// Appends `entry` to its group's bytes.
/// Each group's encoded state, indexed by group.
struct ByGroup(Vec<Vec<u8>>);

impl ByGroup {
    fn new() -> Self {
        ByGroup((0..KEY_GROUPS).map(|_| Vec::new()).collect())
    }

    /// Appends an entry to `group`'s bytes.
    fn append(&mut self, group: u32, entry: impl FnOnce(&mut Vec<u8>)) {
        if let Some(bytes) = self.0.get_mut(group as usize) {
            entry(bytes);
        }
    }

    /// The groups that got any bytes, in order.
    fn into_parts(self) -> Vec<(u32, Vec<u8>)> {
        (0u32..).zip(self.0).filter(|(_, b)| !b.is_empty()).collect()
    }
}

impl<V: StateCodec + Merge> HandOff for KeyedState<V> {
    fn take_groups(&mut self, groups: &KeyGroups) -> Vec<(u32, Vec<u8>)> {
        let mut by_group = ByGroup::new();
        for (key, value) in self.take_where(|key| groups.holds_key(key)) {
            by_group.append(key_group(&key), |out| {
                key.encode(out);
                value.encode(out);
            });
        }
        by_group.into_parts()
    }

    fn restore_group(&mut self, _group: u32, mut bytes: &[u8]) -> Result<(), StageError> {
        while !bytes.is_empty() {
            let key = String::decode(&mut bytes)?;
            let value = V::decode(&mut bytes)?;
            self.get_or_default(&key).merge(&value);
        }
        Ok(())
    }
}

impl<A: StateCodec + Merge> HandOff for TumblingWindows<A> {
    fn take_groups(&mut self, groups: &KeyGroups) -> Vec<(u32, Vec<u8>)> {
        let mut by_group = ByGroup::new();
        for (start, keys) in self.open_mut() {
            for (key, value) in keys.take_where(|key| groups.holds_key(key)) {
                by_group.append(key_group(&key), |out| {
                    start.encode(out);
                    key.encode(out);
                    value.encode(out);
                });
            }
        }
        self.forget_empty();
        by_group.into_parts()
    }

    fn restore_group(&mut self, _group: u32, mut bytes: &[u8]) -> Result<(), StageError> {
        while !bytes.is_empty() {
            let start = i64::decode(&mut bytes)?;
            let key = String::decode(&mut bytes)?;
            let value = A::decode(&mut bytes)?;
            self.window_at(start).get_or_default(&key).merge(&value);
        }
        Ok(())
    }
}

impl<A: StateCodec + Merge> HandOff for RollingWindow<A> {
    fn take_groups(&mut self, groups: &KeyGroups) -> Vec<(u32, Vec<u8>)> {
        let mut by_group = ByGroup::new();
        let watermark = self.watermark();
        for (key, buckets) in self.keys_mut().take_where(|key| groups.holds_key(key)) {
            by_group.append(key_group(&key), |out| {
                watermark.encode(out);
                key.encode(out);
                buckets.len().encode(out);
                for (start, value) in &buckets {
                    start.encode(out);
                    value.encode(out);
                }
            });
        }
        by_group.into_parts()
    }

    fn restore_group(&mut self, _group: u32, mut bytes: &[u8]) -> Result<(), StageError> {
        while !bytes.is_empty() {
            let watermark = i64::decode(&mut bytes)?;
            let key = String::decode(&mut bytes)?;
            let count = usize::decode(&mut bytes)?;
            let mut incoming = Vec::with_capacity(count.min(bytes.len()));
            for _ in 0..count {
                incoming.push((i64::decode(&mut bytes)?, A::decode(&mut bytes)?));
            }
            self.merge_buckets(watermark, &key, incoming);
        }
        Ok(())
    }
}

/// Merges `incoming` buckets (sorted by start) into `buckets` (sorted by start).
pub(crate) fn merge_sorted<A: Merge>(buckets: &mut VecDeque<(i64, A)>, incoming: Vec<(i64, A)>) {
    for (start, value) in incoming {
        match buckets.binary_search_by_key(&start, |(s, _)| *s) {
            Ok(i) => buckets[i].1.merge(&value),
            Err(i) => buckets.insert(i, (start, value)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The groups of `keys`.
    fn groups_of(keys: &[&str]) -> KeyGroups {
        KeyGroups::from_list(&keys.iter().map(|k| key_group(k)).collect::<Vec<_>>())
    }

    fn restore_all(into: &mut impl HandOff, parts: Vec<(u32, Vec<u8>)>) {
        for (group, bytes) in parts {
            into.restore_group(group, &bytes).unwrap();
        }
    }

    #[test]
    fn keyed_state_moves_only_the_groups_asked_for_and_merges_on_arrival() {
        let mut old = KeyedState::<u64>::new();
        for (k, n) in [("tv", 3), ("phone", 5), ("console", 7)] {
            *old.get_or_default(k) += n;
        }
        let mut new = KeyedState::<u64>::new();
        *new.get_or_default("tv") += 1; // input that reached the new owner first
        let parts = old.take_groups(&groups_of(&["tv", "phone"]));
        assert_eq!(old.sorted(), vec![("console", &7)]);
        restore_all(&mut new, parts);
        assert_eq!(new.sorted(), vec![("phone", &5), ("tv", &4)]);
    }

    #[test]
    fn tumbling_windows_hand_over_every_open_window_of_a_key() {
        let mut old = TumblingWindows::<u64>::new(1_000);
        for t in [100, 1_100, 2_100] {
            *old.add("tv", t).unwrap() += 1;
            *old.add("phone", t).unwrap() += 10;
        }
        let mut new = TumblingWindows::<u64>::new(1_000);
        *new.add("tv", 2_500).unwrap() += 1;
        restore_all(&mut new, old.take_groups(&groups_of(&["tv"])));
        let old_closed = old.close(10_000);
        assert!(old_closed.iter().all(|w| w.keys.get("tv").is_none() && w.keys.get("phone") == Some(&10)));
        let closed: Vec<_> = new.close(10_000).iter().map(|w| (w.start_ms, *w.keys.get("tv").unwrap())).collect();
        assert_eq!(closed, vec![(0, 1), (1_000, 1), (2_000, 2)]);
    }

    #[test]
    fn rolling_windows_merge_buckets_and_keep_the_later_watermark() {
        let mut old = RollingWindow::<Ratio>::new(10_000, 1_000);
        old.add("tv", 5_000).unwrap().record(true);
        old.add("tv", 7_000).unwrap().record(false);
        let mut new = RollingWindow::<Ratio>::new(10_000, 1_000);
        new.add("tv", 7_500).unwrap().record(true);
        restore_all(&mut new, old.take_groups(&groups_of(&["tv"])));
        assert!(old.totals().is_empty());
        assert_eq!(new.totals(), vec![("tv", Ratio { hits: 2, total: 3 })]);
    }

    #[test]
    fn truncated_state_is_refused_not_a_panic() {
        let mut old = KeyedState::<u64>::new();
        *old.get_or_default("tv") += 1;
        let (group, bytes) = old.take_groups(&groups_of(&["tv"])).remove(0);
        let mut new = KeyedState::<u64>::new();
        for cut in 1..bytes.len() {
            assert!(new.restore_group(group, &bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut huge = Vec::new();
        u64::MAX.encode(&mut huge);
        assert!(Vec::<u64>::decode(&mut huge.as_slice()).is_err());
    }
}
