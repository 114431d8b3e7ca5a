//! Helpers shared by the store's integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use tern_codec::QoS;
use tern_store::{MemoryState, Message, Op, SessionKey, Snapshot};

pub fn key(cid: u64, client_id: &str) -> SessionKey {
    SessionKey {
        cid,
        client_id: client_id.into(),
    }
}

/// A message with no properties.
pub fn msg(cid: u64, topic: &str, payload: &'static [u8], timestamp: u64) -> Arc<Message> {
    Arc::new(Message::plain(
        cid,
        topic,
        Bytes::from_static(payload),
        QoS::AtLeastOnce,
        timestamp,
    ))
}

/// What a MemoryState holds after `ops`.
pub fn reference(ops: &[Op]) -> Snapshot {
    let mut m = MemoryState::default();
    for op in ops {
        m.apply(op);
    }
    m.snapshot()
}

/// Every file under `dir` with its bytes: to check a refused store was left untouched.
pub fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.insert(path.clone(), std::fs::read(&path).expect("read"));
        }
    }
    out
}

/// Total size of the files under `dir`.
pub fn du(dir: &Path) -> u64 {
    files(dir).values().map(|b| b.len() as u64).sum()
}

/// `crates/tern-store/tests/golden/...`
pub fn golden(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(rel)
}

/// Random ops over a small domain (few accounts, client ids, filters, seqs and packet ids), so
/// that sequences hit the same sessions and entries again and again.
pub mod arb {
    use std::sync::Arc;

    use bytes::Bytes;
    use proptest::prelude::*;
    use smallvec::SmallVec;
    use tern_codec::{PublishProperties, QoS, RetainHandling, SubscriptionOptions};
    use tern_store::{
        InflightPhase, Message, Op, QueuedRecord, SessionKey, SessionRecord, SubscriptionRecord,
    };

    pub fn session_key() -> impl Strategy<Value = SessionKey> {
        (1u64..3, prop::sample::select(vec!["a", "b", "ab", ""])).prop_map(|(cid, id)| SessionKey {
            cid,
            client_id: id.into(),
        })
    }

    fn qos() -> impl Strategy<Value = QoS> {
        prop::sample::select(vec![QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce])
    }

    fn bytes() -> impl Strategy<Value = Bytes> {
        prop::collection::vec(any::<u8>(), 0..24).prop_map(Bytes::from)
    }

    fn text() -> impl Strategy<Value = bytestring::ByteString> {
        "[a-z/+#é]{0,8}".prop_map(bytestring::ByteString::from)
    }

    pub fn message() -> impl Strategy<Value = Arc<Message>> {
        let props = (
            prop::option::of(0u8..2),
            prop::option::of(any::<u32>()),
            prop::option::of(text()),
            prop::option::of(bytes()),
            prop::collection::vec((text(), text()), 0..3),
            prop::collection::vec(1u32..268_435_456, 0..2),
            prop::option::of(text()),
        )
            .prop_map(|(pfi, mei, rt, cd, up, si, ct)| PublishProperties {
                payload_format_indicator: pfi,
                message_expiry_interval: mei,
                topic_alias: None,
                response_topic: rt,
                correlation_data: cd,
                user_properties: up,
                subscription_identifiers: SmallVec::from_vec(si),
                content_type: ct,
            });
        (
            1u64..3,
            prop::sample::select(vec!["t", "t/1", "a/b/c"]),
            bytes(),
            qos(),
            any::<bool>(),
            props,
            any::<u64>(),
            prop::option::of(any::<u64>()),
        )
            .prop_map(
                |(cid, topic, payload, qos, retain, properties, timestamp, expires_at)| {
                    Arc::new(Message {
                        topic: topic.into(),
                        payload,
                        qos,
                        retain,
                        properties: properties.into(),
                        cid,
                        timestamp,
                        expires_at,
                        origin: None,
                    })
                },
            )
    }

    fn options() -> impl Strategy<Value = SubscriptionOptions> {
        (qos(), any::<bool>(), any::<bool>(), 0u8..3).prop_map(|(qos, no_local, rap, rh)| {
            SubscriptionOptions {
                qos,
                no_local,
                retain_as_published: rap,
                retain_handling: match rh {
                    0 => RetainHandling::SendAtSubscribe,
                    1 => RetainHandling::SendIfNew,
                    _ => RetainHandling::DoNotSend,
                },
            }
        })
    }

