//! Decode errors and what the channel does about each one.
//!
//! A [`DecodeError`] is bad input from the tracker. Its text names the section of
//! docs/teltonika.md whose rule it breaks (`[teltonika.md#frame]`); [`DecodeError::kind`] gives
//! the short name the test vectors use (`crc`, `count`, `truncated`, `oversize`, `codec`,
//! `preamble`) and [`DecodeError::action`] what the channel must do per
//! docs/teltonika.md#bad-input. Nothing of a frame that fails to decode is stored, published or
//! ACKed.

/// Bad input from a tracker, one variant per row of docs/teltonika.md#bad-input (some rows split by
/// detail).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    // ---- handshake (#handshake) ----
    /// The IMEI length is not 15-17.
    #[error("[teltonika.md#handshake] IMEI length {len} is not 15-17")]
    ImeiLength { len: u16 },
    /// A byte of the IMEI is not an ASCII digit.
    #[error("[teltonika.md#handshake] IMEI byte {position} is {byte:#04x}, not an ASCII digit")]
    ImeiNotDigit { position: usize, byte: u8 },

    // ---- frame (#frame) ----
    /// The four bytes before the data field length are not zero.
    #[error("[teltonika.md#frame] preamble {found:#010x} is not zero")]
    Preamble { found: u32 },
    /// The data field length is above `max_packet_size` (docs/teltonika.md#limits). Raised as soon
    /// as the length is read, before the rest of the frame is buffered.
    #[error("[teltonika.md#frame] data field length {len} exceeds max_packet_size {max}")]
    Oversize { len: u32, max: u32 },
    /// The data field length is below 3 (codec id and the two counts).
    #[error("[teltonika.md#frame] data field length {len} is below 3")]
    Undersize { len: u32 },
    /// The CRC-16/IBM over the data field does not match the frame's CRC field.
    #[error(
        "[teltonika.md#frame] CRC {found:#010x} does not match the data field's CRC-16/IBM {computed:#06x}"
    )]
    Crc { found: u32, computed: u16 },
    /// A codec id other than 08, 8E, 10, 0C, 0D.
    #[error("[teltonika.md#frame] codec id {codec:#04x} is not 08, 8E, 10, 0C or 0D")]
    Codec { codec: u8 },
    /// Number of data 1 differs from number of data 2 (or, for Codec 12/13, the command
    /// quantities).
    #[error(
        "[teltonika.md#frame] number of data 1 ({first}) differs from number of data 2 ({second})"
    )]
    CountMismatch { first: u8, second: u8 },
    /// An AVL frame with 0 records, or a Codec 12/13 frame whose command quantity is not 1.
    #[error("[teltonika.md#frame] {what} is {count}, must be {expected}")]
    BadCount {
        what: &'static str,
        count: u8,
        expected: &'static str,
    },
    /// A record's total IO count is not the sum of its group counts.
    #[error(
        "[teltonika.md#io-elements] record {record}: total IO count {total} differs from the sum of the group counts {sum}"
    )]
    IoCount { record: u8, total: u16, sum: u32 },
    /// The records (or the command) run past the data field.
    #[error("[teltonika.md#frame] record {record}: {field} runs past the end of the data field")]
    Overrun { record: u8, field: &'static str },
    /// Bytes left between the last record (or command payload) and number of data 2.
    #[error("[teltonika.md#frame] {extra} bytes left over after the last record")]
    TrailingBytes { extra: usize },
    /// A Codec 12 type other than 05 (command) or 06 (response), or a Codec 13 type other than
    /// 05/06.
    #[error(
        "[teltonika.md#commands] codec {codec} type {kind:#04x} is not 05 (command) or 06 (response)"
    )]
    CommandType { codec: u8, kind: u8 },

    // ---- end of stream (#bad-input) ----
    /// The peer closed (or `frame_timeout` ran out) with part of a frame or handshake buffered.
    #[error(
        "[teltonika.md#bad-input] stream ended inside a frame: {buffered} bytes buffered, {needed} needed"
    )]
    Truncated { buffered: usize, needed: usize },

    // ---- UDP datagram (#udp) ----
    /// A UDP datagram's 2-byte length does not match its size, or the header is cut short.
    #[error("[teltonika.md#udp] UDP datagram: {detail}")]
    UdpHeader { detail: &'static str },
}

/// What the channel does with a connection after a [`DecodeError`], per
/// docs/teltonika.md#bad-input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelAction {
    /// Answer `00` to the handshake, then close (close code 4).
    RejectHandshake,
    /// Close at once and read no further (close code 4): the preamble or the length is wrong, so
    /// the rest of the stream cannot be framed.
    CloseAtOnce,
    /// Send no ACK, close (close code 4).
    CloseWithoutAck,
    /// Drop the partial frame and close normally (close code 17 when `frame_timeout` ran out).
    DropPartial,
}

impl ChannelAction {
    /// The close code for the channel log record (event 102), `None` for a normal close.
    pub fn close_code(self) -> Option<u8> {
        match self {
            ChannelAction::RejectHandshake
            | ChannelAction::CloseAtOnce
            | ChannelAction::CloseWithoutAck => Some(CLOSE_PROTOCOL_VIOLATION),
            ChannelAction::DropPartial => None,
        }
    }
}

/// Close code 4, "protocol violation", of the channel's close codes.
pub const CLOSE_PROTOCOL_VIOLATION: u8 = 4;

impl DecodeError {
    /// The short name the test vectors give this error (`error` in `bad_*.json`): `imei`,
    /// `preamble`, `oversize`, `crc`, `count`, `codec`, `truncated`, `udp`.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::ImeiLength { .. } | DecodeError::ImeiNotDigit { .. } => "imei",
            DecodeError::Preamble { .. } => "preamble",
            DecodeError::Oversize { .. } | DecodeError::Undersize { .. } => "oversize",
            DecodeError::Crc { .. } => "crc",
            DecodeError::Codec { .. } | DecodeError::CommandType { .. } => "codec",
            DecodeError::CountMismatch { .. }
            | DecodeError::BadCount { .. }
            | DecodeError::IoCount { .. }
            | DecodeError::Overrun { .. }
            | DecodeError::TrailingBytes { .. } => "count",
            DecodeError::Truncated { .. } => "truncated",
            DecodeError::UdpHeader { .. } => "udp",
        }
    }

    /// What the channel must do, per docs/teltonika.md#bad-input.
    pub fn action(&self) -> ChannelAction {
        match self {
            DecodeError::ImeiLength { .. } | DecodeError::ImeiNotDigit { .. } => {
                ChannelAction::RejectHandshake
            }
            DecodeError::Preamble { .. }
            | DecodeError::Oversize { .. }
            | DecodeError::Undersize { .. } => ChannelAction::CloseAtOnce,
            DecodeError::Crc { .. }
            | DecodeError::Codec { .. }
            | DecodeError::CountMismatch { .. }
            | DecodeError::BadCount { .. }
            | DecodeError::IoCount { .. }
            | DecodeError::Overrun { .. }
            | DecodeError::TrailingBytes { .. }
            | DecodeError::CommandType { .. }
            | DecodeError::UdpHeader { .. } => ChannelAction::CloseWithoutAck,
            DecodeError::Truncated { .. } => ChannelAction::DropPartial,
        }
    }
}
