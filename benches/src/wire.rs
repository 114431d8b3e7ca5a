//! The bytes the generator puts on the wire and reads back on its hot paths.
//!
//! Every packet the generator sends is encoded by `tern-codec`: CONNECT and SUBSCRIBE directly,
//! PUBLISH once per client as a [`Template`] whose packet id, stamp and (for the retained flood)
//! topic suffix are patched in place for each message. The acknowledgements (4 bytes each) are
//! written as the constant bytes the codec would produce.
//!
//! On the read side, PUBLISH and the acknowledgements are parsed in place by [`frame`] and
//! [`publish_view`] without allocating; everything else (CONNACK, SUBACK, DISCONNECT, PINGRESP) goes
//! through `tern_codec::decode`.
//!
//! Every payload starts with a [`Stamp`]: the run's tag, the publisher, its sequence number and
//! the send time. That is what loss, duplicates, order and latency are computed from.

use anyhow::{Context, Result, bail, ensure};
use bytes::BytesMut;
use tern_codec::{ByteString, Bytes, ProtocolVersion, Publish, PublishProperties, QoS};

/// Packet type nibbles (spec 2.1.2) the hot paths look at.
pub mod kind {
    pub const PUBLISH: u8 = 3;
    pub const PUBACK: u8 = 4;
    pub const PUBREC: u8 = 5;
    pub const PUBREL: u8 = 6;
    pub const PUBCOMP: u8 = 7;
    pub const PINGRESP: u8 = 13;
}

/// PINGREQ: the same two bytes in every version.
pub const PINGREQ: [u8; 2] = [0xC0, 0x00];
/// DISCONNECT with no reason: valid in 3.1.1 and (as Normal disconnection) in 5.0.
pub const DISCONNECT: [u8; 2] = [0xE0, 0x00];

/// PUBACK, PUBREC, PUBREL or PUBCOMP for `packet_id` with reason Success: the 4-byte form every
/// version accepts (MQTT 5 allows the reason code and properties to be omitted, 3.2.2.1.1).
pub fn ack(kind: u8, packet_id: u16) -> [u8; 4] {
    // PUBREL carries the flags 0b0010 ([MQTT-3.6.1-1]).
    let flags = if kind == kind::PUBREL { 0b0010 } else { 0 };
    let [hi, lo] = packet_id.to_be_bytes();
    [kind << 4 | flags, 2, hi, lo]
}

/// The fixed header of one packet at the front of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// The packet type (high nibble of the first byte).
    pub kind: u8,
    /// The low nibble of the first byte.
    pub flags: u8,
    /// 1 + the length of the Remaining Length integer.
    pub header_len: usize,
    /// The whole packet, fixed header included.
    pub len: usize,
}

/// Reads the fixed header at the front of `buf`: `None` until it is complete. The packet itself
/// may still be incomplete (`buf.len() < frame.len`).
pub fn frame(buf: &[u8]) -> Result<Option<Frame>> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let mut remaining = 0usize;
    for i in 1..=4 {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        remaining |= usize::from(b & 0x7f) << (7 * (i - 1));
        if b & 0x80 == 0 {
            return Ok(Some(Frame {
                kind: first >> 4,
                flags: first & 0x0f,
                header_len: i + 1,
                len: i + 1 + remaining,
            }));
        }
    }
    bail!("malformed Remaining Length from the broker")
}

/// The parts of a received PUBLISH the generator needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishView<'a> {
    pub qos: u8,
    /// 0 for QoS 0.
    pub packet_id: u16,
    pub payload: &'a [u8],
}

/// Parses the PUBLISH `packet` (exactly `f.len` bytes) in place.
pub fn publish_view(packet: &[u8], f: Frame, v5: bool) -> Result<PublishView<'_>> {
    let body = packet
        .get(f.header_len..f.len)
        .context("PUBLISH shorter than its header")?;
    let qos = (f.flags >> 1) & 0b11;
    let topic_len = usize::from(u16::from_be_bytes(be2(body, 0)?));
    let mut pos = 2 + topic_len;
    let mut packet_id = 0;
    if qos > 0 {
        packet_id = u16::from_be_bytes(be2(body, pos)?);
        pos += 2;
    }
    if v5 {
        let (props_len, n) = var_int(body.get(pos..).unwrap_or_default())?;
        pos += n + props_len;
    }
    let payload = body
        .get(pos..)
        .context("PUBLISH properties longer than the packet")?;
    Ok(PublishView {
        qos,
        packet_id,
        payload,
    })
}

