//! PUBLISH from a client: resolve the topic alias, validate, route, acknowledge.

use std::sync::Arc;

use tern_codec::{AckProperties, Packet, PubAck, Publish, QoS, ReasonCode};

use tern_store::{Op, Ticket};

use crate::auth::Principal;
use crate::bridge::RestCall;
use crate::broker::Broker;
use crate::close::CloseReason;
use crate::connection::{Connection, owns};
use crate::fabric::FabricTicket;
use crate::message::{Cid, Message};
use crate::metrics::Metrics;
use crate::session::Session;
use crate::topics;
use crate::violation::Violation;

/// Whether a PUBLISH of this QoS is acknowledged only once durable.
fn qos_stored(qos: QoS) -> bool {
    qos != QoS::AtMostOnce
}

/// What a PUBLISH comes to, decided by [`Connection::plan_publish`] before it is routed.
enum PublishPlan {
    /// Nothing more to do (answered already, or no session).
    Done,
    /// Refused without closing: v5 QoS 1/2 get the reason in PUBACK/PUBREC.
    Reject(ReasonCode),
    /// A REST-over-MQTT request for the bridge (docs/flespi.md#rest-over-mqtt).
    Rest(Arc<dyn crate::bridge::RestBridge>, Principal),
    /// Routed as account `cid`.
    Route(Cid),
}

impl Connection {
    pub(crate) fn handle_publish(&mut self, mut p: Publish) -> Result<(), CloseReason> {
        let broker = self.broker.clone();
        Metrics::inc(&broker.metrics.messages_in);
        Metrics::add(&broker.metrics.bytes_in, p.payload.len() as u64);
        let Some(session) = self.session.clone() else {
            // Checked as ever, but there is nobody to publish as.
            self.resolve_topic_alias(&mut p)?;
            return Ok(());
        };
        match self.plan_publish(&broker, &mut p, &session)? {
            PublishPlan::Done => Ok(()),
            PublishPlan::Reject(reason) => self.reject_publish(&p, reason),
            PublishPlan::Rest(bridge, principal) => {
                let (qos, pid) = (p.qos, p.packet_id);
                bridge.call(RestCall {
                    principal,
                    session: session.clone(),
                    topic: p.topic,
                    payload: p.payload,
                    properties: p.properties,
                    v5: self.protocol.is_v5(),
                    max_packet_size: self.limits.maximum_packet_size,
                });
                self.acknowledge(&session, qos, pid, 0, 0);
                Ok(())
            }
            PublishPlan::Route(cid) => {
                self.route_publish(&broker, p, &session, cid);
                Ok(())
            }
        }
    }

    /// Every check of a PUBLISH: the protocol's (a violation closes the connection), the
    /// inbound window, then the ones that refuse only this message. Resolves the topic alias and
    /// counts the message on the session; answers a re-sent QoS 2 PUBLISH itself.
    fn plan_publish(
        &mut self,
        broker: &Broker,
        p: &mut Publish,
        session: &Arc<Session>,
    ) -> Result<PublishPlan, CloseReason> {
        self.resolve_topic_alias(p)?;
        if !p.properties.subscription_identifiers.is_empty() {
            return Err(Violation::SubscriptionIdFromClient.into());
        }
        if let Some(rt) = &p.properties.response_topic
            && tern_topic::validate_topic_name(rt).is_err()
        {
            return Err(Violation::ResponseTopicInvalid.into());
        }
        if p.retain && !broker.config.retain_available {
            return Err(Violation::RetainNotSupported.into());
        }

        if p.qos != QoS::AtMostOnce {
            let pid = p.packet_id.unwrap_or(0);
            let mut st = session.lock();
            if !owns(&st, self.id) {
                return Err(CloseReason::SessionTakenOver);
            }
            if p.qos == QoS::ExactlyOnce && st.incoming_qos2.contains(&pid) {
                // A re-sent QoS 2 PUBLISH whose PUBREL has not arrived: acknowledge again, do not
                // deliver twice.
                drop(st);
                self.send_after(0, Packet::PubRec(PubAck::new(pid)));
                return Ok(PublishPlan::Done);
            }
            // Unacknowledged inbound QoS 1/2 messages: QoS 2 awaiting PUBREL, and PUBACKs held
            // until the store has the message.
            if st.incoming_qos2.len() + self.held_pubacks()
                >= usize::from(broker.config.receive_maximum)
            {
                return Err(CloseReason::ReceiveMaximumExceeded);
            }
            st.stats.published += 1;
        } else {
            session.lock().stats.published += 1;
        }

        // A payload that says it is UTF-8 must be (MQTT 5 3.3.2.3.2).
        if p.properties.payload_format_indicator == Some(1)
            && std::str::from_utf8(&p.payload).is_err()
        {
            return Ok(PublishPlan::Reject(ReasonCode::PAYLOAD_FORMAT_INVALID));
        }
        let Some(principal) = self.principal.as_deref() else {
            return Ok(PublishPlan::Done);
        };
        // REST over MQTT (docs/flespi.md#rest-over-mqtt): the bridge answers
        // `flespi/rest/<method>/<uri>`.
        if topics::is_rest_request(&p.topic)
            && let Some(bridge) = broker.rest_bridge()
        {
            // The answer goes only where the requester may publish: nothing is executed for a
            // Response Topic outside its grants or under `flespi/` (but the request topic).
            if self.protocol.is_v5()
                && let Some(rt) = &p.properties.response_topic
                && *rt != p.topic
                && (topics::is_reserved(rt) || !principal.rights.can_publish(rt))
            {
                return Ok(PublishPlan::Reject(ReasonCode::NOT_AUTHORIZED));
            }
            return Ok(PublishPlan::Rest(bridge.clone(), principal.clone()));
        }
        // `flespi/` is reserved for the MQTT API, ACL grants, the retained quota
        // (docs/flespi.md#publishing).
        let cid = principal.cid;
        if let Err(reason) =
            broker.check_publish(cid, &principal.rights, &p.topic, p.retain, p.payload.len())
        {
            return Ok(PublishPlan::Reject(reason));
        }
        // A store that cannot write (disk full) or is far behind takes no new work: a QoS 1/2
        // message would never be acknowledged, a retained one never kept. v5 is told 0x97;
        // 3.x cannot be told, so a QoS 1/2 publisher is closed rather than left waiting, and a
        // retained QoS 0 message is dropped.
        if (qos_stored(p.qos) || p.retain) && !broker.store.accepting() {
            broker.store.note_refused();
            if !self.protocol.is_v5() && qos_stored(p.qos) {
                Metrics::inc(&broker.metrics.publishes_rejected);
                return Err(CloseReason::StoreUnavailable);
            }
            return Ok(PublishPlan::Reject(ReasonCode::QUOTA_EXCEEDED));
        }
        Ok(PublishPlan::Route(cid))
    }

