//! Property tests of the subject encoding: every valid topic name round trips through each kind
//! (up to the 65535-byte limit), distinct topics never share a subject, every decoded subject
//! re-encodes to itself, subjects use only the safe alphabet, and a filter's subjects, under a
//! NATS matcher written here, match exactly what a coarse reading of the filter matches: every
//! topic [`tern_topic::matches()`] accepts, plus those it refuses only for its `$` rule or
//! because a comma level became `*`.

use proptest::prelude::*;
use tern_topic::{MAX_TOPIC_LEN, matches, validate_topic_filter, validate_topic_name};

use crate::{Decoded, SubjectKind, decode_subject, encode_filter, encode_topic};

/// Levels rich in what the encoding escapes, plus arbitrary text (any Unicode but the level
/// separator, the wildcards and U+0000, which no topic name holds).
fn topic_level() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "", "a", "b", "$SYS", "$", "spBv1.0", ".", "..", "*", ">", "=", "=2E", "=3D", " ",
            "a b", ",", "1,2", "-_", "ü", "€", "🦀", "\t", "A=", "tern", "0",
        ])
        .prop_map(str::to_owned),
        "[^/+#\\x00]{0,12}",
    ]
}

fn topic() -> impl Strategy<Value = String> {
    prop::collection::vec(topic_level(), 1..6)
        .prop_map(|levels| levels.join("/"))
        .prop_filter("valid topic names", |t| validate_topic_name(t).is_ok())
}

/// Topics at the length limit: a few levels repeated until the next copy would not fit.
fn long_topic() -> impl Strategy<Value = String> {
    prop::collection::vec(topic_level(), 1..4)
        .prop_map(|levels| {
            let unit = levels.join("/") + "/";
            let mut topic = String::with_capacity(MAX_TOPIC_LEN);
            while topic.len() + unit.len() <= MAX_TOPIC_LEN && !unit.is_empty() {
                topic.push_str(&unit);
            }
            topic
        })
        .prop_filter("valid topic names", |t| validate_topic_name(t).is_ok())
}

fn kind() -> impl Strategy<Value = SubjectKind> {
    prop_oneof![
        Just(SubjectKind::Live),
        any::<u32>().prop_map(SubjectKind::Shard),
        Just(SubjectKind::RetainedKey),
    ]
}

fn acct() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0), Just(u64::MAX), 0..20u64, any::<u64>()]
}

/// Topics over a tiny alphabet, so that pairs are often equal or one escape apart.
fn near_topic() -> impl Strategy<Value = String> {
    "[a.=2E/ ]{1,6}"
}

/// Strings shaped like subjects, most of them one mistake away from a valid one: escapes of any
/// byte in either case, cut short, stray wildcards and spaces, numbers with leading zeros.
fn subject_like() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        16 => "[a-zA-Z0-9_-]{1,3}",
        12 => "=2[0-9A-F]|=3[A-F]|=40|=5[B-F]|=60|=7[B-F]",
        2 => "=[0-9A-F]{2}",
        1 => "=[0-9A-Fa-f]{0,2}",
        1 => "=[2-7][a-f]",
        1 => "[ .*>/=]",
    ];
    let token = prop_oneof![
        12 => prop::collection::vec(piece, 1..4).prop_map(|pieces| pieces.concat()),
        2 => Just("=".to_owned()),
        1 => Just(String::new()),
    ];
    (
        prop_oneof![
            4 => Just(String::new()),
            4 => Just("tern.m.".to_owned()),
            4 => "tern\\.q\\.(0|1|7)\\.",
            1 => "tern\\.q\\.(01|4294967296)\\.",
            1 => "tern\\.[a-z]\\.",
        ],
        prop_oneof![8 => "0|7|42", 1 => "07|x"],
        prop_oneof![8 => prop::collection::vec(token, 1..4), 1 => Just(Vec::new())],
    )
        .prop_map(|(prefix, acct, tokens)| {
            let mut subject = prefix + &acct;
            for token in tokens {
                subject.push('.');
                subject.push_str(&token);
            }
            subject
        })
}

fn filter_level() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "a", "b", "", "$SYS", "$", "a.b", "*", ">", "=", " ", "ü", "1", "+", "+", "1,2", ",",
        "$SYS,a", "a,", "1,2,1",
    ])
}

