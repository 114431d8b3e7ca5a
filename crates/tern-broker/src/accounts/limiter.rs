//! A per-address limit on failed logins, so a flood of bad credentials from one address is
//! refused cheaply and never slows clients from other addresses. Bounded: past its size the
//! table forgets the quietest half.
//!
//! An "address" is what one host controls: an IPv4 address, or an IPv6 /64 (hosts usually get
//! a whole /64 and pick addresses in it freely, so counting single IPv6 addresses would give
//! one host 2^64 buckets). An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, as a dual-stack
//! socket reports IPv4 clients) counts as its IPv4 address.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
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
        match self.buckets.get(&source(ip)) {
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
        let ip = source(ip);
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

    /// Sources (IPv4 addresses, IPv6 /64s) currently tracked.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

/// The bucket of an address: the IPv4 address itself (mapped ones included), or the /64 of an
/// IPv6 address.
fn source(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(v6.to_bits() & !u128::from(u64::MAX))),
        },
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
    fn ipv6_counts_per_64() {
        let mut l = FailLimiter::new(3, 0.0, 100);
        // One host walking through its /64: every address spends the same bucket.
        for i in 0..3u16 {
            let ip: IpAddr = format!("2001:db8:1:2::{i:x}").parse().unwrap();
            assert!(l.allow(ip));
            l.failed(ip);
        }
        let same_64: IpAddr = "2001:db8:1:2:ffff:ffff:ffff:ffff".parse().unwrap();
        assert!(!l.allow(same_64), "the whole /64 is refused");
        assert_eq!(l.len(), 1);
        let next_64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(l.allow(next_64), "the neighbouring /64 is another host");
    }

    #[test]
    fn ipv4_stays_per_address_and_mapped_ipv6_counts_as_ipv4() {
        let mut l = FailLimiter::new(2, 0.0, 100);
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        let plain: IpAddr = "192.0.2.7".parse().unwrap();
        l.failed(mapped);
        l.failed(plain);
        assert!(
            !l.allow(plain),
            "a mapped address spends its IPv4 address's bucket"
        );
        assert!(!l.allow(mapped));
        assert_eq!(l.len(), 1);
        // Neither grouped by /64 nor by any IPv4 prefix: the next IPv4 address is untouched,
        // mapped or not.
        assert!(l.allow("192.0.2.8".parse().unwrap()));
        assert!(l.allow("::ffff:192.0.2.8".parse().unwrap()));
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
