//! The subscription index: which sessions want a message published to a topic.
//!
//! A trie keyed by filter level. Each node has
//! - its exact-level children in a [`LevelMap`] (a short vector, a hash map when large),
//! - one slot for a `+` child and one for a `#` child,
//! - rarely, a list of comma-alternative children (`1,2,3`), scanned linearly, and the shared
//!   groups subscribed with the node's filter,
//! - the plain subscribers of the node's filter, in a vector (fast to walk) with a key-to-slot map
//!   once there are many, so one of 100k subscribers of `#` is removed in O(1).
//!
//! Matching walks the topic's levels with an explicit stack of (node, rest of topic) kept on the
//! call stack (`SmallVec`), so it neither allocates in practice nor recurses: a filter or topic of
//! 30,000 levels cannot overflow the thread's stack. For the same reason removal and `Drop` take
//! deep branches apart iteratively. Removal prunes every node left without subscribers or
//! children, so memory follows the live subscriptions.
//!
//! The index trusts its callers to have validated filters ([`crate::validate_topic_filter`],
//! [`crate::parse_shared`]); an invalid filter is stored and matched as [`crate::matches()`] reads
//! it (`a/#/b` matches nothing), and never panics.

use std::hash::Hash;

use hashbrown::HashMap;
use smallvec::SmallVec;

use crate::filter::comma_level_matches;
use crate::shared::{ShareMode, SharedGroup};
use crate::trie::{LevelMap, TrieNode, dismantle, prune};

/// Receives the subscriptions matching a topic, from [`SubscriptionIndex::for_each_match`].
///
/// Any `FnMut(&K, &V)` closure is a visitor that takes the default choice for shared groups.
pub trait Visitor<K, V> {
    /// A plain subscription matches. A key subscribed with several matching filters is visited
    /// once per filter; merging them (one delivery, all subscription identifiers) is the
    /// broker's job.
    fn visit(&mut self, key: &K, value: &V);

    /// Called once per shared group that matches; the default picks one member (sticky hash or
    /// random) and visits it. Override it to pick among connected members
    /// ([`SharedGroup::pick_where`]).
    fn visit_shared(&mut self, group: &SharedGroup<K, V>, topic: &str) {
        if let Some((k, v)) = group.pick(topic) {
            self.visit(k, v)
        }
    }
}

impl<K, V, F: FnMut(&K, &V)> Visitor<K, V> for F {
    fn visit(&mut self, key: &K, value: &V) {
        self(key, value)
    }
}

/// Every subscription of the broker: plain ones by (filter, key) and shared ones by (group,
/// filter, key). `K` identifies a session, `V` is whatever the broker keeps per subscription
/// (options, identifier); the index never looks inside `V`.
pub struct SubscriptionIndex<K, V> {
    root: Node<K, V>,
    len: usize,
}

