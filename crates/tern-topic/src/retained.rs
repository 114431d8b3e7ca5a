//! The retained tree: the last retained message of every topic, found by topic filter when a
//! client subscribes.
//!
//! A trie keyed by topic level (exact levels only: retained topics are names, not filters). Each
//! node with a message also keeps the full topic string, so a lookup hands out `&str` topics
//! without rebuilding them. Lookups walk an explicit stack of child iterators, removal prunes
//! empty nodes, and `Drop` takes deep branches apart iteratively: no recursion anywhere, so a
//! topic of 30,000 levels cannot overflow the thread's stack.

use smallvec::SmallVec;

use crate::trie::{self, LevelMap, TrieNode, dismantle, prune};

/// Retained messages by topic name. `V` is whatever the broker keeps (payload, properties,
/// expiry); the tree never looks inside it.
pub struct RetainedTree<V> {
    root: Node<V>,
    len: usize,
}

struct Node<V> {
    children: LevelMap<Node<V>>,
    /// The full topic and its message, if one is retained exactly here.
    entry: Option<(Box<str>, V)>,
}

impl<V> Default for Node<V> {
    fn default() -> Self {
        Node {
            children: LevelMap::default(),
            entry: None,
        }
    }
}

impl<V> TrieNode for Node<V> {
    fn child(&self, level: &str) -> Option<&Self> {
        self.children.get(level)
    }

    fn child_mut(&mut self, level: &str) -> Option<&mut Self> {
        self.children.get_mut(level)
    }

    fn take_child(&mut self, level: &str) -> Option<Self> {
        self.children.remove(level)
    }

    fn child_count(&self) -> usize {
        self.children.len()
    }

    fn has_content(&self) -> bool {
        self.entry.is_some()
    }

    fn drain_children(&mut self, out: &mut Vec<Self>) {
        self.children.drain_into(out);
    }
}

impl<V> Node<V> {
    fn path(&self, topic: &str) -> Option<&Node<V>> {
        let mut node = self;
        for level in topic.split('/') {
            node = node.children.get(level)?;
        }
        Some(node)
    }

    fn path_mut(&mut self, topic: &str) -> Option<&mut Node<V>> {
        let mut node = self;
        for level in topic.split('/') {
            node = node.children.get_mut(level)?;
        }
        Some(node)
    }
}

