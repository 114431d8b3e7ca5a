//! MQTT topics as NATS subjects (and as NATS KV keys), and back.
//!
//! One MQTT level becomes one NATS token:
//! - the bytes `A-Z a-z 0-9 _ -` are kept as they are;
//! - every other byte becomes `=HH`, its value in uppercase hex: `.` (the NATS token separator),
//!   `*` and `>` (the NATS wildcards), whitespace (which NATS refuses), `=` itself, `$`, `+`, `#`,
//!   `,` and every byte of a non-ASCII UTF-8 character;
//! - an empty level becomes the lone token `=` (NATS has no empty tokens).
//!
//! So `spBv1.0/x` is `spBv1=2E0.x`, `/a//b` is `=.a.=.b` and `$SYS/x` is `=24SYS.x`. Every encoded
//! string is made of `A-Z a-z 0-9 _ - =` and `.` only: a valid NATS subject without wildcards and a
//! valid KV key (`[-/_=.A-Za-z0-9]+`). The mapping is a bijection between strings and the subjects
//! [`decode_subject`] accepts: it refuses every subject [`encode_topic`] would never write
//! (lowercase hex, an escaped byte that is kept as is, leading zeros in a number, ...), so one
//! topic has exactly one subject, and the topic it decodes to is always a valid topic name.
//!
//! A topic filter becomes one or two subjects with NATS wildcards ([`encode_filter`]). They are a
//! coarse pre-filter: they receive every topic the filter matches and a few more, so a node
//! re-matches each message against its own subscription index.

use std::fmt::Write as _;
use std::num::NonZeroU32;

use smallvec::SmallVec;
use tern_topic::TopicError;

/// The first tokens of a QoS 0 subject on core NATS: `tern.m.<acct>.<topic>`.
pub const LIVE_PREFIX: &str = "tern.m.";

/// The first tokens of a QoS 1 subject in a shard stream: `tern.q.<shard>.<acct>.<topic>`.
pub const SHARD_PREFIX: &str = "tern.q.";

/// Which of the three encoded forms of a topic: the prefix before `<acct>.<topic>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubjectKind {
    /// QoS 0 on core NATS: `tern.m.<acct>.<topic>`.
    Live,
    /// QoS 1 in the shard stream of this number: `tern.q.<shard>.<acct>.<topic>`. The shard is
    /// [`shard_of`] the account and topic.
    Shard(u32),
    /// The key of a retained message in the KV bucket: `<acct>.<topic>`.
    RetainedKey,
}

/// What [`decode_subject`] recovers from a subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// The form of the subject, with the shard number of a shard subject.
    pub kind: SubjectKind,
    /// The account whose namespace the topic is in.
    pub acct: u64,
    /// The MQTT topic name, valid by [`tern_topic::validate_topic_name`].
    pub topic: String,
}

