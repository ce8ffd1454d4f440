//! Request rates: a token bucket per key (a client address, a tenant), in a bounded table.
//!
//! Each key may make `burst` requests at once and `per_second` on average. The table holds at
//! most [`MAX_KEYS`] keys; when full, keys whose buckets have refilled (idle clients) are
//! forgotten first, so memory stays bounded however many addresses a client uses.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Keys a limiter remembers at most.
pub const MAX_KEYS: usize = 65_536;

/// A rate: `per_second` on average, `burst` at once. A zero `per_second` disables the limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Sustained requests per second.
    pub per_second: f64,
    /// Requests allowed at once.
    pub burst: f64,
}

/// The key of a client address: the address itself for IPv4, its /64 network for IPv6 (one
/// host commonly holds a whole /64).
pub fn client_key(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

/// Token buckets by key.
#[derive(Debug)]
pub struct RateLimiter {
    rate: Rate,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// A limiter at `rate` for every key.
    pub fn new(rate: Rate) -> Self {
        RateLimiter { rate, buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes one request for `key`: `Ok`, or `Err(wait)` with how long until one is allowed.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        self.take(key, 1.0)
    }

    /// Takes `n` tokens for `key` (events, bytes…), all or none: `Ok`, or `Err(wait)` with how
    /// long until `n` are there (`n` above the burst never is: the wait is for the burst).
    pub fn take(&self, key: &str, n: f64) -> Result<(), Duration> {
        if self.rate.per_second <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() >= MAX_KEYS && !buckets.contains_key(key) {
            // Forget keys whose buckets have refilled (idle clients: forgetting them changes
            // nothing); if that is not enough, the least recently seen half.
            let full = self.rate.burst;
            let rate = self.rate.per_second;
            buckets.retain(|_, (tokens, at)| *tokens + now.duration_since(*at).as_secs_f64() * rate < full);
            if buckets.len() >= MAX_KEYS {
                let mut seen: Vec<Instant> = buckets.values().map(|(_, at)| *at).collect();
                seen.sort_unstable();
                let cut = seen[seen.len() / 2];
                buckets.retain(|_, (_, at)| *at > cut);
            }
        }
        let (tokens, at) = buckets.entry(key.to_owned()).or_insert((self.rate.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.rate.per_second).min(self.rate.burst);
        *at = now;
        if *tokens >= n {
            *tokens -= n;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((n.min(self.rate.burst) - *tokens).max(0.0) / self.rate.per_second))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_gets_its_burst_then_waits() {
        let limiter = RateLimiter::new(Rate { per_second: 10.0, burst: 3.0 });
        for _ in 0..3 {
            limiter.check("a").unwrap();
        }
        let wait = limiter.check("a").unwrap_err();
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        limiter.check("b").unwrap();
        std::thread::sleep(Duration::from_millis(120));
        limiter.check("a").unwrap();
        assert!(RateLimiter::new(Rate { per_second: 0.0, burst: 0.0 }).check("x").is_ok());
    }
}
