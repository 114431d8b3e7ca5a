//! Decodes arbitrary bytes as a Teltonika stream (`tern-teltonika`): a handshake, then frames.
//!
//! - Nothing panics, whatever the bytes (handshake, frames, UDP datagram, messages).
//! - Feeding the same bytes in two parts gives the same frames and the same kind of final error
//!   as feeding them at once.
//! - Every AVL frame that decodes re-encodes to bytes that decode to the same frame, and maps to
//!   one message per record; every Codec 12 frame re-encodes byte for byte.
//! - A valid header with the fuzzer's body and a matching CRC, so the record parser sees the
//!   bytes and not just the CRC check.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_teltonika::{
    Bytes, BytesMut, DecodeError, Frame, FrameDecoder, crc16, decode_imei, decode_udp, encode_avl,
    encode_codec12, packet_to_messages,
};

fuzz_target!(|data: &[u8]| {
    let _ = decode_imei(&mut BytesMut::from(data));
    if let Ok(packet) = decode_udp(Bytes::copy_from_slice(data)) {
        let _ = packet_to_messages(packet.imei.as_str(), &packet.avl);
    }

    let decoder = FrameDecoder::new(4096);
    let whole = decode_all(&decoder, &mut BytesMut::from(data), true);
    for frame in &whole.0 {
        check_frame(frame);
    }
    let at = data
        .first()
        .map_or(0, |b| usize::from(*b) % (data.len() + 1));
    let mut buf = BytesMut::from(data.get(..at).unwrap_or_default());
    let (mut frames, first_end) = decode_all(&decoder, &mut buf, false);
    let end = match first_end {
        Some(err) => Some(err),
        None => {
            buf.extend_from_slice(data.get(at..).unwrap_or_default());
            let (more, end) = decode_all(&decoder, &mut buf, true);
            frames.extend(more);
            end
        }
    };
    // The same error, though not always the same detail: a bad preamble is refused as soon as
    // its first non-zero byte arrives, and names the bytes that had arrived.
    assert_eq!(frames, whole.0, "split at {at}");
    assert_eq!(
        end.as_ref().map(std::mem::discriminant),
        whole.1.as_ref().map(std::mem::discriminant),
        "split at {at}: {end:?} against {:?}",
        whole.1
    );

    // The same bytes as the data field of a well-framed frame.
    if !data.is_empty() {
        let mut framed = BytesMut::new();
        framed.extend_from_slice(&[0, 0, 0, 0]);
        framed.extend_from_slice(&(data.len() as u32).to_be_bytes());
        framed.extend_from_slice(data);
        framed.extend_from_slice(&u32::from(crc16(data)).to_be_bytes());
        let (frames, _) = decode_all(&FrameDecoder::new(u32::MAX), &mut framed, true);
        for frame in &frames {
            check_frame(frame);
        }
    }
});

/// Decodes frames until the buffer runs out or an error; when the buffer runs out and these
/// are the stream's last bytes (`at_end`), what `finish` says about the rest.
fn decode_all(
    decoder: &FrameDecoder,
    buf: &mut BytesMut,
    at_end: bool,
) -> (Vec<Frame>, Option<DecodeError>) {
    let mut frames = Vec::new();
    loop {
        match decoder.decode(buf) {
            Ok(Some(frame)) => frames.push(frame),
            Ok(None) => {
                let end = if at_end {
                    decoder.finish(buf).err()
                } else {
                    None
                };
                return (frames, end);
            }
            Err(e) => return (frames, Some(e)),
        }
    }
}

fn check_frame(frame: &Frame) {
    let mut out = BytesMut::new();
    match frame {
        Frame::Avl(packet) => {
            let messages = packet_to_messages("356307042441013", packet);
            assert_eq!(messages.len(), packet.records.len());
            encode_avl(packet, &mut out);
        }
        Frame::Codec12(c) => encode_codec12(c.kind, &c.payload, &mut out),
        Frame::Codec13(_) => return,
    }
    let bytes = out.clone().freeze();
    match FrameDecoder::new(u32::MAX).decode(&mut out) {
        Ok(Some(again)) => assert_eq!(&again, frame, "re-encoded as {bytes:02x?}"),
        other => panic!("re-encoded {frame:?} as {bytes:02x?}, which decodes to {other:?}"),
    }
}
