//! What the REST API (and the CLI) may do to sessions, subscriptions and retained messages:
//! list, remove, revoke, publish. What they show of a session is its view (`views.rs`).

use std::sync::Arc;

use bytes::Bytes;
use bytestring::ByteString;
use smallvec::SmallVec;
use tern_codec::{PublishProperties, QoS, SubscriptionOptions};
use tern_store::Op;

use crate::accounts::Rights;
use crate::broker::{Broker, Routed};
use crate::close::CloseReason;
use crate::message::{Cid, Delivery, Message};
use crate::session::{Session, Subscription, SubscriptionKey};
use crate::subscriptions::{SubscribeError, Subscriber};

impl Broker {
    /// Installs the REST bridge (once; later calls are ignored).
    pub fn set_rest_bridge(&self, bridge: Arc<dyn crate::bridge::RestBridge>) {
        let _ = self.rest.set(bridge);
    }

    pub(crate) fn rest_bridge(&self) -> Option<&Arc<dyn crate::bridge::RestBridge>> {
        self.rest.get()
    }

    /// Sessions of the given accounts.
    pub fn sessions_of(&self, cids: &[Cid]) -> Vec<Arc<Session>> {
        let mut v: Vec<Arc<Session>> = self
            .sessions()
            .into_iter()
            .filter(|s| cids.contains(&s.key.cid))
            .collect();
        v.sort_by_key(|s| s.public_id());
        v
    }

    /// Removes a session, disconnecting it first if connected (DISCONNECT 0x98 in v5).
    pub fn remove_session(&self, session: &Arc<Session>) {
        let kick = session.lock().conn.as_ref().map(|l| l.kick.clone());
        self.end_session(session);
        if let Some(kick) = kick {
            kick.kick(CloseReason::AdministrativeAction);
        }
    }

    /// Disconnects every live connection that authorized with token `id` (DISCONNECT 0x87 in
    /// v5): the token was deleted, disabled or its rights changed. Sessions stay; a reconnect
    /// is checked against the token as it is now. Returns how many were disconnected.
    pub fn revoke_token(&self, id: u64) -> usize {
        self.revoke(|_, st| st.token_id == Some(id))
    }

    /// Disconnects every live connection that authorized with one of the tokens `ids` (DISCONNECT
    /// 0x87 in v5), in one pass over the sessions. Returns how many were disconnected.
    pub fn revoke_tokens(&self, ids: &std::collections::HashSet<u64>) -> usize {
        self.revoke(|_, st| st.token_id.is_some_and(|id| ids.contains(&id)))
    }

    /// Disconnects every live connection of the given (disabled) accounts (DISCONNECT 0x87 in
    /// v5). Returns how many were disconnected.
    pub fn revoke_accounts(&self, cids: &[Cid]) -> usize {
        self.revoke(|session, _| cids.contains(&session.key.cid))
    }

    fn revoke(&self, pick: impl Fn(&Session, &crate::session::SessionState) -> bool) -> usize {
        let mut kicks = Vec::new();
        for session in self.sessions() {
            let st = session.lock();
            if let Some(link) = st.conn.as_ref()
                && pick(&session, &st)
            {
                kicks.push(link.kick.clone());
            }
        }
        for kick in &kicks {
            kick.kick(CloseReason::AccessRevoked);
        }
        kicks.len()
    }

    /// Adds (or replaces) a subscription of a live or offline session, as if it subscribed
    /// ([`Broker::subscribe`]: the caller's rights, the per-session and account quota). No
    /// retained messages are sent. Returns whether it is new, and the subscription as recorded
    /// (restricted to the caller's grants); `Ok(false, _)` also when the session ended.
    pub fn add_subscription(
        &self,
        session: &Arc<Session>,
        sub: Subscription,
        rights: &Rights,
    ) -> Result<(bool, Subscription), SubscribeError> {
        self.subscribe(session, sub, Some(rights), Subscriber::Admin)
    }

