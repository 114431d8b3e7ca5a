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

use tern_codec::{Packet, ReasonCode};

use crate::close::CloseReason;
use crate::connection::Connection;

impl Connection {
    /// Handles one packet from the client.
    pub fn handle(&mut self, packet: Packet) -> Result<(), CloseReason> {
        if !self.is_connected() {
            return match packet {
                Packet::Connect(c) => self.handle_connect(c),
                // [MQTT-3.1.0-1]: the first packet must be CONNECT; close without answering.
                other => Err(CloseReason::protocol(
                    "MQTT-3.1.0-1",
                    format!("{:?} before CONNECT", other.packet_type()),
                )),
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
            Packet::Auth(_) => {
                // No enhanced authentication method is supported, so no AUTH exchange can be
                // in progress ([MQTT-4.12.0-1]).
                Err(CloseReason::violation(
                    ReasonCode::BAD_AUTHENTICATION_METHOD,
                    Some("MQTT-4.12.0-1"),
                    "AUTH without an authentication method",
                ))
            }
            Packet::Connect(_) => Err(CloseReason::protocol("MQTT-3.1.0-2", "second CONNECT")),
            other => Err(CloseReason::protocol(
                "MQTT-2.1.2",
                format!("{:?} is not sent by clients", other.packet_type()),
            )),
        }
    }
}
