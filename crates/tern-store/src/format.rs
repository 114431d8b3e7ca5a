//! The on-disk format, version 2: key layouts and record encodings, as bytes only (the engine's
//! tables are in `disk`). Version 2 added queue packs ([`pack_key`], [`put_pack_entry`],
//! [`decode_pack`]) and moved device messages into `message_data` and `message_index`; a
//! version 1 store is read as it is and converted when opened for writing (its per-entry
//! `queue` records stay valid; its messages move to the new tables).
//!
//! Every integer is big-endian, so keys sort numerically. A session is keyed by
//! `cid (u64) | client id length (u16) | client id`: the length makes the key self-delimiting, so
//! every key that starts with it belongs to that session and one prefix range covers its
//! subscriptions, queue or incoming ids.
//!
//! Every value starts with a record version byte ([`RECORD_V1`]). Decoding checks every length
//! against the bytes left and never panics: a damaged record is a [`FormatError`] naming the
//! field. Messages are encoded by [`put_message`]; the publishing session (`origin`) is not
//! stored and is `None` after a load.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use bytestring::ByteString;
use smallvec::SmallVec;
use tern_codec::{PacketId, PublishProperties, QoS, RetainHandling, SubscriptionOptions};

use crate::model::{
    Cid, InflightPhase, Message, QueuedRecord, SessionKey, SessionRecord, SubscriptionRecord,
};

/// The store format this build writes. A store of a version from [`OLDEST_FORMAT_VERSION`] up
/// to this one is read (and an older one converted when opened for writing:
/// `disk::migrate_messages`); any other is refused.
pub const FORMAT_VERSION: u32 = 2;
/// The oldest store format this build reads: version 1 has no queue packs, only per-entry queue
/// records, which version 2 still reads and writes, and its device messages in one table in
/// device order, which the conversion moves.
pub const OLDEST_FORMAT_VERSION: u32 = 1;
/// The identity of a tern store, kept in the meta table beside the version.
pub const MAGIC: &[u8] = b"tern-store";
/// The version byte every value starts with.
pub const RECORD_V1: u8 = 1;

/// A record or key that does not decode: what was being read and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatError(pub String);

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn err<T>(what: &str, detail: impl fmt::Display) -> Result<T, FormatError> {
    Err(FormatError(format!("{what}: {detail}")))
}

// ---------------------------------------------------------------------------------------------
// Keys

/// The key of an account or a token.
pub fn id_key(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

pub fn decode_id_key(key: &[u8]) -> Result<u64, FormatError> {
    match <[u8; 8]>::try_from(key) {
        Ok(b) => Ok(u64::from_be_bytes(b)),
        Err(_) => err("id key", format_args!("{} bytes, expected 8", key.len())),
    }
}

/// `cid | topic`.
pub fn retained_key(cid: Cid, topic: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + topic.len());
    k.extend_from_slice(&cid.to_be_bytes());
    k.extend_from_slice(topic.as_bytes());
    k
}

pub fn decode_retained_key(key: &[u8]) -> Result<(Cid, ByteString), FormatError> {
    let mut r = Reader::new(Bytes::copy_from_slice(key));
    let cid = r.u64("retained key cid")?;
    let topic = r.rest_str("retained key topic")?;
    Ok((cid, topic))
}

/// `cid | len (u16) | client id`; the prefix of every per-session key.
pub fn session_key(key: &SessionKey) -> Result<Vec<u8>, FormatError> {
    let id = key.client_id.as_bytes();
    let Ok(len) = u16::try_from(id.len()) else {
        return err(
            "session key",
            format_args!("client id of {} bytes (at most 65535)", id.len()),
        );
    };
    let mut k = Vec::with_capacity(10 + id.len() + 8);
    k.extend_from_slice(&key.cid.to_be_bytes());
    k.extend_from_slice(&len.to_be_bytes());
    k.extend_from_slice(id);
    Ok(k)
}

/// Splits a per-session key into the session and the rest (filter, seq or packet id).
pub fn decode_session_prefix(key: &[u8]) -> Result<(SessionKey, Bytes), FormatError> {
    let mut r = Reader::new(Bytes::copy_from_slice(key));
    let cid = r.u64("session key cid")?;
    let len = r.u16("session key length")?;
    let client_id = r.str_of(usize::from(len), "session key client id")?;
    Ok((SessionKey { cid, client_id }, r.rest()))
}

