//! Key groups: how a key-hashed stage's keys are spread over its workers, shared by the host
//! (which routes events) and the SDK (which hands a group's state over when it moves).
//!
//! A key's hash is FNV-1a 64 over its key fields' values (each followed by `0xff`), so it is
//! the same in every process and on every run. The hash picks one of [`KEY_GROUPS`] groups,
//! and a stage's `n` workers own the groups in contiguous ranges ([`group_owner`]): rescaling
//! from `n` to `m` workers moves only the groups whose owner changes.

use crate::{EventRef, ValueRef};

/// How many key groups keys are hashed into: the most workers a key-hashed stage can use.
pub const KEY_GROUPS: u32 = 4096;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;

fn eat(hash: &mut u64, bytes: &[u8]) {
    for &b in bytes {
        *hash ^= u64::from(b);
        *hash = hash.wrapping_mul(FNV_PRIME);
    }
}

/// The hash of `event`'s key, made of the values of `fields` in order.
pub fn key_hash(event: &EventRef<'_>, fields: &[String]) -> u64 {
    let mut hash = FNV_OFFSET;
    for field in fields {
        match event.get(field) {
            None | Some(ValueRef::Null) => eat(&mut hash, &[0]),
            Some(ValueRef::Bool(b)) => eat(&mut hash, &[1, b as u8]),
            Some(ValueRef::Int(i)) => eat(&mut hash, &i.to_le_bytes()),
            Some(ValueRef::Float(f)) => eat(&mut hash, &f.to_bits().to_le_bytes()),
            Some(ValueRef::Text(t)) => eat(&mut hash, t.as_bytes()),
            Some(ValueRef::Bytes(b)) => eat(&mut hash, b),
        }
        eat(&mut hash, &[0xff]);
    }
    hash
}

/// The key group of a key hash.
pub fn key_group(hash: u64) -> u32 {
    (hash % u64::from(KEY_GROUPS)) as u32
}

/// The key group of a key that is the text value of a stage's single key field: what a stage
/// keyed by that text uses to tell which of its keys a group holds.
pub fn text_key_group(text: &str) -> u32 {
    let mut hash = FNV_OFFSET;
    eat(&mut hash, text.as_bytes());
    eat(&mut hash, &[0xff]);
    key_group(hash)
}

/// The worker (of `workers`, at least 1) that owns key group `group`: contiguous ranges of
/// groups, as even as they can be (sizes differ by at most one).
pub fn group_owner(group: u32, workers: usize) -> usize {
    let workers = workers.max(1) as u64;
    ((u64::from(group) * workers) / u64::from(KEY_GROUPS)) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BatchBuilder, BatchBytes};

    #[test]
    fn the_text_key_group_is_the_group_the_host_routes_a_text_key_to() {
        let mut b = BatchBuilder::new();
        for key in ["tv", "phone", "", "ümlaut", "a-much-longer-key-than-eight-bytes"] {
            b.event(1).field("device-type", key);
        }
        let batch = BatchBytes::validate(b.into_vec().unwrap()).unwrap();
        let fields = vec!["device-type".to_string()];
        for event in batch.view().events() {
            let text = event.text("device-type").unwrap();
            assert_eq!(key_group(key_hash(&event, &fields)), text_key_group(text), "{text}");
        }
    }
}
