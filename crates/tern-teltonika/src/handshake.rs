//! The IMEI handshake (docs/teltonika.md#handshake): a 2-byte length, that many ASCII digits, and
//! the server's one-byte answer.

use bytes::{Buf, BytesMut};

use crate::error::DecodeError;

/// The shortest IMEI length accepted (docs/teltonika.md#handshake).
pub const IMEI_MIN_LEN: u16 = 15;
/// The longest IMEI length accepted (docs/teltonika.md#handshake).
pub const IMEI_MAX_LEN: u16 = 17;

/// A tracker's IMEI as it sent it in the handshake: 15-17 ASCII digits (the device `ident`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Imei(String);

impl Imei {
    /// Checks `digits` as the handshake does: 15-17 ASCII digits.
    pub fn new(digits: &str) -> Result<Self, DecodeError> {
        let len = u16::try_from(digits.len()).unwrap_or(u16::MAX);
        check(len, digits.as_bytes())?;
        Ok(Imei(digits.to_owned()))
    }

    /// The digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Imei {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn check(len: u16, digits: &[u8]) -> Result<(), DecodeError> {
    if !(IMEI_MIN_LEN..=IMEI_MAX_LEN).contains(&len) {
        return Err(DecodeError::ImeiLength { len });
    }
    if let Some((position, &byte)) = digits.iter().enumerate().find(|(_, b)| !b.is_ascii_digit()) {
        return Err(DecodeError::ImeiNotDigit { position, byte });
    }
    Ok(())
}

/// Takes the handshake from the front of `buf`: `Ok(None)` until it is whole, then the IMEI (its
/// bytes removed from `buf`). The length is checked as soon as its two bytes are there, so a bad
/// length never waits for more bytes; on any error the answer is [`HandshakeAnswer::Reject`].
pub fn decode_imei(buf: &mut BytesMut) -> Result<Option<Imei>, DecodeError> {
    let Some(&[hi, lo]) = buf.get(..2) else {
        return Ok(None);
    };
    let len = u16::from_be_bytes([hi, lo]);
    if !(IMEI_MIN_LEN..=IMEI_MAX_LEN).contains(&len) {
        return Err(DecodeError::ImeiLength { len });
    }
    let end = 2 + usize::from(len);
    let Some(digits) = buf.get(2..end) else {
        // Reject a non-digit as soon as it arrives rather than at the last byte.
        check(len, buf.get(2..).unwrap_or_default())?;
        return Ok(None);
    };
    check(len, digits)?;
    // Only ASCII digits, checked above, so the bytes are UTF-8.
    let imei = String::from_utf8_lossy(digits).into_owned();
    buf.advance(end);
    Ok(Some(Imei(imei)))
}

/// The server's one-byte answer to the handshake (docs/teltonika.md#handshake).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeAnswer {
    /// `01`: accepted, frames follow.
    Accept,
    /// `00`: rejected; the server closes the connection.
    Reject,
}

impl HandshakeAnswer {
    /// The byte on the wire.
    pub fn byte(self) -> u8 {
        match self {
            HandshakeAnswer::Accept => 0x01,
            HandshakeAnswer::Reject => 0x00,
        }
    }
}

/// Appends a handshake (length and digits) to `out`, as a tracker sends it (tests, simulators).
pub fn encode_imei(imei: &Imei, out: &mut BytesMut) {
    let digits = imei.as_str().as_bytes();
    // An `Imei` holds at most 17 digits.
    out.extend_from_slice(&(digits.len() as u16).to_be_bytes());
    out.extend_from_slice(digits);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> BytesMut {
        let bytes: Vec<u8> = (0..s.len())
            .step_by(2)
            .filter_map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
            .collect();
        BytesMut::from(&bytes[..])
    }

    #[test]
    fn spec_example_decodes() {
        // docs/teltonika.md#handshake: `000F 333536333037303432343431303133` = `356307042441013`.
        let mut buf = hex("000F333536333037303432343431303133FF");
        let imei = decode_imei(&mut buf).ok().flatten();
        assert_eq!(imei.as_ref().map(Imei::as_str), Some("356307042441013"));
        assert_eq!(&buf[..], &[0xFF]);
    }

    #[test]
    fn incomplete_waits() {
        let full = hex("000F333536333037303432343431303133");
        for n in 0..full.len() {
            let mut buf = BytesMut::from(&full[..n]);
            assert_eq!(decode_imei(&mut buf), Ok(None), "{n} bytes");
            assert_eq!(buf.len(), n);
        }
    }

    #[test]
    fn bad_length_and_digits_are_rejected_early() {
        assert_eq!(
            decode_imei(&mut hex("000E")),
            Err(DecodeError::ImeiLength { len: 14 })
        );
        assert_eq!(
            decode_imei(&mut hex("0012")),
            Err(DecodeError::ImeiLength { len: 18 })
        );
        assert_eq!(
            decode_imei(&mut hex("000F3341")),
            Err(DecodeError::ImeiNotDigit {
                position: 1,
                byte: 0x41
            })
        );
        let err = decode_imei(&mut hex("000E")).err();
        assert_eq!(
            err.map(|e| e.action()),
            Some(crate::ChannelAction::RejectHandshake)
        );
    }

    #[test]
    fn fake_tracker_bad_imei_is_rejected() {
        // What `teltonika_tracker.py send --bad imei` sends.
        let mut buf = BytesMut::from(&b"\x00\x0f35ABCD07x!44101"[..]);
        assert_eq!(
            decode_imei(&mut buf),
            Err(DecodeError::ImeiNotDigit {
                position: 2,
                byte: b'A'
            })
        );
    }

    #[test]
    fn encode_round_trips() {
        for digits in ["356307042441013", "3563070424410131", "35630704244101312"] {
            let imei = Imei::new(digits).ok();
            let mut out = BytesMut::new();
            if let Some(imei) = &imei {
                encode_imei(imei, &mut out);
            }
            assert_eq!(decode_imei(&mut out).ok().flatten(), imei);
            assert!(out.is_empty());
        }
        assert!(Imei::new("12345678901234").is_err());
        assert!(Imei::new("12345678901234x").is_err());
    }
}
