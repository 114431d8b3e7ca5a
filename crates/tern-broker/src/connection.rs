//! One client connection's protocol state, without I/O.
//!
//! The connection driver (tern-net) owns the socket. It feeds decoded packets to
//! [`Connection::handle`], calls [`Connection::fill`] when the session has deliveries, and
//! writes out whatever accumulated in [`Connection::out`]. Everything here is synchronous; the
//! only shared state touched is the broker's, under short locks.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytestring::ByteString;
use tern_codec::{
    ConnAck, DecodeError, Disconnect, DisconnectProperties, Packet, PacketId, ProtocolVersion,
    ReasonCode,
};

use tern_store::Ticket;

use crate::auth::Principal;
use crate::broker::Broker;
use crate::close::CloseReason;
use crate::held::Held;
use crate::message::Delivery;
use crate::metrics::Metrics;
use crate::out::OutBuf;
use crate::session::{Kick, Phase, Session, SessionState};
use crate::timer_queue::TimerKind;
use crate::topics::session_event;

/// The largest packet MQTT can express (a 4-byte remaining length plus the fixed header).
const MAX_WIRE_PACKET: u32 = 268_435_455 + 5;

/// What the client told us about itself in CONNECT (v5 properties), bounding what we send.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientLimits {
    pub receive_maximum: u16,
    pub maximum_packet_size: u32,
    pub topic_alias_maximum: u16,
    pub request_problem_information: bool,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            receive_maximum: u16::MAX,
            maximum_packet_size: MAX_WIRE_PACKET,
            topic_alias_maximum: 0,
            request_problem_information: true,
        }
    }
}

/// The topic aliases of one connection (MQTT 5 3.3.2.3.4).
#[derive(Debug, Default)]
pub(crate) struct Aliases {
    /// Set by the client (alias → topic).
    pub incoming: HashMap<u16, ByteString>,
    /// Assigned by the broker (topic → alias).
    pub outgoing: HashMap<ByteString, u16>,
}

/// A delivery taken from the session, about to be encoded.
#[derive(Debug)]
pub(crate) struct Taken {
    pub delivery: Delivery,
    pub packet_id: Option<PacketId>,
    /// The DUP flag on the wire.
    pub dup: bool,
    /// Taken from the in-flight window again (a re-send), not from the queue.
    pub again: bool,
    /// For a re-sent QoS 2 message whose PUBREC arrived: send PUBREL instead of PUBLISH.
    pub pubrel: bool,
}

/// The protocol state of one connection.
#[derive(Debug)]
pub struct Connection {
    pub(crate) broker: Arc<Broker>,
    pub(crate) id: u64,
    pub(crate) peer: SocketAddr,
    pub(crate) listener: &'static str,
    pub(crate) protocol: ProtocolVersion,
    pub(crate) kick: Arc<Kick>,
    pub(crate) session: Option<Arc<Session>>,
    /// Boxed: kept small for the many idle connections.
    pub(crate) principal: Option<Box<Principal>>,
    /// Keep alive in seconds as agreed (0 = none).
    pub(crate) keep_alive: u16,
    pub(crate) limits: ClientLimits,
    /// Topic aliases both ways, created on first use.
    pub(crate) aliases: Option<Box<Aliases>>,
    /// Encoded packets waiting to be written.
    pub(crate) out: OutBuf,
    pub(crate) closed: bool,
    /// What a publishing connection holds back (`held.rs`); created on first use, so that
    /// connections that only subscribe (or idle) do not carry it.
    pub(crate) held: Option<Box<Held>>,
}

