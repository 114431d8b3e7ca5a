//! Exact accounting: which sequence numbers arrived, when, and how late.
//!
//! - [`SeqSet`]: a bitmap of sequence numbers, so loss and duplicates are counted exactly and
//!   "acknowledged but never delivered" is a set difference.
//! - [`SeqTrack`]: one subscriber's view of one publisher (duplicates, out of order).
//! - [`Timeline`]: counts per 10 ms since the run's start, for rates over the measured window,
//!   per-second series and stalls.
//! - [`Latency`]: the percentiles of a latency histogram, in microseconds.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Sequence numbers beyond this are treated as corrupt rather than grown into a huge bitmap.
pub const MAX_SEQ: u64 = 1 << 36;

/// A set of sequence numbers as a bitmap.
#[derive(Debug, Default, Clone)]
pub struct SeqSet {
    words: Vec<u64>,
    len: u64,
}

impl SeqSet {
    /// Adds `seq`; false if it was already present. `seq` must be below [`MAX_SEQ`].
    pub fn insert(&mut self, seq: u64) -> bool {
        let (w, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if w >= self.words.len() {
            let grown = (w + 1).max(self.words.len() * 2);
            self.words.resize(grown, 0);
        }
        let word = &mut self.words[w];
        if *word & bit != 0 {
            return false;
        }
        *word |= bit;
        self.len += 1;
        true
    }

    /// Number of distinct sequence numbers.
    #[cfg(test)]
    pub fn len(&self) -> u64 {
        self.len
    }

    /// How many members of `self` are not in `other`.
    pub fn missing_from(&self, other: &SeqSet) -> u64 {
        self.words
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                let o = other.words.get(i).copied().unwrap_or(0);
                u64::from((w & !o).count_ones())
            })
            .sum()
    }
}

/// What one subscriber received from one publisher.
#[derive(Debug, Default, Clone)]
pub struct SeqTrack {
    pub seen: SeqSet,
    pub duplicates: u64,
    /// Arrived after a higher sequence number of the same publisher.
    pub out_of_order: u64,
    next: u64,
}

impl SeqTrack {
    /// Records one arrival; true if it was new.
    pub fn record(&mut self, seq: u64) -> bool {
        if !self.seen.insert(seq) {
            self.duplicates += 1;
            return false;
        }
        if seq < self.next {
            self.out_of_order += 1;
        } else {
            self.next = seq + 1;
        }
        true
    }
}

/// Width of one timeline bucket.
pub const BUCKET_NS: u64 = 10_000_000;

/// Event counts per 10 ms bucket since the run's start.
#[derive(Debug, Default, Clone)]
pub struct Timeline {
    buckets: Vec<u64>,
}

impl Timeline {
    pub fn add(&mut self, since_start_ns: u64, n: u64) {
        let b = (since_start_ns / BUCKET_NS) as usize;
        if b >= self.buckets.len() {
            self.buckets.resize(b + 1, 0);
        }
        self.buckets[b] += n;
    }

    pub fn merge(&mut self, other: &Timeline) {
        if other.buckets.len() > self.buckets.len() {
            self.buckets.resize(other.buckets.len(), 0);
        }
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
    }

    /// The start of the first bucket with an event.
    pub fn first_ns(&self) -> Option<u64> {
        let b = self.buckets.iter().position(|&n| n > 0)?;
        Some(b as u64 * BUCKET_NS)
    }

    /// Events in the buckets that start before `until_ns`.
    pub fn sum_before(&self, until_ns: u64) -> u64 {
        let n = until_ns.div_ceil(BUCKET_NS) as usize;
        self.buckets.iter().take(n).sum()
    }

    /// Events per whole or partial second, up to `until_ns`.
    pub fn per_second(&self, until_ns: u64) -> Vec<u64> {
        let per = (1_000_000_000 / BUCKET_NS) as usize;
        let n = until_ns.div_ceil(BUCKET_NS) as usize;
        self.buckets
            .iter()
            .take(n)
            .collect::<Vec<_>>()
            .chunks(per)
            .map(|c| c.iter().copied().sum())
            .collect()
    }

    /// The longest run of empty buckets between `from_ns` and `until_ns`, in milliseconds: a
    /// stall, when the other side was still sending.
    pub fn longest_gap_ms(&self, from_ns: u64, until_ns: u64) -> u64 {
        let (from, until) = (
            (from_ns / BUCKET_NS) as usize,
            (until_ns / BUCKET_NS) as usize,
        );
        let mut longest = 0u64;
        let mut run = 0u64;
        for b in from..until {
            if self.buckets.get(b).copied().unwrap_or(0) == 0 {
                run += 1;
                longest = longest.max(run);
            } else {
                run = 0;
            }
        }
        longest * BUCKET_NS / 1_000_000
    }
}

/// A latency histogram in nanoseconds, 1 ns to 1 hour, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("constant bounds are valid")
}

/// Percentiles of a latency histogram, in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Option<Latency> {
        if h.is_empty() {
            return None;
        }
        let us = |ns: u64| (ns as f64 / 100.0).round() / 10.0;
        Some(Latency {
            count: h.len(),
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
            mean_us: (h.mean() / 100.0).round() / 10.0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_track_counts_duplicates_and_reordering() {
        let mut t = SeqTrack::default();
        for s in [0, 1, 3, 2, 3, 200, 5] {
            t.record(s);
        }
        assert_eq!(t.seen.len(), 6);
        assert_eq!(t.duplicates, 1);
        assert_eq!(t.out_of_order, 2); // 2 after 3, 5 after 200
    }

    #[test]
    fn missing_is_a_set_difference() {
        let mut acked = SeqSet::default();
        let mut got = SeqSet::default();
        for s in 0..1000 {
            acked.insert(s);
            if s % 10 != 0 {
                got.insert(s);
            }
        }
        assert_eq!(acked.missing_from(&got), 100);
        assert_eq!(got.missing_from(&acked), 0);
        assert_eq!(acked.missing_from(&SeqSet::default()), 1000);
    }

    #[test]
    fn timeline_windows_and_gaps() {
        let mut t = Timeline::default();
        t.add(0, 5);
        t.add(15_000_000, 1); // bucket 1
        t.add(1_500_000_000, 2); // bucket 150
        assert_eq!(t.sum_before(20_000_000), 6);
        assert_eq!(t.sum_before(2_000_000_000), 8);
        assert_eq!(t.per_second(2_000_000_000), vec![6, 2]);
        assert_eq!(t.longest_gap_ms(0, 1_510_000_000), 1480);
    }
}
