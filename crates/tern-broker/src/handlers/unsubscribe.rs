//! UNSUBSCRIBE: remove each subscription by its full string, answer UNSUBACK.

use tern_codec::{AckProperties, Packet, ReasonCode, UnsubAck, Unsubscribe};
use tern_store::Op;

use crate::close::CloseReason;
use crate::connection::{Connection, owns};
use crate::message::Cid;
use crate::session::SubscriptionKey;
use crate::topics::CID_PROPERTY;

impl Connection {
    pub(crate) fn handle_unsubscribe(&mut self, u: Unsubscribe) -> Result<(), CloseReason> {
        let Some(session) = self.session.clone() else {
            return Ok(());
        };
        let cid_prop = u
            .properties
            .user_properties
            .iter()
            .find(|(k, _)| k == CID_PROPERTY)
            .and_then(|(_, v)| v.parse::<Cid>().ok());
        let mut reasons = Vec::with_capacity(u.filters.len());
        let mut removed = Vec::new();
        {
            let mut st = session.lock();
            if !owns(&st, self.id) {
                return Err(CloseReason::SessionTakenOver);
            }
            for filter in &u.filters {
                let identity = SubscriptionKey::new(filter.clone(), cid_prop);
                let before = removed.len();
                if let Some(sub) = st.subscriptions.remove(&identity) {
                    removed.push(sub);
                } else if cid_prop.is_none() {
                    // Without the `cid` property, the string removes its variants with any `cid`.
                    let variants: Vec<_> = st
                        .subscriptions
                        .keys()
                        .filter(|k| k.filter == *filter)
                        .cloned()
                        .collect();
                    for k in variants {
                        if let Some(sub) = st.subscriptions.remove(&k) {
                            removed.push(sub);
                        }
                    }
                }
                if st.stored {
                    self.broker.session_dirty(&session.key);
                    for sub in &removed[before..] {
                        self.broker.store.submit(Op::DelSubscription {
                            key: session.key.clone(),
                            filter: sub.key.to_stored(),
                        });
                    }
                }
                reasons.push(if removed.len() > before {
                    ReasonCode::SUCCESS
                } else {
                    ReasonCode::NO_SUBSCRIPTION_EXISTED
                });
            }
        }
        self.broker.unindex(&session, &removed);
        self.send(&Packet::UnsubAck(UnsubAck {
            packet_id: u.packet_id,
            properties: AckProperties::default(),
            reasons,
        }));
        Ok(())
    }
}