/// The session key with `suffix` appended (a filter, a seq or a packet id).
pub fn session_child_key(session: &[u8], suffix: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(session.len() + suffix.len());
    k.extend_from_slice(session);
    k.extend_from_slice(suffix);
    k
}

/// The first key after every key that starts with `prefix`; `None` if there is none.
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

pub fn decode_seq(rest: &[u8]) -> Result<u64, FormatError> {
    match <[u8; 8]>::try_from(rest) {
        Ok(b) => Ok(u64::from_be_bytes(b)),
        Err(_) => err(
            "queue key seq",
            format_args!("{} bytes, expected 8", rest.len()),
        ),
    }
}

pub fn decode_packet_id(rest: &[u8]) -> Result<PacketId, FormatError> {
    match <[u8; 2]>::try_from(rest) {
        Ok(b) => Ok(u16::from_be_bytes(b)),
        Err(_) => err(
            "incoming key packet id",
            format_args!("{} bytes, expected 2", rest.len()),
        ),
    }
}

pub fn decode_filter(rest: Bytes) -> Result<ByteString, FormatError> {
    ByteString::try_from(rest).or_else(|_| err("subscription key filter", "not UTF-8"))
}

// ---------------------------------------------------------------------------------------------
// Records

/// Appends big-endian integers and length-prefixed byte strings.
#[derive(Debug, Default)]
pub struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn record() -> Writer {
        Writer {
            buf: vec![RECORD_V1],
        }
    }

    fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    fn len(&mut self, n: usize, what: &str) -> Result<(), FormatError> {
        match u32::try_from(n) {
            Ok(n) => {
                self.u32(n);
                Ok(())
            }
            Err(_) => err(what, format_args!("{n} bytes or items (at most 4 GiB)")),
        }
    }
    fn bytes(&mut self, b: &[u8], what: &str) -> Result<(), FormatError> {
        self.len(b.len(), what)?;
        self.buf.extend_from_slice(b);
        Ok(())
    }
    fn opt_u64(&mut self, v: Option<u64>) {
        match v {
            None => self.u8(0),
            Some(v) => {
                self.u8(1);
                self.u64(v);
            }
        }
    }
    fn opt_u32(&mut self, v: Option<u32>) {
        match v {
            None => self.u8(0),
            Some(v) => {
                self.u8(1);
                self.u32(v);
            }
        }
    }
}

/// Reads what [`Writer`] wrote; every read is bounds-checked. Byte strings are slices of the
/// record's one buffer.
#[derive(Debug)]
pub struct Reader {
    buf: Bytes,
    pos: usize,
}

impl Reader {
    pub fn new(buf: Bytes) -> Reader {
        Reader { buf, pos: 0 }
    }

