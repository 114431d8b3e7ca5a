//! Property tests: both tries against the reference matcher [`crate::matches()`] and against plain
//! collections, over a small alphabet rich in the corner cases (`+`, `#`, `$`, commas, empty
//! levels), and pruning checked exactly: a trie has one node per distinct level prefix of what it
//! holds, plus the root. [`crate::covers()`] and [`crate::intersects()`] are checked against the
//! same matcher, on sampled topics and exhaustively over every topic that can tell two filters
//! apart.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use crate::{
    RetainedTree, SharedGroup, SubscriptionIndex, Visitor, covers, intersects, matches,
    validate_topic_filter, validate_topic_name,
};

fn topic_level() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["a", "b", "", "$x", "$a", "a,b", ",", "b,", "1,2", "1"])
}

fn filter_level() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "a", "b", "", "$x", "+", "+", "a,b", "b,", ",", "$x,a", "a,$x", "1,2", "1", "2,1,2",
    ])
}

fn topic() -> impl Strategy<Value = String> {
    prop::collection::vec(topic_level(), 1..5)
        .prop_map(|levels| levels.join("/"))
        .prop_filter("topic names are not empty", |t| !t.is_empty())
}

fn filter() -> impl Strategy<Value = String> {
    (prop::collection::vec(filter_level(), 0..4), any::<bool>())
        .prop_map(|(mut levels, hash)| {
            if hash || levels.is_empty() {
                levels.push("#");
            }
            levels.join("/")
        })
        .prop_filter("filters are not empty", |f| !f.is_empty())
}

/// Two filters of at most three levels each for the exhaustive check, the second often taking
/// levels of the first at the same place (so that they relate: the same comma level, `+`
/// against a level, ...). `#` may sit anywhere, so some are invalid (they match nothing).
fn short_filters() -> impl Strategy<Value = (String, String)> {
    let level = || prop_oneof![8 => filter_level(), 1 => Just("#")];
    let levels = move || (prop::collection::vec(level(), 0..3), any::<bool>());
    (levels(), levels(), prop::collection::vec(any::<bool>(), 3)).prop_map(
        |((a, a_hash), (mut b, b_hash), borrow)| {
            for (i, level) in b.iter_mut().enumerate() {
                if borrow[i] && i < a.len() {
                    *level = a[i];
                }
            }
            let join = |mut levels: Vec<&str>, hash: bool| {
                if hash || levels.is_empty() {
                    levels.push("#");
                }
                levels.join("/")
            };
            (join(a, a_hash), join(b, b_hash))
        },
    )
}

/// A topic `filter` is likely to match: `+` and `#` filled from `fill`, a comma level replaced
/// by one of its alternatives (or kept whole) as `pick` says.
fn instance(filter: &str, pick: &[usize], fill: &[&str]) -> String {
    let mut levels = Vec::new();
    for (i, level) in filter.split('/').enumerate() {
        let p = pick[i % pick.len()];
        match level {
            "+" => levels.push(fill[p % fill.len()]),
            "#" => {
                levels.extend(fill.iter().cycle().skip(p).take(p % 3));
                break;
            }
            _ => {
                let mut listed: Vec<&str> = vec![level];
                if level.contains(',') {
                    listed.extend(level.split(','));
                }
                levels.push(listed[p % listed.len()]);
            }
        }
    }
    if levels.is_empty() {
        levels.push(fill[0]);
    }
    levels.join("/")
}

/// Every topic that can tell `a` and `b` apart, in the sense of [`matches()`]: over the levels
/// they list (whole levels and comma alternatives) plus `z` and `$z`, listed by neither, every
/// topic of up to one level more than the longer filter has. Matching a topic level depends
/// only on which listed level it equals, and for any other only on whether it starts with `$`,
/// so `z` and `$z` stand for all others; levels past the longer filter's all fall inside a `#`.
/// Every topic thus matches exactly the same of `a` and `b` as one of these.
fn distinguishing_topics(a: &str, b: &str) -> Vec<String> {
    let mut alphabet: BTreeSet<&str> = ["z", "$z"].into_iter().collect();
    for level in a.split('/').chain(b.split('/')) {
        if level != "+" && level != "#" {
            alphabet.insert(level);
            if level.contains(',') {
                alphabet.extend(level.split(','));
            }
        }
    }
    let longest = a.split('/').count().max(b.split('/').count()) + 1;
    let mut topics = Vec::new();
    let mut layer = vec![String::new()];
    for depth in 1..=longest {
        let mut next = Vec::new();
        for prefix in &layer {
            for level in &alphabet {
                next.push(if depth == 1 {
                    (*level).to_owned()
                } else {
                    format!("{prefix}/{level}")
                });
            }
        }
        topics.extend(next.iter().cloned());
        layer = next;
    }
    topics
}

