//! Every vector of `tests/data/teltonika/` (a copy of the shared `data/teltonika/`; its README): each `.hex` decodes to exactly the
//! `decoded` structure and the `messages` of its `.json`, re-encodes byte for byte, and each
//! `bad_*` vector gives its `error` with the docs/teltonika.md#bad-input action.

use std::path::PathBuf;

use bytes::BytesMut;
use serde_json::{Map, Value, json};

use crate::{
    AvlCodec, AvlPacket, ChannelAction, CommandType, Frame, FrameDecoder, IoValue, Record,
    decode_udp, encode_avl, encode_codec12, encode_udp_ack, packet_to_messages,
};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/teltonika")
}

pub(crate) fn unhex(s: &str) -> Vec<u8> {
    let s = s.trim();
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2).unwrap_or("zz"), 16))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("bad hex: {e}"))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// (name, wire bytes, expectation) of every vector; `None` when the folder is absent.
pub(crate) fn load() -> Option<Vec<(String, Vec<u8>, Value)>> {
    let dir = dir();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        eprintln!(
            "SKIPPED: test vectors not found at {} (tests/data/teltonika is absent)",
            dir.display()
        );
        return None;
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("hex") {
            continue;
        }
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_owned();
        let bytes = unhex(&std::fs::read_to_string(&path).unwrap_or_default());
        let json: Value = std::fs::read_to_string(path.with_extension("json"))
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_else(|| panic!("{name}: no readable .json"));
        out.push((name, bytes, json));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Some(out)
}

pub(crate) fn record_json(codec: AvlCodec, r: &Record) -> Value {
    let io: Vec<Value> =
        r.io.iter()
            .map(|e| match &e.value {
                IoValue::Bytes(b) => json!({"id": e.id, "size": "x", "hex": hex(b)}),
                v => json!({"id": e.id, "size": v.width(), "value": v.as_u64()}),
            })
            .collect();
    let mut m = json!({
        "timestamp_ms": r.timestamp_ms,
        "priority": r.priority,
        "longitude": f64::from(r.gps.longitude) / 1e7,
        "latitude": f64::from(r.gps.latitude) / 1e7,
        "altitude": r.gps.altitude,
        "angle": r.gps.angle,
        "satellites": r.gps.satellites,
        "speed": r.gps.speed,
        "event_io_id": r.event_io_id,
        "io": io,
    });
    if codec == AvlCodec::Codec16
        && let Some(o) = m.as_object_mut()
    {
        o.insert("generation_type".into(), r.generation_type.into());
    }
    m
}

fn avl_json(p: &AvlPacket) -> Map<String, Value> {
    let records: Vec<Value> = p.records.iter().map(|r| record_json(p.codec, r)).collect();
    let mut m = Map::new();
    m.insert("codec".into(), p.codec.id().into());
    m.insert("count".into(), p.records.len().into());
    m.insert("records".into(), records.into());
    m
}

fn messages_json(ident: &str, p: &AvlPacket) -> Value {
    Value::Array(
        packet_to_messages(ident, p)
            .into_iter()
            .map(Value::Object)
            .collect(),
    )
}

fn check_good_tcp(name: &str, bytes: &[u8], expected: &Value) {
    let decoder = FrameDecoder::default();
    let mut buf = BytesMut::from(bytes);
    let frame = match decoder.decode(&mut buf) {
        Ok(Some(frame)) => frame,
        other => panic!("{name}: expected a frame, got {other:?}"),
    };
    assert!(buf.is_empty(), "{name}: {} bytes left", buf.len());
    let ident = expected["ident"].as_str().unwrap_or_default();
    match frame {
        Frame::Avl(p) => {
            assert_eq!(
                Value::Object(avl_json(&p)),
                expected["decoded"],
                "{name}: decoded"
            );
            assert_eq!(
                messages_json(ident, &p),
                expected["messages"],
                "{name}: messages"
            );
            assert_eq!(
                Some(u64::from(p.ack_count())),
                expected["ack"].as_u64(),
                "{name}: ack"
            );
            let mut again = BytesMut::new();
            encode_avl(&p, &mut again);
            assert_eq!(&again[..], bytes, "{name}: re-encoded");
        }
        Frame::Codec12(c) => {
            let d = &expected["decoded"];
            assert_eq!(d["codec"], 12, "{name}");
            assert_eq!(
                d["type"].as_u64(),
                Some(u64::from(c.kind.byte())),
                "{name}: type"
            );
            assert_eq!(
                d["payload_hex"].as_str(),
                Some(&hex(&c.payload)[..]),
                "{name}"
            );
            assert_eq!(
                d["text"].as_str(),
                std::str::from_utf8(&c.payload).ok(),
                "{name}: text"
            );
            assert!(
                expected["ack"].is_null(),
                "{name}: a Codec 12 frame is not ACKed"
            );
            let mut again = BytesMut::new();
            encode_codec12(c.kind, &c.payload, &mut again);
            assert_eq!(&again[..], bytes, "{name}: re-encoded");
        }
        Frame::Codec13(c) => panic!("{name}: no Codec 13 vector expected, got {c:?}"),
    }
}

