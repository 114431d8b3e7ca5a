//! SUBSCRIBE: take each subscription string apart (`$share`, `$filter`, the `cid` property),
//! record it in the session and the index, send SUBACK, then the retained messages it asks
//! for.

use std::sync::Arc;

use bytestring::ByteString;
use smallvec::SmallVec;
use tern_codec::{
    AckProperties, Packet, ReasonCode, RetainHandling, SubAck, Subscribe, SubscriptionOptions,
};

use crate::accounts::SubscribeRight;
use crate::close::CloseReason;
use crate::connection::{Connection, owns};
use crate::filter::LazyPayload;
use crate::message::{Cid, Delivery, Micros};
use crate::session::{Session, Subscription};
use crate::topics::CID_PROPERTY;
use crate::violation::Violation;

/// Why one filter of a SUBSCRIBE failed.
enum Refusal {
    /// Refuse this filter only; SUBACK carries the code.
    Code(ReasonCode),
    /// A protocol violation that closes the connection.
    Close(CloseReason),
}

impl Connection {
    pub(crate) fn handle_subscribe(&mut self, s: Subscribe) -> Result<(), CloseReason> {
        let Some(session) = self.session.clone() else {
            return Ok(());
        };
        let sub_id = s.properties.subscription_identifier;
        // Spec §5: a `cid` user property restricts the subscription to that publisher account.
        let cid_prop = match s
            .properties
            .user_properties
            .iter()
            .find(|(k, _)| k == CID_PROPERTY)
        {
            Some((_, v)) => match v.parse::<Cid>() {
                Ok(cid) => Some(cid),
                Err(_) => {
                    let reasons = vec![ReasonCode::TOPIC_FILTER_INVALID; s.filters.len()];
                    self.send(&Packet::SubAck(SubAck {
                        packet_id: s.packet_id,
                        properties: AckProperties::default(),
                        reasons,
                    }));
                    return Ok(());
                }
            },
            None => None,
        };
        let now = self.broker.clock.now();
        let mut reasons = Vec::with_capacity(s.filters.len());
        let mut retained = Vec::new();
        for (filter, options) in s.filters {
            match self.subscribe_one(
                &session,
                &filter,
                cid_prop,
                options,
                sub_id,
                now,
                &mut retained,
            ) {
                Ok(code) => reasons.push(code),
                Err(Refusal::Code(code)) => reasons.push(code),
                Err(Refusal::Close(reason)) => return Err(reason),
            }
        }
        self.send(&Packet::SubAck(SubAck {
            packet_id: s.packet_id,
            properties: AckProperties::default(),
            reasons,
        }));
        for delivery in retained {
            self.broker.push(&session, delivery);
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn subscribe_one(
        &mut self,
        session: &Arc<Session>,
        filter: &ByteString,
        cid_prop: Option<Cid>,
        options: SubscriptionOptions,
        sub_id: Option<u32>,
        now: Micros,
        retained: &mut Vec<Delivery>,
    ) -> Result<ReasonCode, Refusal> {
        let granted = options.qos.min(self.broker.config.max_qos);
        let identity = Subscription::identity(filter, cid_prop);
        let mut sub = Subscription::parse(
            identity,
            SubscriptionOptions {
                qos: granted,
                ..options
            },
            sub_id,
        )
        .map_err(|err| {
            tracing::debug!(conn = self.id, %filter, %err, "subscription refused");
            Refusal::Code(ReasonCode::TOPIC_FILTER_INVALID)
        })?;
        // Token rights (docs/flespi.md#connecting-and-authorization, ACL tokens): refuse a filter
        // outside every grant; restrict one that only overlaps them.
        let rights = self.principal.as_ref().map_or(SubscribeRight::All, |p| {
            p.rights.subscribe(&sub.topic_filter)
        });
        match rights {
            SubscribeRight::All => {}
            SubscribeRight::Restricted(rules) => sub.restrict(rules),
            SubscribeRight::Denied => return Err(Refusal::Code(ReasonCode::NOT_AUTHORIZED)),
        }
        if sub.share_group.is_some() && options.no_local {
            return Err(Refusal::Close(Violation::NoLocalOnShared.into()));
        }
        let is_new = {
            let mut st = session.lock();
            if !owns(&st, self.id) {
                return Err(Refusal::Close(CloseReason::SessionTakenOver));
            }
            // `session.max_subscriptions` per session, and the account's (hierarchical)
            // `mqtt_subscriptions` quota.
            let new = !st.subscriptions.contains_key(&sub.filter);
            if new
                && (st.subscriptions.len() >= self.broker.config.max_subscriptions_per_session
                    || self.broker.subscription_quota_full(session.key.cid))
            {
                return Err(Refusal::Code(ReasonCode::QUOTA_EXCEEDED));
            }
            // A stored session's subscription is a store op: none while the store cannot
            // write (v5 0x97, 3.x 0x80).
            if (st.expiry_interval > 0 || st.stored) && !self.broker.store.accepting() {
                self.broker.store.note_refused();
                return Err(Refusal::Code(ReasonCode::QUOTA_EXCEEDED));
            }
            self.broker.record_subscription(session, &mut st, &sub)
        };
        self.broker.index(session, &sub);

        // Retained messages: never for shared subscriptions (MQTT 5 4.8.2), else as Retain
        // Handling says ([MQTT-3.3.1-9], [MQTT-3.3.1-10], [MQTT-3.3.1-11]); they pass the same
        // `$filter` conditions as live messages.
        let send_retained = sub.share_group.is_none()
            && match options.retain_handling {
                RetainHandling::SendAtSubscribe => true,
                RetainHandling::SendIfNew => is_new,
                RetainHandling::DoNotSend => false,
            };
        if send_retained {
            let ids: SmallVec<[u32; 2]> = sub_id.into_iter().collect();
            let now_secs = now as f64 / 1e6;
            for msg in self
                .broker
                .retained_for_subscriber(session.key.cid, &sub.topic_filter, now)
            {
                if let Some(c) = &sub.conditions
                    && !c.matches(&msg, &LazyPayload::new(&msg.payload), now_secs)
                {
                    continue;
                }
                let qos = msg.qos.min(granted);
                retained.push(Delivery::new(msg, qos, true, ids.clone()));
            }
        }
        Ok(ReasonCode(granted as u8))
    }
}

impl Connection {
    /// Re-checks a resumed session's subscriptions against the rights of the token that
    /// connected now (it may not be the token that subscribed).
    pub(crate) fn reapply_rights(&self, session: &Arc<Session>) {
        if let Some(principal) = &self.principal {
            self.broker.apply_rights(session, &principal.rights);
        }
    }
}
