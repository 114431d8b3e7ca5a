//! Topic names: what a PUBLISH (or a will, or a retained message) is sent to.

use crate::TopicError;

/// Longest topic name or filter: it travels as a UTF-8 string field with a u16 length.
pub const MAX_TOPIC_LEN: usize = 65_535;

/// Checks a topic name: non-empty, at most 65535 bytes, no U+0000 and no wildcard characters.
///
/// Empty levels are allowed (`a//b`, `/a`, `a/`), and so is a leading `$`.
pub fn validate_topic_name(name: &str) -> Result<(), TopicError> {
    check_string(name)?;
    if memchr::memchr2(b'+', b'#', name.as_bytes()).is_some() {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

/// The rules topic names and filters share [MQTT-4.7.3-1..3].
pub(crate) fn check_string(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong(s.len()));
    }
    if memchr::memchr(0, s.as_bytes()).is_some() {
        return Err(TopicError::NullChar);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for name in [
            "a", "a/b/c", "/", "//", "a//b", "/a", "a/", "$SYS/x", "1,2/3", " ", "ü/€",
        ] {
            assert_eq!(validate_topic_name(name), Ok(()), "{name:?}");
        }
    }

    #[test]
    fn refuses_empty_wildcards_nul_and_long() {
        assert_eq!(validate_topic_name(""), Err(TopicError::Empty));
        assert_eq!(validate_topic_name("a/+"), Err(TopicError::WildcardInName));
        assert_eq!(validate_topic_name("a#"), Err(TopicError::WildcardInName));
        assert_eq!(validate_topic_name("#"), Err(TopicError::WildcardInName));
        assert_eq!(validate_topic_name("a\0b"), Err(TopicError::NullChar));
        assert_eq!(validate_topic_name(&"a".repeat(MAX_TOPIC_LEN)), Ok(()));
        assert_eq!(
            validate_topic_name(&"a".repeat(MAX_TOPIC_LEN + 1)),
            Err(TopicError::TooLong(MAX_TOPIC_LEN + 1))
        );
    }

    #[test]
    fn messages_name_the_rule() {
        assert!(TopicError::Empty.to_string().contains("[MQTT-4.7.3-1]"));
        assert!(
            TopicError::WildcardInName
                .to_string()
                .contains("[MQTT-4.7.0-1]")
        );
        assert!(
            TopicError::MultiLevelWildcard
                .to_string()
                .contains("[MQTT-4.7.1-1]")
        );
        assert!(
            TopicError::SingleLevelWildcard
                .to_string()
                .contains("[MQTT-4.7.1-2]")
        );
        assert!(TopicError::NullChar.to_string().contains("[MQTT-4.7.3-2]"));
        assert!(
            TopicError::TooLong(70_000)
                .to_string()
                .contains("[MQTT-4.7.3-3]")
        );
    }
}
