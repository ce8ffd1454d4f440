//! A synthetic source of device-log events, deterministic for a given seed.
//!
//! This is the generator behind the demo job, the tests' known inputs and the benchmarks:
//! events shaped like the device logs of the Mantis talks (which device, where, what was
//! played, how the request went), about 130 bytes each once archived (100 of them names, numbers and text).

use crate::{BatchBuilder, BatchBytes, BatchError, ValueRef};

/// Device types, each with the share of its requests that fail (status 500).
pub const DEVICE_TYPES: [(&str, f64); 6] =
    [("tv", 0.02), ("phone", 0.05), ("tablet", 0.03), ("console", 0.10), ("set-top", 0.01), ("laptop", 0.04)];

/// The fields of every event, in order.
const FIELDS: [&str; 7] = ["device-type", "device-id", "country", "title", "status", "latency-ms", "error"];

/// Countries events come from.
pub const COUNTRIES: [&str; 5] = ["US", "BR", "DE", "IN", "JP"];

/// Titles that get played.
pub const TITLES: [&str; 8] =
    ["Stranger Things", "The Crown", "Dark", "Narcos", "Ozark", "Squid Game", "Mindhunter", "Lupin"];

/// Generates device-log events. Each event has the fields
/// `device-type` (text), `device-id` (text), `country` (text), `title` (text),
/// `status` (int: 200, or 500 at the device type's error rate), `latency-ms` (float) and
/// `error` (bool: status is 500).
#[derive(Debug, Clone)]
pub struct DeviceLogs {
    state: u64,
    sequence: u64,
    /// Reused batch after batch, so that only each batch's archive is allocated.
    builder: BatchBuilder,
}

impl DeviceLogs {
    /// A generator whose output is fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        DeviceLogs { state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1, sequence: 0, builder: BatchBuilder::new() }
    }

    /// xorshift64*: fast, good enough for shaping test data, no dependency.
    fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn pick<'t, T>(&mut self, items: &'t [T]) -> &'t T {
        &items[(self.next_u64() % items.len() as u64) as usize]
    }

    /// Appends `count` events to `builder`, the first at `start_ms`, each `step_ms` apart.
    pub fn fill(&mut self, builder: &mut BatchBuilder, count: usize, start_ms: i64, step_ms: i64) {
        // The names are interned once; each event then pushes its fields by index.
        let names = FIELDS.map(|name| builder.intern(name));
        let mut id = *b"dev-000000";
        for i in 0..count {
            let &(device, error_rate) = self.pick(&DEVICE_TYPES);
            let country = *self.pick(&COUNTRIES);
            let title = *self.pick(&TITLES);
            let failed = self.next_f64() < error_rate;
            let latency = 5.0 + self.next_f64() * 120.0;
            let mut n = self.next_u64() % 1_000_000;
            for digit in id[4..].iter_mut().rev() {
                *digit = b'0' + (n % 10) as u8;
                n /= 10;
            }
            let id = std::str::from_utf8(&id).expect("ASCII digits");
            let mut event = builder.event(start_ms + i as i64 * step_ms);
            event.push(names[0], ValueRef::Text(device));
            event.push(names[1], ValueRef::Text(id));
            event.push(names[2], ValueRef::Text(country));
            event.push(names[3], ValueRef::Text(title));
            event.push(names[4], ValueRef::Int(if failed { 500 } else { 200 }));
            event.push(names[5], ValueRef::Float(latency));
            event.push(names[6], ValueRef::Bool(failed));
        }
    }

    /// One batch of `count` events, the first at `start_ms`, each `step_ms` apart.
    pub fn batch(&mut self, count: usize, start_ms: i64, step_ms: i64) -> Result<BatchBytes, BatchError> {
        let mut builder = std::mem::take(&mut self.builder)
            .source("synthetic:device-logs")
            .sequence(self.sequence)
            .created_at_ms(start_ms);
        self.sequence += 1;
        self.fill(&mut builder, count, start_ms, step_ms);
        let batch = builder.take();
        self.builder = builder;
        batch
    }
}
