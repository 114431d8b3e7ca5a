//! Codec 12 commands and responses, and Codec 13 (docs/teltonika.md#commands).
//!
//! Codec 12 data field: `0C`, command quantity 1 (`01`), type (`05` command, `06` response),
//! 4-byte payload size, payload, command quantity 2 (`01`). Codec 13 (device to server) has the
//! same shape with a 4-byte unix-seconds timestamp counted in the size before the payload.

use bytes::Bytes;

use crate::error::DecodeError;
use crate::wire::Reader;

/// Codec id of Codec 12.
pub const CODEC_12: u8 = 0x0C;
/// Codec id of Codec 13.
pub const CODEC_13: u8 = 0x0D;

/// The type byte of a Codec 12 frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandType {
    /// `05`: a command, server to device.
    Command,
    /// `06`: a response, device to server.
    Response,
}

impl CommandType {
    /// The type byte.
    pub fn byte(self) -> u8 {
        match self {
            CommandType::Command => 0x05,
            CommandType::Response => 0x06,
        }
    }

    fn from_byte(codec: u8, kind: u8) -> Result<Self, DecodeError> {
        match kind {
            0x05 => Ok(CommandType::Command),
            0x06 => Ok(CommandType::Response),
            _ => Err(DecodeError::CommandType { codec, kind }),
        }
    }
}

/// A Codec 12 frame: a command or its response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Codec12 {
    pub kind: CommandType,
    /// The command text or the response, a view of the frame.
    pub payload: Bytes,
}

impl Codec12 {
    /// The payload as the commands API answers it (docs/teltonika.md#commands): the text when
    /// every byte is printable ASCII (or tab, CR, LF), else lowercase hex.
    pub fn payload_text(&self) -> String {
        let printable = self
            .payload
            .iter()
            .all(|b| matches!(b, 0x20..=0x7e | b'\t' | b'\r' | b'\n'));
        if printable {
            String::from_utf8_lossy(&self.payload).into_owned()
        } else {
            self.payload.iter().map(|b| format!("{b:02x}")).collect()
        }
    }
}

/// A Codec 13 frame (device to server): checked, logged and dropped by the channel
/// (docs/teltonika.md#commands).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Codec13 {
    pub kind: CommandType,
    /// Unix seconds.
    pub timestamp: u32,
    pub payload: Bytes,
}

/// Parses a Codec 12 or 13 data field from the byte after the codec id.
fn parse_command(codec: u8, body: Bytes) -> Result<(CommandType, Option<u32>, Bytes), DecodeError> {
    let mut r = Reader::new(body);
    let first = r.u8("command quantity 1")?;
    if first != 1 {
        return Err(DecodeError::BadCount {
            what: "command quantity 1",
            count: first,
            expected: "1",
        });
    }
    let kind = CommandType::from_byte(codec, r.u8("type")?)?;
    let size = r.u32("payload size")?;
    let (timestamp, len) = if codec == CODEC_13 {
        // The size counts the 4-byte timestamp.
        let len = size.checked_sub(4).ok_or(DecodeError::Overrun {
            record: 0,
            field: "Codec 13 timestamp",
        })?;
        (Some(r.u32("Codec 13 timestamp")?), len)
    } else {
        (None, size)
    };
    let payload = r.bytes(len as usize, "command payload")?;
    let extra = r.remaining().saturating_sub(1);
    if extra > 0 {
        return Err(DecodeError::TrailingBytes { extra });
    }
    let second = r.u8("command quantity 2")?;
    if second != first {
        return Err(DecodeError::CountMismatch { first, second });
    }
    Ok((kind, timestamp, payload))
}

pub(crate) fn parse_codec12(body: Bytes) -> Result<Codec12, DecodeError> {
    let (kind, _, payload) = parse_command(CODEC_12, body)?;
    Ok(Codec12 { kind, payload })
}

pub(crate) fn parse_codec13(body: Bytes) -> Result<Codec13, DecodeError> {
    let (kind, timestamp, payload) = parse_command(CODEC_13, body)?;
    Ok(Codec13 {
        kind,
        timestamp: timestamp.unwrap_or_default(),
        payload,
    })
}