    /// Checks the record version byte.
    pub fn record(buf: Bytes, what: &str) -> Result<Reader, FormatError> {
        let mut r = Reader::new(buf);
        match r.u8(what)? {
            RECORD_V1 => Ok(r),
            v => err(what, format_args!("unknown record version {v}")),
        }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<Bytes, FormatError> {
        let left = self.buf.len() - self.pos;
        if n > left {
            return err(
                what,
                format_args!("truncated: needs {n} bytes, {left} left"),
            );
        }
        let b = self.buf.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(b)
    }
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], FormatError> {
        let b = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(&b);
        Ok(a)
    }
    fn u8(&mut self, what: &str) -> Result<u8, FormatError> {
        Ok(self.array::<1>(what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16, FormatError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }
    fn u32(&mut self, what: &str) -> Result<u32, FormatError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64, FormatError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }
    fn flag(&mut self, what: &str) -> Result<bool, FormatError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            v => err(what, format_args!("option tag {v}")),
        }
    }
    fn bytes(&mut self, what: &str) -> Result<Bytes, FormatError> {
        let n = self.u32(what)?;
        self.take(n as usize, what)
    }
    fn str_of(&mut self, n: usize, what: &str) -> Result<ByteString, FormatError> {
        let b = self.take(n, what)?;
        ByteString::try_from(b).or_else(|_| err(what, "not UTF-8"))
    }
    fn str(&mut self, what: &str) -> Result<ByteString, FormatError> {
        let n = self.u32(what)?;
        self.str_of(n as usize, what)
    }
    fn opt_u64(&mut self, what: &str) -> Result<Option<u64>, FormatError> {
        Ok(if self.flag(what)? {
            Some(self.u64(what)?)
        } else {
            None
        })
    }
    fn opt_u32(&mut self, what: &str) -> Result<Option<u32>, FormatError> {
        Ok(if self.flag(what)? {
            Some(self.u32(what)?)
        } else {
            None
        })
    }
    /// A count of items that each take at least `min` bytes: checked against the bytes left
    /// before anything is allocated for them.
    fn count(&mut self, min: usize, what: &str) -> Result<usize, FormatError> {
        let n = self.u32(what)? as usize;
        let left = self.buf.len() - self.pos;
        if n.saturating_mul(min) > left {
            return err(what, format_args!("{n} items cannot fit in {left} bytes"));
        }
        Ok(n)
    }
    fn rest(&mut self) -> Bytes {
        let b = self.buf.slice(self.pos..);
        self.pos = self.buf.len();
        b
    }
    fn rest_str(&mut self, what: &str) -> Result<ByteString, FormatError> {
        ByteString::try_from(self.rest()).or_else(|_| err(what, "not UTF-8"))
    }
    /// Whether everything was read.
    fn at_end(&self) -> bool {
        self.pos >= self.buf.len()
    }

    /// Checks that the whole record was read.
    pub fn finish(self, what: &str) -> Result<(), FormatError> {
        let left = self.buf.len() - self.pos;
        if left == 0 {
            Ok(())
        } else {
            err(what, format_args!("{left} trailing bytes"))
        }
    }
}

// Property presence bits of a message record.
const P_FORMAT: u8 = 1 << 0;
const P_EXPIRY: u8 = 1 << 1;
const P_ALIAS: u8 = 1 << 2;
const P_RESPONSE: u8 = 1 << 3;
const P_CORRELATION: u8 = 1 << 4;
const P_CONTENT_TYPE: u8 = 1 << 5;

/// A message: `topic | payload | flags (qos, retain) | cid | timestamp | expires_at? |
/// properties`, where the properties are a presence byte, the present optional ones in bit
/// order, then the user properties and the subscription identifiers as counted lists.
pub fn put_message(w: &mut Writer, m: &Message) -> Result<(), FormatError> {
    w.bytes(m.topic.as_bytes(), "message topic")?;
    w.bytes(&m.payload, "message payload")?;
    w.u8(m.qos as u8 | (u8::from(m.retain) << 2));
    w.u64(m.cid);
    w.u64(m.timestamp);
    w.opt_u64(m.expires_at);
    let p = &m.properties;
    let mut present = 0;
    for (bit, set) in [
        (P_FORMAT, p.payload_format_indicator.is_some()),
        (P_EXPIRY, p.message_expiry_interval.is_some()),
        (P_ALIAS, p.topic_alias.is_some()),
        (P_RESPONSE, p.response_topic.is_some()),
        (P_CORRELATION, p.correlation_data.is_some()),
        (P_CONTENT_TYPE, p.content_type.is_some()),
    ] {
        if set {
            present |= bit;
        }
    }
    w.u8(present);
    if let Some(v) = p.payload_format_indicator {
        w.u8(v);
    }
    if let Some(v) = p.message_expiry_interval {
        w.u32(v);
    }
    if let Some(v) = p.topic_alias {
        w.u16(v);
    }
    if let Some(v) = &p.response_topic {
        w.bytes(v.as_bytes(), "response topic")?;
    }
    if let Some(v) = &p.correlation_data {
        w.bytes(v, "correlation data")?;
    }
    if let Some(v) = &p.content_type {
        w.bytes(v.as_bytes(), "content type")?;
    }
    w.len(p.user_properties.len(), "user properties")?;
    for (k, v) in &p.user_properties {
        w.bytes(k.as_bytes(), "user property name")?;
        w.bytes(v.as_bytes(), "user property value")?;
    }
    w.len(p.subscription_identifiers.len(), "subscription identifiers")?;
    for id in &p.subscription_identifiers {
        w.u32(*id);
    }
    Ok(())
}