    /// Stamps an accepted PUBLISH, routes it, and acknowledges it once durable.
    fn route_publish(&mut self, broker: &Broker, mut p: Publish, session: &Arc<Session>, cid: Cid) {
        broker.strip_forged_stamps(&mut p.properties);
        let timestamp = broker.clock.stamp();
        let expires_at = p
            .properties
            .message_expiry_interval
            .map(|s| timestamp + u64::from(s) * 1_000_000);
        let qos = p.qos;
        let pid = p.packet_id;
        let msg = Message {
            topic: p.topic,
            payload: p.payload,
            qos: qos.min(broker.config.max_qos),
            retain: p.retain,
            properties: p.properties.into(),
            cid,
            timestamp,
            expires_at,
            origin: Some(session.id),
        };
        let routed = broker.publish(Arc::new(msg));
        self.acknowledge(session, qos, pid, routed.ticket, routed.fabric);
        for s in routed.pressure {
            self.pressed_by(s);
        }
    }

    /// Acknowledges an accepted PUBLISH once every stored copy is durable (`ticket`) and, in
    /// cluster mode, the cluster has it (`fabric`): never lose an acknowledged message.
    fn acknowledge(
        &mut self,
        session: &Arc<Session>,
        qos: QoS,
        pid: Option<u16>,
        ticket: Ticket,
        fabric: FabricTicket,
    ) {
        match (qos, pid) {
            (QoS::AtLeastOnce, Some(pid)) => {
                self.send_after_fabric(ticket, fabric, Packet::PubAck(PubAck::new(pid)))
            }
            (QoS::ExactlyOnce, Some(pid)) => {
                let mut ticket = ticket;
                {
                    let mut st = session.lock();
                    st.incoming_qos2.insert(pid);
                    if st.stored {
                        ticket = self.broker.store.submit(Op::PutIncoming {
                            key: session.key.clone(),
                            packet_id: pid,
                        });
                    }
                }
                self.send_after_fabric(ticket, fabric, Packet::PubRec(PubAck::new(pid)));
            }
            _ => {}
        }
    }

    /// Replaces a topic alias by its topic, or records a new alias (MQTT 5 3.3.2.3.4).
    fn resolve_topic_alias(&mut self, p: &mut Publish) -> Result<(), CloseReason> {
        let Some(alias) = p.properties.topic_alias.take() else {
            if p.topic.is_empty() {
                return Err(Violation::NoTopic.into());
            }
            return Ok(());
        };
        if alias == 0 || alias > self.broker.config.topic_alias_maximum {
            return Err(Violation::TopicAliasOutOfRange {
                alias,
                max: self.broker.config.topic_alias_maximum,
            }
            .into());
        }
        if p.topic.is_empty() {
            match self.aliases.as_ref().and_then(|a| a.incoming.get(&alias)) {
                Some(topic) => p.topic = topic.clone(),
                None => {
                    return Err(Violation::TopicAliasUnknown(alias).into());
                }
            }
        } else {
            self.aliases
                .get_or_insert_with(Box::default)
                .incoming
                .insert(alias, p.topic.clone());
        }
        Ok(())
    }

    /// Refuses one PUBLISH without closing: v5 QoS 1/2 get the reason code in PUBACK/PUBREC,
    /// everything else is dropped silently (docs/flespi.md#publishing).
    pub(crate) fn reject_publish(
        &mut self,
        p: &Publish,
        reason: ReasonCode,
    ) -> Result<(), CloseReason> {
        Metrics::inc(&self.broker.metrics.publishes_rejected);
        if let Some(session) = &self.session {
            session.lock().stats.rejected += 1;
        }
        if !self.protocol.is_v5() {
            // 3.x has no way to refuse: acknowledge so the client does not resend forever.
            match (p.qos, p.packet_id) {
                (QoS::AtLeastOnce, Some(pid)) => {
                    self.send_after(0, Packet::PubAck(PubAck::new(pid)))
                }
                (QoS::ExactlyOnce, Some(pid)) => {
                    self.send_after(0, Packet::PubRec(PubAck::new(pid)))
                }
                _ => {}
            }
            return Ok(());
        }
        let ack = |pid| PubAck {
            packet_id: pid,
            reason,
            properties: AckProperties::default(),
        };
        match (p.qos, p.packet_id) {
            (QoS::AtLeastOnce, Some(pid)) => self.send_after(0, Packet::PubAck(ack(pid))),
            (QoS::ExactlyOnce, Some(pid)) => self.send_after(0, Packet::PubRec(ack(pid))),
            _ => {}
        }
        Ok(())
    }
}
