//! A per-address limit on failed logins, so a flood of bad credentials from one address is
//! refused cheaply and never slows clients from other addresses. Bounded: past its size the
//! table forgets the quietest half.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

/// A token bucket per source address, spent by failed logins.
#[derive(Debug)]
pub struct FailLimiter {
    burst: f64,
    per_sec: f64,
    max_entries: usize,
    buckets: HashMap<IpAddr, (f64, Instant)>,
}

impl FailLimiter {
    pub fn new(burst: u32, per_sec: f64, max_entries: usize) -> FailLimiter {
        FailLimiter {
            burst: f64::from(burst.max(1)),
            per_sec: per_sec.max(0.0),
            max_entries: max_entries.max(16),
            buckets: HashMap::new(),
        }
    }

    fn level(&self, ip: IpAddr, now: Instant) -> f64 {
        match self.buckets.get(&ip) {
            Some((tokens, at)) => {
                (tokens + now.duration_since(*at).as_secs_f64() * self.per_sec).min(self.burst)
            }
            None => self.burst,
        }
    }

    /// Whether a login attempt from `ip` may be checked at all.
    pub fn allow(&self, ip: IpAddr) -> bool {
        self.level(ip, Instant::now()) >= 1.0
    }

    /// Spends one token of `ip` for a failed login.
    pub fn failed(&mut self, ip: IpAddr) {
        let now = Instant::now();
        let level = self.level(ip, now);
        if self.buckets.len() >= self.max_entries && !self.buckets.contains_key(&ip) {
            self.evict(now);
        }
        self.buckets.insert(ip, ((level - 1.0).max(0.0), now));
    }

    fn evict(&mut self, now: Instant) {
        // Drop the addresses whose buckets refilled the most: they are the least active.
        let mut levels: Vec<(IpAddr, f64)> = self
            .buckets
            .keys()
            .map(|ip| (*ip, self.level(*ip, now)))
            .collect();
        levels.sort_by(|a, b| b.1.total_cmp(&a.1));
        for (ip, _) in levels.into_iter().take(self.max_entries / 2) {
            self.buckets.remove(&ip);
        }
    }

    /// Addresses currently tracked.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refused_per_address() {
        let mut l = FailLimiter::new(3, 0.0, 100);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert!(l.allow(a));
            l.failed(a);
        }
        assert!(!l.allow(a));
        assert!(l.allow(b), "other addresses are unaffected");
    }

    #[test]
    fn bounded() {
        let mut l = FailLimiter::new(1, 0.0, 32);
        for i in 0..1000u32 {
            l.failed(IpAddr::from(i.to_be_bytes()));
        }
        assert!(l.len() <= 32);
    }
}