impl Connection {
    /// A new connection from `peer` on the listener named `listener`.
    pub fn new(broker: Arc<Broker>, peer: SocketAddr, listener: &'static str) -> Connection {
        let id = broker.next_conn_id();
        let kick = Arc::new(Kick::default());
        let connect_timeout = Some(broker.config.connect_timeout);
        kick.set_deadline(broker.deadline_ms(), connect_timeout, false);
        broker.register_connection(id, &kick);
        broker.watch_deadlines();
        Metrics::gauge(&broker.metrics.connections, 1);
        Metrics::inc(&broker.metrics.connections_total);
        Connection {
            broker,
            id,
            peer,
            listener,
            protocol: ProtocolVersion::V5,
            kick,
            session: None,
            principal: None,
            keep_alive: 0,
            limits: ClientLimits::default(),
            aliases: None,
            out: OutBuf::default(),
            closed: false,
            held: None,
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// The name of the listener the connection came in on.
    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    pub fn listener(&self) -> &'static str {
        self.listener
    }

    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// The protocol version the client announced (V5 until CONNECT).
    pub fn protocol(&self) -> ProtocolVersion {
        self.protocol
    }

    /// Whether CONNECT was accepted.
    pub fn is_connected(&self) -> bool {
        self.session.is_some()
    }

    /// Largest packet the broker accepts from this client.
    pub fn max_packet_size(&self) -> u32 {
        self.broker.config.max_packet_size
    }

    /// How long the connection may stay silent before it is closed: 1.5 times the keep alive.
    pub fn idle_timeout(&self) -> Option<Duration> {
        (self.keep_alive > 0).then(|| Duration::from_millis(u64::from(self.keep_alive) * 1500))
    }

    /// A whole packet was handled: once connected, the keep-alive deadline starts again
    /// (`deadlines.rs`; none with keep alive 0). Before CONNECT the CONNECT deadline stands:
    /// bytes alone never move it ([MQTT-3.1.2-22]).
    pub fn packet_received(&self) {
        if self.is_connected() {
            self.kick
                .set_deadline(self.broker.deadline_ms(), self.idle_timeout(), true);
        }
    }

    /// The session, once connected (to wait for its deliveries).
    pub fn session(&self) -> Option<&Arc<Session>> {
        self.session.as_ref()
    }

    /// The close request of this connection (takeover, administrative action, slow consumer).
    pub fn kick(&self) -> &Arc<Kick> {
        &self.kick
    }

    /// Encoded bytes waiting to be written. The driver writes and consumes them.
    pub fn out(&mut self) -> &mut OutBuf {
        &mut self.out
    }

    /// Encodes a packet into the output buffer.
    pub(crate) fn send(&mut self, packet: &Packet) {
        if let Err(err) = tern_codec::encode(packet, self.protocol, self.out.tail()) {
            tracing::error!(conn = self.id, %err, "could not encode an outgoing packet");
        }
    }

    /// Handles a packet that failed to decode: answers what the spec asks for (CONNACK 0x84 for
    /// an unsupported protocol level) and returns the close reason.
    pub fn decode_error(&mut self, err: &DecodeError) -> CloseReason {
        let reason = CloseReason::from(err);
        if self.is_connected() {
            return reason;
        }
        // Errors in CONNECT that the spec answers with a CONNACK, in the format the client will
        // understand.
        let refusal = match err {
            DecodeError::UnsupportedProtocolVersion { level }
            | DecodeError::UnknownProtocolName { level } => Some((
                ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
                if *level == 5 {
                    ProtocolVersion::V5
                } else {
                    ProtocolVersion::V311
                },
            )),
            DecodeError::ClientIdNotValid { version, .. } => {
                Some((ReasonCode::CLIENT_IDENTIFIER_NOT_VALID, *version))
            }
            _ => None,
        };
        match refusal {
            Some((code, version)) => {
                self.protocol = version;
                self.send(&Packet::ConnAck(ConnAck {
                    session_present: false,
                    code,
                    properties: Default::default(),
                }));
                CloseReason::ConnectRefused(code)
            }
            None => reason,
        }
    }

    /// Closes the connection: tells a v5 client why (when the server is the one closing),
    /// detaches the session, schedules or publishes the will and the session's expiry.
    /// Idempotent.
    pub fn close(&mut self, reason: &CloseReason) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.broker.metrics.closed(reason);
        if self.is_connected() && self.protocol.is_v5() && reason.server_sends_disconnect() {
            let mut properties = DisconnectProperties::default();
            if self.limits.request_problem_information
                && let CloseReason::Violation { detail, .. } = reason
            {
                properties.reason_string = Some(ByteString::from(detail.as_ref()));
            }
            self.send(&Packet::Disconnect(Disconnect {
                reason: reason.reason_code(),
                properties,
            }));
        }
        let Some(session) = self.session.clone() else {
            return;
        };
        tracing::debug!(conn = self.id, client_id = %session.key.client_id, cid = session.key.cid, %reason, "connection closed");
        self.detach(&session, reason);
    }

