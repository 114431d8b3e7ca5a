//! The TCP frame (docs/teltonika.md#frame): preamble, data field length, data field, CRC. The
//! incremental decoder and the encoders of what the server sends (ACK, Codec 12 command) and of
//! what a tracker sends (for tests and simulators).

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::avl::{self, AvlCodec, AvlPacket, IoValue, Record};
use crate::command::{self, CODEC_12, CODEC_13, Codec12, Codec13, CommandType};
use crate::error::DecodeError;
use crate::wire::crc16;

/// The default `max_packet_size` (docs/teltonika.md#limits): the largest data field length
/// accepted.
pub const DEFAULT_MAX_PACKET_SIZE: u32 = 65_536;
/// Preamble and data field length.
const HEADER_LEN: usize = 8;
/// The CRC field after the data field.
const CRC_LEN: usize = 4;
/// The smallest data field: codec id and the two counts (docs/teltonika.md#frame).
const MIN_DATA_LEN: u32 = 3;

/// One whole, checked frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Codec 8, 8 Extended or 16 records: store them, then ACK [`AvlPacket::ack_count`].
    Avl(AvlPacket),
    /// Codec 12: a command response from the device (or a command, in tests). Never ACKed.
    Codec12(Codec12),
    /// Codec 13: logged and dropped, the connection stays (docs/teltonika.md#commands).
    Codec13(Codec13),
}

/// Takes whole frames from the front of a receive buffer.
///
/// [`FrameDecoder::decode`] returns `Ok(None)` until a whole frame is buffered. The header is
/// checked as soon as its 8 bytes are there (preamble zero, `3 <= L <= max_packet_size`), so a
/// bad header never makes the caller buffer more: the buffer a connection needs is bounded by
/// `max_packet_size + 12`. After an error the stream cannot be framed any more and the channel
/// acts as [`DecodeError::action`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameDecoder {
    max_packet_size: u32,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder::new(DEFAULT_MAX_PACKET_SIZE)
    }
}

impl FrameDecoder {
    /// A decoder accepting data fields of up to `max_packet_size` bytes (the channel's
    /// `configuration.max_packet_size`).
    pub fn new(max_packet_size: u32) -> Self {
        FrameDecoder { max_packet_size }
    }

    /// The largest data field length accepted.
    pub fn max_packet_size(&self) -> u32 {
        self.max_packet_size
    }

    /// The total size of the frame at the front of `buf` once its header is there and valid:
    /// what the caller must buffer before [`FrameDecoder::decode`] returns it. `Ok(None)` while
    /// fewer than 8 bytes are buffered.
    pub fn frame_len(&self, buf: &[u8]) -> Result<Option<usize>, DecodeError> {
        let Some(header) = buf.get(..HEADER_LEN) else {
            // A non-zero preamble byte is refused as soon as it arrives.
            if buf.iter().take(4).any(|b| *b != 0) {
                let mut found = [0u8; 4];
                for (dst, src) in found.iter_mut().zip(buf.iter()) {
                    *dst = *src;
                }
                return Err(DecodeError::Preamble {
                    found: u32::from_be_bytes(found),
                });
            }
            return Ok(None);
        };
        let mut h = header;
        let preamble = h.get_u32();
        if preamble != 0 {
            return Err(DecodeError::Preamble { found: preamble });
        }
        let len = h.get_u32();
        if len > self.max_packet_size {
            return Err(DecodeError::Oversize {
                len,
                max: self.max_packet_size,
            });
        }
        if len < MIN_DATA_LEN {
            return Err(DecodeError::Undersize { len });
        }
        Ok(Some(HEADER_LEN + len as usize + CRC_LEN))
    }

