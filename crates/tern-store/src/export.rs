//! `tern store export` / `tern store import`: the whole stored state as JSON Lines, for backups
//! and for moving between format versions. The format is described in `EXPORT.md`.
//!
//! The first line is `{"tern_store_export":1}`; then one object per record, tagged by `kind`.
//! Byte strings (payloads, correlation data, account and token documents) are a JSON string
//! when they are UTF-8 and `{"b64":"..."}` (standard base64) otherwise, so a text payload stays
//! readable and any payload survives exactly.

use std::collections::HashSet;
use std::io::{self, BufRead, Write};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use bytestring::ByteString;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use tern_codec::{PublishProperties, QoS, RetainHandling, SubscriptionOptions};

use crate::error::StoreError;
use crate::model::{
    InflightPhase, Message, QueuedRecord, SessionKey, SessionRecord, Snapshot, SubscriptionRecord,
};
use crate::op::Op;

/// The export format this build writes and reads.
pub const EXPORT_VERSION: u32 = 1;

/// Writes `snapshot` as JSON Lines: the header, accounts, tokens, retained messages, then each
/// session followed by its subscriptions, queued deliveries and incoming QoS 2 ids.
pub fn export(snapshot: &Snapshot, out: &mut impl Write) -> io::Result<()> {
    let mut line = |v: &dyn LineOut| v.write_line(&mut *out);
    line(&Header {
        tern_store_export: EXPORT_VERSION,
    })?;
    for (cid, json) in &snapshot.accounts {
        line(&Line::Account {
            cid: *cid,
            json: Data::of(json),
        })?;
    }
    for (id, json) in &snapshot.tokens {
        line(&Line::Token {
            id: *id,
            json: Data::of(json),
        })?;
    }
    if let Some(json) = &snapshot.gw_meta {
        line(&Line::GwMeta {
            json: Data::of(json),
        })?;
    }
    for (id, json) in &snapshot.devices {
        line(&Line::Device {
            id: *id,
            json: Data::of(json),
        })?;
    }
    for (id, json) in &snapshot.groups {
        line(&Line::Group {
            id: *id,
            json: Data::of(json),
        })?;
    }
    for (id, json) in &snapshot.channels {
        line(&Line::Channel {
            id: *id,
            json: Data::of(json),
        })?;
    }
    for (id, json) in &snapshot.streams {
        line(&Line::Stream {
            id: *id,
            json: Data::of(json),
        })?;
    }
    for (id, json) in &snapshot.webhooks {
        line(&Line::Webhook {
            id: *id,
            json: Data::of(json),
        })?;
    }
    for (device, json) in &snapshot.telemetry {
        line(&Line::Telemetry {
            device: *device,
            json: Data::of(json),
        })?;
    }
    for msg in &snapshot.retained {
        line(&Line::Retained {
            msg: MessageJson::of(msg),
        })?;
    }
    for s in &snapshot.sessions {
        let r = &s.record;
        let (cid, client_id) = (r.key.cid, r.key.client_id.to_string());
        line(&Line::Session {
            cid,
            client_id: client_id.clone(),
            expiry_interval: r.expiry_interval,
            disconnected_at: r.disconnected_at,
            created: r.created,
            token_id: r.token_id,
            will: r.will.as_ref().map(|(m, delay)| WillJson {
                delay: *delay,
                msg: MessageJson::of(m),
            }),
        })?;
        for sub in &s.subscriptions {
            line(&Line::Subscription {
                cid,
                client_id: client_id.clone(),
                filter: sub.filter.to_string(),
                qos: sub.options.qos as u8,
                no_local: sub.options.no_local,
                retain_as_published: sub.options.retain_as_published,
                retain_handling: sub.options.retain_handling as u8,
                id: sub.id,
            })?;
        }
        for q in &s.queue {
            line(&Line::Queued {
                cid,
                client_id: client_id.clone(),
                seq: q.seq,
                qos: q.qos as u8,
                retain: q.retain,
                sub_ids: q.sub_ids.to_vec(),
                inflight: q.inflight.map(|(packet_id, phase)| InflightJson {
                    packet_id,
                    phase: match phase {
                        InflightPhase::Sent => PhaseJson::Sent,
                        InflightPhase::Released => PhaseJson::Released,
                    },
                }),
                msg: MessageJson::of(&q.msg),
            })?;
        }
        for packet_id in &s.incoming_qos2 {
            line(&Line::Incoming {
                cid,
                client_id: client_id.clone(),
                packet_id: *packet_id,
            })?;
        }
    }
    out.flush()
}

