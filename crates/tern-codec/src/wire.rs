//! The data representations of spec 1.5: bytes, two- and four-byte integers, Variable Byte
//! Integers, UTF-8 Encoded Strings and Binary Data. Reading works on one received frame (a
//! `Bytes` that owns the whole packet), so strings and binaries come out as zero-copy slices of
//! it; writing appends to a `BytesMut` the caller has reserved.

use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;

use crate::error::{DecodeError, EncodeError};
use crate::packet::PacketType;

/// The largest value a Variable Byte Integer can hold (spec 1.5.5), and so the largest
/// remaining length and Subscription Identifier.
pub(crate) const VAR_INT_MAX: u32 = 268_435_455;

/// Parses a Variable Byte Integer at the start of `bytes`: `Ok(Some((value, length)))`, or
/// `Ok(None)` when `bytes` ends inside it. A fourth byte with the continuation bit set is an
/// error at once, whatever follows.
pub(crate) fn parse_var_int(
    bytes: &[u8],
    field: &'static str,
) -> Result<Option<(u32, usize)>, DecodeError> {
    let mut value = 0u32;
    for (i, &b) in bytes.iter().take(4).enumerate() {
        value |= u32::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if bytes.len() >= 4 {
        Err(DecodeError::VarIntTooLong { field })
    } else {
        Ok(None)
    }
}

/// The number of bytes of the Variable Byte Integer encoding of `v` (4 for anything larger,
/// which the encoder rejects before writing).
pub(crate) const fn var_int_len(v: usize) -> usize {
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// A cursor over the body of one packet (or over one property list inside it). Every read is
/// bounds-checked and fails with [`DecodeError::Truncated`] naming the field it was reading.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    frame: &'a Bytes,
    pos: usize,
    end: usize,
    packet: PacketType,
}

impl<'a> Reader<'a> {
    /// A reader over `frame[start..]`, reporting errors for `packet`.
    pub(crate) fn new(frame: &'a Bytes, start: usize, packet: PacketType) -> Reader<'a> {
        Reader {
            frame,
            pos: start.min(frame.len()),
            end: frame.len(),
            packet,
        }
    }

    pub(crate) fn packet(&self) -> PacketType {
        self.packet
    }

    pub(crate) fn remaining(&self) -> usize {
        self.end - self.pos
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pos >= self.end
    }

    fn truncated(&self, field: &'static str) -> DecodeError {
        DecodeError::Truncated {
            packet: self.packet,
            field,
        }
    }

    /// Fails with [`DecodeError::TrailingBytes`] unless every byte has been read.
    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(DecodeError::TrailingBytes {
                packet: self.packet,
                extra,
            }),
        }
    }

    fn slice(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if n > self.remaining() {
            return Err(self.truncated(field));
        }
        let frame: &'a Bytes = self.frame;
        let bytes = frame
            .get(self.pos..self.pos + n)
            .ok_or_else(|| self.truncated(field))?;
        self.pos += n;
        Ok(bytes)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        match self.slice(1, field)? {
            [b] => Ok(*b),
            _ => Err(self.truncated(field)),
        }
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        match self.slice(2, field)? {
            [a, b] => Ok(u16::from_be_bytes([*a, *b])),
            _ => Err(self.truncated(field)),
        }
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        match self.slice(4, field)? {
            [a, b, c, d] => Ok(u32::from_be_bytes([*a, *b, *c, *d])),
            _ => Err(self.truncated(field)),
        }
    }

    pub(crate) fn var_int(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        let rest = self.frame.get(self.pos..self.end).unwrap_or_default();
        match parse_var_int(rest, field)? {
            Some((value, len)) => {
                self.pos += len;
                Ok(value)
            }
            None => Err(self.truncated(field)),
        }
    }

    /// `n` bytes as a zero-copy slice of the frame.
    pub(crate) fn bytes(&mut self, n: usize, field: &'static str) -> Result<Bytes, DecodeError> {
        if n > self.remaining() {
            return Err(self.truncated(field));
        }
        let bytes = self.frame.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(bytes)
    }

    /// Binary Data (spec 1.5.6): a two-byte length and that many bytes.
    pub(crate) fn binary(&mut self, field: &'static str) -> Result<Bytes, DecodeError> {
        let len = self.u16(field)?;
        self.bytes(usize::from(len), field)
    }

    /// A UTF-8 Encoded String (spec 1.5.4): well-formed UTF-8 without U+0000.
    pub(crate) fn string(&mut self, field: &'static str) -> Result<ByteString, DecodeError> {
        let bytes = self.binary(field)?;
        if bytes.contains(&0) {
            return Err(DecodeError::NullCharacter { field });
        }
        ByteString::try_from(bytes).map_err(|_| DecodeError::InvalidUtf8 { field })
    }

    /// A Topic Name: a UTF-8 Encoded String without the wildcards `+` and `#` ([MQTT-3.3.2-2]).
    /// May be empty; the caller decides whether that is allowed.
    pub(crate) fn topic_name(&mut self, field: &'static str) -> Result<ByteString, DecodeError> {
        let bytes = self.binary(field)?;
        for &b in bytes.iter() {
            match b {
                0 => return Err(DecodeError::NullCharacter { field }),
                b'+' | b'#' => return Err(DecodeError::WildcardInTopicName { field }),
                _ => {}
            }
        }
        ByteString::try_from(bytes).map_err(|_| DecodeError::InvalidUtf8 { field })
    }

    /// Everything left, as a zero-copy slice (the payload of PUBLISH).
    pub(crate) fn rest(&mut self) -> Bytes {
        let bytes = self.frame.slice(self.pos..self.end);
        self.pos = self.end;
        bytes
    }

    /// A reader over the next `n` bytes (a property list); this reader moves past them.
    pub(crate) fn sub(&mut self, n: usize, field: &'static str) -> Result<Reader<'a>, DecodeError> {
        if n > self.remaining() {
            return Err(self.truncated(field));
        }
        let sub = Reader {
            frame: self.frame,
            pos: self.pos,
            end: self.pos + n,
            packet: self.packet,
        };
        self.pos += n;
        Ok(sub)
    }

    /// A non-zero packet identifier ([MQTT-2.2.1-3]).
    pub(crate) fn packet_id(&mut self) -> Result<u16, DecodeError> {
        match self.u16("packet identifier")? {
            0 => Err(DecodeError::ZeroPacketId {
                packet: self.packet,
            }),
            id => Ok(id),
        }
    }
}

// ---- writing ----

/// Appends `v` as a Variable Byte Integer. The caller has checked `v <= VAR_INT_MAX`.
pub(crate) fn put_var_int(buf: &mut BytesMut, v: usize) {
    let mut v = v;
    loop {
        let byte = (v & 0x7F) as u8;
        v >>= 7;
        if v == 0 {
            buf.put_u8(byte);
            return;
        }
        buf.put_u8(byte | 0x80);
    }
}

/// Checks that a string or binary field fits its two-byte length prefix.
pub(crate) fn check_field(len: usize, field: &'static str) -> Result<u16, EncodeError> {
    u16::try_from(len).map_err(|_| EncodeError::FieldTooLong { field, len })
}

/// Appends a two-byte length and the bytes (a UTF-8 Encoded String or Binary Data).
pub(crate) fn put_field(
    buf: &mut BytesMut,
    bytes: &[u8],
    field: &'static str,
) -> Result<(), EncodeError> {
    let len = check_field(bytes.len(), field)?;
    buf.put_u16(len);
    buf.put_slice(bytes);
    Ok(())
}

/// The encoded length of a string or binary field: its two-byte prefix and its bytes.
pub(crate) const fn field_len(bytes: &[u8]) -> usize {
    2 + bytes.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn var_int_boundaries() {
        // Spec 1.5.5 table 1-1: the smallest and largest value of each length.
        let cases: [(u32, &[u8]); 8] = [
            (0, &[0x00]),
            (127, &[0x7F]),
            (128, &[0x80, 0x01]),
            (16_383, &[0xFF, 0x7F]),
            (16_384, &[0x80, 0x80, 0x01]),
            (2_097_151, &[0xFF, 0xFF, 0x7F]),
            (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
            (268_435_455, &[0xFF, 0xFF, 0xFF, 0x7F]),
        ];
        for (value, bytes) in cases {
            assert_eq!(parse_var_int(bytes, "x"), Ok(Some((value, bytes.len()))));
            let mut buf = BytesMut::new();
            put_var_int(&mut buf, value as usize);
            assert_eq!(&buf[..], bytes);
            assert_eq!(var_int_len(value as usize), bytes.len());
        }
    }

    #[test]
    fn var_int_incomplete_and_too_long() {
        assert_eq!(parse_var_int(&[], "x"), Ok(None));
        assert_eq!(parse_var_int(&[0x80], "x"), Ok(None));
        assert_eq!(parse_var_int(&[0xFF, 0xFF, 0xFF], "x"), Ok(None));
        assert_eq!(
            parse_var_int(&[0xFF, 0xFF, 0xFF, 0x80], "x"),
            Err(DecodeError::VarIntTooLong { field: "x" })
        );
        assert_eq!(
            parse_var_int(&[0x80, 0x80, 0x80, 0x80, 0x01], "x"),
            Err(DecodeError::VarIntTooLong { field: "x" })
        );
    }

    #[test]
    fn strings_are_checked() {
        let frame =
            Bytes::from_static(b"\x00\x02a\x00\x00\x02\xC3\x28\x00\x03a/+\x00\x03\xED\xA0\x80");
        let mut r = Reader::new(&frame, 0, PacketType::Publish);
        assert_eq!(
            r.string("s"),
            Err(DecodeError::NullCharacter { field: "s" })
        );
        assert_eq!(r.string("s"), Err(DecodeError::InvalidUtf8 { field: "s" }));
        assert_eq!(
            r.topic_name("t"),
            Err(DecodeError::WildcardInTopicName { field: "t" })
        );
        // An encoded surrogate (U+D800) is not well-formed UTF-8 ([MQTT-1.5.4-1]).
        assert_eq!(r.string("s"), Err(DecodeError::InvalidUtf8 { field: "s" }));
        assert!(r.is_empty());
        assert_eq!(
            r.u8("f"),
            Err(DecodeError::Truncated {
                packet: PacketType::Publish,
                field: "f"
            })
        );
    }

    #[test]
    fn strings_are_zero_copy() {
        let frame = Bytes::from_static(b"\x00\x03abc");
        let mut r = Reader::new(&frame, 0, PacketType::Publish);
        let s = r.string("s").unwrap();
        assert_eq!(&*s, "abc");
        assert_eq!(s.as_bytes().as_ptr(), frame[2..].as_ptr());
    }
}