pub fn get_message(r: &mut Reader) -> Result<Message, FormatError> {
    let topic = r.str("message topic")?;
    let payload = r.bytes("message payload")?;
    let flags = r.u8("message flags")?;
    if flags & !0b111 != 0 {
        return err("message flags", format_args!("unknown bits {flags:#04x}"));
    }
    let Some(qos) = QoS::from_u8(flags & 0b11) else {
        return err("message flags", "QoS 3");
    };
    let retain = flags & 0b100 != 0;
    let cid = r.u64("message cid")?;
    let timestamp = r.u64("message timestamp")?;
    let expires_at = r.opt_u64("message expires_at")?;
    let present = r.u8("message properties")?;
    if present & !0b11_1111 != 0 {
        return err(
            "message properties",
            format_args!("unknown presence bits {present:#04x}"),
        );
    }
    let mut p = PublishProperties::default();
    if present & P_FORMAT != 0 {
        p.payload_format_indicator = Some(r.u8("payload format indicator")?);
    }
    if present & P_EXPIRY != 0 {
        p.message_expiry_interval = Some(r.u32("message expiry interval")?);
    }
    if present & P_ALIAS != 0 {
        p.topic_alias = Some(r.u16("topic alias")?);
    }
    if present & P_RESPONSE != 0 {
        p.response_topic = Some(r.str("response topic")?);
    }
    if present & P_CORRELATION != 0 {
        p.correlation_data = Some(r.bytes("correlation data")?);
    }
    if present & P_CONTENT_TYPE != 0 {
        p.content_type = Some(r.str("content type")?);
    }
    let n = r.count(8, "user properties")?;
    p.user_properties.reserve(n);
    for _ in 0..n {
        let k = r.str("user property name")?;
        let v = r.str("user property value")?;
        p.user_properties.push((k, v));
    }
    let n = r.count(4, "subscription identifiers")?;
    for _ in 0..n {
        p.subscription_identifiers
            .push(r.u32("subscription identifier")?);
    }
    Ok(Message {
        topic,
        payload,
        qos,
        retain,
        properties: p.into(),
        cid,
        timestamp,
        expires_at,
        origin: None,
    })
}

/// A retained message: the message record.
pub fn encode_retained(m: &Message) -> Result<Vec<u8>, FormatError> {
    let mut w = Writer::record();
    put_message(&mut w, m)?;
    Ok(w.buf)
}

pub fn decode_retained(value: Bytes) -> Result<Message, FormatError> {
    let mut r = Reader::record(value, "retained record")?;
    let m = get_message(&mut r)?;
    r.finish("retained record")?;
    Ok(m)
}

/// A session: `expiry interval | disconnected_at? | created | will?` where a will is
/// `delay | message`. The key holds the session key.
pub fn encode_session(s: &SessionRecord) -> Result<Vec<u8>, FormatError> {
    let mut w = Writer::record();
    w.u32(s.expiry_interval);
    w.opt_u64(s.disconnected_at);
    w.u64(s.created);
    match &s.will {
        None => w.u8(0),
        Some((m, delay)) => {
            w.u8(1);
            w.u32(*delay);
            put_message(&mut w, m)?;
        }
    }
    // Optional trailing field: records without it (older writers) read as `None`.
    if s.token_id.is_some() {
        w.opt_u64(s.token_id);
    }
    Ok(w.buf)
}

pub fn decode_session(key: SessionKey, value: Bytes) -> Result<SessionRecord, FormatError> {
    let mut r = Reader::record(value, "session record")?;
    let expiry_interval = r.u32("session expiry interval")?;
    let disconnected_at = r.opt_u64("session disconnected_at")?;
    let created = r.u64("session created")?;
    let will = if r.flag("session will")? {
        let delay = r.u32("will delay")?;
        Some((Arc::new(get_message(&mut r)?), delay))
    } else {
        None
    };
    let token_id = if r.at_end() {
        None
    } else {
        r.opt_u64("session token id")?
    };
    r.finish("session record")?;
    Ok(SessionRecord {
        key,
        expiry_interval,
        disconnected_at,
        will,
        created,
        token_id,
    })
}

