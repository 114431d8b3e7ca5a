//! What the subscription index and the retained tree share: the children of a node keyed by
//! their exact level text ([`LevelMap`]), and pruning and teardown that never recurse
//! ([`TrieNode`], [`prune`], [`dismantle`]).
//!
//! Most nodes have one or a few children (`devices/<id>/telemetry` has one below each id), so up
//! to [`SMALL`] children live in a vector compared by string, which is both smaller and faster
//! than a hash table that size. Past that the children move to a hash map (foldhash, seeded per
//! process, so crafted level names cannot force collisions). A map that shrinks back to a few
//! children returns to the vector.

use hashbrown::HashMap;
use hashbrown::hash_map::RawEntryMut;

/// The structure [`prune`] and [`dismantle`] need from a node.
pub(crate) trait TrieNode: Sized {
    /// The child for one level of a path.
    fn child(&self, level: &str) -> Option<&Self>;
    fn child_mut(&mut self, level: &str) -> Option<&mut Self>;
    /// Detaches the child for one level of a path.
    fn take_child(&mut self, level: &str) -> Option<Self>;
    fn child_count(&self) -> usize;
    /// Holds something of its own (subscribers, a retained message).
    fn has_content(&self) -> bool;
    /// Moves every child out into `out`.
    fn drain_children(&mut self, out: &mut Vec<Self>);
}

/// Drops the nodes on `path` that hold nothing any more: the deepest run of nodes without
/// content whose only child is the next node on the path, ending in a node without content or
/// children. Finds it read-only, then detaches it with one mutable walk; the root stays.
pub(crate) fn prune<N: TrieNode>(root: &mut N, path: &str) {
    let mut node = &*root;
    let mut cut = None;
    for (depth, level) in path.split('/').enumerate() {
        let Some(child) = node.child(level) else {
            return;
        };
        if child.has_content() || child.child_count() > 1 {
            cut = None;
        } else if cut.is_none() {
            cut = Some(depth);
        }
        node = child;
    }
    if node.has_content() || node.child_count() > 0 {
        return;
    }
    let Some(cut) = cut else {
        return;
    };
    let mut levels = path.split('/');
    let mut parent = root;
    for _ in 0..cut {
        let Some(next) = levels.next().and_then(|level| parent.child_mut(level)) else {
            return;
        };
        parent = next;
    }
    if let Some(level) = levels.next()
        && let Some(branch) = parent.take_child(level)
    {
        dismantle(branch);
    }
}

/// Takes a branch apart without recursion: the compiler's drop recurses once per level, and a
/// 65535-byte topic has 32768 of them.
pub(crate) fn dismantle<N: TrieNode>(node: N) {
    if node.child_count() == 0 {
        return;
    }
    let mut stack = vec![node];
    while let Some(mut node) = stack.pop() {
        node.drain_children(&mut stack);
    }
}

/// Most children kept in the vector form.
const SMALL: usize = 8;
/// A map with this many children or fewer turns back into a vector (below [`SMALL`], so one
/// subscription flapping at the boundary does not convert back and forth).
const SHRINK: usize = 4;

pub(crate) enum LevelMap<N> {
    Small(Vec<(Box<str>, N)>),
    Large(HashMap<Box<str>, N>),
}

impl<N> Default for LevelMap<N> {
    fn default() -> Self {
        LevelMap::Small(Vec::new())
    }
}

