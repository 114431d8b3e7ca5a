//! The checks every message from a client passes before it is routed, whichever way it came:
//! a PUBLISH, a will (at CONNECT and again when it fires), a REST publish. One place, so that no
//! path gets around a token's rights (docs/flespi.md#publishing).
//!
//! - the reserved `flespi/` prefix (the REST bridge's `flespi/rest/` is the PUBLISH handler's,
//!   before these checks);
//! - the token's publish grants (ACL tokens);
//! - the account's retained quota, for retained messages;
//! - the broker's own stamps: a publisher's `cid` and `timestamp` user properties are removed
//!   when the broker adds its own (docs/flespi.md#accounts-and-namespaces).

use std::sync::Arc;

use tern_codec::{PublishProperties, ReasonCode};

use crate::broker::Broker;
use crate::message::{Cid, Message};
use crate::metrics::Metrics;
use crate::rights::Rights;
use crate::session::WillSpec;
use crate::topics::{self, CID_PROPERTY, TIMESTAMP_PROPERTY};

impl Broker {
    /// Whether account `cid`, with `rights`, may publish this message: `Err` is the v5 reason
    /// code of the refusal (0x87 not authorized, 0x97 quota exceeded).
    pub fn check_publish(
        &self,
        cid: Cid,
        rights: &Rights,
        topic: &str,
        retain: bool,
        payload_len: usize,
    ) -> Result<(), ReasonCode> {
        if topics::is_reserved(topic) || !rights.can_publish(topic) {
            return Err(ReasonCode::NOT_AUTHORIZED);
        }
        if retain && self.retained_quota_exceeded(cid, topic, payload_len) {
            return Err(ReasonCode::QUOTA_EXCEEDED);
        }
        Ok(())
    }

    /// The rights a will is checked against when it fires: those of its token as it is now (a
    /// deleted, disabled or expired token grants nothing), or standard rights for a client
    /// without a token.
    fn will_rights(&self, will: &WillSpec) -> Rights {
        will.token_id
            .and_then(|id| self.auth.token_rights(id))
            .unwrap_or(Rights::Standard)
    }

    /// Publishes a will that came due, after the checks a PUBLISH passes, against its token as
    /// it is now. The will is stamped with the time it is published, not the time of its
    /// CONNECT, so timestamps keep increasing per topic (docs/flespi.md#accounts-and-namespaces).
    pub fn publish_will(&self, will: WillSpec) {
        let msg = &will.message;
        let rights = self.will_rights(&will);
        if let Err(reason) =
            self.check_publish(msg.cid, &rights, &msg.topic, msg.retain, msg.payload.len())
        {
            Metrics::inc(&self.metrics.publishes_rejected);
            tracing::info!(cid = msg.cid, topic = %msg.topic, token_id = ?will.token_id, reason = reason.name(), "will refused when it came due");
            return;
        }
        let timestamp = self.clock.stamp();
        let message = Message {
            timestamp,
            expires_at: msg
                .properties
                .message_expiry_interval
                .map(|s| timestamp + u64::from(s) * 1_000_000),
            ..Message::clone(msg)
        };
        self.publish(Arc::new(message));
    }

    /// Removes a publisher's own `cid` and `timestamp` user properties when the broker stamps
    /// its own on deliveries (`mqtt.stamp_properties`), so no subscriber reads a forged one
    /// first. Allocates nothing when there are none.
    pub fn strip_forged_stamps(&self, properties: &mut PublishProperties) {
        if self.config.stamp_properties {
            strip_stamps(properties);
        }
    }
}

/// Removes the `cid` and `timestamp` user properties.
pub fn strip_stamps(properties: &mut PublishProperties) {
    let forged = |k: &str| k == CID_PROPERTY || k == TIMESTAMP_PROPERTY;
    if properties
        .user_properties
        .iter()
        .any(|(k, _)| forged(k.as_ref()))
    {
        properties
            .user_properties
            .retain(|(k, _)| !forged(k.as_ref()));
    }
}

#[cfg(test)]
mod tests {
    use bytestring::ByteString;

    use super::*;

    #[test]
    fn stamps_are_removed_and_the_rest_kept_in_order() {
        let mut p = PublishProperties::default();
        for (k, v) in [("a", "1"), ("cid", "999"), ("b", "2"), ("timestamp", "1.5")] {
            p.user_properties
                .push((ByteString::from(k), ByteString::from(v)));
        }
        strip_stamps(&mut p);
        let kept: Vec<(&str, &str)> = p
            .user_properties
            .iter()
            .map(|(k, v)| (k.as_ref(), v.as_ref()))
            .collect();
        assert_eq!(kept, [("a", "1"), ("b", "2")]);
    }
}
