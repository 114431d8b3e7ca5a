//! tern-codec: MQTT 3.1, 3.1.1 and 5.0 control packets, one model for all versions.
//!
//! The codec never touches sockets: [`decode()`] takes bytes from the caller's `BytesMut` and
//! returns whole packets, [`encode()`] appends to the caller's buffer. Payloads are `Bytes` slices
//! of the receive buffer, never copied. Every protocol violation is a [`DecodeError`] that names
//! the spec rule it breaks and maps to an MQTT 5 reason code.
//!
//! Layout:
//! - `types`: protocol version, QoS, subscription options, packet id
//! - `reason`: reason codes and the 3.x return code mapping
//! - `properties`: the MQTT 5 properties of each packet type
//! - `packet`: the packet model
//! - `error`: decode and encode errors
//! - `wire`: the data representations of spec 1.5 (integers, strings, binary data)
//! - `decode`, `encode`: the wire format, one submodule per packet family

mod decode;
mod encode;
mod error;
pub mod packet;
pub mod properties;
pub mod reason;
pub mod types;
mod wire;

pub use bytes::{Bytes, BytesMut};
pub use bytestring::ByteString;
pub use decode::decode;
pub use encode::{
    Outgoing, encode, encode_outgoing, encode_outgoing_head, encode_publish, encoded_len,
    outgoing_len, publish_len,
};
pub use error::{DecodeError, EncodeError};
pub use packet::*;
pub use properties::*;
pub use reason::ReasonCode;
pub use types::*;

#[cfg(test)]
mod proptests;
