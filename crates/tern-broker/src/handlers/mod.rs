//! One handler per packet type, and the dispatch that routes each packet to its handler.
//!
//! Handlers are `impl Connection` blocks: they validate, change broker and session state under
//! short locks, and encode their answers into the connection's output buffer. An `Err` closes
//! the connection with that reason.

mod ack;
mod connect;
mod deliver;
mod disconnect;
mod publish;
mod subscribe;
mod unsubscribe;

use tern_codec::Packet;

use crate::close::CloseReason;
use crate::connection::Connection;
use crate::violation::Violation;

impl Connection {
    /// Handles one packet from the client.
    pub fn handle(&mut self, packet: Packet) -> Result<(), CloseReason> {
        if !self.is_connected() {
            return match packet {
                Packet::Connect(c) => self.handle_connect(c),
                // The first packet must be CONNECT; close without answering.
                other => Err(Violation::BeforeConnect(other.packet_type()).into()),
            };
        }
        match packet {
            Packet::Publish(p) => self.handle_publish(p),
            Packet::PubAck(a) => self.handle_puback(a),
            Packet::PubRec(a) => self.handle_pubrec(a),
            Packet::PubRel(a) => self.handle_pubrel(a),
            Packet::PubComp(a) => self.handle_pubcomp(a),
            Packet::Subscribe(s) => self.handle_subscribe(s),
            Packet::Unsubscribe(u) => self.handle_unsubscribe(u),
            Packet::PingReq => {
                self.send(&Packet::PingResp);
                Ok(())
            }
            Packet::Disconnect(d) => self.handle_disconnect(d),
            Packet::Auth(_) => Err(Violation::AuthWithoutMethod.into()),
            Packet::Connect(_) => Err(Violation::SecondConnect.into()),
            other => Err(Violation::ServerPacket(other.packet_type()).into()),
        }
    }
}