/// Subscription options in one byte: QoS in bits 0-1, No Local bit 2, Retain As Published bit
/// 3, Retain Handling bits 4-5 (the SUBSCRIBE options byte of MQTT 5).
fn options_byte(o: &SubscriptionOptions) -> u8 {
    o.qos as u8
        | u8::from(o.no_local) << 2
        | u8::from(o.retain_as_published) << 3
        | (o.retain_handling as u8) << 4
}

fn options_from(b: u8) -> Result<SubscriptionOptions, FormatError> {
    let Some(qos) = QoS::from_u8(b & 0b11) else {
        return err("subscription options", "QoS 3");
    };
    let retain_handling = match (b >> 4) & 0b11 {
        0 => RetainHandling::SendAtSubscribe,
        1 => RetainHandling::SendIfNew,
        2 => RetainHandling::DoNotSend,
        _ => return err("subscription options", "retain handling 3"),
    };
    if b & 0b1100_0000 != 0 {
        return err(
            "subscription options",
            format_args!("unknown bits {b:#04x}"),
        );
    }
    Ok(SubscriptionOptions {
        qos,
        no_local: b & 0b100 != 0,
        retain_as_published: b & 0b1000 != 0,
        retain_handling,
    })
}

/// A subscription: `options | id?`. The key holds the session and the filter.
pub fn encode_subscription(s: &SubscriptionRecord) -> Vec<u8> {
    let mut w = Writer::record();
    w.u8(options_byte(&s.options));
    w.opt_u32(s.id);
    w.buf
}

pub fn decode_subscription(
    filter: ByteString,
    value: Bytes,
) -> Result<SubscriptionRecord, FormatError> {
    let mut r = Reader::record(value, "subscription record")?;
    let options = options_from(r.u8("subscription options")?)?;
    let id = r.opt_u32("subscription id")?;
    r.finish("subscription record")?;
    Ok(SubscriptionRecord {
        filter,
        options,
        id,
    })
}

/// Byte offsets of the in-flight state in a queued record, so `SetInflight` patches three
/// bytes instead of re-encoding the message.
pub const INFLIGHT_AT: usize = 1;
pub const INFLIGHT_END: usize = INFLIGHT_AT + 3;

/// In-flight state: phase (0 not sent, 1 sent, 2 released) and packet id (0 when not sent).
pub fn inflight_bytes(inflight: Option<(PacketId, InflightPhase)>) -> [u8; 3] {
    let (phase, id) = match inflight {
        None => (0, 0),
        Some((id, InflightPhase::Sent)) => (1, id),
        Some((id, InflightPhase::Released)) => (2, id),
    };
    let id = id.to_be_bytes();
    [phase, id[0], id[1]]
}

/// A queued delivery: `inflight (3 bytes) | qos | retain | sub ids | message`. The key holds
/// the session and the seq.
pub fn encode_queued(q: &QueuedRecord) -> Result<Vec<u8>, FormatError> {
    let mut w = Writer::record();
    w.buf.extend_from_slice(&inflight_bytes(q.inflight));
    w.u8(q.qos as u8);
    w.u8(u8::from(q.retain));
    w.len(q.sub_ids.len(), "subscription ids")?;
    for id in &q.sub_ids {
        w.u32(*id);
    }
    put_message(&mut w, &q.msg)?;
    Ok(w.buf)
}

pub fn decode_queued(seq: u64, value: Bytes) -> Result<QueuedRecord, FormatError> {
    let mut r = Reader::record(value, "queued record")?;
    let phase = r.u8("queued inflight phase")?;
    let id = r.u16("queued packet id")?;
    let inflight = match (phase, id) {
        (0, 0) => None,
        (1, id) => Some((id, InflightPhase::Sent)),
        (2, id) => Some((id, InflightPhase::Released)),
        _ => {
            return err(
                "queued inflight",
                format_args!("phase {phase} with packet id {id}"),
            );
        }
    };
    let Some(qos) = QoS::from_u8(r.u8("queued qos")?) else {
        return err("queued qos", "not 0, 1 or 2");
    };
    let retain = r.flag("queued retain")?;
    let n = r.count(4, "queued subscription ids")?;
    let mut sub_ids = SmallVec::with_capacity(n);
    for _ in 0..n {
        sub_ids.push(r.u32("queued subscription id")?);
    }
    let msg = Arc::new(get_message(&mut r)?);
    r.finish("queued record")?;
    Ok(QueuedRecord {
        seq,
        msg,
        qos,
        retain,
        sub_ids,
        inflight,
    })
}

