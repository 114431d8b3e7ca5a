//! Shared subscriptions: `$share/<group>/<filter>` [MQTT-4.8.2], with flespi's sticky forms.
//!
//! Each message matching a shared subscription goes to one member of the group. The group string
//! chooses how:
//! - `<group>`: a random member per message;
//! - `<group>:<n>`: sticky, a hash of the first `n` levels of the published topic;
//! - `<group>:<from>:<n>`: sticky, a hash of `n` levels starting at zero-based level `from`.
//!
//! The same hash goes to the same member while the membership is unchanged: the hash is a fixed
//! function of the selected levels (FNV-1a), taken modulo the member count, and members keep
//! insertion order. A topic with fewer levels than asked hashes the levels it has (possibly none),
//! so `g:0` sends everything to one member.
//!
//! MQTT 5 allows `:` in a ShareName, so a group string is sticky only when it ends in `:<digits>`
//! (or `:<digits>:<digits>`) after a non-empty name; any other group string is an ordinary name
//! with random choice. The group's identity is always the whole string: `g`, `g:2` and `g:1:2` are
//! three different groups.

use std::cell::RefCell;

use rand::RngExt;
use rand::rngs::SmallRng;

use crate::{TopicError, name::check_string, validate_topic_filter};

/// The prefix of a shared subscription's filter.
pub const SHARE_PREFIX: &str = "$share/";

/// How a shared group picks the member that gets a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ShareMode {
    /// A random member per message.
    Random,
    /// The member chosen by a hash of `count` topic levels starting at zero-based level `from`.
    Sticky {
        /// First hashed level, zero-based.
        from: u32,
        /// Number of hashed levels.
        count: u32,
    },
}

impl ShareMode {
    /// Reads the mode from a group string: `g` is random, `g:n` and `g:from:n` are sticky.
    pub fn from_group(group: &str) -> ShareMode {
        let Some((head, last)) = group.rsplit_once(':') else {
            return ShareMode::Random;
        };
        let Some(count) = decimal(last) else {
            return ShareMode::Random;
        };
        if let Some((name, middle)) = head.rsplit_once(':')
            && !name.is_empty()
            && let Some(from) = decimal(middle)
        {
            return ShareMode::Sticky { from, count };
        }
        if head.is_empty() {
            ShareMode::Random
        } else {
            ShareMode::Sticky { from: 0, count }
        }
    }
}

/// Plain ASCII digits that fit a u32 (no sign, no spaces).
fn decimal(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The group part of a `$share/<group>/<filter>` subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShareSpec<'a> {
    /// The whole group string, e.g. `g:2`: the group's identity.
    pub group: &'a str,
    /// How the group picks a member, read from `group`.
    pub mode: ShareMode,
}

/// Splits a shared subscription `$share/<group>/<filter>` into its group and inner filter.
///
/// Returns `Ok(None)` for a filter that is not shared (does not start with `$share/`), without
/// validating it. For a shared one, checks the whole string (length, U+0000), the group
/// (non-empty [MQTT-4.8.2-1], no `+` or `#` [MQTT-4.8.2-2]; it cannot hold `/`, which ends it)
/// and the inner filter ([`validate_topic_filter`]).
pub fn parse_shared(filter: &str) -> Result<Option<(ShareSpec<'_>, &str)>, TopicError> {
    let Some(rest) = filter.strip_prefix(SHARE_PREFIX) else {
        return Ok(None);
    };
    check_string(filter)?;
    let Some((group, inner)) = rest.split_once('/') else {
        return Err(if rest.is_empty() {
            TopicError::EmptyShareName
        } else {
            TopicError::MissingSharedFilter
        });
    };
    if group.is_empty() {
        return Err(TopicError::EmptyShareName);
    }
    if group.contains(['+', '#']) {
        return Err(TopicError::InvalidShareName);
    }
    if inner.is_empty() {
        return Err(TopicError::MissingSharedFilter);
    }
    validate_topic_filter(inner)?;
    let spec = ShareSpec {
        group,
        mode: ShareMode::from_group(group),
    };
    Ok(Some((spec, inner)))
}

/// The members of one shared group on one filter, as stored in the
/// [`SubscriptionIndex`](crate::SubscriptionIndex).
pub struct SharedGroup<K, V> {
    name: Box<str>,
    filter: Box<str>,
    mode: ShareMode,
    members: Vec<(K, V)>,
}