    /// Takes the next whole frame from the front of `buf`: `Ok(None)` until it is all there
    /// (nothing consumed), then the checked frame, its bytes removed from `buf`. A header, CRC or
    /// codec id error leaves `buf` as it was; a frame whose records do not add up is consumed.
    /// Either way the connection closes ([`DecodeError::action`]).
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
        let Some(total) = self.frame_len(buf)? else {
            return Ok(None);
        };
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        // Check the CRC before splitting, so an error leaves the buffer untouched.
        let data_end = total - CRC_LEN;
        let (Some(data), Some(crc)) = (buf.get(HEADER_LEN..data_end), buf.get(data_end..total))
        else {
            return Ok(None);
        };
        let mut crc = crc;
        let found = crc.get_u32();
        let computed = crc16(data);
        if found != u32::from(computed) {
            return Err(DecodeError::Crc { found, computed });
        }
        let Some(&codec) = data.first() else {
            return Ok(None);
        };
        if AvlCodec::from_id(codec).is_none() && codec != CODEC_12 && codec != CODEC_13 {
            return Err(DecodeError::Codec { codec });
        }
        let mut frame = buf.split_to(total).freeze();
        frame.advance(HEADER_LEN + 1);
        frame.truncate(frame.len() - CRC_LEN);
        parse_data(codec, frame).map(Some)
    }

    /// Call when the stream ends (peer closed, or `frame_timeout` ran out) with `buf` holding what
    /// is left: a partial frame is [`DecodeError::Truncated`] (docs/teltonika.md#bad-input: drop
    /// it, close).
    pub fn finish(&self, buf: &[u8]) -> Result<(), DecodeError> {
        if buf.is_empty() {
            return Ok(());
        }
        let needed = match self.frame_len(buf) {
            Ok(Some(total)) => total,
            Ok(None) => HEADER_LEN,
            Err(e) => return Err(e),
        };
        Err(DecodeError::Truncated {
            buffered: buf.len(),
            needed,
        })
    }
}

/// Parses a data field from the byte after `codec`.
fn parse_data(codec: u8, body: Bytes) -> Result<Frame, DecodeError> {
    if let Some(avl) = AvlCodec::from_id(codec) {
        return avl::parse_avl(avl, body).map(Frame::Avl);
    }
    match codec {
        CODEC_12 => command::parse_codec12(body).map(Frame::Codec12),
        CODEC_13 => command::parse_codec13(body).map(Frame::Codec13),
        _ => Err(DecodeError::Codec { codec }),
    }
}

/// Parses a data field (codec id through number of data 2) that arrived without the TCP framing
/// (a UDP datagram, docs/teltonika.md#udp).
pub(crate) fn parse_data_field(data: Bytes) -> Result<Frame, DecodeError> {
    let mut data = data;
    if data.is_empty() {
        return Err(DecodeError::Undersize { len: 0 });
    }
    let codec = data.get_u8();
    parse_data(codec, data)
}

/// Appends the record ACK: the record count as a 4-byte integer (docs/teltonika.md#frame).
pub fn encode_ack(count: u32, out: &mut BytesMut) {
    out.put_u32(count);
}

/// Reads a record ACK: `Some(count)` once 4 bytes are there (tracker side, tests).
pub fn decode_ack(buf: &mut BytesMut) -> Option<u32> {
    if buf.len() < 4 {
        return None;
    }
    Some(buf.get_u32())
}

/// Wraps a data field (codec id through number of data 2) in preamble, length and CRC.
fn encode_frame(out: &mut BytesMut, data: impl FnOnce(&mut BytesMut)) {
    out.put_u32(0);
    let len_at = out.len();
    out.put_u32(0);
    let start = out.len();
    data(out);
    let len = out.len() - start;
    let crc = out.get(start..).map(crc16).unwrap_or_default();
    if let Some(slot) = out.get_mut(len_at..start) {
        slot.copy_from_slice(&(len as u32).to_be_bytes());
    }
    out.put_u32(u32::from(crc));
}

/// Appends a Codec 12 frame (docs/teltonika.md#commands): a command (`05`, what the server sends)
/// or a response (`06`).
pub fn encode_codec12(kind: CommandType, payload: &[u8], out: &mut BytesMut) {
    encode_frame(out, |out| {
        out.put_u8(CODEC_12);
        out.put_u8(1);
        out.put_u8(kind.byte());
        out.put_u32(payload.len() as u32);
        out.put_slice(payload);
        out.put_u8(1);
    });
}