/// The packet id of a PUBACK/PUBREC/PUBREL/PUBCOMP and its reason code (0 when omitted).
pub fn ack_view(packet: &[u8], f: Frame) -> Result<(u16, u8)> {
    let body = packet
        .get(f.header_len..f.len)
        .context("acknowledgement shorter than its header")?;
    let packet_id = u16::from_be_bytes(be2(body, 0)?);
    Ok((packet_id, body.get(2).copied().unwrap_or(0)))
}

fn be2(buf: &[u8], at: usize) -> Result<[u8; 2]> {
    match buf.get(at..at + 2) {
        Some(&[a, b]) => Ok([a, b]),
        _ => bail!("packet truncated"),
    }
}

/// A Variable Byte Integer (spec 1.5.5) and its length.
fn var_int(buf: &[u8]) -> Result<(usize, usize)> {
    let mut value = 0usize;
    for (i, &b) in buf.iter().take(4).enumerate() {
        value |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    bail!("malformed Variable Byte Integer")
}

/// The first bytes of every payload the generator sends, little-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Random per run: a message of another run (or another program) is counted as foreign.
    pub tag: u32,
    pub publisher: u32,
    /// Per publisher, from 0 without gaps: loss and duplicates are counted exactly from it.
    pub seq: u64,
    /// Nanoseconds since the run's clock origin, taken just before the write.
    pub sent_ns: u64,
}

/// The start of a JSON payload (`--json`): `{"s":"<48 hex digits: the stamp>","v":42,"p":"xx…"}`.
pub const JSON_HEAD: &[u8] = b"{\"s\":\"";
const JSON_MID: &[u8] = b"\",\"v\":42,\"p\":\"";
const JSON_TAIL: &[u8] = b"\"}";
/// The smallest JSON payload.
pub const JSON_MIN: usize = 6 + 48 + 14 + 2;

impl Stamp {
    pub const LEN: usize = 24;

    /// Writes the stamp as 48 lowercase hex digits (JSON payloads).
    pub fn write_hex(self, out: &mut [u8]) {
        let mut raw = [0u8; Stamp::LEN];
        self.write(&mut raw);
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for (i, b) in raw.iter().enumerate() {
            out[2 * i] = HEX[usize::from(b >> 4)];
            out[2 * i + 1] = HEX[usize::from(b & 0xf)];
        }
    }

    pub fn write(self, out: &mut [u8]) {
        out[0..4].copy_from_slice(&self.tag.to_le_bytes());
        out[4..8].copy_from_slice(&self.publisher.to_le_bytes());
        out[8..16].copy_from_slice(&self.seq.to_le_bytes());
        out[16..24].copy_from_slice(&self.sent_ns.to_le_bytes());
    }

    pub fn read(payload: &[u8]) -> Option<Stamp> {
        if let Some(hex) = payload.strip_prefix(JSON_HEAD) {
            let hex = hex.get(..2 * Stamp::LEN)?;
            let mut raw = [0u8; Stamp::LEN];
            for (i, pair) in hex.chunks_exact(2).enumerate() {
                let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
                raw[i] = digit(pair[0])? << 4 | digit(pair[1])?;
            }
            return Stamp::read(&raw);
        }
        let tag = u32::from_le_bytes(payload.get(0..4)?.try_into().ok()?);
        let publisher = u32::from_le_bytes(payload.get(4..8)?.try_into().ok()?);
        let seq = u64::from_le_bytes(payload.get(8..16)?.try_into().ok()?);
        let sent_ns = u64::from_le_bytes(payload.get(16..24)?.try_into().ok()?);
        Some(Stamp {
            tag,
            publisher,
            seq,
            sent_ns,
        })
    }
}

/// One publisher's PUBLISH, encoded once by the codec; [`Template::append`] copies it and patches
/// the packet id, the stamp and optionally the last bytes of the topic.
#[derive(Debug, Clone)]
pub struct Template {
    bytes: Vec<u8>,
    packet_id_at: Option<usize>,
    topic_end: usize,
    payload_at: usize,
    /// The payload is JSON with the stamp in hex (`--json`).
    json: bool,
}

