//! Arbitrary bytes as a topic, a topic filter and a subject for the cluster's subject encoding
//! (`tern-cluster`).
//!
//! - As a subject: `decode_subject` never panics, and whatever it accepts re-encodes to the same
//!   string (one topic, one subject).
//! - As a topic (when UTF-8): each kind's subject uses only `A-Z a-z 0-9 _ - =` in non-empty
//!   tokens, and decodes back to the kind, account and topic exactly when `validate_topic_name`
//!   accepts the topic; otherwise decoding refuses it with that same error.
//! - As a filter: `encode_filter` never panics and gives one or two subjects for a valid filter.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_cluster::{
    Decoded, SubjectError, SubjectKind, decode_subject, encode_filter, encode_topic, shard_of,
};
use tern_topic::{validate_topic_filter, validate_topic_name};

const SHARDS: std::num::NonZeroU32 = std::num::NonZeroU32::new(8).expect("8 is not zero");

fuzz_target!(|data: &[u8]| {
    let mut out = String::new();

    let subject = String::from_utf8_lossy(data);
    if let Ok(decoded) = decode_subject(&subject) {
        encode_topic(decoded.kind, decoded.acct, &decoded.topic, &mut out);
        assert_eq!(out, subject);
    }

    let Ok(topic) = std::str::from_utf8(data) else {
        return;
    };
    let shard = shard_of(42, topic, SHARDS);
    assert!(shard < SHARDS.get());
    for (kind, acct) in [
        (SubjectKind::Live, 0),
        (SubjectKind::Shard(shard), 42),
        (SubjectKind::RetainedKey, u64::MAX),
    ] {
        encode_topic(kind, acct, topic, &mut out);
        for token in out.split('.') {
            assert!(!token.is_empty(), "empty token in {out:?}");
            assert!(
                token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-=".contains(&b)),
                "{out:?}"
            );
        }
        match validate_topic_name(topic) {
            Ok(()) => {
                let expected = Decoded {
                    kind,
                    acct,
                    topic: topic.to_owned(),
                };
                assert_eq!(decode_subject(&out), Ok(expected));
            }
            Err(e) => assert_eq!(decode_subject(&out), Err(SubjectError::Topic(e))),
        }
    }

    match encode_filter(SubjectKind::Live, 7, topic) {
        Ok(subjects) => {
            assert_eq!(validate_topic_filter(topic), Ok(()));
            assert!((1..=2).contains(&subjects.len()));
        }
        Err(SubjectError::Filter(e)) => assert_eq!(validate_topic_filter(topic), Err(e)),
        Err(e) => panic!("encode_filter({topic:?}): {e}"),
    }
});