/// Distinct level prefixes (`a`, `a/b`, `a/b/c` for `a/b/c`): the nodes a trie needs.
fn prefixes<'a>(paths: impl IntoIterator<Item = &'a str>) -> usize {
    let mut set = BTreeSet::new();
    for path in paths {
        let mut end = 0;
        for level in path.split('/') {
            end += level.len();
            set.insert(&path[..end]);
            end += 1;
        }
    }
    set.len()
}

/// Records plain visits and the shared groups that matched.
#[derive(Default)]
struct Record {
    plain: Vec<(u8, String)>,
    groups: Vec<(String, String)>,
}

impl Visitor<u8, String> for Record {
    fn visit(&mut self, key: &u8, value: &String) {
        self.plain.push((*key, value.clone()));
    }

    fn visit_shared(&mut self, group: &SharedGroup<u8, String>, topic: &str) {
        let picked = group.pick(topic).expect("the index keeps no empty group");
        assert!(group.members().iter().any(|(k, _)| k == picked.0));
        self.groups
            .push((group.name().to_owned(), group.filter().to_owned()));
    }
}

#[derive(Debug, Clone)]
enum Op {
    Insert(Option<&'static str>, String, u8),
    Remove(Option<&'static str>, String, u8),
}

fn op() -> impl Strategy<Value = Op> {
    let group = prop::option::of(prop::sample::select(vec!["g", "h:1", "k:1:1"]));
    (any::<bool>(), group, filter(), 0u8..3).prop_map(|(insert, group, filter, key)| {
        if insert {
            Op::Insert(group, filter, key)
        } else {
            Op::Remove(group, filter, key)
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn index_agrees_with_the_reference(
        filters in prop::collection::vec(filter(), 0..30),
        topics in prop::collection::vec(topic(), 1..20),
    ) {
        let mut index = SubscriptionIndex::new();
        for (key, f) in filters.iter().enumerate() {
            prop_assert_eq!(validate_topic_filter(f), Ok(()));
            index.insert(f, key, f.clone());
        }
        for t in &topics {
            prop_assert_eq!(validate_topic_name(t), Ok(()));
            let mut got = index.matches(t);
            got.sort_unstable();
            let expected: Vec<(usize, String)> = filters
                .iter()
                .enumerate()
                .filter(|(_, f)| matches(f, t))
                .map(|(k, f)| (k, f.clone()))
                .collect();
            prop_assert_eq!(got, expected, "topic {:?}", t);
        }
    }

    #[test]
    fn retained_agrees_with_the_reference(
        topics in prop::collection::vec(topic(), 0..30),
        filters in prop::collection::vec(filter(), 1..12),
    ) {
        let mut tree = RetainedTree::new();
        for t in &topics {
            tree.insert(t, t.clone());
        }
        let distinct: BTreeSet<&str> = topics.iter().map(String::as_str).collect();
        prop_assert_eq!(tree.len(), distinct.len());
        for f in &filters {
            let mut got = Vec::new();
            tree.for_each_match(f, |topic, value| {
                assert_eq!(topic, value);
                got.push(topic.to_owned());
            });
            got.sort_unstable();
            let expected: Vec<String> =
                distinct.iter().filter(|t| matches(f, t)).map(|t| t.to_string()).collect();
            prop_assert_eq!(got, expected, "filter {:?}", f);
        }
    }

    #[test]
    fn index_insert_remove_keeps_len_and_prunes(
        ops in prop::collection::vec(op(), 1..60),
        topics in prop::collection::vec(topic(), 1..6),
    ) {
        let mut index: SubscriptionIndex<u8, String> = SubscriptionIndex::new();
        let mut model: BTreeMap<(Option<&str>, String, u8), String> = BTreeMap::new();
        for (step, op) in ops.iter().enumerate() {
            match op {
                Op::Insert(group, f, key) => {
                    let value = format!("{step}");
                    let got = match group {
                        None => index.insert(f, *key, value.clone()),
                        Some(g) => index.insert_shared(g, f, *key, value.clone()),
                    };
                    prop_assert_eq!(got, model.insert((*group, f.clone(), *key), value));
                }
                Op::Remove(group, f, key) => {
                    let got = match group {
                        None => index.remove(f, key),
                        Some(g) => index.remove_shared(g, f, key),
                    };
                    prop_assert_eq!(got, model.remove(&(*group, f.clone(), *key)));
                }
            }
            prop_assert_eq!(index.len(), model.len());
            prop_assert_eq!(index.is_empty(), model.is_empty());
            let live: BTreeSet<&str> = model.keys().map(|(_, f, _)| f.as_str()).collect();
            prop_assert_eq!(index.node_count(), 1 + prefixes(live.iter().copied()));
            for t in &topics {
                let mut record = Record::default();
                index.for_each_match(t, &mut record);
                record.plain.sort_unstable();
                record.groups.sort_unstable();
                let mut plain: Vec<(u8, String)> = model
                    .iter()
                    .filter(|((g, f, _), _)| g.is_none() && matches(f, t))
                    .map(|((_, _, k), v)| (*k, v.clone()))
                    .collect();
                plain.sort_unstable();
                let groups: BTreeSet<(String, String)> = model
                    .keys()
                    .filter_map(|(g, f, _)| g.filter(|_| matches(f, t)).map(|g| (g.to_owned(), f.clone())))
                    .collect();
                prop_assert_eq!(record.plain, plain);
                prop_assert_eq!(record.groups, groups.into_iter().collect::<Vec<_>>());
            }
        }
        let keys: Vec<_> = model.keys().cloned().collect();
        for (group, f, key) in keys {
            let removed = match group {
                None => index.remove(&f, &key),
                Some(g) => index.remove_shared(g, &f, &key),
            };
            prop_assert!(removed.is_some());
        }
        prop_assert!(index.is_empty());
        prop_assert_eq!(index.node_count(), 1);
    }

    #[test]
    fn retained_insert_remove_retain_keep_len_and_prune(
        ops in prop::collection::vec((0u8..3, topic()), 1..60),
        filters in prop::collection::vec(filter(), 1..4),
    ) {
        let mut tree: RetainedTree<usize> = RetainedTree::new();
        let mut model: BTreeMap<String, usize> = BTreeMap::new();
        for (step, (kind, t)) in ops.iter().enumerate() {
            match kind {
                0 | 1 => prop_assert_eq!(tree.insert(t, step), model.insert(t.clone(), step)),
                _ => prop_assert_eq!(tree.remove(t), model.remove(t)),
            }
            if step % 7 == 6 {
                // An expiry sweep: drop the odd values, bump the others.
                tree.retain(|_, v| { *v += 1000; *v % 2 == 0 });
                model.retain(|_, v| { *v += 1000; *v % 2 == 0 });
            }
            prop_assert_eq!(tree.len(), model.len());
            prop_assert_eq!(tree.node_count(), 1 + prefixes(model.keys().map(String::as_str)));
            let mut all: Vec<(String, usize)> = tree.iter().map(|(t, v)| (t.to_owned(), *v)).collect();
            all.sort_unstable();
            prop_assert_eq!(all, model.iter().map(|(t, v)| (t.clone(), *v)).collect::<Vec<_>>());
            prop_assert_eq!(tree.get(t), model.get(t));
            for f in &filters {
                let mut got = Vec::new();
                tree.for_each_match(f, |topic, _| got.push(topic.to_owned()));
                got.sort_unstable();
                let expected: Vec<String> = model.keys().filter(|t| matches(f, t)).cloned().collect();
                prop_assert_eq!(got, expected);
            }
        }
        tree.retain(|_, _| false);
        prop_assert!(tree.is_empty());
        prop_assert_eq!(tree.node_count(), 1);
    }

    #[test]
    fn covers_and_intersects_agree_with_the_reference(
        a in filter(),
        b in filter(),
        picks in prop::collection::vec(prop::collection::vec(0usize..8, 1..5), 1..8),
        fill in prop::collection::vec(topic_level(), 1..4),
        sampled in prop::collection::vec(topic(), 0..16),
    ) {
        // Topics of both filters' own making, so that matches are frequent, and random ones.
        let mut topics = sampled;
        for pick in &picks {
            topics.push(instance(&a, pick, &fill));
            topics.push(instance(&b, pick, &fill));
        }
        let covered = covers(&a, &b);
        let shared = intersects(&a, &b);
        prop_assert_eq!(shared, intersects(&b, &a));
        prop_assert!(covers(&a, &a) && intersects(&a, &a));
        for t in &topics {
            if covered && matches(&b, t) {
                prop_assert!(matches(&a, t), "{:?} covers {:?} but not {:?}", a, b, t);
            }
            if matches(&a, t) && matches(&b, t) {
                prop_assert!(shared, "{:?} and {:?} both match {:?}", a, b, t);
            }
        }
    }

    #[test]
    fn covers_and_intersects_are_exact((a, b) in short_filters()) {
        let topics = distinguishing_topics(&a, &b);
        let covered = topics.iter().all(|t| !matches(&b, t) || matches(&a, t));
        let shared = topics.iter().any(|t| matches(&a, t) && matches(&b, t));
        prop_assert_eq!(covers(&a, &b), covered, "covers({:?}, {:?})", a, b);
        prop_assert_eq!(intersects(&a, &b), shared, "intersects({:?}, {:?})", a, b);
    }
}
