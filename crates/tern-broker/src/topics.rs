//! The flespi topic space (docs/flespi.md): the topics and user property names clients know by
//! name, in one place that the broker, the REST bridge and the REST API cite instead of string
//! literals.
//!
//! - `flespi/`: reserved for the MQTT API itself; no client publishes there
//!   (docs/flespi.md#publishing);
//! - `flespi/rest/<method>/<uri>`: REST over MQTT (docs/flespi.md#rest-over-mqtt);
//! - `flespi/log/mqtt/sessions/<session id>/<event>`: session events, and
//!   `flespi/state/platform/customer`, `flespi/state/platform/subaccounts/<id>`: the account
//!   state topics (docs/flespi.md#broker-events);
//! - the `cid` and `timestamp` user properties the broker stamps on deliveries
//!   (docs/flespi.md#accounts-and-namespaces); `cid` on a SUBSCRIBE or UNSUBSCRIBE names the
//!   publisher account a subscription is limited to (docs/flespi.md#subscribing-and-filter).
//!
//! The layers above the broker (devices, push) add their topics here too, so that the whole
//! reserved space stays readable in one file.

use crate::message::Cid;

/// The prefix of the MQTT API's own topics: reserved, no client publishes under it
/// (docs/flespi.md#publishing).
pub const RESERVED_PREFIX: &str = "flespi/";

/// Whether `topic` lies in the reserved `flespi/` space.
#[inline]
pub fn is_reserved(topic: &str) -> bool {
    topic.starts_with(RESERVED_PREFIX)
}

/// The prefix of REST-over-MQTT requests: `flespi/rest/<method>/<uri>[?query]`
/// (docs/flespi.md#rest-over-mqtt).
pub const REST_PREFIX: &str = "flespi/rest/";

/// Whether a published topic is a REST-over-MQTT request.
#[inline]
pub fn is_rest_request(topic: &str) -> bool {
    topic.starts_with(REST_PREFIX)
}

/// A REST-over-MQTT request topic taken apart into its method (as written, any case) and the
/// URI after it (without a leading `/`, query included): `flespi/rest/get/gw/devices/all` is
/// `("get", "gw/devices/all")`. A topic with a method and no URI has an empty URI; `None` when
/// the topic is not under `flespi/rest/`.
pub fn rest_request(topic: &str) -> Option<(&str, &str)> {
    let rest = topic.strip_prefix(REST_PREFIX)?;
    Some(rest.split_once('/').unwrap_or((rest, "")))
}

/// The prefix of session events: `flespi/log/mqtt/sessions/<session id>/<event>`
/// (docs/flespi.md#broker-events).
pub const SESSION_EVENTS_PREFIX: &str = "flespi/log/mqtt/sessions/";

/// The session events the broker publishes.
pub mod session_event {
    /// A client connected (a session was created or resumed).
    pub const CONNECTED: &str = "connected";
    /// A client's connection ended.
    pub const DISCONNECTED: &str = "disconnected";
    /// A disconnected session expired.
    pub const EXPIRED: &str = "expired";

    /// The `event_code` of each in the MQTT sessions log (`GET /mqtt/logs`; tern's codes).
    pub const CONNECTED_CODE: u64 = 700;
    pub const DISCONNECTED_CODE: u64 = 701;
    pub const EXPIRED_CODE: u64 = 702;

    /// The `event_code` of `event`.
    pub fn code(event: &str) -> u64 {
        match event {
            CONNECTED => CONNECTED_CODE,
            DISCONNECTED => DISCONNECTED_CODE,
            _ => EXPIRED_CODE,
        }
    }
}

/// The `origin_type` of the MQTT sessions log (flespi's 14, `mqtt sessions`).
pub const SESSIONS_LOG_ORIGIN: u64 = tern_store::LOG_ORIGIN_MQTT;

/// The topic of `event` of session `session_id`.
pub fn session_event_topic(session_id: u64, event: &str) -> String {
    format!("{SESSION_EVENTS_PREFIX}{session_id}/{event}")
}

/// The state topic of an account, in its own namespace: a retained JSON item as
/// `GET /platform/customer` serves it (docs/flespi.md#broker-events).
pub const CUSTOMER_STATE: &str = "flespi/state/platform/customer";

/// The prefix of the sub-account state topics `flespi/state/platform/subaccounts/<id>`, in the
/// parent's namespace (docs/flespi.md#broker-events).
pub const SUBACCOUNT_STATE_PREFIX: &str = "flespi/state/platform/subaccounts/";

/// The state topic of sub-account `id`, in its parent's namespace.
pub fn subaccount_state_topic(id: Cid) -> String {
    format!("{SUBACCOUNT_STATE_PREFIX}{id}")
}

/// The devices layer (`tern-gw`, docs/flespi.md#devices), in the device's account namespace:
/// `flespi/state/gw/devices/<id>` (the item, retained), `.../<id>/<property>` (one property,
/// retained), `.../<id>/telemetry/<param>` (one telemetry value, retained, 7 levels),
/// `.../<id>/deleted` (`true`, not retained, after a delete), `flespi/log/gw/devices/<id>/<event>`
/// and `flespi/message/gw/devices/<id>`.
pub const DEVICE_STATE_PREFIX: &str = "flespi/state/gw/devices/";
/// The prefix of device log records: `flespi/log/gw/devices/<id>/<event>`.
pub const DEVICE_LOG_PREFIX: &str = "flespi/log/gw/devices/";
/// The prefix of device messages: `flespi/message/gw/devices/<id>`.
pub const DEVICE_MESSAGE_PREFIX: &str = "flespi/message/gw/devices/";
/// The property topic published (not retained) once a device is deleted.
pub const DEVICE_DELETED_PROPERTY: &str = "deleted";