/// Why a string is not a subject (or KV key) that [`encode_topic`] writes, or why a topic filter
/// cannot be encoded. Byte offsets count from the start of the whole subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    /// Neither `tern.m.`, `tern.q.` nor a digit (the account of a retained key) opens the subject.
    #[error("subject starts with neither 'tern.m.', 'tern.q.' nor an account id")]
    Prefix,
    /// The shard of a `tern.q.` subject is not a number [`encode_topic`] writes.
    #[error("shard of a 'tern.q.' subject is not a decimal u32 without leading zeros")]
    Shard,
    /// The account token is not a number [`encode_topic`] writes.
    #[error("account id is not a decimal u64 without leading zeros")]
    Account,
    /// Nothing follows the account: every topic has at least one level.
    #[error("subject has no topic tokens after the account id")]
    NoTopic,
    /// Two dots in a row, or a dot at the end: NATS has no empty tokens.
    #[error("empty token at byte {offset} (an empty topic level is encoded as '=')")]
    EmptyToken {
        /// Where the empty token starts.
        offset: usize,
    },
    /// A byte outside `A-Z a-z 0-9 _ - = .`, a NATS wildcard among them.
    #[error(
        "byte 0x{byte:02X} at {offset} is not allowed in an encoded topic (only A-Z a-z 0-9 _ - and =HH escapes)"
    )]
    Byte {
        /// The byte.
        byte: u8,
        /// Its offset.
        offset: usize,
    },
    /// An `=` not followed by two uppercase hex digits (and not a whole token on its own).
    #[error("escape '=' at byte {offset} is not followed by two uppercase hex digits")]
    Escape {
        /// Where the `=` is.
        offset: usize,
    },
    /// `=HH` of a byte the encoding keeps as it is, or of `/` (levels are tokens).
    #[error("escape at byte {offset} encodes 0x{byte:02X}, which is never escaped")]
    NeedlessEscape {
        /// The escaped byte.
        byte: u8,
        /// Where the `=` is.
        offset: usize,
    },
    /// The unescaped bytes are not UTF-8.
    #[error("decoded topic is not valid UTF-8")]
    NotUtf8,
    /// The decoded topic is not a valid topic name (it has a wildcard, U+0000, or is too long).
    #[error("decoded topic is not a valid topic name: {0}")]
    Topic(TopicError),
    /// [`encode_filter`] was given a string [`tern_topic::validate_topic_filter`] refuses.
    #[error("not a valid topic filter: {0}")]
    Filter(TopicError),
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Is `b` kept as it is in a token?
fn is_kept(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// Writes `topic` as a subject (or KV key) of the given kind into `out`, replacing what `out`
/// held, so that one buffer serves every message without allocating once it is large enough.
///
/// Total over every string; [`decode_subject`] inverts it for every valid topic name. An
/// escaped topic is up to three times as long as the topic (plus the prefix): the caller that
/// publishes it checks the length against the NATS server's `max_control_line`.
pub fn encode_topic(kind: SubjectKind, acct: u64, topic: &str, out: &mut String) {
    out.clear();
    out.reserve(prefix_len(kind) + topic.len() + topic.len() / 2);
    push_prefix(kind, acct, out);
    for (i, level) in topic.split('/').enumerate() {
        if i > 0 {
            out.push('.');
        }
        push_level(level, out);
    }
}

/// Encodes a topic filter as the NATS subjects to subscribe to: every topic name the filter
/// matches (by [`tern_topic::matches()`]) is encoded by [`encode_topic`] into a subject that
/// one of them matches.
///
/// - `+` becomes `*`.
/// - A final `#` matches its parent level and everything below, where NATS's `>` matches one
///   token or more: `a/+/#` becomes `a.*.>` and `a.*`. A lone `#` becomes `>` only, since every
///   topic has at least one level.
/// - A level with commas (flespi's alternatives, `1,2,3`) becomes `*`.
/// - Every other level is encoded as in a topic.
///
/// The subjects match more than the filter, so the receiver re-matches: a comma level matches
/// any level, and `#` or `+` as the first level match topics starting with `$` too, which MQTT
/// forbids [MQTT-4.7.2-1]. A `$share/<group>/` prefix is not understood: pass the filter after it.
pub fn encode_filter(
    kind: SubjectKind,
    acct: u64,
    filter: &str,
) -> Result<SmallVec<[String; 2]>, SubjectError> {
    tern_topic::validate_topic_filter(filter).map_err(SubjectError::Filter)?;
    let mut subject = String::with_capacity(prefix_len(kind) + 3 * filter.len());
    push_prefix(kind, acct, &mut subject);
    if filter == "#" {
        subject.push('>');
        return Ok(SmallVec::from_iter([subject]));
    }
    let (levels, hash) = match filter.strip_suffix("/#") {
        Some(levels) => (levels, true),
        None => (filter, false),
    };
    for (i, level) in levels.split('/').enumerate() {
        if i > 0 {
            subject.push('.');
        }
        if level == "+" || level.contains(',') {
            subject.push('*');
        } else {
            push_level(level, &mut subject);
        }
    }
    if !hash {
        return Ok(SmallVec::from_iter([subject]));
    }
    let below = format!("{subject}.>");
    Ok(SmallVec::from_iter([below, subject]))
}

/// Reads back what [`encode_topic`] wrote: the kind (recognised by its prefix; a retained key
/// starts with its account id), the account and the topic.
///
/// Refuses every string that [`encode_topic`] does not write for some valid topic name, so a
/// successful decode re-encodes to the same string.
pub fn decode_subject(subject: &str) -> Result<Decoded, SubjectError> {
    let (kind, rest) = if let Some(rest) = subject.strip_prefix(LIVE_PREFIX) {
        (SubjectKind::Live, rest)
    } else if let Some(rest) = subject.strip_prefix(SHARD_PREFIX) {
        let (shard, rest) = rest.split_once('.').ok_or(SubjectError::Shard)?;
        let shard = parse_decimal(shard)
            .and_then(|s| u32::try_from(s).ok())
            .ok_or(SubjectError::Shard)?;
        (SubjectKind::Shard(shard), rest)
    } else if subject.as_bytes().first().is_some_and(u8::is_ascii_digit) {
        (SubjectKind::RetainedKey, subject)
    } else {
        return Err(SubjectError::Prefix);
    };
    let (acct, tail) = match rest.split_once('.') {
        Some((acct, tail)) => (acct, Some(tail)),
        None => (rest, None),
    };
    let acct = parse_decimal(acct).ok_or(SubjectError::Account)?;
    let tail = tail.ok_or(SubjectError::NoTopic)?;
    let topic = decode_tokens(tail, subject.len() - tail.len())?;
    tern_topic::validate_topic_name(&topic).map_err(SubjectError::Topic)?;
    Ok(Decoded { kind, acct, topic })
}

/// The shard stream of a topic: a stable hash of the account and the topic, modulo `shards`.
///
/// Every node of every version must pick the same shard for a topic (one topic in one stream
/// keeps MQTT's per-topic order), so this is FNV-1a 64 written out, not `std::hash`, whose
/// output may change between Rust releases.
pub fn shard_of(acct: u64, topic: &str, shards: NonZeroU32) -> u32 {
    let hash = fnv1a(fnv1a(FNV_OFFSET, &acct.to_le_bytes()), topic.as_bytes());
    // The remainder is below `shards`, a u32.
    u32::try_from(hash % u64::from(shards.get())).unwrap_or(0)
}

pub(crate) const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;

/// FNV-1a 64 of `bytes`, continuing from `hash`.
pub(crate) fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

/// The longest prefix of a kind: `tern.q.` with a u32, a dot, a u64 and a dot.
fn prefix_len(kind: SubjectKind) -> usize {
    match kind {
        SubjectKind::Live => LIVE_PREFIX.len() + 21,
        SubjectKind::Shard(_) => SHARD_PREFIX.len() + 11 + 21,
        SubjectKind::RetainedKey => 21,
    }
}

/// Writes the tokens before the topic's: the kind's prefix, the account, and a dot.
fn push_prefix(kind: SubjectKind, acct: u64, out: &mut String) {
    // Writing to a String cannot fail.
    let _ = match kind {
        SubjectKind::Live => write!(out, "{LIVE_PREFIX}{acct}."),
        SubjectKind::Shard(shard) => write!(out, "{SHARD_PREFIX}{shard}.{acct}."),
        SubjectKind::RetainedKey => write!(out, "{acct}."),
    };
}

/// Writes one topic level as one token.
fn push_level(level: &str, out: &mut String) {
    if level.is_empty() {
        out.push('=');
        return;
    }
    for &b in level.as_bytes() {
        if is_kept(b) {
            out.push(char::from(b));
        } else {
            out.push('=');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xF)]));
        }
    }
}

