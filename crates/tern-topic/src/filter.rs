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
}
