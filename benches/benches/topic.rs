//! The subscription index and the retained tree at 100k entries.
//!
//! Subscriptions model a fleet: 100 per fleet over 1,000 fleets, 70% exact
//! (`fleet/F/dev/I/telemetry`), 20% with `+` (`fleet/F/dev/+/telemetry`), 10% with `#`
//! (`fleet/F/#`). A telemetry topic of one device matches 31 of them (1 exact, 20 `+`, 10 `#`);
//! a status topic matches the 10 `#` ones. Retained messages: 100k device topics, 100 per
//! fleet, looked up with `+` and `#` filters (100 hits) and `#` alone (all 100k).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use tern_topic::{RetainedTree, SubscriptionIndex};

const N: u32 = 100_000;

fn index() -> SubscriptionIndex<u32, ()> {
    let mut index = SubscriptionIndex::new();
    for i in 0..N {
        let fleet = (i / 10) % 1000;
        let filter = match i % 10 {
            0..=6 => format!("fleet/{fleet}/dev/{i}/telemetry"),
            7..=8 => format!("fleet/{fleet}/dev/+/telemetry"),
            _ => format!("fleet/{fleet}/#"),
        };
        index.insert(&filter, i, ());
    }
    index
}

fn count_matches(index: &SubscriptionIndex<u32, ()>, topic: &str) -> usize {
    let mut n = 0usize;
    index.for_each_match(topic, &mut |_: &u32, _: &()| n += 1);
    n
}

fn subscriptions(c: &mut Criterion) {
    let index = index();
    // Device 10042 is in fleet 4 (10042 / 10 % 1000 = 4), subscribed exactly (10042 % 10 = 2).
    let telemetry = "fleet/4/dev/10042/telemetry";
    let status = "fleet/4/dev/10042/status";
    assert_eq!(count_matches(&index, telemetry), 31);
    assert_eq!(count_matches(&index, status), 10);
    assert_eq!(count_matches(&index, "elsewhere/4/dev/10042/telemetry"), 0);

    let mut group = c.benchmark_group("index_100k");
    group.bench_function("match_31_of_100k", |b| {
        b.iter(|| count_matches(&index, black_box(telemetry)))
    });
    group.bench_function("match_10_of_100k", |b| {
        b.iter(|| count_matches(&index, black_box(status)))
    });
    group.bench_function("match_none", |b| {
        b.iter(|| count_matches(&index, black_box("elsewhere/4/dev/10042/telemetry")))
    });
    group.finish();
}

fn retained(c: &mut Criterion) {
    let mut tree = RetainedTree::new();
    for i in 0..N {
        tree.insert(&format!("fleet/{}/dev/{i}/telemetry", i % 1000), i);
    }
    let count = |filter: &str| {
        let mut n = 0usize;
        tree.for_each_match(filter, |_, _| n += 1);
        n
    };
    assert_eq!(count("fleet/42/dev/+/telemetry"), 100);
    assert_eq!(count("fleet/42/#"), 100);
    assert_eq!(count("#"), N as usize);

    let mut group = c.benchmark_group("retained_100k");
    group.bench_function("plus_100_hits", |b| {
        b.iter(|| count(black_box("fleet/42/dev/+/telemetry")))
    });
    group.bench_function("hash_100_hits", |b| {
        b.iter(|| count(black_box("fleet/42/#")))
    });
    group.bench_function("exact_1_hit", |b| {
        b.iter(|| count(black_box("fleet/42/dev/12042/telemetry")))
    });
    group.sample_size(20);
    group.bench_function("hash_all_100k", |b| b.iter(|| count(black_box("#"))));
    group.finish();
}

criterion_group!(benches, subscriptions, retained);
criterion_main!(benches);