impl Template {
    pub fn new(
        topic: &str,
        qos: QoS,
        retain: bool,
        payload_len: usize,
        version: ProtocolVersion,
        json: bool,
    ) -> Result<Template> {
        ensure!(
            payload_len >= Stamp::LEN,
            "payload must be at least {} bytes (the stamp), not {payload_len}",
            Stamp::LEN
        );
        ensure!(
            !json || payload_len >= JSON_MIN,
            "a JSON payload needs at least {JSON_MIN} bytes, not {payload_len}"
        );
        let payload = if json {
            let mut p = Vec::with_capacity(payload_len);
            p.extend_from_slice(JSON_HEAD);
            p.resize(JSON_HEAD.len() + 2 * Stamp::LEN, b'0');
            p.extend_from_slice(JSON_MID);
            p.resize(payload_len - JSON_TAIL.len(), b'x');
            p.extend_from_slice(JSON_TAIL);
            p
        } else {
            vec![b'x'; payload_len]
        };
        let with_id = qos != QoS::AtMostOnce;
        let publish = Publish {
            dup: false,
            qos,
            retain,
            topic: ByteString::from(topic),
            packet_id: with_id.then_some(1),
            properties: PublishProperties::default(),
            payload: Bytes::from(payload),
        };
        let mut buf = BytesMut::new();
        tern_codec::encode_publish(&publish, version, &mut buf)?;
        let f = frame(&buf)?.context("encoded PUBLISH has no fixed header")?;
        ensure!(f.len == buf.len(), "encoded PUBLISH length mismatch");
        // Variable header (3.3.2): topic (2-byte length + bytes), packet id if QoS > 0, then
        // in MQTT 5 the property length (0 here, one byte).
        let topic_end = f.header_len + 2 + topic.len();
        let packet_id_at = with_id.then_some(topic_end);
        let payload_at = buf.len() - payload_len;
        if let Some(at) = packet_id_at {
            ensure!(buf[at..at + 2] == [0, 1], "packet id not where expected");
        }
        Ok(Template {
            bytes: buf.to_vec(),
            packet_id_at,
            topic_end,
            payload_at,
            json,
        })
    }

    /// The encoded length of every message of this template.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Appends one PUBLISH to `out` with `packet_id` (ignored for QoS 0) and `stamp`.
    pub fn append(&self, out: &mut Vec<u8>, packet_id: u16, stamp: Stamp) {
        let start = out.len();
        out.extend_from_slice(&self.bytes);
        let p = &mut out[start..];
        if let Some(at) = self.packet_id_at {
            p[at..at + 2].copy_from_slice(&packet_id.to_be_bytes());
        }
        if self.json {
            stamp.write_hex(&mut p[self.payload_at + JSON_HEAD.len()..]);
        } else {
            stamp.write(&mut p[self.payload_at..]);
        }
    }