impl<V> std::fmt::Debug for RetainedTree<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetainedTree")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl<V> Default for RetainedTree<V> {
    fn default() -> Self {
        RetainedTree {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<V> Drop for RetainedTree<V> {
    fn drop(&mut self) {
        dismantle(std::mem::take(&mut self.root));
    }
}

/// Pending work of a lookup. `guard` is set for the root's children when the filter does not
/// start with `$`: those children must not start with `$` either [MQTT-4.7.2-1].
enum Frame<'a, 'f, V> {
    /// `node` has matched the filter's levels before `rest` (`None`: all of them).
    Match(&'a Node<V>, Option<&'f str>, bool),
    /// Children that each match a `+`, then go on with `rest`.
    Plus(trie::Iter<'a, Node<V>>, Option<&'f str>, bool),
    /// Children below a `#`: all of them, and everything under them.
    All(trie::Iter<'a, Node<V>>, bool),
}

/// Above this many alternatives in one level, repeated ones are found with a hash set rather
/// than by rescanning the level.
const FEW_ALTERNATIVES: usize = 16;

impl<V> RetainedTree<V> {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of retained messages.
    pub fn len(&self) -> usize {
        self.len
    }

    /// No retained messages.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Retains `value` for `topic`, returning the message it replaces.
    pub fn insert(&mut self, topic: &str, value: V) -> Option<V> {
        let mut node = &mut self.root;
        for level in topic.split('/') {
            node = node.children.get_or_insert_with(level, Node::default);
        }
        match &mut node.entry {
            Some((_, old)) => Some(std::mem::replace(old, value)),
            None => {
                node.entry = Some((topic.into(), value));
                self.len += 1;
                None
            }
        }
    }

    /// Removes the message retained for `topic` (an empty retained PUBLISH), pruning nodes left
    /// empty.
    pub fn remove(&mut self, topic: &str) -> Option<V> {
        let (_, value) = self.root.path_mut(topic)?.entry.take()?;
        self.len -= 1;
        prune(&mut self.root, topic);
        Some(value)
    }

    /// The message retained for exactly `topic`.
    pub fn get(&self, topic: &str) -> Option<&V> {
        self.root.path(topic)?.entry.as_ref().map(|(_, v)| v)
    }

    /// Calls `f(topic, message)` for every retained message whose topic matches `filter`, with
    /// the rules of [`crate::matches()`] (`+`, `#` including its parent, `$`, comma alternatives,
    /// empty levels). Order is unspecified.
    pub fn for_each_match(&self, filter: &str, mut f: impl FnMut(&str, &V)) {
        let guard_root = !filter.starts_with('$');
        let mut stack: SmallVec<[Frame<'_, '_, V>; 16]> = SmallVec::new();
        stack.push(Frame::Match(&self.root, Some(filter), guard_root));
        while let Some(frame) = stack.pop() {
            match frame {
                Frame::Match(node, None, _) => {
                    if let Some((topic, value)) = &node.entry {
                        f(topic, value);
                    }
                }
                Frame::Match(node, Some(rest), guard) => {
                    let (level, after) = match memchr::memchr(b'/', rest.as_bytes()) {
                        // `/` is ASCII, so both cuts are on character boundaries.
                        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
                        None => (rest, None),
                    };
                    match level {
                        // Only as the last level; an invalid `#/x` matches nothing.
                        "#" if after.is_none() => {
                            // `#` matches its parent level too (the root never holds one).
                            if let Some((topic, value)) = &node.entry {
                                f(topic, value);
                            }
                            stack.push(Frame::All(node.children.iter(), guard));
                        }
                        "#" => {}
                        "+" => stack.push(Frame::Plus(node.children.iter(), after, guard)),
                        _ if level.contains(',') => {
                            push_alternatives(node, level, after, guard, &mut stack);
                        }
                        _ => {
                            if let Some(child) = exact_child(node, level, guard) {
                                stack.push(Frame::Match(child, after, false));
                            }
                        }
                    }
                }
                Frame::Plus(mut children, after, guard) => {
                    if let Some((level, child)) = children.next() {
                        stack.push(Frame::Plus(children, after, guard));
                        if !(guard && level.starts_with('$')) {
                            stack.push(Frame::Match(child, after, false));
                        }
                    }
                }
                Frame::All(mut children, guard) => {
                    if let Some((level, child)) = children.next() {
                        stack.push(Frame::All(children, guard));
                        if guard && level.starts_with('$') {
                            continue;
                        }
                        if let Some((topic, value)) = &child.entry {
                            f(topic, value);
                        }
                        if !child.children.is_empty() {
                            stack.push(Frame::All(child.children.iter(), false));
                        }
                    }
                }
            }
        }
    }

    /// Keeps only the messages for which `f(topic, &mut message)` is true (expiry sweeps), and
    /// prunes the nodes the others leave empty.
    pub fn retain(&mut self, mut f: impl FnMut(&str, &mut V) -> bool) {
        let mut removed: Vec<Box<str>> = Vec::new();
        let mut stack: Vec<&mut Node<V>> = vec![&mut self.root];
        while let Some(node) = stack.pop() {
            let keep = match &mut node.entry {
                Some((topic, value)) => f(topic, value),
                None => true,
            };
            if !keep && let Some((topic, _)) = node.entry.take() {
                removed.push(topic);
            }
            stack.extend(node.children.values_mut());
        }
        self.len -= removed.len();
        for topic in &removed {
            prune(&mut self.root, topic);
        }
    }

    /// Every retained message as (topic, message), in no particular order.
    pub fn iter(&self) -> Iter<'_, V> {
        Iter {
            stack: vec![self.root.children.iter()],
            remaining: self.len,
        }
    }

    #[cfg(test)]
    pub(crate) fn node_count(&self) -> usize {
        let mut count = 0;
        let mut stack = vec![&self.root];
        while let Some(node) = stack.pop() {
            count += 1;
            stack.extend(node.children.iter().map(|(_, n)| n));
        }
        count
    }
}

/// The child for an exact filter level, unless the `$` rule hides it.
fn exact_child<'a, V>(node: &'a Node<V>, level: &str, guard: bool) -> Option<&'a Node<V>> {
    if guard && level.starts_with('$') {
        return None;
    }
    node.children.get(level)
}

