//! Events the broker publishes about sessions (docs/flespi.md#broker-events):
//! `flespi/log/mqtt/sessions/<session id>/<event>` for `connected`, `disconnected` and
//! `expired`, in the session's account (so its ancestors see them too), not retained.
//!
//! The same record is the MQTT sessions log (`GET /mqtt/logs`, docs/flespi.md#logs): a
//! [`SessionLog`] installed by the devices layer sees each event's JSON and keeps it. Without
//! one, and with nobody subscribed, an event costs one lookup and builds nothing.

use std::sync::Arc;

use bytes::Bytes;
use bytestring::ByteString;
use tern_codec::QoS;

use crate::broker::Broker;
use crate::close::CloseReason;
use crate::message::Cid;
use crate::session::Session;
use crate::topics;

/// Keeps the session events of the MQTT sessions log (installed with
/// [`Broker::set_session_log`]). Called on a connection's path with no broker lock held: it must
/// not block nor call back into the broker; it copies the record into its own bounded queue.
pub trait SessionLog: Send + Sync + std::fmt::Debug {
    /// Event `event` of a session of account `cid`, stamped `timestamp` (broker microseconds,
    /// unique), as its JSON `record`.
    fn logged(&self, cid: Cid, timestamp: u64, event: &'static str, record: Bytes);
}

impl Broker {
    /// Publishes a session event, if events are on and someone listens, and hands it to the
    /// sessions log, if one is installed.
    pub(crate) fn session_event(
        &self,
        session: &Session,
        event: &'static str,
        reason: Option<&CloseReason>,
    ) {
        let log = self.session_log.get();
        if !self.config.session_events && log.is_none() {
            return;
        }
        let topic = topics::session_event_topic(session.public_id(), event);
        // Nobody listening and no log (the usual case): no JSON built, nothing routed.
        let publish = self.config.session_events && self.has_subscribers(session.key.cid, &topic);
        if !publish && log.is_none() {
            return;
        }
        let view = session.view();
        let timestamp = self.clock.stamp();
        let payload = serde_json::json!({
            // Exact: microseconds below 2^53 divide by 10^6 to the nearest double.
            "timestamp": timestamp as f64 / 1e6,
            "event_code": topics::session_event::code(event),
            "origin_type": topics::SESSIONS_LOG_ORIGIN,
            "origin_id": view.id,
            "event": event,
            "session_id": view.id,
            "client_id": view.client_id,
            "cid": view.cid,
            "ip": view.ip,
            "protocol_version": view.protocol_version,
            "clean": view.clean,
            "published": view.stats.published,
            "received": view.stats.received,
            "rejected": view.stats.rejected,
            "reason": reason.map_or("", |r| r.label()),
        });
        let payload = Bytes::from(payload.to_string());
        if let Some(log) = log {
            log.logged(session.key.cid, timestamp, event, payload.clone());
        }
        if !publish {
            return;
        }
        let mut msg = self.message(
            session.key.cid,
            ByteString::from(topic),
            payload,
            QoS::AtMostOnce,
            false,
        );
        msg.timestamp = timestamp;
        self.publish(Arc::new(msg));
    }
}