fn match_level() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "a", "b", "", "$SYS", "$", "a.b", "*", ">", "=", " ", "ü", "1", "2", "1,2", ",", "a,",
    ])
}

fn filter() -> impl Strategy<Value = String> {
    (prop::collection::vec(filter_level(), 0..4), any::<bool>())
        .prop_map(|(mut levels, hash)| {
            if hash || levels.is_empty() {
                levels.push("#");
            }
            levels.join("/")
        })
        .prop_filter("valid filters", |f| validate_topic_filter(f).is_ok())
}

/// A topic `filter` matches, or nearly: `+` and `#` filled from `fill`, a comma level replaced
/// by one of its alternatives (or kept whole), as `pick` says.
fn instance(filter: &str, pick: &[usize], fill: &[&str]) -> String {
    let mut levels = Vec::new();
    for (i, level) in filter.split('/').enumerate() {
        let p = pick[i % pick.len()];
        match level {
            "+" => levels.push(fill[p % fill.len()]),
            "#" => levels.extend(fill.iter().cycle().skip(p).take(p % 3)),
            _ if level.contains(',') => {
                let alternatives: Vec<&str> = level.split(',').collect();
                levels.push(
                    alternatives
                        .get(p % (alternatives.len() + 1))
                        .unwrap_or(&level),
                );
            }
            _ => levels.push(level),
        }
    }
    levels.join("/")
}