/// A comma level matches the child named by each alternative, and the child named by the whole
/// level. Each child at most once: `a,a` must not report `a` twice.
fn push_alternatives<'a, 'f, V>(
    node: &'a Node<V>,
    level: &str,
    after: Option<&'f str>,
    guard: bool,
    stack: &mut SmallVec<[Frame<'a, 'f, V>; 16]>,
) {
    // The whole level contains a comma, so it is never one of its alternatives.
    if let Some(child) = exact_child(node, level, guard) {
        stack.push(Frame::Match(child, after, false));
    }
    let many = level.split(',').nth(FEW_ALTERNATIVES).is_some();
    let mut seen: hashbrown::HashSet<&str> = hashbrown::HashSet::new();
    for (i, alternative) in level.split(',').enumerate() {
        let repeated = if many {
            !seen.insert(alternative)
        } else {
            level
                .split(',')
                .take(i)
                .any(|earlier| earlier == alternative)
        };
        if repeated {
            continue;
        }
        if let Some(child) = exact_child(node, alternative, guard) {
            stack.push(Frame::Match(child, after, false));
        }
    }
}

/// The iterator of [`RetainedTree::iter`].
pub struct Iter<'a, V> {
    stack: Vec<trie::Iter<'a, Node<V>>>,
    remaining: usize,
}

impl<V> std::fmt::Debug for Iter<'_, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Iter")
            .field("remaining", &self.remaining)
            .finish_non_exhaustive()
    }
}