    fn detach(&mut self, session: &Arc<Session>, reason: &CloseReason) {
        let broker = self.broker.clone();
        let now = broker.clock.now();
        // The disconnect's identity for its timers is a stamp, not just the time: unique, so
        // the timers of an earlier disconnect never match a later one, even within one
        // microsecond (or one step of a manual clock). Deadlines count from `now`.
        let disconnected_at = broker.clock.stamp();
        let (will_now, delayed_will, end, expiry) = {
            let mut st = session.lock();
            if !owns(&st, self.id) {
                // Taken over: the new owner dealt with the will.
                return;
            }
            st.conn = None;
            // Nobody waits for an offline session: its queue budgets decide.
            session.relieve();
            if st.ended {
                // Removed while connected (REST, account deletion): nothing left to keep.
                return;
            }
            st.disconnected_at = Some(disconnected_at);
            st.resend = st.inflight.len();
            let will = st.will.take().filter(|_| reason.publishes_will());
            let end = st.expiry_interval == 0;
            let mut will_now = None;
            let mut delayed_will = None;
            match will {
                Some(w) if !end && w.delay > 0 => {
                    delayed_will = Some(w.delay.min(st.expiry_interval));
                    st.will = Some(w);
                }
                other => will_now = other,
            }
            if !end {
                broker.persist_session(session, &mut st);
            }
            (will_now, delayed_will, end, st.expiry_interval)
        };
        if end {
            broker.end_session(session);
        }
        broker.session_event(session, session_event::DISCONNECTED, Some(reason));
        if let Some(w) = will_now {
            broker.publish_will(w);
        }
        if end {
            return;
        }
        if let Some(delay) = delayed_will {
            broker.timers.schedule(
                now + u64::from(delay) * 1_000_000,
                TimerKind::Will,
                session.clone(),
                disconnected_at,
            );
        }
        if expiry != u32::MAX {
            broker.timers.schedule(
                now + u64::from(expiry) * 1_000_000,
                TimerKind::Expiry,
                session.clone(),
                disconnected_at,
            );
        }
    }
}

/// What the connection holds back ([`Held`], `held.rs`): acknowledgements waiting for the
/// disk, reading paused by congested subscribers.
impl Connection {
    fn held(&mut self) -> &mut Held {
        self.held.get_or_insert_with(Default::default)
    }

    /// Sends an acknowledgement once the store ops it depends on are durable (`ticket`),
    /// keeping acknowledgements in the order their packets arrived.
    pub(crate) fn send_after(&mut self, ticket: Ticket, packet: Packet) {
        self.send_after_fabric(ticket, 0, packet);
    }

    /// [`Connection::send_after`], also waiting until the cluster confirmed `fabric`
    /// (`fabric.rs`).
    pub(crate) fn send_after_fabric(
        &mut self,
        ticket: Ticket,
        fabric: crate::fabric::FabricTicket,
        packet: Packet,
    ) {
        let none_held = self.held.as_ref().is_none_or(|h| !h.holds_acks());
        if none_held
            && ticket <= self.broker.store().durable()
            && (fabric == 0 || fabric <= self.broker.fabric_confirmed())
        {
            self.send(&packet);
            return;
        }
        self.held().hold(ticket, fabric, packet);
    }