/// NATS subject matching: tokens split on `.`, `*` is one token, `>` one or more trailing ones.
fn nats_matches(pattern: &str, subject: &str) -> bool {
    let mut pattern = pattern.split('.');
    let mut subject = subject.split('.');
    loop {
        match (pattern.next(), subject.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(p), Some(s)) if p == s => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// What the encoded filter can express: [`matches()`] without the `$` rule, and a comma level
/// matching any one level.
fn coarse_matches(filter: &str, topic: &str) -> bool {
    let mut filter = filter.split('/');
    let mut topic = topic.split('/');
    loop {
        match (filter.next(), topic.next()) {
            (Some("#"), _) => return true,
            (Some(f), Some(t)) if f == "+" || f.contains(',') || f == t => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

fn encode(kind: SubjectKind, acct: u64, topic: &str) -> String {
    let mut out = String::new();
    encode_topic(kind, acct, topic, &mut out);
    out
}

/// Only `A-Z a-z 0-9 _ - =` in tokens, no empty token: a NATS subject without wildcards and a
/// KV key.
fn assert_safe(subject: &str) -> Result<(), TestCaseError> {
    for token in subject.split('.') {
        prop_assert!(!token.is_empty(), "empty token in {subject:?}");
        prop_assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-=".contains(&b)),
            "token {token:?} of {subject:?}"
        );
    }
    Ok(())
}

fn check_round_trip(kind: SubjectKind, acct: u64, topic: &str) -> Result<(), TestCaseError> {
    let subject = encode(kind, acct, topic);
    assert_safe(&subject)?;
    let expected = Decoded {
        kind,
        acct,
        topic: topic.to_owned(),
    };
    prop_assert_eq!(decode_subject(&subject), Ok(expected));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn every_valid_topic_round_trips(kind in kind(), acct in acct(), topic in topic()) {
        check_round_trip(kind, acct, &topic)?;
    }

    #[test]
    fn one_buffer_serves_many_topics(kind in kind(), topics in prop::collection::vec(topic(), 1..8)) {
        let mut out = String::new();
        for topic in &topics {
            encode_topic(kind, 5, topic, &mut out);
            prop_assert_eq!(&out, &encode(kind, 5, topic));
        }
    }

    #[test]
    fn distinct_topics_have_distinct_subjects(
        a in (kind(), 0..3u64, near_topic()),
        b in (kind(), 0..3u64, near_topic()),
        c in (kind(), acct(), topic()),
    ) {
        for (x, y) in [(&a, &b), (&a, &c), (&b, &c)] {
            let (sx, sy) = (encode(x.0, x.1, &x.2), encode(y.0, y.1, &y.2));
            prop_assert_eq!(x == y, sx == sy, "{:?} {:?} -> {} {}", x, y, sx, sy);
        }
    }

    /// Whatever decodes re-encodes to the same string: no other spelling of a topic is accepted.
    #[test]
    fn decoded_subjects_reencode_to_themselves(subject in subject_like()) {
        if let Ok(decoded) = decode_subject(&subject) {
            prop_assert_eq!(encode(decoded.kind, decoded.acct, &decoded.topic), subject);
        }
    }

    #[test]
    fn decoding_anything_does_not_panic(subject in any::<String>()) {
        let _ = decode_subject(&subject);
        let _ = decode_subject(&format!("tern.m.1.{subject}"));
    }

    #[test]
    fn filters_receive_what_they_match_and_little_else(
        filter in filter(),
        topic_levels in prop::collection::vec(match_level(), 1..5),
        pick in prop::collection::vec(0..4usize, 1..5),
        fill in prop::collection::vec(match_level(), 1..4),
        kind in kind(),
    ) {
        prop_assert!(validate_topic_filter(&filter).is_ok(), "{filter:?}");
        let subjects = encode_filter(kind, 9, &filter).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(!subjects.is_empty() && subjects.len() <= 2);
        for subject in &subjects {
            // Wildcards only as whole tokens, `>` only last; every other token safe.
            let tokens: Vec<&str> = subject.split('.').collect();
            for (i, token) in tokens.iter().enumerate() {
                if *token == ">" {
                    prop_assert_eq!(i, tokens.len() - 1, "{}", subject);
                } else if *token != "*" {
                    assert_safe(token)?;
                }
            }
        }
        let commas = filter.split('/').any(|level| level.contains(','));
        for topic in [topic_levels.join("/"), instance(&filter, &pick, &fill)] {
            if validate_topic_name(&topic).is_err() {
                continue;
            }
            let subject = encode(kind, 9, &topic);
            let received = subjects.iter().any(|s| nats_matches(s, &subject));
            prop_assert_eq!(received, coarse_matches(&filter, &topic), "{:?} {:?} {:?}", filter, topic, subjects);
            if matches(&filter, &topic) {
                prop_assert!(received, "missed: {:?} {:?} {:?}", filter, topic, subjects);
            } else if received {
                let dollar = topic.starts_with('$') && !filter.starts_with('$');
                prop_assert!(dollar || commas, "extra: {:?} {:?} {:?}", filter, topic, subjects);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn topics_at_the_length_limit_round_trip(kind in kind(), acct in acct(), topic in long_topic()) {
        prop_assert!(topic.len() > MAX_TOPIC_LEN / 2);
        check_round_trip(kind, acct, &topic)?;
    }
}

#[test]
fn the_longest_topics_round_trip() {
    // 65535 bytes, every one escaped: 21845 three-byte characters, or all dots (one level each
    // side of no slash), or all slashes (65536 empty levels).
    for topic in [
        "€".repeat(MAX_TOPIC_LEN / 3),
        ".".repeat(MAX_TOPIC_LEN),
        "/".repeat(MAX_TOPIC_LEN),
        "a".repeat(MAX_TOPIC_LEN),
    ] {
        for kind in [
            SubjectKind::Live,
            SubjectKind::Shard(7),
            SubjectKind::RetainedKey,
        ] {
            let subject = encode(kind, u64::MAX, &topic);
            let decoded = decode_subject(&subject).map(|d| d.topic);
            assert_eq!(decoded.as_deref(), Ok(topic.as_str()));
        }
    }
}

#[test]
fn every_escape_decodes_only_in_its_one_spelling() {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for byte in 0..=255u8 {
        let upper = format!(
            "tern.m.1.x={}{}",
            char::from(HEX[usize::from(byte >> 4)]),
            char::from(HEX[usize::from(byte & 0xF)])
        );
        let lower = format!("tern.m.1.x={byte:02x}");
        let escaped = !(byte.is_ascii_alphanumeric() || b"_-/".contains(&byte));
        let topic_byte = byte.is_ascii() && !b"+#\0".contains(&byte);
        let decoded = decode_subject(&upper);
        assert_eq!(
            decoded.is_ok(),
            escaped && topic_byte,
            "{upper}: {decoded:?}"
        );
        if let Ok(decoded) = decoded {
            assert_eq!(decoded.topic.as_bytes(), [b'x', byte]);
            assert_eq!(encode(decoded.kind, decoded.acct, &decoded.topic), upper);
        }
        if lower != upper {
            assert!(decode_subject(&lower).is_err(), "{lower}");
        }
    }
}
