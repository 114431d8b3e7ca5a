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
        // Nobody listening and no log (the usual case): no JSON built, nothing routed. In a
        // cluster the listeners may be on other nodes: always published.
        let publish = self.config.session_events
            && (self.is_clustered() || self.has_subscribers(session.key.cid, &topic));
        if !publish && log.is_none() {
            return;
        }
        let view = session.view();
        let timestamp = self.clock.stamp();
        let payload = Bytes::from(record(&view, timestamp, event, reason));
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

/// The JSON of a session event, written directly (no intermediate `Value`: this runs on every
/// connect and disconnect while the sessions log is on).
fn record(
    view: &crate::views::SessionView,
    timestamp: u64,
    event: &str,
    reason: Option<&CloseReason>,
) -> String {
    use std::fmt::Write;
    // Strings go through serde_json for their escaping.
    let text = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
    let mut out = String::with_capacity(320 + view.client_id.len());
    let _ = write!(
        out,
        // Exact: microseconds below 2^53 divide by 10^6 to the nearest double.
        "{{\"timestamp\":{},\"event_code\":{},\"origin_type\":{},\"origin_id\":{},\"event\":{},\
         \"session_id\":{},\"client_id\":{},\"cid\":{},\"ip\":{},\"protocol_version\":{},\
         \"clean\":{},\"published\":{},\"received\":{},\"rejected\":{},\"reason\":{}}}",
        serde_json::json!(timestamp as f64 / 1e6),
        topics::session_event::code(event),
        topics::SESSIONS_LOG_ORIGIN,
        view.id,
        text(event),
        view.id,
        text(&view.client_id),
        view.cid,
        text(&view.ip),
        view.protocol_version,
        view.clean,
        view.stats.published,
        view.stats.received,
        view.stats.rejected,
        text(reason.map_or("", |r| r.label())),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::SessionStats;
    use crate::views::SessionView;

    #[test]
    fn a_session_record_is_json_with_every_field() {
        let view = SessionView {
            id: 42,
            client_id: "a \"quoted\" \\ client".into(),
            cid: 7,
            connected: false,
            clean: true,
            ip: "10.0.0.1".into(),
            expires: None,
            expiry_interval: 0,
            size: 0,
            queued: 0,
            protocol_version: 5,
            subscriptions: 0,
            stats: SessionStats {
                published: 3,
                received: 2,
                rejected: 1,
                ..SessionStats::default()
            },
        };
        let json = record(
            &view,
            1_700_000_000_123_456,
            topics::session_event::DISCONNECTED,
            Some(&CloseReason::KeepAliveTimeout),
        );
        let v: serde_json::Value = serde_json::from_str(&json).expect("JSON");
        assert_eq!(
            v,
            serde_json::json!({"timestamp": 1_700_000_000.123_456, "event_code": 701,
                "origin_type": 14, "origin_id": 42, "event": "disconnected", "session_id": 42,
                "client_id": "a \"quoted\" \\ client", "cid": 7, "ip": "10.0.0.1",
                "protocol_version": 5, "clean": true, "published": 3, "received": 2,
                "rejected": 1, "reason": "keep_alive_timeout"})
        );
    }
}