    /// Removes a subscription of a session by its identity; false if there was none.
    pub fn remove_subscription(&self, session: &Arc<Session>, identity: &SubscriptionKey) -> bool {
        let removed = {
            let mut st = session.lock();
            let removed = st.subscriptions.remove(identity);
            if removed.is_some() && st.stored {
                self.store.submit(Op::DelSubscription {
                    key: session.key.clone(),
                    filter: identity.to_stored(),
                });
                self.session_dirty(&session.key);
            }
            removed
        };
        match removed {
            Some(sub) => {
                self.unindex(session, std::slice::from_ref(&sub));
                true
            }
            None => false,
        }
    }

    /// Retained messages of the given accounts whose topic matches `filter`.
    pub fn retained_of(&self, cids: &[Cid], filter: &str) -> Vec<Arc<Message>> {
        let now = self.clock.now();
        let mut out = Vec::new();
        for cid in cids {
            out.extend(self.retained_matching(*cid, filter, now));
        }
        out.sort_by(|a, b| (a.cid, &a.topic).cmp(&(b.cid, &b.topic)));
        out
    }

    /// Deletes one retained message; false if there was none.
    pub fn delete_retained(&self, cid: Cid, topic: &str) -> bool {
        let Some(ns) = self.namespace(cid) else {
            return false;
        };
        let removed = ns.retained.write().remove(topic);
        match removed {
            Some(old) => {
                crate::metrics::Metrics::gauge(&self.metrics.retained, -1);
                ns.count(
                    |u| &u.retained_bytes,
                    -(crate::broker::retained_cost(&old) as i64),
                );
                self.store.submit(Op::DelRetained {
                    cid,
                    topic: ByteString::from(topic),
                });
                true
            }
            None => false,
        }
    }

    /// Publishes a message as account `cid` (the REST API's `POST /mqtt/messages`).
    pub fn publish_as(
        &self,
        cid: Cid,
        topic: ByteString,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        mut properties: PublishProperties,
    ) -> Routed {
        self.strip_forged_stamps(&mut properties);
        let mut msg = self.message(cid, topic, payload, qos, retain);
        msg.expires_at = properties
            .message_expiry_interval
            .map(|s| msg.timestamp + u64::from(s) * 1_000_000);
        msg.properties = properties.into();
        self.publish(Arc::new(msg))
    }

    /// Delivers a message to one session only, bypassing subscriptions (REST bridge responses
    /// on the request topic, docs/flespi.md#rest-over-mqtt).
    pub fn deliver_to(&self, session: &Session, msg: Message, qos: QoS) -> bool {
        let msg = Arc::new(msg);
        if msg.is_expired(self.clock.now()) {
            return false;
        }
        self.push(session, Delivery::new(msg, qos, false, SmallVec::new()))
            .0
    }

    /// Removes everything of deleted accounts: their sessions (disconnecting live ones) and
    /// retained messages.
    pub fn purge_accounts(&self, cids: &[Cid]) {
        for session in self.sessions_of(cids) {
            self.remove_session(&session);
        }
        for cid in cids {
            if let Some(ns) = self.namespace(*cid) {
                let topics: Vec<ByteString> = {
                    let tree = ns.retained.read();
                    tree.iter().map(|(t, _)| ByteString::from(t)).collect()
                };
                for topic in topics {
                    self.delete_retained(*cid, &topic);
                }
            }
        }
        self.drop_namespaces(cids);
    }
}

/// A subscription made by the REST API: parsed like a client's.
pub fn parse_subscription(
    topic: &str,
    cid_prop: Option<Cid>,
    options: SubscriptionOptions,
    id: Option<u32>,
) -> Result<Subscription, crate::filter::FilterError> {
    Subscription::parse(
        SubscriptionKey::new(ByteString::from(topic), cid_prop),
        options,
        id,
    )
}
