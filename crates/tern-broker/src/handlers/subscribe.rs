//! SUBSCRIBE: validate each filter, record it in the session and the index, send SUBACK, then
//! the retained messages it asks for.

use std::sync::Arc;

use bytestring::ByteString;
use smallvec::SmallVec;
use tern_codec::{
    AckProperties, Packet, ReasonCode, RetainHandling, SubAck, Subscribe, SubscriptionOptions,
};

use crate::close::CloseReason;
use crate::connection::{Connection, owns};
use crate::message::{Delivery, Micros};
use crate::session::{Session, Subscription};

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
        let now = self.broker.clock.now();
        let mut reasons = Vec::with_capacity(s.filters.len());
        let mut retained = Vec::new();
        for (filter, options) in s.filters {
            match self.subscribe_one(&session, filter, options, sub_id, now, &mut retained) {
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

    fn subscribe_one(
        &mut self,
        session: &Arc<Session>,
        filter: ByteString,
        options: SubscriptionOptions,
        sub_id: Option<u32>,
        now: Micros,
        retained: &mut Vec<Delivery>,
    ) -> Result<ReasonCode, Refusal> {
        let (share_group, topic_filter) =
            split_shared(&filter).ok_or(Refusal::Code(ReasonCode::TOPIC_FILTER_INVALID))?;
        if tern_topic::validate_topic_filter(&topic_filter).is_err() {
            return Err(Refusal::Code(ReasonCode::TOPIC_FILTER_INVALID));
        }
        if share_group.is_some() && options.no_local {
            return Err(Refusal::Close(CloseReason::protocol(
                "MQTT-3.8.3-4",
                "No Local on a shared subscription",
            )));
        }
        let granted = options.qos.min(self.broker.config.max_qos);
        let sub = Subscription {
            filter: filter.clone(),
            topic_filter,
            share_group,
            options: SubscriptionOptions {
                qos: granted,
                ..options
            },
            id: sub_id,
        };
        let is_new = {
            let mut st = session.lock();
            if !owns(&st, self.id) {
                return Err(Refusal::Close(CloseReason::SessionTakenOver));
            }
            if !st.subscriptions.contains_key(&filter)
                && st.subscriptions.len() >= self.broker.config.max_subscriptions_per_session
            {
                return Err(Refusal::Code(ReasonCode::QUOTA_EXCEEDED));
            }
            st.subscriptions.insert(filter, sub.clone()).is_none()
        };
        self.broker.index(session, &sub);

        // Retained messages: never for shared subscriptions (MQTT 5 4.8.2), else as
        // Retain Handling says ([MQTT-3.3.1-9], [MQTT-3.3.1-10], [MQTT-3.3.1-11]).
        let send_retained = sub.share_group.is_none()
            && match options.retain_handling {
                RetainHandling::SendAtSubscribe => true,
                RetainHandling::SendIfNew => is_new,
                RetainHandling::DoNotSend => false,
            };
        if send_retained {
            let ids: SmallVec<[u32; 2]> = sub_id.into_iter().collect();
            for msg in self
                .broker
                .retained_matching(session.key.cid, &sub.topic_filter, now)
            {
                let qos = msg.qos.min(granted);
                retained.push(Delivery {
                    msg,
                    qos,
                    retain: true,
                    sub_ids: ids.clone(),
                });
            }
        }
        Ok(ReasonCode(granted as u8))
    }
}

/// Splits `$share/<group>/<filter>` into its group and filter; `None` if the shared form is
/// malformed.
fn split_shared(filter: &ByteString) -> Option<(Option<ByteString>, ByteString)> {
    match tern_topic::parse_shared(filter) {
        Ok(None) => Some((None, filter.clone())),
        Ok(Some((spec, inner))) => {
            Some((Some(ByteString::from(spec.group)), ByteString::from(inner)))
        }
        Err(_) => None,
    }
}
