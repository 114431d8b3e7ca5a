//! The one error type of the crate. Every message names the rule it enforces, so the broker can log
//! it as is; all of them map to reason code 0x8F (Topic Filter invalid) in SUBACK or 0x90 (Topic
//! Name invalid) for a PUBLISH, which the broker decides, not this crate.

/// Why a topic name, topic filter or shared subscription was refused.
///
/// Rule numbers are those of MQTT 5.0 (3.1.1 has the same rules under other numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// An empty topic name or filter.
    #[error("topic name or filter is empty [MQTT-4.7.3-1]")]
    Empty,
    /// Longer than a UTF-8 string field can carry.
    #[error("topic name or filter is {0} bytes, more than 65535 [MQTT-4.7.3-3]")]
    TooLong(usize),
    /// Contains U+0000.
    #[error("topic name or filter contains the null character U+0000 [MQTT-4.7.3-2]")]
    NullChar,
    /// A topic name (what is published to) contains `+` or `#`.
    #[error("topic name contains a wildcard character (+ or #) [MQTT-4.7.0-1]")]
    WildcardInName,
    /// `#` is not the whole last level of the filter.
    #[error("'#' must be the whole last level of the topic filter [MQTT-4.7.1-1]")]
    MultiLevelWildcard,
    /// `+` shares its level with other characters.
    #[error("'+' must occupy a whole level of the topic filter [MQTT-4.7.1-2]")]
    SingleLevelWildcard,
    /// `$share//filter`: the ShareName is empty.
    #[error("shared subscription has an empty share name [MQTT-4.8.2-1]")]
    EmptyShareName,
    /// The ShareName contains `+` or `#`.
    #[error("share name contains a wildcard character (+ or #) [MQTT-4.8.2-2]")]
    InvalidShareName,
    /// `$share/group` without `/` and a topic filter after the ShareName.
    #[error("shared subscription has no topic filter after the share name [MQTT-4.8.2-2]")]
    MissingSharedFilter,
}
