//! Property tests: incremental feeding (byte by byte, random splits) gives the same frames as
//! feeding at once; generated AVL, Codec 12/13 frames and ACKs round-trip; every single-bit
//! corruption of a vector is refused; arbitrary bytes never panic.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use crate::vectors::load;
use crate::{
    AvlCodec, AvlPacket, Codec13, CommandType, DecodeError, Frame, FrameDecoder, Gps, IoElement,
    IoValue, Record, decode_ack, encode_ack, encode_avl, encode_codec12, encode_codec13,
};

/// Decodes frames until the buffer runs out (`None`) or an error.
fn decode_all(decoder: &FrameDecoder, buf: &mut BytesMut) -> (Vec<Frame>, Option<DecodeError>) {
    let mut frames = Vec::new();
    loop {
        match decoder.decode(buf) {
            Ok(Some(f)) => frames.push(f),
            Ok(None) => return (frames, None),
            Err(e) => return (frames, Some(e)),
        }
    }
}

/// Feeds `data` in pieces ending at `cuts` (sorted), decoding after each piece.
fn decode_split(data: &[u8], cuts: &[usize]) -> (Vec<Frame>, Option<DecodeError>) {
    let decoder = FrameDecoder::default();
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut from = 0;
    for &to in cuts.iter().chain(std::iter::once(&data.len())) {
        let to = to.clamp(from, data.len());
        buf.extend_from_slice(data.get(from..to).unwrap_or_default());
        from = to;
        let (more, err) = decode_all(&decoder, &mut buf);
        frames.extend(more);
        if err.is_some() {
            return (frames, err);
        }
    }
    (frames, None)
}

/// All good TCP vectors back to back, as one stream.
fn tcp_stream() -> Vec<u8> {
    let mut out = Vec::new();
    for (_, bytes, json) in load().unwrap_or_default() {
        if json.get("error").is_none() && json["transport"] == "tcp" {
            out.extend_from_slice(&bytes);
        }
    }
    out
}

#[test]
fn byte_by_byte_equals_at_once() {
    let stream = tcp_stream();
    let whole = decode_all(&FrameDecoder::default(), &mut BytesMut::from(&stream[..]));
    assert!(whole.1.is_none(), "{:?}", whole.1);
    let cuts: Vec<usize> = (1..stream.len()).collect();
    assert_eq!(decode_split(&stream, &cuts), whole);
}

#[test]
fn every_single_bit_flip_is_refused() {
    for (name, bytes, json) in load().unwrap_or_default() {
        if json.get("error").is_some() || json["transport"] != "tcp" || bytes.len() > 1024 {
            continue;
        }
        for i in 0..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            if let Some(b) = flipped.get_mut(i / 8) {
                *b ^= 1 << (i % 8);
            }
            let decoder = FrameDecoder::default();
            let mut buf = BytesMut::from(&flipped[..]);
            let result = decoder.decode(&mut buf);
            // A flipped length bit may only make the decoder wait for more bytes.
            let refused = match result {
                Err(_) => true,
                Ok(None) => decoder.finish(&buf).is_err(),
                Ok(Some(_)) => false,
            };
            assert!(refused, "{name}: bit {i} flipped was accepted");
        }
    }
}

#[test]
fn ack_round_trips() {
    for count in [1u32, 2, 255, u32::MAX] {
        let mut out = BytesMut::new();
        encode_ack(count, &mut out);
        assert_eq!(out.len(), 4);
        assert_eq!(decode_ack(&mut out), Some(count));
    }
    assert_eq!(decode_ack(&mut BytesMut::from(&[0u8, 0, 1][..])), None);
}

fn io_value(width: u8) -> BoxedStrategy<IoValue> {
    match width {
        1 => any::<u8>().prop_map(IoValue::U8).boxed(),
        2 => any::<u16>().prop_map(IoValue::U16).boxed(),
        4 => any::<u32>().prop_map(IoValue::U32).boxed(),
        8 => any::<u64>().prop_map(IoValue::U64).boxed(),
        _ => proptest::collection::vec(any::<u8>(), 0..40)
            .prop_map(|v| IoValue::Bytes(Bytes::from(v)))
            .boxed(),
    }
}

