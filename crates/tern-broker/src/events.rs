//! Events the broker publishes about sessions (docs/flespi.md#broker-events):
//! `flespi/log/mqtt/sessions/<session id>/<event>` for `connected`, `disconnected` and
//! `expired`, in the session's account (so its ancestors see them too), not retained.

use std::sync::Arc;

use bytes::Bytes;
use bytestring::ByteString;
use tern_codec::QoS;

use crate::broker::Broker;
use crate::close::CloseReason;
use crate::session::Session;
use crate::topics;

impl Broker {
    /// Publishes a session event, if events are on.
    pub(crate) fn session_event(
        &self,
        session: &Session,
        event: &'static str,
        reason: Option<&CloseReason>,
    ) {
        if !self.config.session_events {
            return;
        }
        let topic = topics::session_event_topic(session.public_id(), event);
        // Nobody listening (the usual case): no JSON built, nothing routed.
        if !self.has_subscribers(session.key.cid, &topic) {
            return;
        }
        let view = session.view();
        let timestamp = self.clock.stamp();
        let payload = serde_json::json!({
            // Exact: microseconds below 2^53 divide by 10^6 to the nearest double.
            "timestamp": timestamp as f64 / 1e6,
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
        let mut msg = self.message(
            session.key.cid,
            ByteString::from(topic),
            Bytes::from(payload.to_string()),
            QoS::AtMostOnce,
            false,
        );
        msg.timestamp = timestamp;
        self.publish(Arc::new(msg));
    }
}
