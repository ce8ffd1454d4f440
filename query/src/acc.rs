//! Aggregates' running state: one [`Acc`] per aggregate, per group and window. Each reports
//! how many bytes it grew by, so that a window's state stays within its limit.

use std::hash::BuildHasher;

use hashbrown::HashSet;
use serde_json::Value as Json;

use crate::AggKind;
use crate::value::{Key, V, order};

/// Values a `percentile` keeps per group and window; beyond, a uniform sample of that size.
pub const PERCENTILE_SAMPLES: usize = 10_000;

/// Values a `list` keeps per group and window; later ones are not kept.
pub const LIST_MAX: usize = 10_000;

/// `approx_count_distinct` keeps 2^`HLL_PRECISION` one-byte registers (4 KiB) per group and
/// window: a relative standard error of 1.04 / 2^(p/2) = 1.6 %.
pub const HLL_PRECISION: u32 = 12;

/// Bytes counted per value of a distinct set or list beyond its text.
const ENTRY_BYTES: usize = 32;

/// xorshift64*: a fast, seeded random stream for `sample` and reservoir sampling.
#[inline]
pub(crate) fn next_random(state: &mut u64) -> f64 {
    let mut x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
}

/// An aggregate's running state.
#[derive(Debug, Clone)]
pub(crate) enum Acc {
    Count(u64),
    Distinct(HashSet<Key>),
    Hll(Box<[u8]>),
    /// The float sum, the integer sum while every value is an integer and it fits, and
    /// whether any number was seen.
    Sum(f64, Option<i64>, bool),
    Min(Option<V<'static>>),
    Max(Option<V<'static>>),
    Avg(f64, u64),
    Percentile(f64, Vec<f64>, u64),
    List(Vec<Json>),
}

impl Acc {
    pub(crate) fn new(kind: AggKind) -> Acc {
        match kind {
            AggKind::Count => Acc::Count(0),
            AggKind::CountDistinct => Acc::Distinct(HashSet::new()),
            AggKind::ApproxDistinct => Acc::Hll(vec![0; 1 << HLL_PRECISION].into_boxed_slice()),
            AggKind::Sum => Acc::Sum(0.0, Some(0), false),
            AggKind::Min => Acc::Min(None),
            AggKind::Max => Acc::Max(None),
            AggKind::Avg => Acc::Avg(0.0, 0),
            AggKind::Percentile(q) => Acc::Percentile(q, Vec::new(), 0),
            AggKind::List => Acc::List(Vec::new()),
        }
    }

    /// Bytes a new accumulator of `kind` takes beyond its slot.
    pub(crate) fn base_bytes(kind: AggKind) -> usize {
        match kind {
            AggKind::ApproxDistinct => 1 << HLL_PRECISION,
            _ => 0,
        }
    }

    /// Adds a value (`None`: the row itself, for `count(*)`); returns by how many bytes the
    /// accumulator grew (or shrank).
    #[inline]
    pub(crate) fn add(&mut self, v: Option<V<'_>>, rng: &mut u64, hasher: &impl BuildHasher) -> isize {
        match (self, v) {
            (Acc::Count(n), None) => *n += 1,
            (_, Some(V::Null)) | (_, None) => {}
            (Acc::Count(n), Some(_)) => *n += 1,
            (Acc::Distinct(set), Some(v)) => {
                let key = Key::of(&v);
                let bytes = ENTRY_BYTES + key.heap_bytes();
                if set.insert(key) {
                    return bytes as isize;
                }
            }
            (Acc::Hll(registers), Some(v)) => {
                let hash = mix(hasher.hash_one(Key::of(&v)));
                let index = (hash >> (64 - HLL_PRECISION)) as usize;
                let rank = ((hash << HLL_PRECISION) | (1 << (HLL_PRECISION - 1))).leading_zeros() as u8 + 1;
                if let Some(r) = registers.get_mut(index) {
                    *r = (*r).max(rank);
                }
            }
            (Acc::Sum(s, exact, any), Some(v)) => {
                if let Some(x) = v.number() {
                    *s += x;
                    *any = true;
                    *exact = match v {
                        V::Int(i) => exact.and_then(|e| e.checked_add(i)),
                        _ => None,
                    };
                }
            }
            (Acc::Min(m), Some(v)) => return replace_if(m, v, std::cmp::Ordering::Less),
            (Acc::Max(m), Some(v)) => return replace_if(m, v, std::cmp::Ordering::Greater),
            (Acc::Avg(s, n), Some(v)) => {
                if let Some(x) = v.number() {
                    *s += x;
                    *n += 1;
                }
            }
            (Acc::Percentile(_, values, seen), Some(v)) => {
                if let Some(x) = v.number() {
                    *seen += 1;
                    if values.len() < PERCENTILE_SAMPLES {
                        values.push(x);
                        return std::mem::size_of::<f64>() as isize;
                    }
                    // Reservoir sampling: every value seen has the same chance to be kept.
                    let j = (next_random(rng) * *seen as f64) as usize;
                    if let Some(slot) = values.get_mut(j) {
                        *slot = x;
                    }
                }
            }
            (Acc::List(values), Some(v)) => {
                if values.len() < LIST_MAX {
                    let bytes = ENTRY_BYTES + v.heap_bytes();
                    values.push(v.json());
                    return bytes as isize;
                }
            }
        }
        0
    }

    /// The aggregate's result. `sum`, `min`, `max`, `avg` and `percentile` of no values are
    /// `null`; `count` and the distinct counts of none are 0; `list` of none is `[]`.
    pub(crate) fn finish(&mut self) -> V<'static> {
        match self {
            Acc::Count(n) => V::Int(i64::try_from(*n).unwrap_or(i64::MAX)),
            Acc::Distinct(set) => V::Int(i64::try_from(set.len()).unwrap_or(i64::MAX)),
            Acc::Hll(registers) => V::Int(hll_estimate(registers)),
            Acc::Sum(s, exact, any) => match (*any, *exact) {
                (false, _) => V::Null,
                (true, Some(i)) => V::Int(i),
                (true, None) => V::Float(*s),
            },
            Acc::Min(m) | Acc::Max(m) => m.take().unwrap_or(V::Null),
            Acc::Avg(s, n) => {
                if *n == 0 {
                    V::Null
                } else {
                    V::Float(*s / *n as f64)
                }
            }
            Acc::Percentile(q, values, _) => {
                if values.is_empty() {
                    return V::Null;
                }
                values.sort_by(f64::total_cmp);
                // Nearest rank: the smallest value with at least q of all values at or below it.
                let rank = ((*q * values.len() as f64).ceil() as usize).clamp(1, values.len());
                values.get(rank - 1).map_or(V::Null, |x| V::Float(*x))
            }
            Acc::List(values) => V::Json(Box::new(Json::Array(std::mem::take(values)))),
        }
    }
}

/// Keeps `v` if it is `wanted` (less, for `min`) than the kept value, by the total order of
/// `ORDER BY` (booleans < numbers < text < objects), so that mixed types give one answer
/// whatever their order of arrival.
fn replace_if(m: &mut Option<V<'static>>, v: V<'_>, wanted: std::cmp::Ordering) -> isize {
    if m.as_ref().is_none_or(|m| order(&v, m) == wanted) {
        let before = m.as_ref().map_or(0, V::heap_bytes) as isize;
        let new = v.owned();
        let after = new.heap_bytes() as isize;
        *m = Some(new);
        return after - before;
    }
    0
}

/// MurmurHash3's finalizer: spreads a fast hash's bits over all 64, as HyperLogLog's
/// register index (the top bits) and rank (the rest) need.
fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// HyperLogLog's estimate (Flajolet et al. 2007) with linear counting for small cardinalities.
fn hll_estimate(registers: &[u8]) -> i64 {
    let m = registers.len() as f64;
    let alpha = 0.7213 / (1.0 + 1.079 / m);
    let sum: f64 = registers.iter().map(|&r| 2f64.powi(-i32::from(r))).sum();
    let raw = alpha * m * m / sum;
    let zeros = registers.iter().filter(|&&r| r == 0).count();
    let estimate = if raw <= 2.5 * m && zeros > 0 { m * (m / zeros as f64).ln() } else { raw };
    estimate.round() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hyperloglog_is_within_its_stated_error() {
        let hasher = hashbrown::DefaultHashBuilder::default();
        for n in [0u64, 1, 100, 5_000, 200_000] {
            let mut acc = Acc::new(AggKind::ApproxDistinct);
            let mut rng = 1;
            for i in 0..n {
                // Every value twice: duplicates do not count.
                acc.add(Some(V::Int(i as i64)), &mut rng, &hasher);
                acc.add(Some(V::Int(i as i64)), &mut rng, &hasher);
            }
            let V::Int(estimate) = acc.finish() else { panic!("an integer") };
            let error = (estimate as f64 - n as f64).abs() / (n.max(1) as f64);
            // 1.6 % standard error: 4 standard errors is far out in the tail.
            assert!(error < 0.065, "{n}: estimated {estimate}");
        }
    }
}