/// The key of a queue pack: `session key | first seq (u64) | count (u32)`. A pack holds the
/// deliveries `first..first + count` of one session, enqueued in one batch: one value instead
/// of one record per delivery. The count is in the key so that finding the pack of a seq (the
/// last key at or below `session | seq | u32::MAX`) reads no value.
pub fn pack_key(session: &[u8], first: u64, count: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(session.len() + 12);
    k.extend_from_slice(session);
    k.extend_from_slice(&first.to_be_bytes());
    k.extend_from_slice(&count.to_be_bytes());
    k
}

/// The first seq and the count of a pack key's rest (after the session key).
pub fn decode_pack_rest(rest: &[u8]) -> Result<(u64, u32), FormatError> {
    let (Ok(first), Ok(count)) = (
        <[u8; 8]>::try_from(rest.get(..8).unwrap_or_default()),
        <[u8; 4]>::try_from(rest.get(8..).unwrap_or_default()),
    ) else {
        return err(
            "queue pack key",
            format_args!("{} bytes after the session key, expected 12", rest.len()),
        );
    };
    let (first, count) = (u64::from_be_bytes(first), u32::from_be_bytes(count));
    if count == 0 || first.checked_add(u64::from(count) - 1).is_none() {
        return err(
            "queue pack key",
            format_args!("{count} entries from seq {first}"),
        );
    }
    Ok((first, count))
}

/// Starts a pack value: the record version byte; [`put_pack_entry`] appends the entries.
pub fn pack_start(buf: &mut Vec<u8>) {
    buf.clear();
    buf.push(RECORD_V1);
}

