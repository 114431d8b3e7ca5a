//! UDP datagrams (docs/teltonika.md#udp): not used by the channel yet; the decoder shares the
//! record parse.
//!
//! Datagram: 2-byte length of the rest, 2-byte packet id, one byte `01`, 1-byte AVL packet id,
//! 2-byte IMEI length + IMEI, then codec id .. number of data 2 as in docs/teltonika.md#frame (no
//! preamble, no CRC).
//! Answer: `0005`, the packet id, `01`, the AVL packet id, the accepted record count (1 byte).

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::avl::AvlPacket;
use crate::error::DecodeError;
use crate::frame::{Frame, parse_data_field};
use crate::handshake::{Imei, decode_imei};

/// One decoded UDP datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpPacket {
    pub packet_id: u16,
    pub avl_packet_id: u8,
    pub imei: Imei,
    pub avl: AvlPacket,
}

/// Decodes a whole UDP datagram carrying AVL records.
pub fn decode_udp(datagram: Bytes) -> Result<UdpPacket, DecodeError> {
    let mut d = datagram;
    if d.len() < 5 {
        return Err(DecodeError::UdpHeader {
            detail: "shorter than its 5-byte header",
        });
    }
    let len = d.get_u16();
    if usize::from(len) != d.len() {
        return Err(DecodeError::UdpHeader {
            detail: "length field differs from the datagram's size",
        });
    }
    let packet_id = d.get_u16();
    let _not_usable = d.get_u8();
    if d.is_empty() {
        return Err(DecodeError::UdpHeader {
            detail: "no AVL packet id",
        });
    }
    let avl_packet_id = d.get_u8();
    let mut rest = BytesMut::from(&d[..]);
    let imei = decode_imei(&mut rest)?.ok_or(DecodeError::UdpHeader {
        detail: "IMEI cut short",
    })?;
    let consumed = d.len() - rest.len();
    d.advance(consumed);
    match parse_data_field(d)? {
        Frame::Avl(avl) => Ok(UdpPacket {
            packet_id,
            avl_packet_id,
            imei,
            avl,
        }),
        Frame::Codec12(_) | Frame::Codec13(_) => Err(DecodeError::UdpHeader {
            detail: "a command codec over UDP",
        }),
    }
}

/// Appends the server's answer to a UDP datagram: `0005`, packet id, `01`, AVL packet id, count.
pub fn encode_udp_ack(packet_id: u16, avl_packet_id: u8, count: u8, out: &mut BytesMut) {
    out.put_u16(5);
    out.put_u16(packet_id);
    out.put_u8(1);
    out.put_u8(avl_packet_id);
    out.put_u8(count);
}