/// Appends the Codec 12 command frame for `payload` (server to device).
pub fn encode_command(payload: &[u8], out: &mut BytesMut) {
    encode_codec12(CommandType::Command, payload, out);
}

/// Appends a Codec 13 frame (device to server; tests).
pub fn encode_codec13(frame: &Codec13, out: &mut BytesMut) {
    encode_frame(out, |out| {
        out.put_u8(CODEC_13);
        out.put_u8(1);
        out.put_u8(frame.kind.byte());
        out.put_u32(frame.payload.len() as u32 + 4);
        out.put_u32(frame.timestamp);
        out.put_slice(&frame.payload);
        out.put_u8(1);
    });
}

/// Appends an AVL frame as a tracker sends it (tests, simulators). The model is written as is:
/// an `AvlPacket` with 0 or more than 255 records, or a variable-length value in another codec
/// than 8 Extended, gives a frame the decoder refuses.
pub fn encode_avl(packet: &AvlPacket, out: &mut BytesMut) {
    encode_frame(out, |out| encode_avl_data(packet, out));
}

/// Appends the data field of an AVL frame (codec id through number of data 2).
pub fn encode_avl_data(packet: &AvlPacket, out: &mut BytesMut) {
    let codec = packet.codec;
    out.put_u8(codec.id());
    out.put_u8(packet.records.len() as u8);
    for record in &packet.records {
        encode_record(codec, record, out);
    }
    out.put_u8(packet.records.len() as u8);
}