impl<K, V> std::fmt::Debug for SharedGroup<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedGroup")
            .field("name", &self.name)
            .field("filter", &self.filter)
            .field("mode", &self.mode)
            .field("members", &self.members.len())
            .finish()
    }
}

impl<K, V> SharedGroup<K, V> {
    pub(crate) fn new(name: &str, filter: &str, mode: ShareMode) -> Self {
        SharedGroup {
            name: name.into(),
            filter: filter.into(),
            mode,
            members: Vec::new(),
        }
    }

    /// The whole group string, e.g. `g:2`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The inner topic filter the group is subscribed with.
    pub fn filter(&self) -> &str {
        &self.filter
    }

    /// How the group picks a member.
    pub fn mode(&self) -> ShareMode {
        self.mode
    }

    /// The members in the order they joined.
    pub fn members(&self) -> &[(K, V)] {
        &self.members
    }

    pub(crate) fn members_mut(&mut self) -> &mut Vec<(K, V)> {
        &mut self.members
    }

    /// The member that gets a message published to `topic`: by the sticky hash, or at random.
    /// `None` only for a group without members (the index never keeps one).
    pub fn pick(&self, topic: &str) -> Option<(&K, &V)> {
        let len = self.members.len();
        if len == 0 {
            return None;
        }
        let i = match self.mode {
            ShareMode::Random => random_below(len),
            ShareMode::Sticky { from, count } => sticky_index(topic, from, count, len),
        };
        self.members.get(i).map(|(k, v)| (k, v))
    }

    /// Like [`pick`](Self::pick), among the members for which `eligible` holds (say, the
    /// connected ones); if none is eligible, falls back to `pick`.
    ///
    /// Sticky groups first try the member `pick` would choose, so a topic stays with its member
    /// while that member is eligible, whatever happens to the others; only the topics of an
    /// ineligible member are spread (by the same hash) over the eligible ones.
    pub fn pick_where(&self, topic: &str, eligible: impl Fn(&K) -> bool) -> Option<(&K, &V)> {
        let len = self.members.len();
        if len == 0 {
            return None;
        }
        let hash = match self.mode {
            ShareMode::Random => None,
            ShareMode::Sticky { from, count } => {
                let hash = sticky_hash(topic, from, count);
                let preferred = self.members.get(reduce(hash, len))?;
                if eligible(&preferred.0) {
                    return Some((&preferred.0, &preferred.1));
                }
                Some(hash)
            }
        };
        let candidates = self.members.iter().filter(|(k, _)| eligible(k)).count();
        if candidates == 0 {
            return self.pick(topic);
        }
        let n = match hash {
            None => random_below(candidates),
            Some(hash) => reduce(hash, candidates),
        };
        self.members
            .iter()
            .filter(|(k, _)| eligible(k))
            .nth(n)
            .map(|(k, v)| (k, v))
    }
}

thread_local! {
    /// Per-thread generator for random members: seeded once from the OS, then cheap.
    static RNG: RefCell<SmallRng> = RefCell::new(rand::make_rng());
}

fn random_below(n: usize) -> usize {
    RNG.with(|rng| rng.borrow_mut().random_range(0..n))
}

fn sticky_index(topic: &str, from: u32, count: u32, len: usize) -> usize {
    reduce(sticky_hash(topic, from, count), len)
}

fn reduce(hash: u64, len: usize) -> usize {
    // len fits in u64 and the remainder is below len, so both casts are lossless.
    (hash % len as u64) as usize
}