/// Writes one device message line (after the snapshot's lines: [`crate::export_dir`]).
pub(crate) fn export_message(
    device: u64,
    key: crate::MessageKey,
    json: &Bytes,
    out: &mut dyn Write,
) -> io::Result<()> {
    Line::Message {
        device,
        ts: key.ts,
        seq: key.seq,
        json: Data::of(json),
    }
    .write_line(out)
}

/// Reads an export back as the ops that recreate it, in file order (apply them to an empty
/// store). Every line is checked: a bad line is an error naming its number, and a record of a
/// session must come after that session's line.
pub fn import(input: impl BufRead) -> Result<Vec<Op>, StoreError> {
    let bad = |n: usize, detail: String| StoreError::Record {
        what: "export",
        detail: format!("line {n}: {detail}"),
    };
    let mut ops = Vec::new();
    let mut sessions: HashSet<SessionKey> = HashSet::new();
    let mut header = false;
    for (i, line) in input.lines().enumerate() {
        let n = i + 1;
        let line = line.map_err(|e| bad(n, e.to_string()))?;
        if line.trim().is_empty() {
            continue;
        }
        if !header {
            let h: Header = serde_json::from_str(&line).map_err(|e| {
                bad(
                    n,
                    format!("not a tern store export (expected {{\"tern_store_export\":1}}): {e}"),
                )
            })?;
            if h.tern_store_export != EXPORT_VERSION {
                return Err(bad(
                    n,
                    format!(
                        "export format version {}, this tern reads version {EXPORT_VERSION}",
                        h.tern_store_export
                    ),
                ));
            }
            header = true;
            continue;
        }
        let parsed: Line = serde_json::from_str(&line).map_err(|e| bad(n, e.to_string()))?;
        let op = parsed.into_op(&mut sessions).map_err(|e| bad(n, e))?;
        ops.push(op);
    }
    if !header {
        return Err(bad(1, "empty input, not a tern store export".into()));
    }
    Ok(ops)
}

/// One JSON object and a newline (the header and the records are different types).
trait LineOut {
    fn write_line(&self, out: &mut dyn Write) -> io::Result<()>;
}

impl<T: Serialize> LineOut for T {
    fn write_line(&self, mut out: &mut dyn Write) -> io::Result<()> {
        serde_json::to_writer(&mut out, self).map_err(io::Error::from)?;
        out.write_all(b"\n")
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    tern_store_export: u32,
}

/// Bytes: a string when UTF-8, else `{"b64": "..."}`.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Data {
    Text(String),
    Binary { b64: String },
}

impl Data {
    fn of(b: &Bytes) -> Data {
        match std::str::from_utf8(b) {
            Ok(s) => Data::Text(s.to_owned()),
            Err(_) => Data::Binary {
                b64: BASE64.encode(b),
            },
        }
    }