    /// Unacknowledged inbound QoS 1 messages: PUBACKs held until the store has the message.
    pub(crate) fn held_pubacks(&self) -> usize {
        self.held.as_ref().map_or(0, |h| h.pubacks())
    }

    /// Sends the held acknowledgements whose ops are durable now.
    pub fn release_acks(&mut self) {
        let durable = self.broker.store().durable();
        let confirmed = self.broker.fabric_confirmed();
        let Some(mut held) = self.held.take() else {
            return;
        };
        while let Some(packet) = held.release(durable, confirmed) {
            self.send(&packet);
        }
        self.held = Some(held);
    }

    /// Ready when the store reached the oldest held acknowledgement's ticket, or fails (pending
    /// when nothing is held). Then call [`Connection::acks_durable`].
    pub fn poll_acks_durable(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match self.held.as_mut() {
            Some(held) => held.poll_acks_durable(&self.broker, cx),
            None => Poll::Pending,
        }
    }

    /// The store reached a held acknowledgement's ticket, or fails: sends what is durable, or
    /// asks to close (v5 DISCONNECT 0x97) rather than leave the client waiting while the store
    /// cannot write. What the client sent is written when the store recovers; what was not
    /// acknowledged it sends again.
    pub fn acks_durable(&mut self) -> Result<(), CloseReason> {
        let store = self.broker.store();
        let oldest = self.held.as_ref().and_then(|h| h.oldest());
        if store.failing() && oldest.is_some_and(|t| t > store.durable()) {
            return Err(CloseReason::StoreUnavailable);
        }
        self.release_acks();
        Ok(())
    }

    /// Remembers that a publish went to a congested session.
    pub(crate) fn pressed_by(&mut self, session: Arc<Session>) {
        self.held().pressed_by(session);
    }

    /// Whether reading from this connection pauses: a session its publishes went to is still
    /// congested. The driver stops reading until [`Connection::poll_drained`] says they
    /// drained, or gives up after `backpressure_timeout` for the whole pause (whichever and
    /// however many sessions it waits for) and calls [`Connection::give_up_on_congested`].
    pub fn paused(&mut self) -> bool {
        self.held.as_mut().is_some_and(|h| h.paused())
    }

    /// Ready when the congested session the pause waits for drained (pending when there is
    /// none); then [`Connection::paused`] looks at the next one.
    pub fn poll_drained(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match self.held.as_mut() {
            Some(held) => held.poll_drained(cx),
            None => Poll::Pending,
        }
    }

    /// The publisher's pause ran out: every session still congested no longer holds
    /// publishers back until it catches up (its queue budgets decide meanwhile).
    pub fn give_up_on_congested(&mut self) {
        let Some(held) = self.held.as_mut() else {
            return;
        };
        let mut any = false;
        for session in held.give_up() {
            tracing::debug!(conn = self.id, client_id = %session.key.client_id, "backpressure timed out: the subscriber is treated as a slow consumer");
            session.exempt_from_backpressure();
            any = true;
        }
        if any {
            Metrics::inc(&self.broker.metrics.backpressure_timeouts);
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if !self.closed {
            self.close(&CloseReason::ConnectionLost);
        }
        Metrics::gauge(&self.broker.metrics.connections, -1);
        self.broker.unregister_connection(self.id);
    }
}

/// Whether the connection `conn_id` owns the session.
pub(crate) fn owns(st: &SessionState, conn_id: u64) -> bool {
    st.conn.as_ref().is_some_and(|l| l.conn_id == conn_id)
}

/// Phase of a QoS 1/2 delivery just sent.
pub(crate) fn first_phase(qos: tern_codec::QoS) -> Phase {
    match qos {
        tern_codec::QoS::ExactlyOnce => Phase::AwaitPubRec,
        _ => Phase::AwaitPubAck,
    }
}
