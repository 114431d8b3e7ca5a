//! Decodes arbitrary bytes as a stream of packets for each protocol version.
//!
//! - Whatever decodes must re-encode (with the length `encoded_len` predicts), and the
//!   re-encoded bytes must decode to an equal packet and re-encode to the same bytes.
//! - Feeding the same bytes in two parts must give the same packets and the same final error as
//!   feeding them at once.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_codec::{BytesMut, DecodeError, Packet, ProtocolVersion, decode, encode, encoded_len};

const VERSIONS: [ProtocolVersion; 3] = [
    ProtocolVersion::V31,
    ProtocolVersion::V311,
    ProtocolVersion::V5,
];

fuzz_target!(|data: &[u8]| {
    for version in VERSIONS {
        let whole = decode_all(&mut BytesMut::from(data), version);
        for packet in &whole.0 {
            check_roundtrip(packet, version);
        }
        // Split at a point derived from the data, so the fuzzer explores it too.
        let at = data
            .first()
            .map_or(0, |b| usize::from(*b) % (data.len() + 1));
        let mut buf = BytesMut::from(&data[..at]);
        let (mut packets, first_end) = decode_all(&mut buf, version);
        let end = match first_end {
            Some(err) => Some(err),
            None => {
                buf.extend_from_slice(&data[at..]);
                let (more, end) = decode_all(&mut buf, version);
                packets.extend(more);
                end
            }
        };
        assert_eq!((packets, end), whole, "split at {at}");
    }
});

/// Decodes packets until the buffer runs out (`None`) or an error.
fn decode_all(buf: &mut BytesMut, version: ProtocolVersion) -> (Vec<Packet>, Option<DecodeError>) {
    let mut packets = Vec::new();
    loop {
        match decode(buf, u32::MAX, version) {
            Ok(Some(packet)) => packets.push(packet),
            Ok(None) => return (packets, None),
            Err(e) => return (packets, Some(e)),
        }
    }
}

fn check_roundtrip(packet: &Packet, version: ProtocolVersion) {
    let mut out = BytesMut::new();
    if let Err(e) = encode(packet, version, &mut out) {
        panic!("decoded packet does not re-encode: {e}\n{packet:?}");
    }
    assert_eq!(
        out.len(),
        encoded_len(packet, version),
        "encoded_len of {packet:?}"
    );
    let bytes = out.clone().freeze();
    match decode(&mut out, u32::MAX, version) {
        Ok(Some(again)) => {
            assert_eq!(&again, packet, "re-encoded as {bytes:02x?}");
            assert!(out.is_empty(), "re-encoded packet not consumed exactly");
            let mut twice = BytesMut::new();
            encode(&again, version, &mut twice).expect("re-encodes");
            assert_eq!(&twice[..], &bytes[..], "encoding is not stable");
        }
        other => panic!("re-encoded {packet:?} as {bytes:02x?}, which decodes to {other:?}"),
    }
}