impl<K, V> std::fmt::Debug for SubscriptionIndex<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscriptionIndex")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl<K, V> Default for SubscriptionIndex<K, V> {
    fn default() -> Self {
        SubscriptionIndex {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<K, V> Drop for SubscriptionIndex<K, V> {
    fn drop(&mut self) {
        dismantle(std::mem::take(&mut self.root));
    }
}

/// The call-stack part of the match stack: deeper or wider walks spill to the heap.
type Stack<'a, 't, K, V> = SmallVec<[(&'a Node<K, V>, Option<&'t str>); 16]>;

impl<K: Eq + Hash + Clone, V> SubscriptionIndex<K, V> {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of subscriptions: plain ones plus the members of every shared group.
    pub fn len(&self) -> usize {
        self.len
    }

    /// No subscriptions at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Subscribes `key` to `filter`. If `key` already has exactly this filter, replaces its value
    /// and returns the old one (a re-SUBSCRIBE replaces the subscription).
    pub fn insert(&mut self, filter: &str, key: K, value: V) -> Option<V> {
        let old = self.root.path_or_insert(filter).subs.insert(key, value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Unsubscribes `key` from `filter` (the exact string it subscribed with), returning its
    /// value.
    pub fn remove(&mut self, filter: &str, key: &K) -> Option<V> {
        let value = self.root.path_mut(filter)?.subs.remove(key)?;
        self.len -= 1;
        prune(&mut self.root, filter);
        Some(value)
    }

    /// The value of `key`'s plain subscription to exactly `filter`.
    pub fn get(&self, filter: &str, key: &K) -> Option<&V> {
        self.root.path(filter)?.subs.get(key)
    }

    /// Adds `key` to the shared group `group` (the whole group string, e.g. `g:2`) on `filter`
    /// (the inner filter, without `$share/<group>/`). If it is already a member, replaces its
    /// value in place (keeping its position, so sticky assignments stay) and returns the old one.
    pub fn insert_shared(&mut self, group: &str, filter: &str, key: K, value: V) -> Option<V> {
        self.insert_shared_with_mode(group, ShareMode::from_group(group), filter, key, value)
    }

    /// Like [`insert_shared`](Self::insert_shared), with the member choice given explicitly
    /// instead of read from the group string: for a group whose identity string carries more
    /// than its name (the broker's `$share/<group>/$filter/<params>/...` groups). The mode is
    /// fixed when the group is created.
    pub fn insert_shared_with_mode(
        &mut self,
        group: &str,
        mode: ShareMode,
        filter: &str,
        key: K,
        value: V,
    ) -> Option<V> {
        let node = self.root.path_or_insert(filter);
        let rare = node.rare.get_or_insert_with(Box::default);
        let i = match rare.shared.iter().position(|g| g.name() == group) {
            Some(i) => i,
            None => {
                rare.shared.push(SharedGroup::new(group, filter, mode));
                rare.shared.len() - 1
            }
        };
        let members = rare.shared[i].members_mut();
        if let Some((_, v)) = members.iter_mut().find(|(k, _)| *k == key) {
            return Some(std::mem::replace(v, value));
        }
        members.push((key, value));
        self.len += 1;
        None
    }

    /// Removes `key` from the shared group `group` on `filter`, returning its value. The other
    /// members keep their order; an emptied group is dropped.
    pub fn remove_shared(&mut self, group: &str, filter: &str, key: &K) -> Option<V> {
        let node = self.root.path_mut(filter)?;
        let rare = node.rare.as_mut()?;
        let gi = rare.shared.iter().position(|g| g.name() == group)?;
        let members = rare.shared[gi].members_mut();
        let mi = members.iter().position(|(k, _)| k == key)?;
        // `remove`, not `swap_remove`: members keep insertion order, which sticky picks rely on.
        let (_, value) = members.remove(mi);
        if members.is_empty() {
            rare.shared.swap_remove(gi);
            if rare.is_empty() {
                node.rare = None;
            }
        }
        self.len -= 1;
        prune(&mut self.root, filter);
        Some(value)
    }

    /// The shared group `group` on `filter`, if it has members.
    pub fn shared_group(&self, group: &str, filter: &str) -> Option<&SharedGroup<K, V>> {
        let rare = self.root.path(filter)?.rare.as_ref()?;
        rare.shared.iter().find(|g| g.name() == group)
    }

    /// Calls `visitor` for every subscription whose filter matches the topic name `topic`:
    /// [`Visitor::visit`] for each plain one, [`Visitor::visit_shared`] once per matching shared
    /// group. Order is unspecified. Does not allocate unless the walk is unusually deep or wide.
    pub fn for_each_match<Vis: Visitor<K, V> + ?Sized>(&self, topic: &str, visitor: &mut Vis) {
        let mut stack: Stack<'_, '_, K, V> = SmallVec::new();
        // Only at the root: a `$` topic is matched only by filters starting with `$`.
        self.root.step(
            Some(topic),
            topic.starts_with('$'),
            topic,
            &mut stack,
            visitor,
        );
        while let Some((node, rest)) = stack.pop() {
            node.step(rest, false, topic, &mut stack, visitor);
        }
    }

    /// The matching subscriptions, collected (shared groups contribute their default pick).
    /// For tests and tools; the broker uses [`for_each_match`](Self::for_each_match).
    pub fn matches(&self, topic: &str) -> Vec<(K, V)>
    where
        V: Clone,
    {
        let mut out = Vec::new();
        self.for_each_match(topic, &mut |k: &K, v: &V| out.push((k.clone(), v.clone())));
        out
    }

    #[cfg(test)]
    pub(crate) fn node_count(&self) -> usize {
        let mut count = 0;
        let mut stack = vec![&self.root];
        while let Some(node) = stack.pop() {
            count += 1;
            stack.extend(node.exact.iter().map(|(_, n)| n));
            stack.extend(node.plus.as_deref());
            stack.extend(node.hash.as_deref());
            if let Some(rare) = &node.rare {
                stack.extend(rare.alts.iter().map(|(_, n)| n));
            }
        }
        count
    }
}

/// What a filter level is, for choosing the child slot.
enum Slot<'a> {
    Plus,
    Hash,
    Alternatives(&'a str),
    Exact(&'a str),
}

fn slot(level: &str) -> Slot<'_> {
    match level {
        "+" => Slot::Plus,
        "#" => Slot::Hash,
        _ if level.contains(',') => Slot::Alternatives(level),
        _ => Slot::Exact(level),
    }
}

struct Node<K, V> {
    exact: LevelMap<Node<K, V>>,
    plus: Option<Box<Node<K, V>>>,
    hash: Option<Box<Node<K, V>>>,
    rare: Option<Box<Rare<K, V>>>,
    subs: Subscribers<K, V>,
}

/// The parts most nodes never use, boxed to keep every node small.
struct Rare<K, V> {
    /// Comma-alternative children, keyed by the whole level text.
    alts: Vec<(Box<str>, Node<K, V>)>,
    /// Shared groups subscribed with this node's filter, by group name.
    shared: Vec<SharedGroup<K, V>>,
}

impl<K, V> Default for Rare<K, V> {
    fn default() -> Self {
        Rare {
            alts: Vec::new(),
            shared: Vec::new(),
        }
    }
}

impl<K, V> Rare<K, V> {
    fn is_empty(&self) -> bool {
        self.alts.is_empty() && self.shared.is_empty()
    }
}

impl<K, V> Default for Node<K, V> {
    fn default() -> Self {
        Node {
            exact: LevelMap::default(),
            plus: None,
            hash: None,
            rare: None,
            subs: Subscribers::default(),
        }
    }
}

impl<K, V> TrieNode for Node<K, V> {
    fn has_content(&self) -> bool {
        !self.subs.entries.is_empty() || self.rare.as_ref().is_some_and(|r| !r.shared.is_empty())
    }

    fn child_count(&self) -> usize {
        self.exact.len()
            + usize::from(self.plus.is_some())
            + usize::from(self.hash.is_some())
            + self.rare.as_ref().map_or(0, |r| r.alts.len())
    }

    fn child(&self, level: &str) -> Option<&Node<K, V>> {
        match slot(level) {
            Slot::Plus => self.plus.as_deref(),
            Slot::Hash => self.hash.as_deref(),
            Slot::Alternatives(text) => {
                let rare = self.rare.as_ref()?;
                rare.alts.iter().find(|(t, _)| **t == *text).map(|(_, n)| n)
            }
            Slot::Exact(text) => self.exact.get(text),
        }
    }

    fn child_mut(&mut self, level: &str) -> Option<&mut Node<K, V>> {
        match slot(level) {
            Slot::Plus => self.plus.as_deref_mut(),
            Slot::Hash => self.hash.as_deref_mut(),
            Slot::Alternatives(text) => {
                let rare = self.rare.as_mut()?;
                rare.alts
                    .iter_mut()
                    .find(|(t, _)| **t == *text)
                    .map(|(_, n)| n)
            }
            Slot::Exact(text) => self.exact.get_mut(text),
        }
    }

    fn take_child(&mut self, level: &str) -> Option<Node<K, V>> {
        match slot(level) {
            Slot::Plus => self.plus.take().map(|b| *b),
            Slot::Hash => self.hash.take().map(|b| *b),
            Slot::Alternatives(text) => {
                let rare = self.rare.as_mut()?;
                let i = rare.alts.iter().position(|(t, _)| **t == *text)?;
                let (_, child) = rare.alts.swap_remove(i);
                if rare.is_empty() {
                    self.rare = None;
                }
                Some(child)
            }
            Slot::Exact(text) => self.exact.remove(text),
        }
    }

    fn drain_children(&mut self, out: &mut Vec<Node<K, V>>) {
        self.exact.drain_into(out);
        out.extend(self.plus.take().map(|b| *b));
        out.extend(self.hash.take().map(|b| *b));
        if let Some(rare) = &mut self.rare {
            out.extend(rare.alts.drain(..).map(|(_, n)| n));
        }
    }
}

impl<K, V> Node<K, V> {
    fn child_or_insert(&mut self, level: &str) -> &mut Node<K, V> {
        match slot(level) {
            Slot::Plus => self.plus.get_or_insert_with(Box::default),
            Slot::Hash => self.hash.get_or_insert_with(Box::default),
            Slot::Alternatives(text) => {
                let alts = &mut self.rare.get_or_insert_with(Box::default).alts;
                let i = match alts.iter().position(|(t, _)| **t == *text) {
                    Some(i) => i,
                    None => {
                        alts.push((text.into(), Node::default()));
                        alts.len() - 1
                    }
                };
                &mut alts[i].1
            }
            Slot::Exact(text) => self.exact.get_or_insert_with(text, Node::default),
        }
    }

    fn path(&self, filter: &str) -> Option<&Node<K, V>> {
        let mut node = self;
        for level in filter.split('/') {
            node = node.child(level)?;
        }
        Some(node)
    }

    fn path_mut(&mut self, filter: &str) -> Option<&mut Node<K, V>> {
        let mut node = self;
        for level in filter.split('/') {
            node = node.child_mut(level)?;
        }
        Some(node)
    }

    fn path_or_insert(&mut self, filter: &str) -> &mut Node<K, V> {
        let mut node = self;
        for level in filter.split('/') {
            node = node.child_or_insert(level);
        }
        node
    }

    /// Visits the subscribers of this node's own filter.
    #[inline]
    fn visit_here<Vis: Visitor<K, V> + ?Sized>(&self, topic: &str, visitor: &mut Vis) {
        for (k, v) in &self.subs.entries {
            visitor.visit(k, v);
        }
        if let Some(rare) = &self.rare {
            for group in &rare.shared {
                visitor.visit_shared(group, topic);
            }
        }
    }

    /// One step of the match walk: this node has matched the topic's levels before `rest`
    /// (`None`: all of them). `dollar_root` is set at the root for a `$` topic, where no
    /// wildcard and no alternative without a leading `$` may match [MQTT-4.7.2-1].
    #[inline]
    fn step<'a, 't, Vis: Visitor<K, V> + ?Sized>(
        &'a self,
        rest: Option<&'t str>,
        dollar_root: bool,
        topic: &str,
        stack: &mut Stack<'a, 't, K, V>,
        visitor: &mut Vis,
    ) {
        // `#` matches the levels so far (its parent) with anything or nothing after them.
        if !dollar_root && let Some(hash) = &self.hash {
            hash.visit_here(topic, visitor);
        }
        let Some(rest) = rest else {
            self.visit_here(topic, visitor);
            return;
        };
        let (level, after) = match memchr::memchr(b'/', rest.as_bytes()) {
            // `/` is ASCII, so both cuts are on character boundaries.
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        if let Some(child) = self.exact.get(level) {
            stack.push((child, after));
        }
        if !dollar_root && let Some(plus) = &self.plus {
            stack.push((plus, after));
        }
        if let Some(rare) = &self.rare {
            for (text, child) in &rare.alts {
                if dollar_root && !text.starts_with('$') {
                    continue;
                }
                if comma_level_matches(text, level) {
                    stack.push((child, after));
                }
            }
        }
    }
}

/// Plain subscribers of one filter.
struct Subscribers<K, V> {
    /// In no particular order (removal swaps the last one in).
    entries: Vec<(K, V)>,
    /// Where each key sits in `entries`, once there are more than [`INDEXED`] of them.
    positions: Option<Box<HashMap<K, usize>>>,
}

/// Up to this many subscribers are found by a linear scan.
const INDEXED: usize = 16;

impl<K, V> Default for Subscribers<K, V> {
    fn default() -> Self {
        Subscribers {
            entries: Vec::new(),
            positions: None,
        }
    }
}

impl<K: Eq + Hash + Clone, V> Subscribers<K, V> {
    fn position(&self, key: &K) -> Option<usize> {
        match &self.positions {
            Some(positions) => positions.get(key).copied(),
            None => self.entries.iter().position(|(k, _)| k == key),
        }
    }

    fn get(&self, key: &K) -> Option<&V> {
        let i = self.position(key)?;
        self.entries.get(i).map(|(_, v)| v)
    }

    fn insert(&mut self, key: K, value: V) -> Option<V> {
        if let Some(i) = self.position(&key)
            && let Some((_, v)) = self.entries.get_mut(i)
        {
            return Some(std::mem::replace(v, value));
        }
        if let Some(positions) = &mut self.positions {
            positions.insert(key.clone(), self.entries.len());
        }
        self.entries.push((key, value));
        if self.positions.is_none() && self.entries.len() > INDEXED {
            let positions = self
                .entries
                .iter()
                .enumerate()
                .map(|(i, (k, _))| (k.clone(), i))
                .collect();
            self.positions = Some(Box::new(positions));
        }
        None
    }

    fn remove(&mut self, key: &K) -> Option<V> {
        let i = self.position(key)?;
        if i >= self.entries.len() {
            return None;
        }
        let (_, value) = self.entries.swap_remove(i);
        if let Some(positions) = &mut self.positions {
            positions.remove(key);
            if let Some((moved, _)) = self.entries.get(i)
                && let Some(slot) = positions.get_mut(moved)
            {
                *slot = i;
            }
            // Drop the map well below the threshold, so a count hovering around it does not
            // rebuild it on every change.
            if self.entries.len() <= INDEXED / 2 {
                self.positions = None;
            }
        }
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(
        index: &SubscriptionIndex<u32, &'static str>,
        topic: &str,
    ) -> Vec<(u32, &'static str)> {
        let mut m = index.matches(topic);
        m.sort_unstable();
        m
    }

    fn keys(index: &SubscriptionIndex<u32, &'static str>, topic: &str) -> Vec<u32> {
        sorted(index, topic).into_iter().map(|(k, _)| k).collect()
    }

    #[test]
    fn exact_plus_and_hash() {
        let mut idx = SubscriptionIndex::new();
        idx.insert("a/b/c", 1, "exact");
        idx.insert("a/+/c", 2, "plus");
        idx.insert("a/#", 3, "hash");
        idx.insert("#", 4, "all");
        idx.insert("+", 5, "one level");
        idx.insert("a/b", 6, "other");
        assert_eq!(idx.len(), 6);
        assert_eq!(keys(&idx, "a/b/c"), [1, 2, 3, 4]);
        assert_eq!(keys(&idx, "a/x/c"), [2, 3, 4]);
        assert_eq!(keys(&idx, "a"), [3, 4, 5]);
        assert_eq!(keys(&idx, "a/b"), [3, 4, 6]);
        assert_eq!(keys(&idx, "b"), [4, 5]);
        assert_eq!(keys(&idx, "a/b/c/d"), [3, 4]);
    }

    #[test]
    fn empty_levels() {
        let mut idx = SubscriptionIndex::new();
        idx.insert("a//b", 1, "");
        idx.insert("/+", 2, "");
        idx.insert("+/+", 3, "");
        idx.insert("a/+/b", 4, "");
        idx.insert("a/", 5, "");
        assert_eq!(keys(&idx, "a//b"), [1, 4]);
        assert_eq!(keys(&idx, "/x"), [2, 3]);
        assert_eq!(keys(&idx, "/"), [2, 3]);
        assert_eq!(keys(&idx, "a/"), [3, 5]);
        assert_eq!(keys(&idx, "a"), Vec::<u32>::new());
    }

    #[test]
    fn dollar_topics() {
        let mut idx = SubscriptionIndex::new();
        idx.insert("#", 1, "");
        idx.insert("+/x", 2, "");
        idx.insert("$SYS/#", 3, "");
        idx.insert("$SYS/+", 4, "");
        idx.insert("+/#", 5, "");
        idx.insert("a,$SYS/x", 6, "");
        idx.insert("$SYS,a/x", 7, "");
        assert_eq!(keys(&idx, "$SYS/x"), [3, 4, 7]);
        assert_eq!(keys(&idx, "$SYS"), [3]);
        assert_eq!(keys(&idx, "a/x"), [1, 2, 5, 6, 7]);
        // `$` deeper down is an ordinary character.
        assert_eq!(keys(&idx, "a/$x"), [1, 5]);
    }

    #[test]
    fn comma_alternatives() {
        let mut idx = SubscriptionIndex::new();
        idx.insert("flespi/state/gw/devices/1,2,3/connected", 1, "");
        idx.insert("flespi/state/gw/devices/+/connected", 2, "");
        idx.insert("flespi/state/gw/devices/3,4/#", 3, "");
        idx.insert("x/1,2", 4, "");
        idx.insert("x/1", 5, "");
        assert_eq!(keys(&idx, "flespi/state/gw/devices/1/connected"), [1, 2]);
        assert_eq!(keys(&idx, "flespi/state/gw/devices/3/connected"), [1, 2, 3]);
        assert_eq!(keys(&idx, "flespi/state/gw/devices/4"), [3]);
        assert_eq!(
            keys(&idx, "flespi/state/gw/devices/1,2,3/connected"),
            [1, 2]
        );
        assert_eq!(keys(&idx, "x/1,2"), [4]);
        assert_eq!(keys(&idx, "x/1"), [4, 5]);
        assert_eq!(keys(&idx, "x/2"), [4]);
        assert_eq!(keys(&idx, "x/12"), Vec::<u32>::new());
    }

    #[test]
    fn insert_replaces_and_remove_returns() {
        let mut idx = SubscriptionIndex::new();
        assert_eq!(idx.insert("a/+", 1, "qos0"), None);
        assert_eq!(idx.insert("a/+", 1, "qos1"), Some("qos0"));
        assert_eq!(idx.insert("a/#", 1, "other"), None);
        assert_eq!(idx.len(), 2);
        assert_eq!(idx.get("a/+", &1), Some(&"qos1"));
        // One visit per matching filter: the broker merges them.
        assert_eq!(sorted(&idx, "a/b"), [(1, "other"), (1, "qos1")]);
        assert_eq!(idx.remove("a/+", &2), None);
        assert_eq!(idx.remove("a/b", &1), None);
        assert_eq!(idx.remove("a/+", &1), Some("qos1"));
        assert_eq!(idx.remove("a/+", &1), None);
        assert_eq!(idx.len(), 1);
        assert_eq!(sorted(&idx, "a/b"), [(1, "other")]);
    }

    #[test]
    fn removal_prunes_nodes() {
        let mut idx: SubscriptionIndex<u32, ()> = SubscriptionIndex::new();
        let filters = [
            "a/b/c",
            "a/b",
            "a/+/c",
            "a/#",
            "#",
            "x/1,2/y",
            "x/1,2",
            "//",
            "a/b/c/d/e/f",
            "+/+/#",
        ];
        for (i, f) in filters.iter().enumerate() {
            idx.insert(f, i as u32, ());
            idx.insert_shared("g", f, i as u32, ());
        }
        assert_eq!(idx.len(), 2 * filters.len());
        for (i, f) in filters.iter().enumerate().rev() {
            assert_eq!(idx.remove(f, &(i as u32)), Some(()));
            assert_eq!(idx.remove_shared("g", f, &(i as u32)), Some(()));
        }
        assert!(idx.is_empty());
        assert_eq!(idx.node_count(), 1);
    }

    #[test]
    fn pruning_keeps_shared_prefixes() {
        let mut idx: SubscriptionIndex<u32, ()> = SubscriptionIndex::new();
        idx.insert("a/b/c/d", 1, ());
        idx.insert("a/b", 2, ());
        idx.insert("a/x", 3, ());
        assert_eq!(idx.node_count(), 6);
        idx.remove("a/b/c/d", &1);
        assert_eq!(idx.node_count(), 4);
        assert_eq!(keys_unit(&idx, "a/b"), [2]);
        idx.remove("a/b", &2);
        assert_eq!(idx.node_count(), 3);
        assert_eq!(keys_unit(&idx, "a/x"), [3]);
    }

    fn keys_unit(index: &SubscriptionIndex<u32, ()>, topic: &str) -> Vec<u32> {
        let mut k: Vec<u32> = index.matches(topic).into_iter().map(|(k, _)| k).collect();
        k.sort_unstable();
        k
    }

    #[test]
    fn many_subscribers_on_one_filter() {
        let mut idx: SubscriptionIndex<u32, u32> = SubscriptionIndex::new();
        for k in 0..1000 {
            idx.insert("#", k, k);
        }
        assert_eq!(idx.insert("#", 7, 70), Some(7));
        for k in (0..1000).step_by(2) {
            assert_eq!(idx.remove("#", &k), Some(k));
        }
        assert_eq!(idx.len(), 500);
        for k in 0..1000 {
            assert_eq!(idx.get("#", &k).is_some(), k % 2 == 1, "{k}");
        }
        let mut got: Vec<u32> = idx.matches("t").into_iter().map(|(k, _)| k).collect();
        got.sort_unstable();
        assert_eq!(got, (0..1000).filter(|k| k % 2 == 1).collect::<Vec<_>>());
        for k in (1..1000).step_by(2) {
            assert_eq!(idx.remove("#", &k), Some(if k == 7 { 70 } else { k }));
        }
        assert!(idx.is_empty());
        assert_eq!(idx.node_count(), 1);
    }

    #[test]
    fn shared_groups_deliver_to_one_member() {
        let mut idx: SubscriptionIndex<u32, &str> = SubscriptionIndex::new();
        idx.insert_shared("g", "a/+", 1, "m1");
        idx.insert_shared("g", "a/+", 2, "m2");
        idx.insert_shared("g", "a/+", 3, "m3");
        idx.insert_shared("h:1", "a/#", 4, "h4");
        idx.insert("a/+", 9, "plain");
        assert_eq!(idx.insert_shared("g", "a/+", 2, "m2'"), Some("m2"));
        assert_eq!(idx.len(), 5);
        let group = idx.shared_group("g", "a/+").unwrap();
        assert_eq!(group.name(), "g");
        assert_eq!(group.filter(), "a/+");
        assert_eq!(group.members(), [(1, "m1"), (2, "m2'"), (3, "m3")]);
        for _ in 0..50 {
            let m = idx.matches("a/b");
            assert_eq!(m.len(), 3, "{m:?}");
            assert_eq!(m.iter().filter(|(k, _)| *k <= 3).count(), 1);
            assert!(m.contains(&(4, "h4")));
            assert!(m.contains(&(9, "plain")));
        }
        assert_eq!(idx.remove_shared("g", "a/+", &2), Some("m2'"));
        assert_eq!(idx.remove_shared("g", "a/+", &2), None);
        assert_eq!(idx.remove_shared("x", "a/+", &1), None);
        assert_eq!(idx.remove_shared("g", "a/#", &1), None);
        let group = idx.shared_group("g", "a/+").unwrap();
        assert_eq!(group.members(), [(1, "m1"), (3, "m3")]);
        idx.remove_shared("g", "a/+", &1);
        idx.remove_shared("g", "a/+", &3);
        assert!(idx.shared_group("g", "a/+").is_none());
        assert_eq!(idx.len(), 2);
    }

    #[test]
    fn custom_visitor_sees_groups() {
        struct Online {
            offline: u32,
            got: Vec<(u32, String)>,
        }
        impl Visitor<u32, ()> for Online {
            fn visit(&mut self, key: &u32, _: &()) {
                self.got.push((*key, String::new()));
            }
            fn visit_shared(&mut self, group: &SharedGroup<u32, ()>, topic: &str) {
                if let Some((k, _)) = group.pick_where(topic, |k| *k != self.offline) {
                    self.got.push((*k, group.name().to_owned()));
                }
            }
        }
        let mut idx: SubscriptionIndex<u32, ()> = SubscriptionIndex::new();
        idx.insert_shared("g:1", "d/#", 1, ());
        idx.insert_shared("g:1", "d/#", 2, ());
        for id in 0..100 {
            let topic = format!("d/{id}");
            let mut v = Online {
                offline: 1,
                got: Vec::new(),
            };
            idx.for_each_match(&topic, &mut v);
            assert_eq!(v.got, [(2, "g:1".to_owned())]);
        }
    }

    #[test]
    fn closure_visitor() {
        let mut idx: SubscriptionIndex<u32, u8> = SubscriptionIndex::new();
        idx.insert("a/#", 1, 1);
        idx.insert("a/b", 2, 2);
        let mut total = 0u32;
        idx.for_each_match("a/b", &mut |_: &u32, v: &u8| total += u32::from(*v));
        assert_eq!(total, 3);
    }

    #[test]
    fn invalid_filters_do_not_panic() {
        let mut idx: SubscriptionIndex<u32, ()> = SubscriptionIndex::new();
        for f in ["#/a", "a/#/b", "a+/b", "a,+", "", "a,#/x"] {
            idx.insert(f, 1, ());
        }
        assert!(keys_unit(&idx, "x/a").is_empty());
        assert!(keys_unit(&idx, "a/b").is_empty());
        assert_eq!(keys_unit(&idx, "a+/b"), [1]);
        assert_eq!(keys_unit(&idx, "+"), [1]);
        for f in ["#/a", "a/#/b", "a+/b", "a,+", "", "a,#/x"] {
            assert_eq!(idx.remove(f, &1), Some(()), "{f:?}");
        }
        assert_eq!(idx.node_count(), 1);
    }

    #[test]
    fn deep_filters_do_not_overflow_the_stack() {
        // 32,768 levels, as deep as a 65535-byte filter goes; the test thread's stack is small.
        let deep = "a/".repeat(32_767) + "a";
        let deep_plus = "+/".repeat(32_767) + "#";
        let mut idx: SubscriptionIndex<u32, ()> = SubscriptionIndex::new();
        idx.insert(&deep, 1, ());
        idx.insert(&deep_plus, 2, ());
        idx.insert("a/a/a", 3, ());
        assert_eq!(keys_unit(&idx, &deep), [1, 2]);
        assert_eq!(idx.remove(&deep, &1), Some(()));
        assert_eq!(keys_unit(&idx, &deep), [2]);
        // Drop with a deep branch still in place.
        drop(idx);
    }

    #[test]
    fn hundred_thousand_subscriptions() {
        let mut idx: SubscriptionIndex<u32, ()> = SubscriptionIndex::new();
        let mut key = 0u32;
        for device in 0..90_000 {
            idx.insert(&format!("devices/{device}/telemetry"), key, ());
            key += 1;
        }
        for device in 0..5_000 {
            idx.insert(&format!("devices/{device}/+"), key, ());
            key += 1;
        }
        for device in 0..5_000 {
            idx.insert(&format!("devices/{device}/#"), key, ());
            key += 1;
        }
        idx.insert("devices/+/telemetry", key, ());
        idx.insert("#", key + 1, ());
        assert_eq!(idx.len(), 100_002);
        assert_eq!(
            keys_unit(&idx, "devices/42/telemetry"),
            [42, 90_042, 95_042, key, key + 1]
        );
        assert_eq!(
            keys_unit(&idx, "devices/89999/telemetry"),
            [89_999, key, key + 1]
        );
        assert_eq!(
            keys_unit(&idx, "devices/7/status"),
            [90_007, 95_007, key + 1]
        );
        assert_eq!(keys_unit(&idx, "devices/7"), [95_007, key + 1]);
        assert_eq!(keys_unit(&idx, "$SYS/devices/7"), Vec::<u32>::new());
    }
}