/// Appends one delivery to a pack value: `length (u32) | qos | retain | sub ids | message`,
/// written straight into the pack's buffer (no record of its own). The in-flight state is not
/// in the pack, which is never rewritten: it is in the pack's state record ([`pack_state_at`]).
pub fn put_pack_entry(buf: &mut Vec<u8>, q: &QueuedRecord) -> Result<(), FormatError> {
    let at = buf.len();
    let mut w = Writer {
        buf: std::mem::take(buf),
    };
    w.u32(0);
    w.u8(q.qos as u8);
    w.u8(u8::from(q.retain));
    let done = w.len(q.sub_ids.len(), "subscription ids").and_then(|()| {
        for id in &q.sub_ids {
            w.u32(*id);
        }
        put_message(&mut w, &q.msg)
    });
    *buf = w.buf;
    if let Err(e) = done {
        buf.truncate(at);
        return Err(e);
    }
    let Ok(len) = u32::try_from(buf.len() - at - 4) else {
        buf.truncate(at);
        return err("queue pack entry", "over 4 GiB");
    };
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// In a pack's state record, the state of an entry that was removed (acknowledged, expired or
/// dropped); the others are [`inflight_bytes`].
pub const PACK_REMOVED: u8 = 3;

/// A pack's state record: the version byte, then 3 bytes per entry: [`inflight_bytes`] or
/// `[PACK_REMOVED, 0, 0]`. Absent while every entry is queued and unsent.
pub fn pack_state_len(count: u32) -> usize {
    1 + 3 * count as usize
}

/// Offset of entry `i`'s 3 state bytes in a pack's state record.
pub fn pack_state_at(i: usize) -> usize {
    1 + 3 * i
}

/// The deliveries of a pack, without those its state record (if any) marks removed, with their
/// in-flight state. Messages are slices of `value`.
pub fn decode_pack(
    first: u64,
    count: u32,
    value: Bytes,
    state: Option<&[u8]>,
    out: &mut Vec<QueuedRecord>,
) -> Result<(), FormatError> {
    if let Some(s) = state
        && (s.len() != pack_state_len(count) || s.first() != Some(&RECORD_V1))
    {
        return err(
            "queue pack state",
            format_args!(
                "{} bytes or unknown record version for {count} entries",
                s.len()
            ),
        );
    }
    let mut r = Reader::record(value, "queue pack")?;
    for i in 0..count as usize {
        let len = r.u32("queue pack entry length")?;
        let mut e = Reader::new(r.take(len as usize, "queue pack entry")?);
        let (phase, id) = match state {
            Some(s) => {
                let b = &s[pack_state_at(i)..pack_state_at(i) + 3];
                (b[0], u16::from_be_bytes([b[1], b[2]]))
            }
            None => (0, 0),
        };
        let inflight = match (phase, id) {
            (0, 0) | (PACK_REMOVED, 0) => None,
            (1, id) => Some((id, InflightPhase::Sent)),
            (2, id) => Some((id, InflightPhase::Released)),
            _ => {
                return err(
                    "queue pack state",
                    format_args!("phase {phase} with packet id {id}"),
                );
            }
        };
        let Some(qos) = QoS::from_u8(e.u8("queued qos")?) else {
            return err("queued qos", "not 0, 1 or 2");
        };
        let retain = e.flag("queued retain")?;
        let n = e.count(4, "queued subscription ids")?;
        let mut sub_ids = SmallVec::with_capacity(n);
        for _ in 0..n {
            sub_ids.push(e.u32("queued subscription id")?);
        }
        let msg = Arc::new(get_message(&mut e)?);
        e.finish("queue pack entry")?;
        if phase == PACK_REMOVED {
            continue;
        }
        out.push(QueuedRecord {
            seq: first + i as u64,
            msg,
            qos,
            retain,
            sub_ids,
            inflight,
        });
    }
    r.finish("queue pack")
}

/// Checks that `value` is a queued record whose in-flight bytes can be patched.
pub fn check_queued_header(value: &[u8]) -> Result<(), FormatError> {
    match value.first() {
        Some(&RECORD_V1) if value.len() >= INFLIGHT_END => Ok(()),
        Some(&v) if v != RECORD_V1 => {
            err("queued record", format_args!("unknown record version {v}"))
        }
        _ => err("queued record", "truncated"),
    }
}

/// A device's message stats on disk: `count (u64) | bytes (u64)` after the record version byte.
pub(crate) fn encode_stats(s: &crate::devices::MessageStats) -> [u8; 17] {
    let mut v = [0u8; 17];
    v[0] = RECORD_V1;
    v[1..9].copy_from_slice(&s.count.to_be_bytes());
    v[9..].copy_from_slice(&s.bytes.to_be_bytes());
    v
}

pub(crate) fn decode_stats(v: &[u8]) -> Result<crate::devices::MessageStats, String> {
    if v.len() != 17 || v[0] != RECORD_V1 {
        return Err(format!(
            "message stats: {} bytes or unknown record version",
            v.len()
        ));
    }
    let word = |i: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&v[i..i + 8]);
        u64::from_be_bytes(w)
    };
    Ok(crate::devices::MessageStats {
        count: word(1),
        bytes: word(9),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_stats_round_trip() {
        let s = crate::devices::MessageStats {
            count: 3,
            bytes: 99,
        };
        assert_eq!(decode_stats(&encode_stats(&s)), Ok(s));
    }

    fn full_message() -> Message {
        Message {
            topic: "a/b/c".into(),
            payload: Bytes::from_static(b"\x00\x01payload\xff"),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties: PublishProperties {
                payload_format_indicator: Some(1),
                message_expiry_interval: Some(60),
                topic_alias: None,
                response_topic: Some("reply/to".into()),
                correlation_data: Some(Bytes::from_static(b"\x01\x02")),
                user_properties: vec![("k".into(), "v".into()), ("k".into(), "v2".into())],
                subscription_identifiers: SmallVec::new(),
                content_type: Some("text/plain".into()),
            }
            .into(),
            cid: 42,
            timestamp: 1_700_000_000_000_001,
            expires_at: Some(1_700_000_060_000_001),
            origin: None,
        }
    }

    fn queued() -> QueuedRecord {
        QueuedRecord {
            seq: 7,
            msg: Arc::new(full_message()),
            qos: QoS::AtLeastOnce,
            retain: false,
            sub_ids: SmallVec::from_slice(&[3, 9]),
            inflight: Some((12, InflightPhase::Released)),
        }
    }

    #[test]
    fn records_round_trip() {
        let m = full_message();
        assert_eq!(
            decode_retained(encode_retained(&m).expect("encode").into()),
            Ok(m.clone())
        );
        let q = queued();
        assert_eq!(
            decode_queued(7, encode_queued(&q).expect("encode").into()),
            Ok(q)
        );
        let key = SessionKey {
            cid: 1,
            client_id: "dev".into(),
        };
        let s = SessionRecord {
            key: key.clone(),
            expiry_interval: u32::MAX,
            disconnected_at: Some(5),
            will: Some((Arc::new(m), 30)),
            created: 4,
            token_id: Some(7),
        };
        assert_eq!(
            decode_session(key, encode_session(&s).expect("encode").into()),
            Ok(s)
        );
        let sub = SubscriptionRecord {
            filter: "$share/g/x/#".into(),
            options: SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                no_local: true,
                retain_as_published: true,
                retain_handling: RetainHandling::DoNotSend,
            },
            id: Some(268_435_455),
        };
        assert_eq!(
            decode_subscription(sub.filter.clone(), encode_subscription(&sub).into()),
            Ok(sub)
        );
    }

    #[test]
    fn every_byte_flip_is_an_error_or_a_value() {
        // Damage inside a record either fails to decode or decodes to some value: never a panic.
        let q = encode_queued(&queued()).expect("encode");
        for i in 0..q.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut d = q.clone();
                d[i] ^= flip;
                let _ = decode_queued(7, d.into());
            }
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        let q = encode_queued(&queued()).expect("encode");
        for n in 0..q.len() {
            assert!(
                decode_queued(7, Bytes::copy_from_slice(&q[..n])).is_err(),
                "prefix of {n} bytes decoded"
            );
        }
        let mut long = q.clone();
        long.push(0);
        assert!(
            decode_queued(7, long.into())
                .unwrap_err()
                .0
                .contains("trailing")
        );
    }

    #[test]
    fn unknown_record_version_is_named() {
        let mut r = encode_retained(&full_message()).expect("encode");
        r[0] = 2;
        let e = decode_retained(r.into()).unwrap_err();
        assert!(e.0.contains("unknown record version 2"), "{e}");
    }

    #[test]
    fn huge_counts_do_not_allocate() {
        // A subscription id count of 4 billion in a short record.
        let mut v = vec![RECORD_V1, 0, 0, 0, 1, 0];
        v.extend_from_slice(&u32::MAX.to_be_bytes());
        let e = decode_queued(1, v.into()).unwrap_err();
        assert!(e.0.contains("cannot fit"), "{e}");
    }

    #[test]
    fn session_keys_are_self_delimiting() {
        let a = session_key(&SessionKey {
            cid: 1,
            client_id: "ab".into(),
        })
        .expect("key");
        let b = session_key(&SessionKey {
            cid: 1,
            client_id: "abc".into(),
        })
        .expect("key");
        assert!(!b.starts_with(&a));
        let (k, rest) =
            decode_session_prefix(&session_child_key(&a, &7u64.to_be_bytes())).expect("decode");
        assert_eq!(
            k,
            SessionKey {
                cid: 1,
                client_id: "ab".into()
            }
        );
        assert_eq!(decode_seq(&rest), Ok(7));
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
    }

    proptest::proptest! {
        #[test]
        fn garbage_never_panics(mut bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            bytes.insert(0, RECORD_V1);
            let b = Bytes::from(bytes);
            let _ = decode_queued(1, b.clone());
            let _ = decode_retained(b.clone());
            let _ = decode_session(SessionKey { cid: 0, client_id: "".into() }, b.clone());
            let _ = decode_subscription("f".into(), b.clone());
            let _ = decode_session_prefix(&b);
            let _ = decode_retained_key(&b);
        }
    }
}
