//! Topic filters: what a SUBSCRIBE asks for, and the reference matcher.
//!
//! [`matches()`] is deliberately the plain, level-by-level reading of the rules. The index and the
//! retained tree are checked against it by property tests, so keep it obviously correct rather
//! than fast.

use crate::TopicError;
use crate::name::check_string;

/// Checks a topic filter: non-empty, at most 65535 bytes, no U+0000, `#` only as the whole last
/// level [MQTT-4.7.1-1], `+` only as a whole level [MQTT-4.7.1-2].
///
/// Commas are allowed anywhere: a level with commas is a list of alternatives (flespi), see
/// [`matches()`]. A `$share/` prefix is not understood here; see [`crate::parse_shared`].
pub fn validate_topic_filter(filter: &str) -> Result<(), TopicError> {
    check_string(filter)?;
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') {
            if level != "#" || levels.peek().is_some() {
                return Err(TopicError::MultiLevelWildcard);
            }
        } else if level.contains('+') && level != "+" {
            return Err(TopicError::SingleLevelWildcard);
        }
    }
    Ok(())
}

/// Does `filter` match the topic name `topic`? The reference for every matcher in the crate.
///
/// - Levels are split on `/`; empty levels are real levels (`a//b` has three, `/a` two).
/// - `+` matches exactly one level, an empty one included.
/// - `#` (the last level) matches the parent level and any number of levels below: `a/#`
///   matches `a`, `a/b` and `a/b/c`; `#` alone matches every topic (but see `$`).
/// - A topic starting with `$` is matched only by a filter starting with `$` [MQTT-4.7.2-1]: `#`
///   and `+/x` never match `$SYS/x`, `$SYS/#` does. tern applies this to the whole first level,
///   comma alternatives included: `a,$SYS/#` does not match `$SYS/x`, `$SYS,a/#` does.
/// - A level with a comma (flespi) lists alternatives: `1,2,3` matches a topic level `1`, `2`
///   or `3`, and also the level `1,2,3` itself, literally. Alternatives are plain text: in a
///   filter that skipped validation, `a,+` matches `a` and `+`, never any level; `a,` matches
///   `a` and the empty level.
/// - A `#` that is not the last level (an invalid filter) matches nothing.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && !filter.starts_with('$') {
        return false;
    }
    let mut filter_levels = filter.split('/');
    let mut topic_levels = topic.split('/');
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            (Some("#"), _) => return filter_levels.next().is_none(),
            (Some(f), Some(t)) => {
                let alternative = f.contains(',') && f.split(',').any(|a| a == t);
                if !(f == "+" || f == t || alternative) {
                    return false;
                }
            }
            (None, None) => return true,
            (Some(_), None) | (None, Some(_)) => return false,
        }
    }
}

/// Does the comma level `level` of a filter match the topic level `topic_level`? Either one of
/// its alternatives or the whole level, literally.
pub(crate) fn comma_level_matches(level: &str, topic_level: &str) -> bool {
    level == topic_level || level.split(',').any(|a| a == topic_level)
}

/// Does `a` match every topic that `b` matches? Exactly: `covers(a, b)` iff for every topic
/// name `t`, `matches(b, t)` implies `matches(a, t)`. `a` may be broader (`a/#` covers `a/+`,
/// `+` covers `x`) or the same set spelled differently (`a,b` covers `a,b`).
///
/// Every rule of [`matches()`] carries over, so in particular:
/// - `$` topics: a filter not starting with `$` never matches one, so it does not cover a filter
///   that does: `#` does not cover `$SYS/x`, `$SYS/#` covers `$SYS/x`. A filter starting with `$`
///   whose first level has alternatives matches plain topics too: `$x,a/#` covers `a/b`.
/// - `+` stands for every level, the empty one included, and `#` for its parent level and
///   everything below: `a/#` covers `a` and `a/+/b`; `a/+` does not cover `a/#` (which matches
///   `a`) nor `a` (which it does not match).
/// - Empty levels are levels: `+/a` covers `/a`; `a` does not cover `a/`.
/// - Comma alternatives are sets of levels, the whole level itself included: `1,2,3` covers `2`
///   and `1,2,3`, but not `1,2` (which also matches the level `1,2` literally).
/// - A filter whose `#` is not the last level matches nothing: it is covered by every filter and
///   covers none but another such filter. [`validate_topic_filter`] refuses them.
pub fn covers(a: &str, b: &str) -> bool {
    let Some(sb) = Shape::of(b) else {
        return true;
    };
    let Some(sa) = Shape::of(a) else {
        return false;
    };
    // The lengths of the topics `b` matches must all be lengths that `a` matches.
    let positions = match (sa.hash, sb.hash) {
        (false, false) if sa.prefix == sb.prefix => sb.prefix,
        (true, false) if sa.prefix <= sb.prefix => sb.prefix,
        // `b` matches every length from `max(prefix, 1)` up.
        (true, true) if sa.prefix <= sb.prefix.max(1) => sb.prefix.max(1),
        _ => return false,
    };
    // Beyond `positions`, both are inside their `#` (or `b` has no such topics): any level.
    sa.levels(a)
        .zip(sb.levels(b))
        .take(positions)
        .all(|(la, lb)| lb.within(la))
}