fn encode_record(codec: AvlCodec, record: &Record, out: &mut BytesMut) {
    out.put_u64(record.timestamp_ms);
    out.put_u8(record.priority);
    out.put_i32(record.gps.longitude);
    out.put_i32(record.gps.latitude);
    out.put_i16(record.gps.altitude);
    out.put_u16(record.gps.angle);
    out.put_u8(record.gps.satellites);
    out.put_u16(record.gps.speed);
    let wide = codec != AvlCodec::Codec8;
    let put_id = |out: &mut BytesMut, id: u16| {
        if wide {
            out.put_u16(id);
        } else {
            out.put_u8(id as u8);
        }
    };
    let put_count = |out: &mut BytesMut, n: usize| {
        if codec == AvlCodec::Codec8Extended {
            out.put_u16(n as u16);
        } else {
            out.put_u8(n as u8);
        }
    };
    put_id(out, record.event_io_id);
    if codec == AvlCodec::Codec16 {
        out.put_u8(record.generation_type.unwrap_or_default());
    }
    put_count(out, record.io.len());
    for width in [1u8, 2, 4, 8] {
        let group = record.io.iter().filter(|e| e.value.width() == Some(width));
        put_count(out, group.clone().count());
        for e in group {
            put_id(out, e.id);
            match &e.value {
                IoValue::U8(v) => out.put_u8(*v),
                IoValue::U16(v) => out.put_u16(*v),
                IoValue::U32(v) => out.put_u32(*v),
                IoValue::U64(v) => out.put_u64(*v),
                IoValue::Bytes(_) => {}
            }
        }
    }
    if codec == AvlCodec::Codec8Extended {
        let group = record.io.iter().filter(|e| e.value.width().is_none());
        out.put_u16(group.clone().count() as u16);
        for e in group {
            if let IoValue::Bytes(b) = &e.value {
                out.put_u16(e.id);
                out.put_u16(b.len() as u16);
                out.put_slice(b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(data: &[u8]) -> BytesMut {
        let mut out = BytesMut::new();
        encode_frame(&mut out, |out| out.put_slice(data));
        out
    }

    #[test]
    fn bad_header_is_refused_before_the_body_arrives() {
        let d = FrameDecoder::default();
        // docs/teltonika.md#bad-input: preamble not zero: close at once, as soon as the byte is
        // there.
        assert_eq!(
            d.decode(&mut BytesMut::from(&[0u8, 0, 1][..])),
            Err(DecodeError::Preamble { found: 0x100 })
        );
        // Data field length > max_packet_size: refused with only the 8-byte header buffered.
        let mut buf = BytesMut::from(&[0u8, 0, 0, 0, 0, 1, 0, 1][..]);
        let err = d.decode(&mut buf);
        assert_eq!(
            err,
            Err(DecodeError::Oversize {
                len: 65_537,
                max: 65_536
            })
        );
        assert_eq!(buf.len(), 8, "the buffer is left as it was");
        assert_eq!(
            d.decode(&mut BytesMut::from(&[0u8, 0, 0, 0, 0, 0, 0, 2][..])),
            Err(DecodeError::Undersize { len: 2 })
        );
        assert_eq!(
            FrameDecoder::new(100).frame_len(&[0, 0, 0, 0, 0, 0, 0, 100]),
            Ok(Some(112))
        );
    }

    #[test]
    fn counts_and_leftovers_are_refused() {
        let d = FrameDecoder::default();
        // 0 records.
        let err = d.decode(&mut framed(&[CODEC_8E_ID, 0, 0])).err();
        assert!(
            matches!(err, Some(DecodeError::BadCount { count: 0, .. })),
            "{err:?}"
        );
        // A Codec 12 response with one byte too many before quantity 2.
        let err = d
            .decode(&mut framed(&[CODEC_12, 1, 6, 0, 0, 0, 1, b'x', b'y', 1]))
            .err();
        assert_eq!(err, Some(DecodeError::TrailingBytes { extra: 1 }));
        // Quantities that differ.
        let err = d
            .decode(&mut framed(&[CODEC_12, 1, 6, 0, 0, 0, 1, b'x', 2]))
            .err();
        assert_eq!(
            err,
            Some(DecodeError::CountMismatch {
                first: 1,
                second: 2
            })
        );
        // A payload size past the data field.
        let err = d
            .decode(&mut framed(&[CODEC_12, 1, 6, 0, 0, 0, 9, b'x', 1]))
            .err();
        assert!(matches!(err, Some(DecodeError::Overrun { .. })), "{err:?}");
        // A type other than 05/06.
        let err = d
            .decode(&mut framed(&[CODEC_12, 1, 7, 0, 0, 0, 0, 1]))
            .err();
        assert_eq!(err, Some(DecodeError::CommandType { codec: 12, kind: 7 }));
        assert_eq!(
            err.map(|e| e.action()),
            Some(crate::ChannelAction::CloseWithoutAck)
        );
    }

    #[test]
    fn codec13_decodes() {
        // docs/teltonika.md#commands: a 4-byte unix-seconds timestamp, then payload; the size
        // counts the timestamp.
        let mut buf = framed(&[CODEC_13, 1, 6, 0, 0, 0, 6, 0x5D, 0, 0, 0, b'o', b'k', 1]);
        match FrameDecoder::default().decode(&mut buf) {
            Ok(Some(Frame::Codec13(c))) => {
                assert_eq!(c.timestamp, 0x5D00_0000);
                assert_eq!(&c.payload[..], b"ok");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn payload_text_is_text_or_hex() {
        let c = |payload: &'static [u8]| Codec12 {
            kind: CommandType::Response,
            payload: Bytes::from_static(payload),
        };
        assert_eq!(c(b"DI1:1 DI2:0\r\n").payload_text(), "DI1:1 DI2:0\r\n");
        assert_eq!(c(&[0xde, 0xad, 0x41]).payload_text(), "dead41");
    }

    #[test]
    fn finish_reports_a_partial_frame() {
        let d = FrameDecoder::default();
        assert_eq!(d.finish(&[]), Ok(()));
        assert_eq!(
            d.finish(&[0, 0]),
            Err(DecodeError::Truncated {
                buffered: 2,
                needed: 8
            })
        );
        let err = d.finish(&[0, 0, 0, 0, 0, 0, 0, 3, 8]);
        assert_eq!(
            err,
            Err(DecodeError::Truncated {
                buffered: 9,
                needed: 15
            })
        );
        assert_eq!(
            err.err().map(|e| e.action()),
            Some(crate::ChannelAction::DropPartial)
        );
    }

    const CODEC_8E_ID: u8 = crate::avl::CODEC_8E;
}
