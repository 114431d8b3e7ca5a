//! tern-teltonika: the Teltonika tracker protocol (docs/teltonika.md), bytes only, no I/O.
//!
//! Used by the Teltonika channel: the channel owns the socket and feeds its receive buffer here.
//! A connection starts with the IMEI handshake ([`decode_imei`], answered with
//! [`HandshakeAnswer`]), then [`FrameDecoder::decode`] takes whole frames from the buffer,
//! returning `Ok(None)` until a frame is complete; the data field length is checked against
//! `max_packet_size` before the rest is buffered, so the buffer stays bounded. Every count,
//! length and CRC is checked (docs/teltonika.md#frame, #io-elements); a [`DecodeError`] names the
//! rule and [`DecodeError::action`] says what the channel does (docs/teltonika.md#bad-input).
//! Records become flespi messages with [`record_to_message`], driven by the one [`PARAMETERS`]
//! table the channel also serves as the `teltonika` device type's `message_parameters`.
//!
//! Layout (sections of docs/teltonika.md in brackets):
//! - `handshake`: the IMEI handshake and its answer (#handshake)
//! - `frame`: the TCP frame and its incremental decoder, the ACK and frame encoders (#frame,
//!   #commands)
//! - `avl`: records of Codec 8, 8 Extended, 16 (#record, #io-elements); variable-length values
//!   are `Bytes` views of the frame
//! - `command`: Codec 12 commands and responses, Codec 13 (#commands)
//! - `message`: records to messages and the parameter table (#messages)
//! - `udp`: UDP datagrams (#udp, for later)
//! - `error`: [`DecodeError`] and the [`ChannelAction`] of #bad-input
//! - `wire`: CRC-16/IBM and the bounds-checked reader

pub mod avl;
pub mod command;
mod error;
pub mod frame;
pub mod handshake;
pub mod message;
pub mod udp;
mod wire;

pub use avl::{AvlCodec, AvlPacket, Gps, IoElement, IoValue, Record};
pub use bytes::{Bytes, BytesMut};
pub use command::{Codec12, Codec13, CommandType};
pub use error::{CLOSE_PROTOCOL_VIOLATION, ChannelAction, DecodeError};
pub use frame::{
    DEFAULT_MAX_PACKET_SIZE, Frame, FrameDecoder, decode_ack, encode_ack, encode_avl,
    encode_avl_data, encode_codec12, encode_codec13, encode_command,
};
pub use handshake::{HandshakeAnswer, Imei, decode_imei, encode_imei};
pub use message::{
    PARAMETERS, Parameter, ParameterType, Source, message_parameters, packet_to_messages,
    record_to_message,
};
pub use udp::{UdpPacket, decode_udp, encode_udp_ack};
pub use wire::crc16;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod vectors;
