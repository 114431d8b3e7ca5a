//! What a connection holds back, in one place: acknowledgements waiting for the disk, and the
//! publisher's reading, paused while a subscriber it publishes to is congested
//! (docs/flespi.md#publishing; ARCHITECTURE.md "bounded queues").
//!
//! - **Acknowledgements** (PUBACK, PUBREC, PUBCOMP) of packets whose store ops are not yet
//!   durable wait here with their ticket, in the order their packets arrived, and go out once
//!   the store reaches it. A failing store ends the wait too: the driver then closes the
//!   connection (0x97) instead of leaving the client waiting.
//! - **Backpressure**: a PUBLISH routed to a congested session records that session here; the
//!   driver stops reading from this connection until every such session drained, or until
//!   `backpressure_timeout` for the whole pause (see [`Connection::give_up_on_congested`]).
//!
//! The driver polls the two waits in place ([`Connection::poll_acks_durable`],
//! [`Connection::poll_drained`]). Both exist only while something is held, inside the boxed
//! [`Held`] a connection creates on first use, so a connection that only subscribes, or
//! idles, carries none of it.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tern_codec::Packet;
use tern_store::Ticket;

use crate::close::CloseReason;
use crate::connection::Connection;
use crate::message::SessionId;
use crate::metrics::Metrics;
use crate::session::Session;

/// A wait that exists only while needed, boxed so that connections without it do not carry it.
type Wait = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Acknowledgements and reads a publishing connection holds back.
#[derive(Default)]
pub(crate) struct Held {
    /// Acknowledgements waiting for their store ticket to become durable, in arrival order.
    acks: VecDeque<(Ticket, Packet)>,
    /// How many of `acks` are PUBACKs (unacknowledged inbound QoS 1 messages).
    pubacks: usize,
    /// The wait for the store to reach the oldest held acknowledgement's ticket.
    acks_wait: Option<(Ticket, Wait)>,
    /// Congested sessions this connection's publishes went to: reading pauses until they
    /// drained.
    pressure: Vec<Arc<Session>>,
    /// The wait for the first of `pressure` to drain.
    drained_wait: Option<(SessionId, Wait)>,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held")
            .field("acks", &self.acks.len())
            .field("pubacks", &self.pubacks)
            .field("pressure", &self.pressure.len())
            .finish()
    }
}

impl Connection {
    fn held(&mut self) -> &mut Held {
        self.held.get_or_insert_with(Default::default)
    }

    /// Sends an acknowledgement once the store ops it depends on are durable (`ticket`),
    /// keeping acknowledgements in the order their packets arrived.
    pub(crate) fn send_after(&mut self, ticket: Ticket, packet: Packet) {
        let none_held = self.held.as_ref().is_none_or(|h| h.acks.is_empty());
        if none_held && ticket <= self.broker.store().durable() {
            self.send(&packet);
            return;
        }
        let held = self.held();
        let ticket = ticket.max(held.acks.back().map_or(0, |(t, _)| *t));
        if matches!(packet, Packet::PubAck(_)) {
            held.pubacks += 1;
        }
        held.acks.push_back((ticket, packet));
    }

    /// Unacknowledged inbound QoS 1 messages: PUBACKs held until the store has the message.
    pub(crate) fn held_pubacks(&self) -> usize {
        self.held.as_ref().map_or(0, |h| h.pubacks)
    }

    /// Sends the held acknowledgements whose ops are durable now.
    pub fn release_acks(&mut self) {
        let durable = self.broker.store().durable();
        let Some(mut held) = self.held.take() else {
            return;
        };
        while held.acks.front().is_some_and(|(t, _)| *t <= durable) {
            if let Some((_, packet)) = held.acks.pop_front() {
                if matches!(packet, Packet::PubAck(_)) {
                    held.pubacks -= 1;
                }
                self.send(&packet);
            }
        }
        self.held = Some(held);
    }

    /// Ready when the store reached the oldest held acknowledgement's ticket, or fails (pending
    /// when nothing is held). Then call [`Connection::acks_durable`].
    pub fn poll_acks_durable(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(held) = self.held.as_mut() else {
            return Poll::Pending;
        };
        let Some(&(ticket, _)) = held.acks.front() else {
            held.acks_wait = None;
            return Poll::Pending;
        };
        if held.acks_wait.as_ref().is_none_or(|(t, _)| *t != ticket) {
            let store = self.broker.store().clone();
            let wait: Wait = Box::pin(async move {
                store.wait_or_failing(ticket).await;
            });
            held.acks_wait = Some((ticket, wait));
        }
        let Some((_, wait)) = held.acks_wait.as_mut() else {
            return Poll::Pending;
        };
        if wait.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        held.acks_wait = None;
        Poll::Ready(())
    }

    /// The store reached a held acknowledgement's ticket, or fails: sends what is durable, or
    /// asks to close (v5 DISCONNECT 0x97) rather than leave the client waiting while the store
    /// cannot write. What the client sent is written when the store recovers; what was not
    /// acknowledged it sends again.
    pub fn acks_durable(&mut self) -> Result<(), CloseReason> {
        let store = self.broker.store();
        let oldest = self.held.as_ref().and_then(|h| h.acks.front().map(|a| a.0));
        if store.failing() && oldest.is_some_and(|t| t > store.durable()) {
            return Err(CloseReason::StoreUnavailable);
        }
        self.release_acks();
        Ok(())
    }

    /// Remembers that a publish went to a congested session.
    pub(crate) fn pressed_by(&mut self, session: Arc<Session>) {
        let held = self.held();
        if !held.pressure.iter().any(|p| Arc::ptr_eq(p, &session)) {
            held.pressure.push(session);
        }
    }

    /// Whether reading from this connection pauses: a session its publishes went to is still
    /// congested. The driver stops reading until [`Connection::poll_drained`] says they
    /// drained, or gives up after `backpressure_timeout` for the whole pause (whichever and
    /// however many sessions it waits for) and calls [`Connection::give_up_on_congested`].
    pub fn paused(&mut self) -> bool {
        let Some(held) = self.held.as_mut() else {
            return false;
        };
        held.pressure.retain(|s| s.is_congested());
        let Some(first) = held.pressure.first() else {
            held.drained_wait = None;
            return false;
        };
        if held
            .drained_wait
            .as_ref()
            .is_none_or(|(id, _)| *id != first.id)
        {
            let waiting = first.clone();
            let wait: Wait = Box::pin(async move { waiting.drained().await });
            held.drained_wait = Some((first.id, wait));
        }
        true
    }

    /// Ready when the congested session the pause waits for drained (pending when there is
    /// none); then [`Connection::paused`] looks at the next one.
    pub fn poll_drained(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(held) = self.held.as_mut() else {
            return Poll::Pending;
        };
        let Some((_, wait)) = held.drained_wait.as_mut() else {
            return Poll::Pending;
        };
        if wait.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        held.drained_wait = None;
        Poll::Ready(())
    }

    /// The publisher's pause ran out: every session still congested no longer holds
    /// publishers back until it catches up (its queue budgets decide meanwhile).
    pub fn give_up_on_congested(&mut self) {
        let id = self.id;
        let Some(held) = self.held.as_mut() else {
            return;
        };
        held.drained_wait = None;
        if held.pressure.is_empty() {
            return;
        }
        for session in held.pressure.drain(..) {
            tracing::debug!(conn = id, client_id = %session.key.client_id, "backpressure timed out: the subscriber is treated as a slow consumer");
            session.exempt_from_backpressure();
        }
        Metrics::inc(&self.broker.metrics.backpressure_timeouts);
    }
}