    /// Like [`append`](Self::append), and writes `index` as zero-padded decimal over the last
    /// `width` bytes of the topic (the retained flood's `.../000042`).
    pub fn append_indexed(
        &self,
        out: &mut Vec<u8>,
        packet_id: u16,
        stamp: Stamp,
        index: u64,
        width: usize,
    ) {
        let start = out.len();
        self.append(out, packet_id, stamp);
        let digits = &mut out[start + self.topic_end - width..start + self.topic_end];
        let mut v = index;
        for d in digits.iter_mut().rev() {
            *d = b'0' + (v % 10) as u8;
            v /= 10;
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn json_payload_carries_the_stamp() {
        let t = Template::new(
            "bench/j",
            QoS::AtMostOnce,
            false,
            100,
            ProtocolVersion::V311,
            true,
        )
        .expect("template");
        let stamp = Stamp {
            tag: 7,
            publisher: 3,
            seq: 123_456,
            sent_ns: 99,
        };
        let mut out = Vec::new();
        t.append(&mut out, 0, stamp);
        let mut buf = BytesMut::from(&out[..]);
        let Some(Packet::Publish(p)) =
            tern_codec::decode(&mut buf, u32::MAX >> 4, ProtocolVersion::V311).expect("decodes")
        else {
            panic!("not a PUBLISH")
        };
        let json: serde_json::Value = serde_json::from_slice(&p.payload).expect("JSON");
        assert_eq!(json["v"], 42);
        assert_eq!(p.payload.len(), 100);
        assert_eq!(Stamp::read(&p.payload), Some(stamp));
    }

    use super::*;
    use tern_codec::Packet;

    fn roundtrip(qos: QoS, version: ProtocolVersion) {
        let t = Template::new("bench/abc/000000", qos, true, 64, version, false).expect("template");
        let stamp = Stamp {
            tag: 7,
            publisher: 3,
            seq: 123_456_789,
            sent_ns: 42,
        };
        let mut out = Vec::new();
        t.append(&mut out, 0x1234, stamp);
        t.append_indexed(&mut out, 0x0102, stamp, 4711, 6);
        assert_eq!(out.len(), 2 * t.len());

        // What the codec reads back is what we meant to send.
        let mut buf = BytesMut::from(&out[..]);
        for (pid, topic) in [(0x1234, "bench/abc/000000"), (0x0102, "bench/abc/004711")] {
            let Some(Packet::Publish(p)) =
                tern_codec::decode(&mut buf, u32::MAX, version).expect("decode")
            else {
                panic!("not a PUBLISH")
            };
            assert_eq!(p.topic, topic);
            assert_eq!(p.qos, qos);
            assert!(p.retain);
            let want = (qos != QoS::AtMostOnce).then_some(pid);
            assert_eq!(p.packet_id, want);
            assert_eq!(Stamp::read(&p.payload), Some(stamp));
            assert_eq!(p.payload.len(), 64);
        }

        // And the in-place parser agrees with the codec.
        let f = frame(&out).expect("frame").expect("complete");
        assert_eq!(f.kind, kind::PUBLISH);
        assert_eq!(f.len, t.len());
        let v = publish_view(&out[..f.len], f, version.is_v5()).expect("view");
        assert_eq!(v.qos, qos as u8);
        assert_eq!(Stamp::read(v.payload), Some(stamp));
    }

    #[test]
    fn templates_round_trip_through_the_codec() {
        for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
            for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
                roundtrip(qos, version);
            }
        }
    }

    #[test]
    fn view_skips_v5_properties() {
        // A v5 PUBLISH as a broker delivers it: user properties before the payload.
        let mut props = PublishProperties::default();
        props.user_properties.push(("cid".into(), "1".into()));
        let mut payload = vec![0u8; 30];
        let stamp = Stamp {
            tag: 1,
            publisher: 2,
            seq: 3,
            sent_ns: 4,
        };
        stamp.write(&mut payload);
        let p = Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "t".into(),
            packet_id: Some(9),
            properties: props,
            payload: Bytes::from(payload),
        };
        let mut buf = BytesMut::new();
        tern_codec::encode_publish(&p, ProtocolVersion::V5, &mut buf).expect("encode");
        let f = frame(&buf).expect("frame").expect("complete");
        let v = publish_view(&buf, f, true).expect("view");
        assert_eq!(v.packet_id, 9);
        assert_eq!(Stamp::read(v.payload), Some(stamp));
    }

    #[test]
    fn acks_decode_with_the_codec() {
        for k in [kind::PUBACK, kind::PUBREC, kind::PUBREL, kind::PUBCOMP] {
            let bytes = ack(k, 0xBEEF);
            for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
                let mut buf = BytesMut::from(&bytes[..]);
                let packet = tern_codec::decode(&mut buf, u32::MAX, version);
                assert!(matches!(packet, Ok(Some(_))), "{k} {version}: {packet:?}");
            }
            let f = frame(&bytes).expect("frame").expect("complete");
            assert_eq!(ack_view(&bytes, f).expect("view"), (0xBEEF, 0));
        }
    }

    #[test]
    fn frame_waits_for_the_remaining_length() {
        assert_eq!(frame(&[0x30]).expect("ok"), None);
        assert_eq!(frame(&[0x30, 0x80]).expect("ok"), None);
        let f = frame(&[0x30, 0x80, 0x01]).expect("ok").expect("complete");
        assert_eq!((f.header_len, f.len), (3, 131));
        assert!(frame(&[0x30, 0x80, 0x80, 0x80, 0x80]).is_err());
    }
}