/// A decimal number as [`std::fmt`] writes a u64: digits only, no sign, no leading zeros.
fn parse_decimal(s: &str) -> Option<u64> {
    let bytes = s.as_bytes();
    if bytes.is_empty() || (bytes.len() > 1 && bytes[0] == b'0') {
        return None;
    }
    bytes.iter().try_fold(0u64, |n, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

/// The value of an uppercase hex digit.
fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes the topic's tokens, which start at byte `base` of the subject.
fn decode_tokens(tail: &str, base: usize) -> Result<String, SubjectError> {
    let bytes = tail.as_bytes();
    let mut topic = Vec::with_capacity(bytes.len());
    let mut start = 0;
    for token in tail.split('.') {
        let offset = base + start;
        if start > 0 {
            topic.push(b'/');
        }
        start += token.len() + 1;
        match token.as_bytes() {
            [] => return Err(SubjectError::EmptyToken { offset }),
            b"=" => continue,
            token => decode_token(token, offset, &mut topic)?,
        }
    }
    String::from_utf8(topic).map_err(|_| SubjectError::NotUtf8)
}

/// Decodes one token that is not the lone `=`, starting at byte `offset` of the subject.
fn decode_token(token: &[u8], offset: usize, topic: &mut Vec<u8>) -> Result<(), SubjectError> {
    let mut i = 0;
    while let Some(&b) = token.get(i) {
        let at = offset + i;
        if is_kept(b) {
            topic.push(b);
            i += 1;
            continue;
        }
        if b != b'=' {
            return Err(SubjectError::Byte {
                byte: b,
                offset: at,
            });
        }
        let high = token.get(i + 1).copied().and_then(hex_value);
        let low = token.get(i + 2).copied().and_then(hex_value);
        let (Some(high), Some(low)) = (high, low) else {
            return Err(SubjectError::Escape { offset: at });
        };
        let byte = high << 4 | low;
        if is_kept(byte) || byte == b'/' {
            return Err(SubjectError::NeedlessEscape { byte, offset: at });
        }
        topic.push(byte);
        i += 3;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The topic's tokens alone: the subject without its `tern.m.<acct>.` prefix.
    fn tail(topic: &str) -> String {
        let mut out = String::new();
        encode_topic(SubjectKind::Live, 7, topic, &mut out);
        out.strip_prefix("tern.m.7.")
            .unwrap_or("no prefix")
            .to_owned()
    }

    fn filter(f: &str) -> Vec<String> {
        encode_filter(SubjectKind::Live, 7, f)
            .unwrap()
            .into_iter()
            .map(|s| {
                s.strip_prefix("tern.m.7.")
                    .unwrap_or("no prefix")
                    .to_owned()
            })
            .collect()
    }

    fn decode(s: &str) -> Result<Decoded, SubjectError> {
        decode_subject(s)
    }

    #[test]
    fn the_examples() {
        assert_eq!(tail("a/b"), "a.b");
        assert_eq!(tail("spBv1.0/x"), "spBv1=2E0.x");
        assert_eq!(tail("/a//b"), "=.a.=.b");
        assert_eq!(tail("a/*/b"), "a.=2A.b");
        assert_eq!(tail("a/b c"), "a.b=20c");
        assert_eq!(tail("$SYS/x"), "=24SYS.x");
        assert_eq!(filter("a/+/#"), ["a.*.>", "a.*"]);
    }

    #[test]
    fn every_other_byte_is_escaped() {
        assert_eq!(tail("Az09_-"), "Az09_-");
        assert_eq!(tail(".*>= $+#,"), "=2E=2A=3E=3D=20=24=2B=23=2C");
        assert_eq!(tail("\t\n"), "=09=0A");
        assert_eq!(tail("ü€"), "=C3=BC=E2=82=AC");
        assert_eq!(tail("="), "=3D");
        assert_eq!(tail("/"), "=.=");
        assert_eq!(tail("a/"), "a.=");
    }

    #[test]
    fn the_three_kinds() {
        let mut out = String::from("left over");
        encode_topic(SubjectKind::Live, 42, "a/b", &mut out);
        assert_eq!(out, "tern.m.42.a.b");
        encode_topic(SubjectKind::Shard(3), 42, "a/b", &mut out);
        assert_eq!(out, "tern.q.3.42.a.b");
        encode_topic(SubjectKind::RetainedKey, 42, "a/b", &mut out);
        assert_eq!(out, "42.a.b");
        encode_topic(SubjectKind::Shard(u32::MAX), u64::MAX, "x", &mut out);
        assert_eq!(out, "tern.q.4294967295.18446744073709551615.x");
        encode_topic(SubjectKind::RetainedKey, 0, "x", &mut out);
        assert_eq!(out, "0.x");
    }

    #[test]
    fn decodes_each_kind() {
        let d = |kind, acct: u64, topic: &str| Decoded {
            kind,
            acct,
            topic: topic.to_owned(),
        };
        assert_eq!(decode("tern.m.42.a.b"), Ok(d(SubjectKind::Live, 42, "a/b")));
        assert_eq!(
            decode("tern.q.3.42.=.a.=.b"),
            Ok(d(SubjectKind::Shard(3), 42, "/a//b"))
        );
        assert_eq!(
            decode("0.=24SYS.x"),
            Ok(d(SubjectKind::RetainedKey, 0, "$SYS/x"))
        );
        assert_eq!(
            decode("tern.m.18446744073709551615.spBv1=2E0.x"),
            Ok(d(SubjectKind::Live, u64::MAX, "spBv1.0/x"))
        );
        assert_eq!(
            decode("tern.m.1.="),
            Err(SubjectError::Topic(TopicError::Empty))
        );
        assert_eq!(decode("tern.m.1.=.="), Ok(d(SubjectKind::Live, 1, "/")));
    }

    #[test]
    fn refuses_bad_prefixes_and_numbers() {
        use SubjectError::*;
        for (subject, error) in [
            ("", Prefix),
            ("tern.x.1.a", Prefix),
            ("tern.m1.a", Prefix),
            ("TERN.m.1.a", Prefix),
            ("a.b", Prefix),
            ("tern.m.", Account),
            ("tern.m.x.a", Account),
            ("tern.m.01.a", Account),
            ("tern.m.+1.a", Account),
            ("tern.m.-1.a", Account),
            ("tern.m.18446744073709551616.a", Account),
            ("tern.m.1", NoTopic),
            ("1", NoTopic),
            ("tern.q.1", Shard),
            ("tern.q.4294967296.1.a", Shard),
            ("tern.q.01.1.a", Shard),
            ("tern.q.x.1.a", Shard),
            ("tern.q.1.1", NoTopic),
            ("tern.q.1.x.a", Account),
            ("01.a", Account),
        ] {
            assert_eq!(decode(subject), Err(error), "{subject:?}");
        }
    }

    #[test]
    fn refuses_what_encoding_never_writes() {
        use SubjectError::*;
        for (subject, error) in [
            ("tern.m.1.", EmptyToken { offset: 9 }),
            ("tern.m.1.a..b", EmptyToken { offset: 11 }),
            ("tern.m.1..a", EmptyToken { offset: 9 }),
            (
                "tern.m.1.a.*",
                Byte {
                    byte: b'*',
                    offset: 11,
                },
            ),
            (
                "tern.m.1.>",
                Byte {
                    byte: b'>',
                    offset: 9,
                },
            ),
            (
                "tern.m.1.a b",
                Byte {
                    byte: b' ',
                    offset: 10,
                },
            ),
            (
                "tern.m.1.ü",
                Byte {
                    byte: 0xC3,
                    offset: 9,
                },
            ),
            ("tern.m.1.a=2e", Escape { offset: 10 }),
            ("tern.m.1.a=2", Escape { offset: 10 }),
            ("tern.m.1.a=", Escape { offset: 10 }),
            ("tern.m.1.==", Escape { offset: 9 }),
            ("tern.m.1.=G0", Escape { offset: 9 }),
            (
                "tern.m.1.=41",
                NeedlessEscape {
                    byte: b'A',
                    offset: 9,
                },
            ),
            (
                "tern.m.1.x=5F",
                NeedlessEscape {
                    byte: b'_',
                    offset: 10,
                },
            ),
            (
                "tern.m.1.a=2Fb",
                NeedlessEscape {
                    byte: b'/',
                    offset: 10,
                },
            ),
            ("tern.m.1.=FF", NotUtf8),
            ("tern.m.1.=C3", NotUtf8),
            ("tern.m.1.a=2B", Topic(TopicError::WildcardInName)),
            ("tern.m.1.=23", Topic(TopicError::WildcardInName)),
            ("tern.m.1.a=00", Topic(TopicError::NullChar)),
        ] {
            assert_eq!(decode(subject), Err(error), "{subject:?}");
        }
    }

    #[test]
    fn messages_say_what_is_wrong() {
        let message = |s: &str| decode(s).map(|_| ()).unwrap_err().to_string();
        assert!(message("x.a").contains("'tern.m.'"));
        assert!(message("tern.m.1.a..b").contains("empty token at byte 11"));
        assert!(message("tern.m.1.a*").contains("0x2A at 10"));
        assert!(message("tern.m.1.=2e").contains("two uppercase hex digits"));
        assert!(message("tern.m.1.=41").contains("0x41, which is never escaped"));
        assert!(message("tern.m.1.a=2B").contains("[MQTT-4.7.0-1]"));
        let filter = encode_filter(SubjectKind::Live, 1, "a/#/b").unwrap_err();
        assert!(filter.to_string().contains("[MQTT-4.7.1-1]"));
    }

    #[test]
    fn filters() {
        assert_eq!(filter("a/b"), ["a.b"]);
        assert_eq!(filter("+"), ["*"]);
        assert_eq!(filter("#"), [">"]);
        assert_eq!(filter("a/#"), ["a.>", "a"]);
        assert_eq!(filter("+/#"), ["*.>", "*"]);
        assert_eq!(filter("/#"), ["=.>", "="]);
        assert_eq!(filter("$SYS/#"), ["=24SYS.>", "=24SYS"]);
        assert_eq!(filter("a/1,2,3/b"), ["a.*.b"]);
        assert_eq!(filter(",/a,"), ["*.*"]);
        assert_eq!(filter("a.b/*/>"), ["a=2Eb.=2A.=3E"]);
        assert_eq!(filter("/+//"), ["=.*.=.="]);
        let shard = encode_filter(SubjectKind::Shard(2), 9, "a/#").unwrap();
        assert_eq!(shard.as_slice(), ["tern.q.2.9.a.>", "tern.q.2.9.a"]);
        let key = encode_filter(SubjectKind::RetainedKey, 9, "+").unwrap();
        assert_eq!(key.as_slice(), ["9.*"]);
    }

    #[test]
    fn refuses_invalid_filters() {
        for f in ["", "a/#/b", "a#", "a+/b", "a\0"] {
            assert!(
                matches!(
                    encode_filter(SubjectKind::Live, 1, f),
                    Err(SubjectError::Filter(_))
                ),
                "{f:?}"
            );
        }
    }

    #[test]
    fn fnv1a_is_the_published_function() {
        // Test vectors of FNV-1a 64.
        assert_eq!(fnv1a(FNV_OFFSET, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(FNV_OFFSET, b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn shards_are_stable_and_in_range() {
        let shards = |n| NonZeroU32::new(n).unwrap();
        assert_eq!(shard_of(1, "a/b", shards(1)), 0);
        // Pinned: a different value means nodes of two versions would disagree.
        let pinned: Vec<u32> = ["a/b", "a/c", "$SYS/x", "spBv1.0/x", "ü"]
            .iter()
            .map(|t| shard_of(42, t, shards(8)))
            .collect();
        let hash = |acct: u64, t: &str| fnv1a(fnv1a(FNV_OFFSET, &acct.to_le_bytes()), t.as_bytes());
        let expected: Vec<u32> = ["a/b", "a/c", "$SYS/x", "spBv1.0/x", "ü"]
            .iter()
            .map(|t| (hash(42, t) % 8) as u32)
            .collect();
        assert_eq!(pinned, expected);
        assert_eq!(pinned, PINNED);
        let mut seen = [0u32; 8];
        for i in 0..8000 {
            let s = shard_of(i % 5, &format!("dev/{i}/x"), shards(8));
            seen[s as usize] += 1;
        }
        // Roughly even: every shard within 20% of its share.
        assert!(seen.iter().all(|&n| (800..1200).contains(&n)), "{seen:?}");
    }

    const PINNED: [u32; 5] = [7, 4, 5, 6, 0];
}