fn check_good_udp(name: &str, bytes: &[u8], expected: &Value) {
    let packet =
        decode_udp(bytes::Bytes::copy_from_slice(bytes)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut decoded = avl_json(&packet.avl);
    decoded.insert(
        "udp".into(),
        json!({
            "avl_packet_id": packet.avl_packet_id,
            "imei": packet.imei.as_str(),
            "packet_id": packet.packet_id,
        }),
    );
    assert_eq!(
        Value::Object(decoded),
        expected["decoded"],
        "{name}: decoded"
    );
    assert_eq!(
        messages_json(packet.imei.as_str(), &packet.avl),
        expected["messages"],
        "{name}: messages"
    );
    let mut ack = BytesMut::new();
    encode_udp_ack(
        packet.packet_id,
        packet.avl_packet_id,
        packet.avl.records.len() as u8,
        &mut ack,
    );
    assert_eq!(
        Some(&hex(&ack)[..]),
        expected["udp_ack_hex"].as_str(),
        "{name}: UDP ack"
    );
}

fn check_bad(name: &str, bytes: &[u8], expected: &Value) {
    let decoder = FrameDecoder::default();
    let mut buf = BytesMut::from(bytes);
    let err = match decoder.decode(&mut buf) {
        Err(e) => e,
        // A truncated frame waits for more bytes; the stream then ends.
        Ok(None) => match decoder.finish(&buf) {
            Err(e) => e,
            Ok(()) => panic!("{name}: finish accepted a partial frame"),
        },
        Ok(Some(frame)) => panic!("{name}: decoded {frame:?}"),
    };
    assert_eq!(
        Some(err.kind()),
        expected["error"].as_str(),
        "{name}: {err}"
    );
    assert!(expected["ack"].is_null(), "{name}");
    let action = match err.kind() {
        "truncated" => ChannelAction::DropPartial,
        "preamble" | "oversize" => ChannelAction::CloseAtOnce,
        _ => ChannelAction::CloseWithoutAck,
    };
    assert_eq!(err.action(), action, "{name}: {err}");
}

#[test]
fn every_vector() {
    let Some(vectors) = load() else { return };
    let (mut good, mut bad) = (0, 0);
    for (name, bytes, expected) in &vectors {
        assert_eq!(
            expected["length"].as_u64(),
            Some(bytes.len() as u64),
            "{name}: length"
        );
        if expected.get("error").is_some() {
            check_bad(name, bytes, expected);
            bad += 1;
        } else if expected["transport"] == "udp" {
            check_good_udp(name, bytes, expected);
            good += 1;
        } else {
            check_good_tcp(name, bytes, expected);
            good += 1;
        }
    }
    eprintln!("{good} good and {bad} bad vectors checked");
    assert_eq!(
        (good, bad),
        (19, 7),
        "the README lists 19 good and 7 bad vectors"
    );
}

#[test]
fn spec_getinfo_command_encodes() {
    // docs/teltonika.md#commands: `getinfo` =
    // 000000000000000F0C010500000007676574696E666F0100004312.
    let mut out = BytesMut::new();
    crate::encode_command(b"getinfo", &mut out);
    assert_eq!(
        &out[..],
        &unhex("000000000000000F0C010500000007676574696E666F0100004312")[..]
    );
    let frame = FrameDecoder::default().decode(&mut out);
    assert!(
        matches!(frame, Ok(Some(Frame::Codec12(ref c))) if c.kind == CommandType::Command && &c.payload[..] == b"getinfo"),
        "{frame:?}"
    );
}
