//! One subscribe path. Whoever adds a subscription to a session (a client's SUBSCRIBE, the REST
//! API's `POST /mqtt/sessions/{sel}/subscriptions`) goes through [`Broker::subscribe`], and the
//! re-check of a session's subscriptions against a token's rights ([`Broker::apply_rights`])
//! through the same ACL decision ([`Subscription::authorize`]), so ACLs and quotas for
//! subscriptions are enforced in one place (docs/flespi.md#subscribing-and-filter,
//! docs/flespi.md#connecting-and-authorization).

use std::sync::Arc;

use tern_codec::ReasonCode;
use tern_store::Op;

use crate::accounts::{Rights, SubscribeRight};
use crate::broker::Broker;
use crate::connection::owns;
use crate::session::{Session, Subscription};

/// Who adds a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subscriber {
    /// A client's SUBSCRIBE on connection `id`, which must still own the session.
    Connection(u64),
    /// The REST API, on a live or offline session.
    Admin,
}

/// Why [`Broker::subscribe`] refused a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    /// The token may not subscribe to anything the filter matches (0x87).
    #[error("the token may not subscribe to this filter")]
    NotAuthorized,
    /// `session.max_subscriptions`, or the account's `mqtt_subscriptions` quota (0x97).
    #[error("subscriptions quota exceeded")]
    QuotaExceeded,
    /// A stored session's subscription is a store op, and the store does not accept work now
    /// (0x97).
    #[error("the store does not accept changes")]
    StoreRefusing,
    /// The connection no longer owns the session (taken over).
    #[error("the session was taken over")]
    TakenOver,
}

impl SubscribeError {
    /// The SUBACK reason code of the refusal (`TakenOver` closes the connection instead).
    pub fn reason_code(self) -> ReasonCode {
        match self {
            SubscribeError::NotAuthorized => ReasonCode::NOT_AUTHORIZED,
            SubscribeError::QuotaExceeded
            | SubscribeError::StoreRefusing
            | SubscribeError::TakenOver => ReasonCode::QUOTA_EXCEEDED,
        }
    }
}

impl Subscription {
    /// Token rights (docs/flespi.md#connecting-and-authorization, ACL tokens): whether `rights`
    /// allow this subscription at all. One that only overlaps the grants is restricted to them;
    /// one that no longer needs a restriction has it lifted.
    pub fn authorize(&mut self, rights: &Rights) -> bool {
        match rights.subscribe(&self.topic_filter) {
            SubscribeRight::All => self.unrestrict(),
            SubscribeRight::Restricted(rules) => self.restrict(rules),
            SubscribeRight::Denied => return false,
        }
        true
    }
}

impl Broker {
    /// Adds (or replaces) a subscription of `session`: the token's rights (`None`: a client
    /// without a token, which may subscribe to anything), the per-session limit and the
    /// account's (hierarchical) quota for a new one, the store's state for a stored session;
    /// then the session, the store and the index. Returns whether it is new; `Ok(false)` also
    /// when the REST API adds to a session that has ended. Retained messages are the caller's.
    pub fn subscribe(
        &self,
        session: &Arc<Session>,
        mut sub: Subscription,
        rights: Option<&Rights>,
        by: Subscriber,
    ) -> Result<(bool, Subscription), SubscribeError> {
        if let Some(rights) = rights
            && !sub.authorize(rights)
        {
            return Err(SubscribeError::NotAuthorized);
        }
        let is_new = {
            let mut st = session.lock();
            match by {
                Subscriber::Connection(id) if !owns(&st, id) => {
                    return Err(SubscribeError::TakenOver);
                }
                Subscriber::Admin if st.ended => return Ok((false, sub)),
                _ => {}
            }
            let new = !st.subscriptions.contains_key(&sub.key);
            if new
                && (st.subscriptions.len() >= self.config.max_subscriptions_per_session
                    || self.subscription_quota_full(session.key.cid))
            {
                return Err(SubscribeError::QuotaExceeded);
            }
            // A stored session's subscription is a store op: none while the store cannot
            // write.
            if (st.expiry_interval > 0 || st.stored) && !self.store.accepting() {
                self.store.note_refused();
                return Err(SubscribeError::StoreRefusing);
            }
            self.record_subscription(session, &mut st, &sub)
        };
        self.index(session, &sub);
        Ok((is_new, sub))
    }

    /// Makes a session's subscriptions follow `rights` (a resumed session under another token,
    /// a token's changed rights at restore): restrictions are set or lifted, and subscriptions
    /// the rights no longer allow are removed.
    pub(crate) fn apply_rights(&self, session: &Arc<Session>, rights: &Rights) {
        let mut changed = Vec::new();
        let mut removed = Vec::new();
        {
            let mut st = session.lock();
            let stored = st.stored;
            st.subscriptions.retain(|key, sub| {
                let before = sub.conditions.clone();
                if !sub.authorize(rights) {
                    if stored {
                        self.store.submit(Op::DelSubscription {
                            key: session.key.clone(),
                            filter: key.to_stored(),
                        });
                        self.session_dirty(&session.key);
                    }
                    removed.push(sub.clone());
                    return false;
                }
                let same = match (&before, &sub.conditions) {
                    (None, None) => true,
                    (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                    _ => false,
                };
                if !same {
                    changed.push(sub.clone());
                }
                true
            });
        }
        self.unindex(session, &removed);
        for sub in &changed {
            self.index(session, sub);
        }
    }
}
