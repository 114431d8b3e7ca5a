//! PUBACK, PUBREC, PUBREL and PUBCOMP: the QoS 1 and QoS 2 acknowledgement flows.

use tern_codec::{AckProperties, Packet, PubAck, ReasonCode};
use tern_store::{InflightPhase, Op};

use crate::close::CloseReason;
use crate::connection::{Connection, owns};
use crate::metrics::Metrics;
use crate::session::Phase;

impl Connection {
    /// PUBACK: a QoS 1 delivery is done.
    pub(crate) fn handle_puback(&mut self, ack: PubAck) -> Result<(), CloseReason> {
        self.complete(ack.packet_id, Phase::AwaitPubAck)
    }

    /// PUBCOMP: a QoS 2 delivery is done.
    pub(crate) fn handle_pubcomp(&mut self, ack: PubAck) -> Result<(), CloseReason> {
        self.complete(ack.packet_id, Phase::AwaitPubComp)
    }

    /// PUBREC: the client has the QoS 2 message; answer PUBREL. A PUBREC with an error reason
    /// ends the flow (MQTT 5 4.3.3: no PUBREL is sent).
    pub(crate) fn handle_pubrec(&mut self, ack: PubAck) -> Result<(), CloseReason> {
        if ack.reason.is_error() {
            return self.complete(ack.packet_id, Phase::AwaitPubRec);
        }
        let Some(session) = self.session.clone() else {
            return Ok(());
        };
        let found = {
            let mut st = session.lock();
            if !owns(&st, self.id) {
                return Err(CloseReason::SessionTakenOver);
            }
            match st.advance_inflight(ack.packet_id, Phase::AwaitPubRec, Phase::AwaitPubComp) {
                Some(seq) => {
                    if seq != 0 {
                        self.broker.store.submit(Op::SetInflight {
                            key: session.key.clone(),
                            seq,
                            packet_id: ack.packet_id,
                            phase: InflightPhase::Released,
                        });
                    }
                    true
                }
                // A repeated PUBREC for a message already released: answer PUBREL again.
                None => st
                    .inflight
                    .iter()
                    .any(|f| f.packet_id == ack.packet_id && f.phase == Phase::AwaitPubComp),
            }
        };
        let reason = if found || !self.protocol.is_v5() {
            ReasonCode::SUCCESS
        } else {
            ReasonCode::PACKET_IDENTIFIER_NOT_FOUND
        };
        self.send(&Packet::PubRel(PubAck {
            packet_id: ack.packet_id,
            reason,
            properties: AckProperties::default(),
        }));
        Ok(())
    }

    /// PUBREL: the client releases a QoS 2 message it sent us; answer PUBCOMP once the release
    /// is durable.
    pub(crate) fn handle_pubrel(&mut self, ack: PubAck) -> Result<(), CloseReason> {
        let Some(session) = self.session.clone() else {
            return Ok(());
        };
        let (found, ticket) = {
            let mut st = session.lock();
            if !owns(&st, self.id) {
                return Err(CloseReason::SessionTakenOver);
            }
            let found = st.incoming_qos2.remove(&ack.packet_id);
            let ticket = if found && st.stored {
                self.broker.store.submit(Op::DelIncoming {
                    key: session.key.clone(),
                    packet_id: ack.packet_id,
                })
            } else {
                0
            };
            (found, ticket)
        };
        let reason = if found || !self.protocol.is_v5() {
            ReasonCode::SUCCESS
        } else {
            ReasonCode::PACKET_IDENTIFIER_NOT_FOUND
        };
        self.send_after(
            ticket,
            Packet::PubComp(PubAck {
                packet_id: ack.packet_id,
                reason,
                properties: AckProperties::default(),
            }),
        );
        Ok(())
    }

    /// Removes a finished delivery from the in-flight window and lets the next one go.
    fn complete(&mut self, packet_id: u16, phase: Phase) -> Result<(), CloseReason> {
        let Some(session) = self.session.clone() else {
            return Ok(());
        };
        let (done, more, tell_fabric) = {
            let mut st = session.lock();
            if !owns(&st, self.id) {
                return Err(CloseReason::SessionTakenOver);
            }
            let done = st.take_inflight(packet_id, phase);
            let mut tell_fabric = false;
            if let Some(f) = &done
                && f.delivery.seq != 0
            {
                self.broker.store.submit(Op::Dequeue {
                    key: session.key.clone(),
                    seq: f.delivery.seq,
                });
                // The cluster's checkpoint looks at sessions whose deliveries moved.
                tell_fabric = !st.moved && self.broker.is_clustered();
                st.moved |= tell_fabric;
            }
            (done.is_some(), !st.queue.is_empty(), tell_fabric)
        };
        if tell_fabric {
            self.broker.deliveries_moved(&session.key);
        }
        // An unknown packet id is ignored: it may be a late duplicate.
        if done {
            Metrics::gauge(&self.broker.metrics.inflight, -1);
            if more {
                session.wake();
            }
        }
        Ok(())
    }
}