impl<N> LevelMap<N> {
    pub(crate) fn len(&self) -> usize {
        match self {
            LevelMap::Small(v) => v.len(),
            LevelMap::Large(m) => m.len(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[inline]
    pub(crate) fn get(&self, level: &str) -> Option<&N> {
        match self {
            LevelMap::Small(v) => v.iter().find(|(k, _)| **k == *level).map(|(_, n)| n),
            LevelMap::Large(m) => m.get(level),
        }
    }

    pub(crate) fn get_mut(&mut self, level: &str) -> Option<&mut N> {
        match self {
            LevelMap::Small(v) => v.iter_mut().find(|(k, _)| **k == *level).map(|(_, n)| n),
            LevelMap::Large(m) => m.get_mut(level),
        }
    }

    /// The child for `level`, created by `make` if missing.
    pub(crate) fn get_or_insert_with(&mut self, level: &str, make: impl FnOnce() -> N) -> &mut N {
        if let LevelMap::Small(v) = self
            && v.len() >= SMALL
            && !v.iter().any(|(k, _)| **k == *level)
        {
            let map: HashMap<Box<str>, N> = std::mem::take(v).into_iter().collect();
            *self = LevelMap::Large(map);
        }
        match self {
            LevelMap::Small(v) => {
                let i = match v.iter().position(|(k, _)| **k == *level) {
                    Some(i) => i,
                    None => {
                        v.push((level.into(), make()));
                        v.len() - 1
                    }
                };
                &mut v[i].1
            }
            // The key is allocated only when the level is new.
            LevelMap::Large(m) => match m.raw_entry_mut().from_key(level) {
                RawEntryMut::Occupied(entry) => entry.into_mut(),
                RawEntryMut::Vacant(entry) => entry.insert(level.into(), make()).1,
            },
        }
    }

    pub(crate) fn remove(&mut self, level: &str) -> Option<N> {
        let removed = match self {
            LevelMap::Small(v) => {
                let i = v.iter().position(|(k, _)| **k == *level)?;
                // Order among exact children means nothing; keep removal O(1).
                Some(v.swap_remove(i).1)
            }
            LevelMap::Large(m) => m.remove(level),
        };
        if let LevelMap::Large(m) = self
            && m.len() <= SHRINK
        {
            let v: Vec<(Box<str>, N)> = m.drain().collect();
            *self = LevelMap::Small(v);
        }
        removed
    }

    pub(crate) fn iter(&self) -> Iter<'_, N> {
        match self {
            LevelMap::Small(v) => Iter::Small(v.iter()),
            LevelMap::Large(m) => Iter::Large(m.iter()),
        }
    }

    pub(crate) fn values_mut(&mut self) -> ValuesMut<'_, N> {
        match self {
            LevelMap::Small(v) => ValuesMut::Small(v.iter_mut()),
            LevelMap::Large(m) => ValuesMut::Large(m.values_mut()),
        }
    }

    /// Moves every child out into `out` (used to take deep trees apart without recursion).
    pub(crate) fn drain_into(&mut self, out: &mut Vec<N>) {
        match std::mem::take(self) {
            LevelMap::Small(v) => out.extend(v.into_iter().map(|(_, n)| n)),
            LevelMap::Large(m) => out.extend(m.into_values()),
        }
    }
}

/// Children with their level text, in no particular order.
pub(crate) enum Iter<'a, N> {
    Small(std::slice::Iter<'a, (Box<str>, N)>),
    Large(hashbrown::hash_map::Iter<'a, Box<str>, N>),
}

impl<'a, N> Iterator for Iter<'a, N> {
    type Item = (&'a str, &'a N);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Iter::Small(it) => it.next().map(|(k, n)| (&**k, n)),
            Iter::Large(it) => it.next().map(|(k, n)| (&**k, n)),
        }
    }
}

pub(crate) enum ValuesMut<'a, N> {
    Small(std::slice::IterMut<'a, (Box<str>, N)>),
    Large(hashbrown::hash_map::ValuesMut<'a, Box<str>, N>),
}

impl<'a, N> Iterator for ValuesMut<'a, N> {
    type Item = &'a mut N;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            ValuesMut::Small(it) => it.next().map(|(_, n)| n),
            ValuesMut::Large(it) => it.next(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_into_a_map_and_shrinks_back() {
        let mut m: LevelMap<u32> = LevelMap::default();
        for i in 0..20u32 {
            *m.get_or_insert_with(&i.to_string(), || 0) += i;
            *m.get_or_insert_with(&i.to_string(), || 100) += 1;
        }
        assert!(matches!(m, LevelMap::Large(_)));
        assert_eq!(m.len(), 20);
        for i in 0..20u32 {
            assert_eq!(m.get(&i.to_string()), Some(&(i + 1)));
        }
        for i in 0..17u32 {
            assert_eq!(m.remove(&i.to_string()), Some(i + 1));
        }
        assert!(matches!(m, LevelMap::Small(_)));
        assert_eq!(m.len(), 3);
        assert_eq!(m.remove("0"), None);
        let mut keys: Vec<&str> = m.iter().map(|(k, _)| k).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["17", "18", "19"]);
        let mut out = Vec::new();
        m.drain_into(&mut out);
        assert!(m.is_empty());
        assert_eq!(out.len(), 3);
    }
}