impl<'a, V> Iterator for Iter<'a, V> {
    type Item = (&'a str, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let children = self.stack.last_mut()?;
            match children.next() {
                Some((_, node)) => {
                    if !node.children.is_empty() {
                        self.stack.push(node.children.iter());
                    }
                    if let Some((topic, value)) = &node.entry {
                        self.remaining -= 1;
                        return Some((topic, value));
                    }
                }
                None => {
                    self.stack.pop();
                }
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl<V> ExactSizeIterator for Iter<'_, V> {}

impl<'a, V> IntoIterator for &'a RetainedTree<V> {
    type Item = (&'a str, &'a V);
    type IntoIter = Iter<'a, V>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(topics: &[&str]) -> RetainedTree<usize> {
        let mut t = RetainedTree::new();
        for (i, topic) in topics.iter().enumerate() {
            assert_eq!(t.insert(topic, i), None);
        }
        t
    }

    fn lookup(t: &RetainedTree<usize>, filter: &str) -> Vec<String> {
        let mut out = Vec::new();
        t.for_each_match(filter, |topic, v| {
            assert_eq!(t.get(topic), Some(v));
            out.push(topic.to_owned());
        });
        out.sort_unstable();
        out
    }

    const TOPICS: &[&str] = &[
        "a", "a/b", "a/b/c", "a/c", "a//b", "/a", "a/", "$SYS/x", "$SYS", "x/$y", "1,2", "1", "2",
    ];

    #[test]
    fn insert_get_replace_remove() {
        let mut t = tree(TOPICS);
        assert_eq!(t.len(), TOPICS.len());
        assert_eq!(t.get("a/b"), Some(&1));
        assert_eq!(t.get("a/b/"), None);
        assert_eq!(t.get("b"), None);
        assert_eq!(t.insert("a/b", 100), Some(1));
        assert_eq!(t.get("a/b"), Some(&100));
        assert_eq!(t.len(), TOPICS.len());
        assert_eq!(t.remove("a/b"), Some(100));
        assert_eq!(t.remove("a/b"), None);
        assert_eq!(t.get("a/b/c"), Some(&2));
        assert_eq!(t.len(), TOPICS.len() - 1);
    }

    #[test]
    fn wildcards() {
        let t = tree(TOPICS);
        assert_eq!(lookup(&t, "a/+"), ["a/", "a/b", "a/c"]);
        assert_eq!(
            lookup(&t, "a/#"),
            ["a", "a/", "a//b", "a/b", "a/b/c", "a/c"]
        );
        assert_eq!(lookup(&t, "+"), ["1", "1,2", "2", "a"]);
        assert_eq!(lookup(&t, "+/+"), ["/a", "a/", "a/b", "a/c", "x/$y"]);
        assert_eq!(lookup(&t, "+/+/+"), ["a//b", "a/b/c"]);
        assert_eq!(lookup(&t, "a/+/b"), ["a//b"]);
        assert_eq!(lookup(&t, "/+"), ["/a"]);
        assert_eq!(lookup(&t, "#").len(), TOPICS.len() - 2);
        assert_eq!(lookup(&t, "a/b/c/#"), ["a/b/c"]);
        assert!(lookup(&t, "a/b/c/d/#").is_empty());
        assert!(lookup(&t, "a/#/c").is_empty());
    }

    #[test]
    fn dollar_topics() {
        let t = tree(TOPICS);
        assert_eq!(lookup(&t, "$SYS/#"), ["$SYS", "$SYS/x"]);
        assert_eq!(lookup(&t, "$SYS/+"), ["$SYS/x"]);
        assert!(!lookup(&t, "#").iter().any(|t| t.starts_with('$')));
        assert!(lookup(&t, "+/x").is_empty());
        assert_eq!(lookup(&t, "x/+"), ["x/$y"]);
        assert!(lookup(&t, "a,$SYS/x").is_empty());
        assert_eq!(lookup(&t, "$SYS,a/x"), ["$SYS/x"]);
    }

    #[test]
    fn comma_alternatives() {
        let t = tree(TOPICS);
        assert_eq!(lookup(&t, "1,2"), ["1", "1,2", "2"]);
        assert_eq!(lookup(&t, "2,2,2,1"), ["1", "2"]);
        assert_eq!(lookup(&t, "a/b,c"), ["a/b", "a/c"]);
        assert_eq!(lookup(&t, "a/b,"), ["a/", "a/b"]);
        assert_eq!(
            lookup(&t, "a,x/#"),
            ["a", "a/", "a//b", "a/b", "a/b/c", "a/c", "x/$y"]
        );
        let many = (0..40)
            .map(|i| (i % 3).to_string())
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(lookup(&t, &many), ["1", "2"]);
    }

    #[test]
    fn retain_and_prune() {
        let mut t = tree(TOPICS);
        let nodes = t.node_count();
        t.retain(|topic, v| {
            *v += 1000;
            !topic.starts_with('a')
        });
        assert_eq!(t.len(), 7);
        assert_eq!(t.get("$SYS/x"), Some(&1007));
        assert_eq!(t.get("a"), None);
        assert!(t.node_count() < nodes);
        t.retain(|_, _| false);
        assert!(t.is_empty());
        assert_eq!(t.node_count(), 1);
        assert_eq!(t.iter().count(), 0);
    }

    #[test]
    fn remove_prunes() {
        let mut t = tree(&["a/b/c/d", "a/b", "a/x"]);
        assert_eq!(t.node_count(), 6);
        t.remove("a/b/c/d");
        assert_eq!(t.node_count(), 4);
        t.remove("a/b");
        assert_eq!(t.node_count(), 3);
        t.remove("a/x");
        assert_eq!(t.node_count(), 1);
    }

    #[test]
    fn iterates_everything() {
        let t = tree(TOPICS);
        assert_eq!(t.iter().len(), TOPICS.len());
        let mut all: Vec<(&str, usize)> = t.iter().map(|(k, v)| (k, *v)).collect();
        all.sort_unstable_by_key(|(_, v)| *v);
        let expected: Vec<(&str, usize)> = TOPICS.iter().copied().zip(0..).collect();
        assert_eq!(all, expected);
        assert_eq!((&t).into_iter().count(), TOPICS.len());
    }

    #[test]
    fn deep_topics_do_not_overflow_the_stack() {
        let deep = "a/".repeat(32_767) + "a";
        let mut t = RetainedTree::new();
        t.insert(&deep, 1);
        t.insert("a/a", 2);
        let mut n = 0;
        t.for_each_match("#", |_, _| n += 1);
        assert_eq!(n, 2);
        assert_eq!(t.iter().count(), 2);
        t.retain(|topic, _| topic.len() < 10);
        assert_eq!(t.len(), 1);
        t.insert(&deep, 1);
        assert_eq!(t.remove(&deep), Some(1));
        t.insert(&deep, 1);
        drop(t);
    }

    #[test]
    fn hundred_thousand_topics() {
        let mut t = RetainedTree::new();
        for device in 0..50_000 {
            t.insert(&format!("devices/{device}/telemetry"), device);
            t.insert(&format!("devices/{device}/status"), device);
        }
        assert_eq!(t.len(), 100_000);
        let mut n = 0;
        t.for_each_match("devices/+/status", |_, _| n += 1);
        assert_eq!(n, 50_000);
        let mut got = Vec::new();
        t.for_each_match("devices/7,70,700/#", |topic, _| got.push(topic.to_owned()));
        got.sort_unstable();
        assert_eq!(got.len(), 6);
        assert_eq!(got[0], "devices/7/status");
    }
}