/// Is there a topic name that both filters match? Exactly: `intersects(a, b)` iff for some topic
/// name `t`, `matches(a, t)` and `matches(b, t)`. Symmetric.
///
/// The rules of [`matches()`] carry over: `#` intersects `a/b` and `a/#`; `$` topics only meet
/// filters that both start with `$` (`#` and `$SYS/#` do not intersect), but `+/#` and `$x,a/b`
/// meet on `a/b`; `a` and `a/#` meet on `a`; `a/1,2` and `a/2` meet on `a/2`; an empty level
/// meets `+` and another empty level. A filter whose `#` is not the last level matches nothing
/// and intersects no filter.
pub fn intersects(a: &str, b: &str) -> bool {
    let (Some(sa), Some(sb)) = (Shape::of(a), Shape::of(b)) else {
        return false;
    };
    let positions = match (sa.hash, sb.hash) {
        (false, false) if sa.prefix == sb.prefix => sa.prefix,
        (false, true) if sa.prefix >= sb.prefix => sa.prefix,
        (true, false) if sb.prefix >= sa.prefix => sb.prefix,
        // The shortest topic both can match; every longer one adds only levels inside both `#`.
        (true, true) => sa.prefix.max(sb.prefix).max(1),
        _ => return false,
    };
    sa.levels(a)
        .zip(sb.levels(b))
        .take(positions)
        .all(|(la, lb)| la.meets(lb))
}

/// The length structure of a filter: the levels before a trailing `#`, and whether it has one.
#[derive(Clone, Copy)]
struct Shape {
    prefix: usize,
    hash: bool,
}

impl Shape {
    /// `None` when a `#` is not the last level: such a filter matches nothing.
    fn of(filter: &str) -> Option<Shape> {
        let mut prefix = 0;
        let mut levels = filter.split('/').peekable();
        while let Some(level) = levels.next() {
            if level == "#" {
                return levels
                    .peek()
                    .is_none()
                    .then_some(Shape { prefix, hash: true });
            }
            prefix += 1;
        }
        Some(Shape {
            prefix,
            hash: false,
        })
    }

    /// What `filter` accepts at each topic level, position by position, endlessly: past its
    /// levels (inside its `#`, or where it matches no topic) every level.
    fn levels(self, filter: &str) -> impl Iterator<Item = LevelSet<'_>> {
        let dollar = filter.starts_with('$');
        filter
            .split('/')
            .take(self.prefix)
            .map(|level| (level != "+").then_some(level))
            .chain(std::iter::repeat(None))
            .enumerate()
            .map(move |(i, listed)| LevelSet {
                listed,
                // The `$` rule of `matches()` bears on the first level only.
                dollar: dollar || i > 0,
            })
    }
}

/// The topic levels a filter accepts at one position.
#[derive(Clone, Copy)]
struct LevelSet<'a> {
    /// `None`: every level (`+`, or inside `#`). `Some(level)`: the level itself and, when it
    /// has commas, each of its alternatives.
    listed: Option<&'a str>,
    /// Whether levels starting with `$` are included (false only at the first position of a
    /// filter that does not start with `$`).
    dollar: bool,
}

impl<'a> LevelSet<'a> {
    fn contains(self, level: &str) -> bool {
        (self.dollar || !level.starts_with('$'))
            && match self.listed {
                None => true,
                Some(l) if l.contains(',') => comma_level_matches(l, level),
                Some(l) => l == level,
            }
    }