/// The device events logged on `flespi/log/gw/devices/<id>/<event>`.
pub mod device_event {
    pub const CREATED: &str = "created";
    pub const UPDATED: &str = "updated";
    pub const DELETED: &str = "deleted";
    /// A message arrived after none for `gw.inactivity_timeout`.
    pub const CONNECTED: &str = "connected";
    /// No message for `gw.inactivity_timeout`.
    pub const DISCONNECTED: &str = "disconnected";
}

/// `flespi/state/gw/devices/<id>`.
pub fn device_state_topic(id: u64) -> String {
    format!("{DEVICE_STATE_PREFIX}{id}")
}

/// `flespi/state/gw/devices/<id>/<property>`.
pub fn device_property_topic(id: u64, property: &str) -> String {
    format!("{DEVICE_STATE_PREFIX}{id}/{property}")
}

/// `flespi/state/gw/devices/<id>/telemetry/<param>`.
pub fn device_telemetry_topic(id: u64, param: &str) -> String {
    format!("{DEVICE_STATE_PREFIX}{id}/telemetry/{param}")
}

/// `flespi/log/gw/devices/<id>/<event>`.
pub fn device_log_topic(id: u64, event: &str) -> String {
    format!("{DEVICE_LOG_PREFIX}{id}/{event}")
}

/// `flespi/message/gw/devices/<id>`.
pub fn device_message_topic(id: u64) -> String {
    format!("{DEVICE_MESSAGE_PREFIX}{id}")
}

/// The prefix of channel state (docs/flespi.md#devices): `flespi/state/gw/channels/<id>` (the
/// item, retained), `.../<id>/<property>` (retained) and `.../<id>/deleted` after a delete.
pub const CHANNEL_STATE_PREFIX: &str = "flespi/state/gw/channels/";
/// The prefix of channel messages: `flespi/message/gw/channels/<id>/<ident>`.
pub const CHANNEL_MESSAGE_PREFIX: &str = "flespi/message/gw/channels/";

/// `flespi/state/gw/channels/<id>`.
pub fn channel_state_topic(id: u64) -> String {
    format!("{CHANNEL_STATE_PREFIX}{id}")
}

/// `flespi/state/gw/channels/<id>/<property>`.
pub fn channel_property_topic(id: u64, property: &str) -> String {
    format!("{CHANNEL_STATE_PREFIX}{id}/{property}")
}

/// The prefix of stream state (docs/flespi.md#streams): `flespi/state/gw/streams/<id>` (the
/// item, retained), `.../<id>/<property>` (retained) and `.../<id>/deleted` after a delete.
pub const STREAM_STATE_PREFIX: &str = "flespi/state/gw/streams/";

/// `flespi/state/gw/streams/<id>`.
pub fn stream_state_topic(id: u64) -> String {
    format!("{STREAM_STATE_PREFIX}{id}")
}

/// `flespi/state/gw/streams/<id>/<property>`.
pub fn stream_property_topic(id: u64, property: &str) -> String {
    format!("{STREAM_STATE_PREFIX}{id}/{property}")
}

/// `flespi/message/gw/channels/<id>/<ident>`.
pub fn channel_message_topic(id: u64, ident: &str) -> String {
    format!("{CHANNEL_MESSAGE_PREFIX}{id}/{ident}")
}

/// The user property naming an account: stamped by the broker on deliveries (the publisher's
/// account); on SUBSCRIBE and UNSUBSCRIBE, the publisher account a subscription is limited to.
pub const CID_PROPERTY: &str = "cid";

/// The user property with a message's time of arrival in seconds, stamped by the broker on
/// deliveries.
pub const TIMESTAMP_PROPERTY: &str = "timestamp";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_request_topics_split_into_method_and_uri() {
        assert_eq!(
            rest_request("flespi/rest/get/gw/devices/all"),
            Some(("get", "gw/devices/all"))
        );
        assert_eq!(
            rest_request("flespi/rest/GET/a?x=1/2"),
            Some(("GET", "a?x=1/2"))
        );
        assert_eq!(rest_request("flespi/rest/get"), Some(("get", "")));
        assert_eq!(rest_request("flespi/rest/"), Some(("", "")));
        assert_eq!(rest_request("flespi/restx/get/a"), None);
        assert!(is_rest_request("flespi/rest/get/a"));
        assert!(is_reserved("flespi/rest/get/a") && is_reserved("flespi/"));
        assert!(!is_reserved("flespi") && !is_reserved("a/flespi/b"));
    }

    #[test]
    fn builders_spell_the_documented_topics() {
        assert_eq!(
            session_event_topic(42, session_event::CONNECTED),
            "flespi/log/mqtt/sessions/42/connected"
        );
        assert_eq!(
            subaccount_state_topic(1001),
            "flespi/state/platform/subaccounts/1001"
        );
        assert!(is_reserved(CUSTOMER_STATE));
        assert_eq!(device_state_topic(5), "flespi/state/gw/devices/5");
        assert_eq!(
            device_property_topic(5, "name"),
            "flespi/state/gw/devices/5/name"
        );
        assert_eq!(
            device_telemetry_topic(5, "position.speed")
                .split('/')
                .count(),
            7,
            "dashboards check the depth"
        );
        assert_eq!(
            device_log_topic(5, device_event::CREATED),
            "flespi/log/gw/devices/5/created"
        );
        assert_eq!(device_message_topic(5), "flespi/message/gw/devices/5");
    }
}