/// The stable hash of `count` levels of `topic` starting at level `from`: FNV-1a over the bytes
/// of those levels with their `/` separators, then a final mix so that every bit counts in the
/// modulo. A sticky group's key: a single node picks its member by it, and a cluster its node
/// (tern-cluster's `share.rs`).
pub fn sticky_hash(topic: &str, from: u32, count: u32) -> u64 {
    let selected = selected_levels(topic, from as usize, count as usize);
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in selected.as_bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // splitmix64's finalizer.
    hash ^= hash >> 30;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 27;
    hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

/// The text of levels `from..from + count` of `topic` (fewer if the topic is shorter).
fn selected_levels(topic: &str, from: usize, count: usize) -> &str {
    if count == 0 {
        return "";
    }
    let bytes = topic.as_bytes();
    let start = if from == 0 {
        0
    } else {
        match memchr::memchr_iter(b'/', bytes).nth(from - 1) {
            Some(slash) => slash + 1,
            None => return "",
        }
    };
    let rest = topic.get(start..).unwrap_or("");
    match memchr::memchr_iter(b'/', rest.as_bytes()).nth(count - 1) {
        Some(end) => rest.get(..end).unwrap_or(rest),
        None => rest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(name: &str, members: &[u32]) -> SharedGroup<u32, ()> {
        let mut g = SharedGroup::new(name, "t/#", ShareMode::from_group(name));
        g.members.extend(members.iter().map(|&m| (m, ())));
        g
    }

    #[test]
    fn parses_shared_filters() {
        let (spec, inner) = parse_shared("$share/g/a/+/c").unwrap().unwrap();
        assert_eq!(spec.group, "g");
        assert_eq!(spec.mode, ShareMode::Random);
        assert_eq!(inner, "a/+/c");

        let (spec, inner) = parse_shared("$share/g:2/#").unwrap().unwrap();
        assert_eq!(spec.group, "g:2");
        assert_eq!(spec.mode, ShareMode::Sticky { from: 0, count: 2 });
        assert_eq!(inner, "#");

        let (spec, inner) = parse_shared("$share/g:1:3/a/1,2/#").unwrap().unwrap();
        assert_eq!(spec.group, "g:1:3");
        assert_eq!(spec.mode, ShareMode::Sticky { from: 1, count: 3 });
        assert_eq!(inner, "a/1,2/#");

        // The inner filter may itself start with `$` or be an empty level.
        assert_eq!(
            parse_shared("$share/g/$SYS/#").unwrap().unwrap().1,
            "$SYS/#"
        );
        assert_eq!(parse_shared("$share/g//").unwrap().unwrap().1, "/");
    }

    #[test]
    fn non_shared_filters_are_none() {
        for f in [
            "a/b",
            "$share",
            "$shared/g/x",
            "$SHARE/g/x",
            "#",
            "a/$share/g/x",
        ] {
            assert_eq!(parse_shared(f), Ok(None), "{f:?}");
        }
    }

    #[test]
    fn shared_parse_errors() {
        assert_eq!(parse_shared("$share/"), Err(TopicError::EmptyShareName));
        assert_eq!(parse_shared("$share//a"), Err(TopicError::EmptyShareName));
        assert_eq!(
            parse_shared("$share/g"),
            Err(TopicError::MissingSharedFilter)
        );
        assert_eq!(
            parse_shared("$share/g/"),
            Err(TopicError::MissingSharedFilter)
        );
        assert_eq!(
            parse_shared("$share/g+/a"),
            Err(TopicError::InvalidShareName)
        );
        assert_eq!(
            parse_shared("$share/#/a"),
            Err(TopicError::InvalidShareName)
        );
        assert_eq!(
            parse_shared("$share/+/a"),
            Err(TopicError::InvalidShareName)
        );
        assert_eq!(
            parse_shared("$share/g/a#"),
            Err(TopicError::MultiLevelWildcard)
        );
        assert_eq!(
            parse_shared("$share/g/a/#/b"),
            Err(TopicError::MultiLevelWildcard)
        );
        assert_eq!(
            parse_shared("$share/g/a+"),
            Err(TopicError::SingleLevelWildcard)
        );
        assert_eq!(parse_shared("$share/g/\0"), Err(TopicError::NullChar));
        assert_eq!(parse_shared("$share/g\0/a"), Err(TopicError::NullChar));
        let long = format!("$share/g/{}", "a".repeat(65_535));
        assert_eq!(parse_shared(&long), Err(TopicError::TooLong(long.len())));
        assert!(
            TopicError::EmptyShareName
                .to_string()
                .contains("[MQTT-4.8.2-1]")
        );
        assert!(
            TopicError::InvalidShareName
                .to_string()
                .contains("[MQTT-4.8.2-2]")
        );
    }

    #[test]
    fn group_modes() {
        use ShareMode::*;
        assert_eq!(ShareMode::from_group("g"), Random);
        assert_eq!(ShareMode::from_group("g:0"), Sticky { from: 0, count: 0 });
        assert_eq!(ShareMode::from_group("g:3"), Sticky { from: 0, count: 3 });
        assert_eq!(ShareMode::from_group("g:1:3"), Sticky { from: 1, count: 3 });
        assert_eq!(
            ShareMode::from_group("a:b:1:3"),
            Sticky { from: 1, count: 3 }
        );
        assert_eq!(ShareMode::from_group("1:2"), Sticky { from: 0, count: 2 });
        // Anything else is an ordinary ShareName.
        for g in [
            "g:",
            "g:x",
            ":3",
            "g:+3",
            "g: 3",
            "g:3:",
            "g:99999999999",
            "my:group",
        ] {
            assert_eq!(ShareMode::from_group(g), Random, "{g:?}");
        }
        assert_eq!(ShareMode::from_group("g:x:3"), Sticky { from: 0, count: 3 });
    }

    #[test]
    fn selects_levels() {
        assert_eq!(selected_levels("a/b/c/d", 0, 2), "a/b");
        assert_eq!(selected_levels("a/b/c/d", 1, 2), "b/c");
        assert_eq!(selected_levels("a/b/c/d", 3, 1), "d");
        assert_eq!(selected_levels("a/b/c/d", 3, 5), "d");
        assert_eq!(selected_levels("a/b/c/d", 4, 1), "");
        assert_eq!(selected_levels("a/b/c/d", 0, 0), "");
        assert_eq!(selected_levels("a/b/c/d", 0, 9), "a/b/c/d");
        assert_eq!(selected_levels("/x//y", 1, 2), "x/");
        assert_eq!(selected_levels("a/b", 2, 1), "");
        assert_eq!(selected_levels("/x", 0, 1), "");
        assert_eq!(
            selected_levels("a", u32::MAX as usize, u32::MAX as usize),
            ""
        );
    }

    #[test]
    fn sticky_is_stable_and_follows_the_selected_levels() {
        let g = group("g:1:1", &[10, 20, 30, 40, 50]);
        for id in 0..200 {
            let topic = format!("devices/{id}/telemetry");
            let first = g.pick(&topic).unwrap().0;
            for _ in 0..5 {
                assert_eq!(g.pick(&topic).unwrap().0, first);
            }
            // Only level 1 is hashed: other levels do not move the message.
            assert_eq!(g.pick(&format!("x/{id}/y/z")).unwrap().0, first);
        }
        // The hash spreads: every member gets some device.
        let mut seen: Vec<u32> = (0..200)
            .map(|id| *g.pick(&format!("devices/{id}/telemetry")).unwrap().0)
            .collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen, [10, 20, 30, 40, 50]);
    }

    #[test]
    fn sticky_first_n_levels() {
        let g = group("g:2", &[1, 2, 3]);
        let a = g.pick("a/b/c").unwrap().0;
        assert_eq!(g.pick("a/b/d").unwrap().0, a);
        assert_eq!(g.pick("a/b").unwrap().0, a);
        let zero = group("g:0", &[1, 2, 3]);
        let first = zero.pick("x").unwrap().0;
        assert_eq!(zero.pick("y/z").unwrap().0, first);
    }

    #[test]
    fn random_pick_reaches_every_member() {
        let g = group("g", &[1, 2, 3, 4]);
        let mut counts = [0u32; 5];
        for _ in 0..4000 {
            counts[*g.pick("t").unwrap().0 as usize] += 1;
        }
        assert_eq!(counts[0], 0);
        assert!(counts[1..].iter().all(|&c| c > 500), "{counts:?}");
        assert_eq!(group("g", &[]).pick("t"), None);
    }

    #[test]
    fn pick_where_prefers_eligible_members() {
        let g = group("g", &[1, 2, 3, 4]);
        for _ in 0..200 {
            let k = *g.pick_where("t", |&k| k % 2 == 0).unwrap().0;
            assert!(k == 2 || k == 4);
        }
        // Nobody eligible: fall back to any member.
        assert!(g.pick_where("t", |_| false).is_some());
        assert_eq!(group("g", &[]).pick_where("t", |_| true), None);
    }

    #[test]
    fn sticky_pick_where_keeps_eligible_assignments() {
        let g = group("g:1", &[1, 2, 3, 4, 5]);
        for id in 0..300 {
            let topic = format!("{id}/x");
            let preferred = *g.pick(&topic).unwrap().0;
            let online = |k: &u32| *k != 3;
            let chosen = *g.pick_where(&topic, online).unwrap().0;
            if preferred != 3 {
                assert_eq!(chosen, preferred, "an eligible member keeps its topics");
            } else {
                assert_ne!(chosen, 3);
                // ...and the spread is itself sticky.
                assert_eq!(*g.pick_where(&topic, online).unwrap().0, chosen);
            }
            assert_eq!(*g.pick_where(&topic, |_| false).unwrap().0, preferred);
        }
    }
}