    fn filter() -> impl Strategy<Value = bytestring::ByteString> {
        prop::sample::select(vec!["x", "y/#", "$share/g/z", "x/+"]).prop_map(Into::into)
    }

    fn phase() -> impl Strategy<Value = InflightPhase> {
        prop::sample::select(vec![InflightPhase::Sent, InflightPhase::Released])
    }

    fn queued() -> impl Strategy<Value = QueuedRecord> {
        (
            0u64..6,
            message(),
            qos(),
            any::<bool>(),
            prop::collection::vec(1u32..100, 0..3),
            prop::option::of((0u16..4, phase())),
        )
            .prop_map(|(seq, msg, qos, retain, ids, inflight)| QueuedRecord {
                seq,
                msg,
                qos,
                retain,
                sub_ids: SmallVec::from_vec(ids),
                inflight,
            })
    }

    fn record() -> impl Strategy<Value = SessionRecord> {
        (
            session_key(),
            any::<u32>(),
            prop::option::of(any::<u64>()),
            prop::option::of((message(), any::<u32>())),
            any::<u64>(),
        )
            .prop_map(|(key, expiry_interval, disconnected_at, will, created)| {
                SessionRecord {
                    key,
                    expiry_interval,
                    disconnected_at,
                    will,
                    created,
                    token_id: None,
                }
            })
    }

    pub fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            1 => (1u64..4, bytes()).prop_map(|(cid, json)| Op::PutAccount { cid, json }),
            1 => (1u64..4).prop_map(|cid| Op::DelAccount { cid }),
            1 => (1u64..4, bytes()).prop_map(|(id, json)| Op::PutToken { id, json }),
            1 => (1u64..4).prop_map(|id| Op::DelToken { id }),
            1 => message().prop_map(|msg| Op::PutRetained { msg }),
            1 => (1u64..3, prop::sample::select(vec!["t", "t/1", "a/b/c"]))
                .prop_map(|(cid, t)| Op::DelRetained { cid, topic: t.into() }),
            3 => record().prop_map(|record| Op::PutSession { record }),
            1 => session_key().prop_map(|key| Op::DelSession { key }),
            2 => (session_key(), filter(), options(), prop::option::of(1u32..10)).prop_map(|(key, filter, options, id)| {
                Op::PutSubscription { key, sub: SubscriptionRecord { filter, options, id } }
            }),
            1 => (session_key(), filter()).prop_map(|(key, filter)| Op::DelSubscription { key, filter }),
            4 => (session_key(), queued()).prop_map(|(key, entry)| Op::Enqueue { key, entry }),
            2 => (session_key(), 0u64..6, 0u16..4, phase())
                .prop_map(|(key, seq, packet_id, phase)| Op::SetInflight { key, seq, packet_id, phase }),
            2 => (session_key(), 0u64..6).prop_map(|(key, seq)| Op::Dequeue { key, seq }),
            1 => session_key().prop_map(|key| Op::ClearQueue { key }),
            1 => (session_key(), 0u16..4).prop_map(|(key, packet_id)| Op::PutIncoming { key, packet_id }),
            1 => (session_key(), 0u16..4).prop_map(|(key, packet_id)| Op::DelIncoming { key, packet_id }),
            // The devices layer's records (messages have their own tests: device_messages.rs).
            1 => (1u64..4, bytes()).prop_map(|(id, json)| Op::PutDevice { id, json }),
            1 => (1u64..4).prop_map(|id| Op::DelDevice { id }),
            1 => (1u64..4, bytes()).prop_map(|(id, json)| Op::PutGroup { id, json }),
            1 => (1u64..4).prop_map(|id| Op::DelGroup { id }),
            1 => (1u64..4, bytes()).prop_map(|(id, json)| Op::PutChannel { id, json }),
            1 => (1u64..4).prop_map(|id| Op::DelChannel { id }),
            1 => (1u64..4, bytes()).prop_map(|(id, json)| Op::PutStream { id, json }),
            1 => (1u64..4).prop_map(|id| Op::DelStream { id }),
            1 => (1u64..4, bytes()).prop_map(|(device, json)| Op::PutTelemetry { device, json }),
            1 => (1u64..4).prop_map(|device| Op::DelTelemetry { device }),
            1 => bytes().prop_map(|json| Op::PutGwMeta { json }),
        ]
    }
}
