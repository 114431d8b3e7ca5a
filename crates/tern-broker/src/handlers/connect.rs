//! CONNECT: identify the client, authenticate, take over or resume its session, answer CONNACK.

use std::sync::Arc;

use bytestring::ByteString;
use tern_codec::{ConnAck, ConnAckProperties, Connect, Packet, ProtocolVersion, QoS, ReasonCode};

use crate::auth::Credentials;
use crate::auth::Principal;
use crate::broker::Broker;
use crate::close::CloseReason;
use crate::connection::{ClientLimits, Connection};
use crate::message::Message;
use crate::session::{ConnLink, Origin, Session, SessionKey, WillSpec};
use crate::topics::session_event;

/// Outcome of attaching a connection to its session.
struct Attached {
    session: Arc<Session>,
    present: bool,
    /// A previous session replaced because of Clean Start: discard it.
    replaced: Option<Arc<Session>>,
    /// The will of a connection that was taken over, due now.
    will: Option<WillSpec>,
}

impl Connection {
    pub(crate) fn handle_connect(&mut self, connect: Box<Connect>) -> Result<(), CloseReason> {
        self.protocol = connect.protocol;
        let v5 = connect.protocol.is_v5();
        let config = &self.broker.config;

        if connect.properties.authentication_method.is_some() {
            // No enhanced authentication method is supported (MQTT 5 4.12).
            return self.refuse(ReasonCode::BAD_AUTHENTICATION_METHOD);
        }

        // Client identifier rules (docs/flespi.md#connecting-and-authorization, MQTT 3.1.3-6..9).
        // A copy: the session outlives the read buffer the CONNECT arrived in, which it would
        // otherwise keep alive.
        let mut client_id = ByteString::from(&*connect.client_id);
        let assigned = client_id.is_empty();
        if assigned {
            let may_assign = match connect.protocol {
                ProtocolVersion::V5 => true,
                ProtocolVersion::V311 => connect.clean_start,
                ProtocolVersion::V31 => false,
            };
            if !may_assign {
                return self.refuse(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
            }
            client_id = ByteString::from(format!("tern-{:016x}", rand::random::<u64>()));
        } else if client_id.len() > config.max_client_id_len {
            return self.refuse(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
        }

        if let Some(will) = &connect.will {
            if tern_topic::validate_topic_name(&will.topic).is_err() {
                return self.refuse(ReasonCode::TOPIC_NAME_INVALID);
            }
            if will.retain && !config.retain_available {
                return self.refuse(ReasonCode::RETAIN_NOT_SUPPORTED);
            }
        }

        let creds = Credentials {
            client_id: &client_id,
            username: connect.username.as_deref(),
            password: connect.password.as_deref(),
            peer: self.peer.ip(),
            protocol: connect.protocol,
        };
        let principal = match self.broker.auth.authenticate(&creds) {
            Ok(p) => p,
            Err(code) => return self.refuse(code),
        };
        if let Some(will) = &connect.will
            && let Err(code) = self.check_will(will, &principal)
        {
            return self.refuse(code);
        }

        // Keep alive: the broker may impose its own maximum (Server Keep Alive, v5 only).
        let mut server_keep_alive = None;
        self.keep_alive = connect.keep_alive;
        if let Some(max) = config.max_keep_alive
            && (connect.keep_alive == 0 || connect.keep_alive > max)
            && v5
        {
            self.keep_alive = max;
            server_keep_alive = Some(max);
        }

        let props = &connect.properties;
        self.limits = ClientLimits {
            receive_maximum: props.receive_maximum.unwrap_or(u16::MAX),
            maximum_packet_size: props
                .maximum_packet_size
                .unwrap_or(self.limits.maximum_packet_size),
            topic_alias_maximum: props.topic_alias_maximum.unwrap_or(0),
            request_problem_information: props.request_problem_information.unwrap_or(true),
        };

        let requested_expiry = if v5 {
            props.session_expiry_interval.unwrap_or(0)
        } else if connect.clean_start {
            0
        } else {
            u32::MAX
        };
        let expiry = requested_expiry.min(config.max_session_expiry);

        let will = connect.will.as_ref().map(|w| {
            // Stamped again when it is published (`Broker::publish_will`).
            let timestamp = self.broker.clock.stamp();
            let wp = &w.properties;
            let mut properties = tern_codec::PublishProperties {
                payload_format_indicator: wp.payload_format_indicator,
                message_expiry_interval: wp.message_expiry_interval,
                topic_alias: None,
                response_topic: wp.response_topic.clone(),
                correlation_data: wp.correlation_data.clone(),
                user_properties: wp.user_properties.clone(),
                subscription_identifiers: Default::default(),
                content_type: wp.content_type.clone(),
            };
            self.broker.strip_forged_stamps(&mut properties);
            WillSpec {
                delay: wp.will_delay_interval.unwrap_or(0),
                token_id: principal.token_id,
                message: Arc::new(Message {
                    topic: w.topic.clone(),
                    payload: w.payload.clone(),
                    qos: w.qos.min(config.max_qos),
                    retain: w.retain,
                    properties,
                    cid: principal.cid,
                    timestamp,
                    expires_at: wp
                        .message_expiry_interval
                        .map(|s| timestamp + u64::from(s) * 1_000_000),
                    origin: None,
                }),
            }
        });

        let key = SessionKey {
            cid: principal.cid,
            client_id: client_id.clone(),
        };
        // Spec §2: a full `mqtt_sessions` quota refuses new sessions (0x97).
        if self.broker.session(&key).is_none() && self.broker.session_quota_full(principal.cid) {
            return self.refuse(ReasonCode::QUOTA_EXCEEDED);
        }
        // A store that cannot write (disk full) takes no new persistent session: it could not
        // be kept (v5 0x97; 3.x return code 3, server unavailable).
        if expiry > 0 && !self.broker.store.accepting() && self.broker.session(&key).is_none() {
            self.broker.store.note_refused();
            return self.refuse(ReasonCode::QUOTA_EXCEEDED);
        }
        let link = ConnLink {
            conn_id: self.id,
            kick: self.kick.clone(),
        };
        let origin = Origin {
            peer: self.peer,
            protocol: connect.protocol,
            token_id: principal.token_id,
        };
        let attached = self.attach(key, connect.clean_start, expiry, (link, origin), will);
        if let Some(old) = &attached.replaced {
            self.broker.discard_session(old, false);
        }
        if let Some(will) = attached.will {
            self.broker.publish_will(will);
        }
        self.session = Some(attached.session.clone());
        // The token document is for the v5 CONNACK only: not kept for the connection's life.
        let Principal {
            cid,
            token_id,
            rights,
            token_json,
        } = principal;
        self.principal = Some(Box::new(Principal {
            cid,
            token_id,
            rights,
            token_json: None,
        }));

        let mut properties = ConnAckProperties::default();
        if v5 {
            if expiry != requested_expiry {
                properties.session_expiry_interval = Some(expiry);
            }
            if config.receive_maximum != u16::MAX {
                properties.receive_maximum = Some(config.receive_maximum);
            }
            if config.max_qos < QoS::ExactlyOnce {
                properties.maximum_qos = Some(config.max_qos as u8);
            }
            if !config.retain_available {
                properties.retain_available = Some(false);
            }
            properties.maximum_packet_size = Some(config.max_packet_size);
            // flespi sends Assigned Client Identifier in every v5 CONNACK, echoing the client's
            // own id (docs/flespi.md#connecting-and-authorization); `echo_client_id = false` limits
            // it to generated ids, for libmosquitto, which refuses an identifier it did not ask
            // for.
            if assigned || config.echo_client_id {
                properties.assigned_client_identifier = Some(client_id);
            }
            if config.topic_alias_maximum > 0 {
                properties.topic_alias_maximum = Some(config.topic_alias_maximum);
            }
            properties.server_keep_alive = server_keep_alive;
            // flespi's CONNACK user properties (docs/flespi.md#connecting-and-authorization): the
            // token and the resumed session's subscriptions (MQTT Board restores its panels from
            // them).
            let token = token_json.unwrap_or_else(|| {
                serde_json::json!({"id": 0, "cid": self.principal.as_ref().map_or(0, |p| p.cid), "access": {"type": 0}}).to_string()
            });
            properties
                .user_properties
                .push((ByteString::from_static("token"), ByteString::from(token)));
            let subscriptions = subscriptions_json(&attached.session);
            properties.user_properties.push((
                ByteString::from_static("subscriptions"),
                ByteString::from(subscriptions),
            ));
        }
        self.send(&Packet::ConnAck(ConnAck {
            session_present: attached.present,
            code: ReasonCode::SUCCESS,
            properties,
        }));
        if attached.present {
            self.reapply_rights(&attached.session);
        }
        self.broker
            .session_event(&attached.session, session_event::CONNECTED, None);
        // Re-send what was in flight, then whatever queued while offline.
        attached.session.wake();
        Ok(())
    }

    /// A will passes every check a PUBLISH passes, against the connecting token
    /// (docs/flespi.md#publishing): the reserved prefix, the token's publish grants, the retained
    /// quota, a UTF-8 payload when it says so, and the broker's maximum QoS (v5 [MQTT-3.2.2-12];
    /// 3.x clients get their will downgraded, as their publishes are). 3.x has one code for all:
    /// not authorized (5).
    fn check_will(&self, will: &tern_codec::Will, principal: &Principal) -> Result<(), ReasonCode> {
        let v5 = self.protocol.is_v5();
        let refused = |code: ReasonCode| {
            if v5 { code } else { ReasonCode::NOT_AUTHORIZED }
        };
        self.broker
            .check_publish(
                principal.cid,
                &principal.rights,
                &will.topic,
                will.retain,
                will.payload.len(),
            )
            .map_err(refused)?;
        if will.properties.payload_format_indicator == Some(1)
            && std::str::from_utf8(&will.payload).is_err()
        {
            return Err(refused(ReasonCode::PAYLOAD_FORMAT_INVALID));
        }
        if v5 && will.qos > self.broker.config.max_qos {
            return Err(ReasonCode::QOS_NOT_SUPPORTED);
        }
        Ok(())
    }

    /// Answers CONNACK with a refusal and closes.
    fn refuse(&mut self, code: ReasonCode) -> Result<(), CloseReason> {
        self.send(&Packet::ConnAck(ConnAck {
            session_present: false,
            code,
            properties: Default::default(),
        }));
        Err(CloseReason::ConnectRefused(code))
    }

    /// Finds, takes over or creates the session (docs/flespi.md#connecting-and-authorization: a
    /// second connection with the same key takes the session over; the old connection gets
    /// DISCONNECT 0x8E).
    fn attach(
        &self,
        key: SessionKey,
        clean_start: bool,
        expiry: u32,
        (link, origin): (ConnLink, Origin),
        will: Option<WillSpec>,
    ) -> Attached {
        let broker = &self.broker;
        let key_cid = key.cid;
        broker.with_registry(|reg| {
            let existing = reg.get(&key).cloned();
            if let Some(existing) = existing {
                let mut st = existing.lock();
                if let Some(old) = st.conn.take() {
                    old.kick.kick(CloseReason::SessionTakenOver);
                }
                let old_will = st.will.take();
                if clean_start && st.stored {
                    // Delete the old session's stored state before the new one is written.
                    broker
                        .store
                        .submit(tern_store::Op::DelSession { key: key.clone() });
                    st.stored = false;
                }
                if !clean_start && !st.ended {
                    // Resume: a will whose delay has not passed is not sent ([MQTT-3.1.3-9]).
                    st.set_origin(origin);
                    st.conn = Some(link);
                    st.disconnected_at = None;
                    st.expiry_interval = expiry;
                    st.clean = false;
                    st.resend = st.inflight.len();
                    st.will = will;
                    broker.persist_session(&existing, &mut st);
                    drop(st);
                    return Attached {
                        session: existing.clone(),
                        present: true,
                        replaced: None,
                        will: old_will.filter(|w| w.delay == 0),
                    };
                }
                drop(st);
                let session = Arc::new(Session::new(
                    broker.next_session_id(),
                    key.clone(),
                    clean_start,
                    expiry,
                ));
                attach_new(broker, &session, (link, origin), will);
                reg.insert(session.clone());
                broker.session_added(key_cid);
                // The old session ends, so its will goes out whatever its delay.
                return Attached {
                    session,
                    present: false,
                    replaced: Some(existing),
                    will: old_will,
                };
            }
            let session = Arc::new(Session::new(
                broker.next_session_id(),
                key.clone(),
                clean_start,
                expiry,
            ));
            attach_new(broker, &session, (link, origin), will);
            reg.insert(session.clone());
            broker.session_added(key_cid);
            Attached {
                session,
                present: false,
                replaced: None,
                will: None,
            }
        })
    }
}

fn attach_new(
    broker: &Broker,
    session: &Session,
    (link, origin): (ConnLink, Origin),
    will: Option<WillSpec>,
) {
    let mut st = session.lock();
    st.set_origin(origin);
    st.conn = Some(link);
    st.will = will;
    broker.persist_session(session, &mut st);
}

/// The session's subscriptions as the CONNACK `subscriptions` user property: a JSON array of
/// `{"topic","qos","no_local","rap","retain_handling","subscription_id"}`.
fn subscriptions_json(session: &Session) -> String {
    let st = session.lock();
    let mut subs: Vec<&crate::session::Subscription> = st.subscriptions.values().collect();
    subs.sort_by(|a, b| a.key.cmp(&b.key));
    let items: Vec<serde_json::Value> = subs
        .into_iter()
        .map(|s| {
            let mut item = serde_json::json!({
                "topic": s.topic_string(),
                "qos": s.options.qos as u8,
                "no_local": s.options.no_local,
                "rap": s.options.retain_as_published,
                "retain_handling": s.options.retain_handling as u8,
            });
            if let Some(id) = s.id {
                item["subscription_id"] = id.into();
            }
            item
        })
        .collect();
    serde_json::Value::Array(items).to_string()
}
