//! SUBSCRIBE: take each subscription string apart (`$share`, `$filter`, the `cid` property),
//! record it in the session and the index, send SUBACK, then the retained messages it asks
//! for.

use std::sync::Arc;

use bytestring::ByteString;
use smallvec::SmallVec;
use tern_codec::{
    AckProperties, Packet, ReasonCode, RetainHandling, SubAck, Subscribe, SubscriptionOptions,
};

use crate::close::CloseReason;
use crate::connection::Connection;
use crate::filter::LazyPayload;
use crate::message::{Cid, Delivery, Micros};
use crate::session::{Session, Subscription, SubscriptionKey};
use crate::subscriptions::{SubscribeError, Subscriber};
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
        let identity = SubscriptionKey::new(filter.clone(), cid_prop);
        let sub = Subscription::parse(
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
        if sub.share_group.is_some() && options.no_local {
            return Err(Refusal::Close(Violation::NoLocalOnShared.into()));
        }
        // Token rights, quotas, the store: one path for every subscriber.
        let rights = self.principal.as_ref().map(|p| &p.rights);
        let (is_new, sub) = self
            .broker
            .subscribe(session, sub, rights, Subscriber::Connection(self.id))
            .map_err(|err| match err {
                SubscribeError::TakenOver => Refusal::Close(CloseReason::SessionTakenOver),
                err => Refusal::Code(err.reason_code()),
            })?;

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
