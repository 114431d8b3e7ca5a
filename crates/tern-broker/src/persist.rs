//! How session state becomes store ops. Every op about a session is submitted while that
//! session's lock is held, so the store sees changes in the order they happened.

use tern_store::{Op, SessionRecord, SubscriptionRecord, Ticket};

use crate::broker::Broker;
use crate::session::{Session, SessionState, Subscription};

impl Broker {
    /// Records a subscription in the session (and the store); the caller holds the session's
    /// lock and indexes it after releasing it. Returns whether it is new.
    pub(crate) fn record_subscription(
        &self,
        session: &Session,
        st: &mut SessionState,
        sub: &Subscription,
    ) -> bool {
        if st.stored {
            self.store.submit(Op::PutSubscription {
                key: session.key.clone(),
                sub: sub_record(sub),
            });
            self.session_dirty(&session.key);
        }
        st.subscriptions.insert(sub.clone()).is_none()
    }

    /// Writes the session's record if it persists (expiry interval above 0), marking it
    /// stored. A session whose expiry dropped to 0 stays stored until it ends (and is deleted).
    pub(crate) fn persist_session(&self, session: &Session, st: &mut SessionState) -> Ticket {
        if !self.store.enabled() || st.ended || (st.expiry_interval == 0 && !st.stored) {
            if st.will.is_some() && !st.ended {
                // Cluster mode: a will outlives this node in the cluster's record.
                self.session_dirty(&session.key);
            }
            return 0;
        }
        let first = !st.stored;
        st.stored = true;
        let mut ticket = self.store.submit(Op::PutSession {
            record: record(session, st),
        });
        self.session_dirty(&session.key);
        if first {
            // A session that becomes stored brings along what it already has.
            for sub in st.subscriptions.values() {
                ticket = self.store.submit(Op::PutSubscription {
                    key: session.key.clone(),
                    sub: sub_record(sub),
                });
            }
            for id in st.incoming_qos2.iter() {
                ticket = self.store.submit(Op::PutIncoming {
                    key: session.key.clone(),
                    packet_id: *id,
                });
            }
        }
        ticket
    }
}

/// The stored record of a session.
pub(crate) fn record(session: &Session, st: &SessionState) -> SessionRecord {
    SessionRecord {
        key: session.key.clone(),
        expiry_interval: st.expiry_interval,
        disconnected_at: st.disconnected_at,
        will: st.will.as_ref().map(|w| (w.message.clone(), w.delay)),
        created: st.created,
        token_id: st.token_id,
    }
}

/// The stored form of a subscription (its key as the store keeps it, `SubscriptionKey::to_stored`).
pub(crate) fn sub_record(sub: &Subscription) -> SubscriptionRecord {
    SubscriptionRecord {
        filter: sub.key.to_stored(),
        options: sub.options,
        id: sub.id,
    }
}