    fn bytes(self) -> Result<Bytes, String> {
        match self {
            Data::Text(s) => Ok(Bytes::from(s)),
            Data::Binary { b64 } => BASE64
                .decode(b64)
                .map(Bytes::from)
                .map_err(|e| format!("bad base64: {e}")),
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum Line {
    Account {
        cid: u64,
        json: Data,
    },
    Token {
        id: u64,
        json: Data,
    },
    Retained {
        msg: MessageJson,
    },
    /// The devices layer's own record (its id counters).
    GwMeta {
        json: Data,
    },
    /// A device of the devices layer (its JSON document).
    Device {
        id: u64,
        json: Data,
    },
    Group {
        id: u64,
        json: Data,
    },
    /// A channel of the devices layer (its JSON document).
    Channel {
        id: u64,
        json: Data,
    },
    /// A stream of the devices layer (its JSON document).
    Stream {
        id: u64,
        json: Data,
    },
    /// A webhook (its JSON document).
    Webhook {
        id: u64,
        json: Data,
    },
    /// A device message (after its device): key (`ts` in µs, `seq`) and JSON document.
    Message {
        device: u64,
        ts: i64,
        seq: u64,
        json: Data,
    },
    /// A device's telemetry document (after its device).
    Telemetry {
        device: u64,
        json: Data,
    },
    Session {
        cid: u64,
        client_id: String,
        expiry_interval: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        disconnected_at: Option<u64>,
        created: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token_id: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        will: Option<WillJson>,
    },
    Subscription {
        cid: u64,
        client_id: String,
        filter: String,
        qos: u8,
        no_local: bool,
        retain_as_published: bool,
        retain_handling: u8,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u32>,
    },
    Queued {
        cid: u64,
        client_id: String,
        seq: u64,
        qos: u8,
        retain: bool,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        sub_ids: Vec<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        inflight: Option<InflightJson>,
        msg: MessageJson,
    },
    Incoming {
        cid: u64,
        client_id: String,
        packet_id: u16,
    },
}

impl Line {
    fn into_op(self, sessions: &mut HashSet<SessionKey>) -> Result<Op, String> {
        let known = |sessions: &HashSet<SessionKey>, cid: u64, client_id: String| {
            let key = SessionKey {
                cid,
                client_id: client_id.into(),
            };
            if sessions.contains(&key) {
                Ok(key)
            } else {
                Err(format!(
                    "session {cid}/{} is not defined on an earlier line",
                    key.client_id
                ))
            }
        };
        Ok(match self {
            Line::Account { cid, json } => Op::PutAccount {
                cid,
                json: json.bytes()?,
            },
            Line::Token { id, json } => Op::PutToken {
                id,
                json: json.bytes()?,
            },
            Line::Retained { msg } => Op::PutRetained {
                msg: Arc::new(msg.into_message()?),
            },
            Line::GwMeta { json } => Op::PutGwMeta {
                json: json.bytes()?,
            },
            Line::Device { id, json } => Op::PutDevice {
                id,
                json: json.bytes()?,
            },
            Line::Group { id, json } => Op::PutGroup {
                id,
                json: json.bytes()?,
            },
            Line::Channel { id, json } => Op::PutChannel {
                id,
                json: json.bytes()?,
            },
            Line::Stream { id, json } => Op::PutStream {
                id,
                json: json.bytes()?,
            },
            Line::Webhook { id, json } => Op::PutWebhook {
                id,
                json: json.bytes()?,
            },
            Line::Message {
                device,
                ts,
                seq,
                json,
            } => Op::AppendMessages {
                device,
                messages: vec![(crate::MessageKey { ts, seq }, json.bytes()?)],
            },
            Line::Telemetry { device, json } => Op::PutTelemetry {
                device,
                json: json.bytes()?,
            },
            Line::Session {
                cid,
                client_id,
                expiry_interval,
                disconnected_at,
                created,
                token_id,
                will,
            } => {
                let key = SessionKey {
                    cid,
                    client_id: client_id.into(),
                };
                sessions.insert(key.clone());
                let will = match will {
                    Some(w) => Some((Arc::new(w.msg.into_message()?), w.delay)),
                    None => None,
                };
                Op::PutSession {
                    record: SessionRecord {
                        key,
                        expiry_interval,
                        disconnected_at,
                        will,
                        created,
                        token_id,
                    },
                }
            }
            Line::Subscription {
                cid,
                client_id,
                filter,
                qos,
                no_local,
                retain_as_published,
                retain_handling,
                id,
            } => {
                let key = known(sessions, cid, client_id)?;
                let retain_handling = match retain_handling {
                    0 => RetainHandling::SendAtSubscribe,
                    1 => RetainHandling::SendIfNew,
                    2 => RetainHandling::DoNotSend,
                    v => return Err(format!("retain_handling {v} is not 0, 1 or 2")),
                };
                let options = SubscriptionOptions {
                    qos: qos_of(qos)?,
                    no_local,
                    retain_as_published,
                    retain_handling,
                };
                Op::PutSubscription {
                    key,
                    sub: SubscriptionRecord {
                        filter: filter.into(),
                        options,
                        id,
                    },
                }
            }
            Line::Queued {
                cid,
                client_id,
                seq,
                qos,
                retain,
                sub_ids,
                inflight,
                msg,
            } => {
                let key = known(sessions, cid, client_id)?;
                let entry = QueuedRecord {
                    seq,
                    msg: Arc::new(msg.into_message()?),
                    qos: qos_of(qos)?,
                    retain,
                    sub_ids: SmallVec::from_vec(sub_ids),
                    inflight: inflight.map(|i| {
                        let phase = match i.phase {
                            PhaseJson::Sent => InflightPhase::Sent,
                            PhaseJson::Released => InflightPhase::Released,
                        };
                        (i.packet_id, phase)
                    }),
                };
                Op::Enqueue { key, entry }
            }
            Line::Incoming {
                cid,
                client_id,
                packet_id,
            } => Op::PutIncoming {
                key: known(sessions, cid, client_id)?,
                packet_id,
            },
        })
    }
}

fn qos_of(v: u8) -> Result<QoS, String> {
    QoS::from_u8(v).ok_or_else(|| format!("qos {v} is not 0, 1 or 2"))
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WillJson {
    delay: u32,
    msg: MessageJson,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct InflightJson {
    packet_id: u16,
    phase: PhaseJson,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum PhaseJson {
    Sent,
    Released,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageJson {
    topic: String,
    payload: Data,
    qos: u8,
    retain: bool,
    cid: u64,
    timestamp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at: Option<u64>,
    #[serde(default, skip_serializing_if = "PropertiesJson::is_empty")]
    properties: PropertiesJson,
}

#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PropertiesJson {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    payload_format_indicator: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    message_expiry_interval: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    topic_alias: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    response_topic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    correlation_data: Option<Data>,
    /// Name/value pairs, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    user_properties: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    subscription_identifiers: Vec<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    content_type: Option<String>,
}

impl PropertiesJson {
    fn is_empty(&self) -> bool {
        self.payload_format_indicator.is_none()
            && self.message_expiry_interval.is_none()
            && self.topic_alias.is_none()
            && self.response_topic.is_none()
            && self.correlation_data.is_none()
            && self.user_properties.is_empty()
            && self.subscription_identifiers.is_empty()
            && self.content_type.is_none()
    }
}

impl MessageJson {
    fn of(m: &Message) -> MessageJson {
        let p = &m.properties;
        let s = |b: &ByteString| b.to_string();
        MessageJson {
            topic: m.topic.to_string(),
            payload: Data::of(&m.payload),
            qos: m.qos as u8,
            retain: m.retain,
            cid: m.cid,
            timestamp: m.timestamp,
            expires_at: m.expires_at,
            properties: PropertiesJson {
                payload_format_indicator: p.payload_format_indicator,
                message_expiry_interval: p.message_expiry_interval,
                topic_alias: p.topic_alias,
                response_topic: p.response_topic.as_ref().map(s),
                correlation_data: p.correlation_data.as_ref().map(Data::of),
                user_properties: p
                    .user_properties
                    .iter()
                    .map(|(k, v)| (s(k), s(v)))
                    .collect(),
                subscription_identifiers: p.subscription_identifiers.to_vec(),
                content_type: p.content_type.as_ref().map(s),
            },
        }
    }

    fn into_message(self) -> Result<Message, String> {
        let p = self.properties;
        Ok(Message {
            topic: self.topic.into(),
            payload: self.payload.bytes()?,
            qos: qos_of(self.qos)?,
            retain: self.retain,
            properties: PublishProperties {
                payload_format_indicator: p.payload_format_indicator,
                message_expiry_interval: p.message_expiry_interval,
                topic_alias: p.topic_alias,
                response_topic: p.response_topic.map(ByteString::from),
                correlation_data: p.correlation_data.map(Data::bytes).transpose()?,
                user_properties: p
                    .user_properties
                    .into_iter()
                    .map(|(k, v)| (k.into(), v.into()))
                    .collect(),
                subscription_identifiers: SmallVec::from_vec(p.subscription_identifiers),
                content_type: p.content_type.map(ByteString::from),
            }
            .into(),
            cid: self.cid,
            timestamp: self.timestamp,
            expires_at: self.expires_at,
            origin: None,
        })
    }
}