    /// The listed levels this set contains (with repeats); `None` when it is not listed.
    fn members(self) -> Option<impl Iterator<Item = &'a str>> {
        let l = self.listed?;
        let alternatives = l.split(',').filter(move |_| l.contains(','));
        Some(
            std::iter::once(l)
                .chain(alternatives)
                .filter(move |m| self.dollar || !m.starts_with('$')),
        )
    }

    /// Is every level of `self` in `other`?
    fn within(self, other: LevelSet<'_>) -> bool {
        match self.members() {
            Some(mut members) => members.all(|m| other.contains(m)),
            // Every level (or every level not starting with `$`): only an unlisted `other`
            // holds them all, one that admits `$` levels if `self` does.
            None => other.listed.is_none() && (other.dollar || !self.dollar),
        }
    }

    /// Do `self` and `other` share a level?
    fn meets(self, other: LevelSet<'_>) -> bool {
        match (self.members(), other.members()) {
            (Some(mut members), _) => members.any(|m| other.contains(m)),
            (None, Some(mut members)) => members.any(|m| self.contains(m)),
            // Both take every level not starting with `$`, at least.
            (None, None) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_filters() {
        for f in [
            "a", "#", "+", "a/#", "+/+", "/+", "+/", "a/+/c", "//", "$SYS/#", "1,2,3/x", ",",
            "a,b/#", "a/,/b", "+/#",
        ] {
            assert_eq!(validate_topic_filter(f), Ok(()), "{f:?}");
        }
    }

    #[test]
    fn refuses_misplaced_wildcards() {
        for f in ["a#", "#/a", "a/#/b", "a/b#", "##", "a,#", "#,a"] {
            assert_eq!(
                validate_topic_filter(f),
                Err(TopicError::MultiLevelWildcard),
                "{f:?}"
            );
        }
        for f in ["a+", "+a", "a/+b", "++", "a,+", "+,a", "a/b+/c"] {
            assert_eq!(
                validate_topic_filter(f),
                Err(TopicError::SingleLevelWildcard),
                "{f:?}"
            );
        }
        assert_eq!(validate_topic_filter(""), Err(TopicError::Empty));
        assert_eq!(validate_topic_filter("a/\0"), Err(TopicError::NullChar));
        assert_eq!(
            validate_topic_filter(&"+/".repeat(40_000)),
            Err(TopicError::TooLong(80_000))
        );
    }

    #[test]
    fn plus_matches_exactly_one_level() {
        assert!(matches("+", "a"));
        assert!(matches("a/+", "a/b"));
        assert!(matches("a/+", "a/"));
        assert!(matches("+/+", "/"));
        assert!(matches("a/+/c", "a//c"));
        assert!(!matches("a/+", "a"));
        assert!(!matches("a/+", "a/b/c"));
        assert!(!matches("+", "/a"));
        assert!(matches("/+", "/a"));
    }

    #[test]
    fn hash_matches_parent_and_below() {
        assert!(matches("#", "a"));
        assert!(matches("#", "/"));
        assert!(matches("a/#", "a"));
        assert!(matches("a/#", "a/"));
        assert!(matches("a/#", "a/b"));
        assert!(matches("a/#", "a/b/c"));
        assert!(matches("+/#", "a"));
        assert!(!matches("a/#", "b"));
        assert!(!matches("a/b/#", "a"));
        assert!(!matches("a/#", "ab"));
    }

    #[test]
    fn hash_not_last_matches_nothing() {
        assert!(!matches("#/a", "x/a"));
        assert!(!matches("a/#/b", "a/b"));
    }

    #[test]
    fn empty_levels_are_levels() {
        assert!(matches("a//b", "a//b"));
        assert!(!matches("a/b", "a//b"));
        assert!(matches("/a", "/a"));
        assert!(!matches("a", "/a"));
        assert!(matches("a/", "a/"));
        assert!(!matches("a", "a/"));
    }

    #[test]
    fn dollar_topics_need_a_dollar_filter() {
        assert!(!matches("#", "$SYS/x"));
        assert!(!matches("+/x", "$SYS/x"));
        assert!(!matches("+", "$"));
        assert!(matches("$SYS/#", "$SYS/x"));
        assert!(matches("$SYS/#", "$SYS"));
        assert!(matches("$SYS/+", "$SYS/x"));
        assert!(matches("$SYS,a/x", "$SYS/x"));
        assert!(matches("$SYS,a/x", "a/x"));
        assert!(!matches("a,$SYS/x", "$SYS/x"));
        // Only the first level counts.
        assert!(matches("a/+", "a/$b"));
        assert!(matches("a/#", "a/$b/c"));
    }

    #[test]
    fn comma_alternatives() {
        let f = "flespi/state/gw/devices/1,2,3/connected";
        assert!(matches(f, "flespi/state/gw/devices/1/connected"));
        assert!(matches(f, "flespi/state/gw/devices/3/connected"));
        assert!(matches(f, "flespi/state/gw/devices/1,2,3/connected"));
        assert!(!matches(f, "flespi/state/gw/devices/4/connected"));
        assert!(!matches(f, "flespi/state/gw/devices/1,2/connected"));
        assert!(!matches(f, "flespi/state/gw/devices/12/connected"));
        assert!(matches("1,2", "1,2"));
        assert!(matches("a,", "a"));
        assert!(matches("a,", ""));
        assert!(matches("a,/x", "/x"));
        assert!(matches("a,b/#", "b/c/d"));
        // Not wildcards inside alternatives.
        assert!(matches("a,+", "+"));
        assert!(!matches("a,+", "b"));
        assert!(!matches("a,#", "b/c"));
        // A comma in the topic only matches itself (or `+`/`#`).
        assert!(!matches("1", "1,2"));
        assert!(matches("+", "1,2"));
    }

    #[test]
    fn coverage() {
        assert!(covers("a/#", "a/b/c"));
        assert!(covers("a/#", "a/+"));
        assert!(covers("a/+", "a/b"));
        assert!(covers("#", "x/y"));
        assert!(!covers("#", "$SYS/x"));
        assert!(!covers("a/+", "a/#"));
        assert!(!covers("a/b", "a/+"));
        assert!(!covers("a/#", "#"));
        assert!(covers("a/1,2", "a/1"));
        assert!(!covers("a/1,2", "a/3"));
        assert!(!covers("a/b", "a/b/c"));
    }

    #[test]
    fn intersection() {
        assert!(intersects("#", "a/b"));
        assert!(intersects("a/#", "#"));
        assert!(intersects("a/+/c", "a/b/+"));
        assert!(!intersects("a/b", "a/c"));
        assert!(!intersects("#", "$SYS/x"));
        assert!(intersects("$SYS/#", "$SYS/x"));
        assert!(intersects("a", "a/#"));
        assert!(!intersects("a/b", "a"));
        assert!(intersects("a/1,2", "a/2"));
    }

    #[test]
    fn covers_by_the_rules_of_matches() {
        // `+` and `#`, empty levels.
        assert!(covers("a/#", "a"));
        assert!(covers("a/#", "a/+/b"));
        assert!(covers("+/#", "#"));
        assert!(covers("#", "+/#"));
        assert!(!covers("a/+", "a"));
        assert!(covers("+/a", "/a"));
        assert!(covers("a/+", "a/"));
        assert!(!covers("a", "a/"));
        assert!(!covers("a/", "a/+"));
        // `$` topics.
        assert!(!covers("+/#", "$SYS/#"));
        assert!(covers("$SYS/#", "$SYS/+/x"));
        assert!(covers("$x,a/#", "a/b"));
        assert!(!covers("a,$x/#", "$x/b"));
        assert!(covers("a,$x/#", "a/b"));
        // Comma levels are sets that hold the whole level too.
        assert!(covers("1,2,3", "2"));
        assert!(covers("1,2,3", "1,2,3"));
        assert!(!covers("1,2,3", "1,2"));
        assert!(!covers("1,2", "2,1"));
        assert!(covers("+", "1,2"));
        assert!(!covers("1,2", "+"));
        // A misplaced `#`: the filter matches nothing.
        assert!(covers("a", "#/a"));
        assert!(!covers("#/a", "a"));
        assert!(covers("#/a", "#/a"));
    }

    #[test]
    fn intersects_by_the_rules_of_matches() {
        assert!(intersects("a/#", "+"));
        assert!(intersects("+/+", "/"));
        assert!(!intersects("a/", "a"));
        assert!(intersects("a/", "a/+"));
        assert!(!intersects("+", "$SYS"));
        assert!(intersects("$x,a/b", "+/#"));
        assert!(!intersects("a,$x/b", "$x/#"));
        assert!(intersects("1,2", "2,3"));
        assert!(intersects("1,2", "1,2"));
        assert!(!intersects("1,2", "3,4"));
        assert!(intersects("a,", "+/#"));
        assert!(intersects("a,/x", "/+"));
        assert!(!intersects("#/a", "#"));
        assert!(!intersects("#/a", "#/a"));
    }
}