fn record(codec: AvlCodec) -> impl Strategy<Value = Record> {
    let max_id = if codec == AvlCodec::Codec8 {
        u16::from(u8::MAX)
    } else {
        u16::MAX
    };
    let group = move |width: u8| {
        proptest::collection::vec(
            (0..=max_id, io_value(width)).prop_map(|(id, value)| IoElement { id, value }),
            0..6,
        )
    };
    let nx = if codec == AvlCodec::Codec8Extended {
        group(0).boxed()
    } else {
        Just(Vec::new()).boxed()
    };
    let generation = if codec == AvlCodec::Codec16 {
        (0u8..8).prop_map(Some).boxed()
    } else {
        Just(None).boxed()
    };
    (
        any::<u64>(),
        0u8..3,
        any::<(i32, i32, i16, u16, u8, u16)>(),
        0..=max_id,
        generation,
        (group(1), group(2), group(4), group(8), nx),
    )
        .prop_map(
            |(timestamp_ms, priority, gps, event_io_id, generation_type, groups)| {
                let (g1, g2, g4, g8, nx) = groups;
                let (longitude, latitude, altitude, angle, satellites, speed) = gps;
                Record {
                    timestamp_ms,
                    priority,
                    gps: Gps {
                        longitude,
                        latitude,
                        altitude,
                        angle,
                        satellites,
                        speed,
                    },
                    event_io_id,
                    generation_type,
                    io: [g1, g2, g4, g8, nx].concat(),
                }
            },
        )
}

fn avl_packet() -> impl Strategy<Value = AvlPacket> {
    prop_oneof![
        Just(AvlCodec::Codec8),
        Just(AvlCodec::Codec8Extended),
        Just(AvlCodec::Codec16)
    ]
    .prop_flat_map(|codec| {
        proptest::collection::vec(record(codec), 1..8)
            .prop_map(move |records| AvlPacket { codec, records })
    })
}

proptest! {
    #[test]
    fn generated_avl_frames_round_trip(packet in avl_packet()) {
        let mut buf = BytesMut::new();
        encode_avl(&packet, &mut buf);
        let decoded = FrameDecoder::default().decode(&mut buf);
        prop_assert_eq!(decoded, Ok(Some(Frame::Avl(packet))));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn random_splits_equal_at_once(
        packets in proptest::collection::vec(avl_packet(), 1..4),
        mut cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
        use_vectors in any::<bool>(),
    ) {
        let mut stream = BytesMut::new();
        for p in &packets {
            encode_avl(p, &mut stream);
        }
        if use_vectors {
            stream.extend_from_slice(&tcp_stream());
        }
        let whole = decode_all(&FrameDecoder::default(), &mut BytesMut::from(&stream[..]));
        prop_assert!(whole.1.is_none());
        let mut at: Vec<usize> = cuts.drain(..).map(|i| i.index(stream.len() + 1)).collect();
        at.sort_unstable();
        prop_assert_eq!(decode_split(&stream, &at), whole);
    }

    #[test]
    fn codec12_round_trips(payload in proptest::collection::vec(any::<u8>(), 0..300), response in any::<bool>()) {
        let kind = if response { CommandType::Response } else { CommandType::Command };
        let mut buf = BytesMut::new();
        encode_codec12(kind, &payload, &mut buf);
        match FrameDecoder::default().decode(&mut buf) {
            Ok(Some(Frame::Codec12(c))) => {
                prop_assert_eq!(c.kind, kind);
                prop_assert_eq!(&c.payload[..], &payload[..]);
            }
            other => prop_assert!(false, "{:?}", other),
        }
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn codec13_round_trips(payload in proptest::collection::vec(any::<u8>(), 0..300), timestamp in any::<u32>()) {
        let frame = Codec13 { kind: CommandType::Response, timestamp, payload: Bytes::from(payload) };
        let mut buf = BytesMut::new();
        encode_codec13(&frame, &mut buf);
        prop_assert_eq!(FrameDecoder::default().decode(&mut buf), Ok(Some(Frame::Codec13(frame))));
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600), header in any::<bool>()) {
        // With a valid header, the body reaches the record parser (the CRC is made to match).
        let mut stream = BytesMut::new();
        if header && !data.is_empty() {
            stream.extend_from_slice(&[0, 0, 0, 0]);
            stream.extend_from_slice(&(data.len() as u32).to_be_bytes());
            stream.extend_from_slice(&data);
            stream.extend_from_slice(&u32::from(crate::crc16(&data)).to_be_bytes());
        } else {
            stream.extend_from_slice(&data);
        }
        let decoder = FrameDecoder::new(1024);
        let _ = decode_all(&decoder, &mut stream);
        let _ = decoder.finish(&stream);
        let _ = crate::decode_udp(Bytes::from(data.clone()));
        let _ = crate::decode_imei(&mut BytesMut::from(&data[..]));
    }
}
