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
//!   `backpressure_timeout` for the whole pause (see `Connection::give_up_on_congested`).
//!
//! The driver polls the two waits in place (`Connection::poll_acks_durable`,
//! `Connection::poll_drained`, which hand over to [`Held`]). Both exist only while something is held, inside the boxed
//! [`Held`] a connection creates on first use, so a connection that only subscribes, or
//! idles, carries none of it.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tern_codec::Packet;
use tern_store::Ticket;

use crate::broker::Broker;
use crate::fabric::FabricTicket;

use crate::message::SessionId;
use crate::session::Session;

/// A wait that exists only while needed, boxed so that connections without it do not carry it.
type Wait = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Acknowledgements and reads a publishing connection holds back.
#[derive(Default)]
pub(crate) struct Held {
    /// Acknowledgements waiting for their store ticket to become durable (and, in cluster
    /// mode, their fabric ticket to be confirmed), in arrival order.
    acks: VecDeque<(Ticket, FabricTicket, Packet)>,
    /// How many of `acks` are PUBACKs (unacknowledged inbound QoS 1 messages).
    pubacks: usize,
    /// The wait for the store (and the fabric) to reach the oldest held acknowledgement's
    /// tickets.
    acks_wait: Option<((Ticket, FabricTicket), Wait)>,
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

impl Held {
    /// Holds `packet` until the store reaches `ticket` and the fabric `fabric`, after every
    /// acknowledgement held before it (the order their packets arrived).
    pub(crate) fn hold(&mut self, ticket: Ticket, fabric: FabricTicket, packet: Packet) {
        let (last, last_fabric) = self.acks.back().map_or((0, 0), |(t, f, _)| (*t, *f));
        if matches!(packet, Packet::PubAck(_)) {
            self.pubacks += 1;
        }
        self.acks
            .push_back((ticket.max(last), fabric.max(last_fabric), packet));
    }

    /// Whether acknowledgements are held.
    pub(crate) fn holds_acks(&self) -> bool {
        !self.acks.is_empty()
    }

    /// How many held acknowledgements are PUBACKs (unacknowledged inbound QoS 1 messages).
    pub(crate) fn pubacks(&self) -> usize {
        self.pubacks
    }

    /// The store ticket the oldest held acknowledgement waits for.
    pub(crate) fn oldest(&self) -> Option<Ticket> {
        self.acks.front().map(|(t, _, _)| *t)
    }

    /// Takes the next held acknowledgement if the store has what it acknowledges (`durable`)
    /// and the fabric confirmed it (`confirmed`).
    pub(crate) fn release(&mut self, durable: Ticket, confirmed: FabricTicket) -> Option<Packet> {
        if self
            .acks
            .front()
            .is_none_or(|(t, f, _)| *t > durable || *f > confirmed)
        {
            return None;
        }
        let (_, _, packet) = self.acks.pop_front()?;
        if matches!(packet, Packet::PubAck(_)) {
            self.pubacks -= 1;
        }
        Some(packet)
    }

    /// Ready when the store reached the oldest held acknowledgement's ticket (or fails) and
    /// the fabric confirmed its fabric ticket; pending when nothing is held.
    pub(crate) fn poll_acks_durable(&mut self, broker: &Broker, cx: &mut Context<'_>) -> Poll<()> {
        let Some(&(ticket, fabric, _)) = self.acks.front() else {
            self.acks_wait = None;
            return Poll::Pending;
        };
        if self
            .acks_wait
            .as_ref()
            .is_none_or(|(t, _)| *t != (ticket, fabric))
        {
            let store = broker.store().clone();
            let fabric_wait = broker.fabric_wait(fabric);
            let wait: Wait = Box::pin(async move {
                store.wait_or_failing(ticket).await;
                if let Some(w) = fabric_wait {
                    w.await;
                }
            });
            self.acks_wait = Some(((ticket, fabric), wait));
        }
        let Some((_, wait)) = self.acks_wait.as_mut() else {
            return Poll::Pending;
        };
        if wait.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.acks_wait = None;
        Poll::Ready(())
    }

    /// Remembers that a publish went to a congested session.
    pub(crate) fn pressed_by(&mut self, session: Arc<Session>) {
        if !self.pressure.iter().any(|p| Arc::ptr_eq(p, &session)) {
            self.pressure.push(session);
        }
    }

    /// Whether reading pauses: a session the publishes went to is still congested. Sets up
    /// the wait for the first of them to drain.
    pub(crate) fn paused(&mut self) -> bool {
        self.pressure.retain(|s| s.is_congested());
        let Some(first) = self.pressure.first() else {
            self.drained_wait = None;
            return false;
        };
        if self
            .drained_wait
            .as_ref()
            .is_none_or(|(id, _)| *id != first.id)
        {
            let waiting = first.clone();
            let wait: Wait = Box::pin(async move { waiting.drained().await });
            self.drained_wait = Some((first.id, wait));
        }
        true
    }

    /// Ready when the congested session the pause waits for drained; pending when there is
    /// none.
    pub(crate) fn poll_drained(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some((_, wait)) = self.drained_wait.as_mut() else {
            return Poll::Pending;
        };
        if wait.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.drained_wait = None;
        Poll::Ready(())
    }

    /// The pause ran out: the sessions still congested, no longer waited for.
    pub(crate) fn give_up(&mut self) -> std::vec::Drain<'_, Arc<Session>> {
        self.drained_wait = None;
        self.pressure.drain(..)
    }
}
