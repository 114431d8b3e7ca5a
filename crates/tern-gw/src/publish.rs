//! The MQTT side of the devices layer (docs/flespi.md#devices), published through the broker in
//! the device's account namespace (`cid`): topics from `tern_broker::topics`.
//!
//! - `flespi/state/gw/devices/<id>`: the item, retained; `.../<id>/<property>`: each property's
//!   raw JSON, retained, published when it changed; on delete, empty retained payloads, then
//!   `.../<id>/deleted` = `true`, not retained.
//! - `flespi/log/gw/devices/<id>/<created|updated|deleted|...>`: a log record (built and stored
//!   by `Gateway::log`, published here).
//! - `flespi/message/gw/devices/<id>`: each stored message, not retained.
//! - `flespi/state/gw/devices/<id>/telemetry/<param>`: the raw value, retained, with the
//!   message `timestamp` (the v5 user property the broker writes) = the parameter's `ts`.
//!
//! Every retained message here is derived from the layer's own durable records and published
//! again by [`crate::Gateway::publish_all`] at start, so it goes through
//! `Broker::publish_derived`: kept in the retained tree, not written to the store (a tracker's
//! frame would otherwise cost a store write per telemetry parameter); deletions are written.

use std::sync::Arc;

use bytes::Bytes;
use bytestring::ByteString;
use serde_json::Value;
use tern_broker::topics;
use tern_broker::{Broker, Cid, Micros};
use tern_codec::QoS;

/// The event codes of device item changes, now in `logs` with every other code.
pub use crate::logs::code as event_code;

thread_local! {
    /// Set while this thread applies another cluster node's change ([`quietly`]).
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with the publications made here kept to this node's retained tree: the retained
/// ones are set (or cleared) here without being routed or sent to other nodes, the others are
/// not made. For a change another cluster node made (`replica.rs`): that node published it,
/// and the cluster routed it everywhere; this node only keeps its own retained state of it.
pub(crate) fn quietly<T>(f: impl FnOnce() -> T) -> T {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            QUIET.set(self.0);
        }
    }
    let _reset = Reset(QUIET.replace(true));
    f()
}

fn emit(broker: &Broker, msg: tern_broker::Message) {
    if QUIET.get() {
        if msg.retain {
            broker.apply_remote_retained(Arc::new(msg));
        }
        return;
    }
    broker.publish_derived(Arc::new(msg));
}

fn send(broker: &Broker, cid: Cid, topic: String, payload: Bytes, retain: bool) {
    let msg = broker.message(
        cid,
        ByteString::from(topic),
        payload,
        QoS::AtLeastOnce,
        retain,
    );
    emit(broker, msg);
}

fn json_bytes(v: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

/// The item and every property that differs from `old` (all of them when `old` is `None`).
pub fn state(broker: &Broker, cid: Cid, id: u64, old: Option<&Value>, new: &Value) {
    state_on(
        broker,
        cid,
        &topics::device_state_topic(id),
        &|k| topics::device_property_topic(id, k),
        old,
        new,
    );
}

/// A channel's item and changed properties (`flespi/state/gw/channels/<id>[/<property>]`).
pub fn channel_state(broker: &Broker, cid: Cid, id: u64, old: Option<&Value>, new: &Value) {
    state_on(
        broker,
        cid,
        &topics::channel_state_topic(id),
        &|k| topics::channel_property_topic(id, k),
        old,
        new,
    );
}

/// A stream's state: the item and each changed property (retained).
pub fn stream_state(broker: &Broker, cid: Cid, id: u64, old: Option<&Value>, new: &Value) {
    state_on(
        broker,
        cid,
        &topics::stream_state_topic(id),
        &|k| topics::stream_property_topic(id, k),
        old,
        new,
    );
}

/// A deleted stream: its retained state cleared, then `.../deleted`.
pub fn stream_deleted(broker: &Broker, cid: Cid, id: u64, old: &Value) {
    if let Some(obj) = old.as_object() {
        for k in obj.keys() {
            send(
                broker,
                cid,
                topics::stream_property_topic(id, k),
                Bytes::new(),
                true,
            );
        }
    }
    send(
        broker,
        cid,
        topics::stream_state_topic(id),
        Bytes::new(),
        true,
    );
    send(
        broker,
        cid,
        topics::stream_property_topic(id, topics::DEVICE_DELETED_PROPERTY),
        Bytes::from_static(b"true"),
        false,
    );
}

fn state_on(
    broker: &Broker,
    cid: Cid,
    item_topic: &str,
    property_topic: &dyn Fn(&str) -> String,
    old: Option<&Value>,
    new: &Value,
) {
    let Some(obj) = new.as_object() else {
        return;
    };
    let mut changed = false;
    for (k, v) in obj {
        if old.and_then(|o| o.get(k)) == Some(v) {
            continue;
        }
        changed = true;
        send(broker, cid, property_topic(k), json_bytes(v), true);
    }
    if changed || old.is_none() {
        send(broker, cid, item_topic.to_string(), json_bytes(new), true);
    }
}

/// A deleted channel: empty retained payloads for the item and its properties, then
/// `deleted` = `true` (not retained).
pub fn channel_deleted(broker: &Broker, cid: Cid, id: u64, old: &Value) {
    if let Some(obj) = old.as_object() {
        for k in obj.keys() {
            send(
                broker,
                cid,
                topics::channel_property_topic(id, k),
                Bytes::new(),
                true,
            );
        }
    }
    send(
        broker,
        cid,
        topics::channel_state_topic(id),
        Bytes::new(),
        true,
    );
    send(
        broker,
        cid,
        topics::channel_property_topic(id, topics::DEVICE_DELETED_PROPERTY),
        Bytes::from_static(b"true"),
        false,
    );
}

/// A channel message on `flespi/message/gw/channels/<id>/<ident>`.
pub fn channel_message(broker: &Broker, cid: Cid, id: u64, ident: &str, json: Bytes) {
    send(
        broker,
        cid,
        topics::channel_message_topic(id, ident),
        json,
        false,
    );
}

/// A deleted device: empty retained payloads for the item, its properties and telemetry, then
/// `deleted` = `true` (not retained), so open lists drop it.
pub fn deleted(broker: &Broker, cid: Cid, id: u64, old: &Value, telemetry: &[String]) {
    for param in telemetry {
        send(
            broker,
            cid,
            topics::device_telemetry_topic(id, param),
            Bytes::new(),
            true,
        );
    }
    if let Some(obj) = old.as_object() {
        for k in obj.keys() {
            send(
                broker,
                cid,
                topics::device_property_topic(id, k),
                Bytes::new(),
                true,
            );
        }
    }
    send(
        broker,
        cid,
        topics::device_state_topic(id),
        Bytes::new(),
        true,
    );
    send(
        broker,
        cid,
        topics::device_property_topic(id, topics::DEVICE_DELETED_PROPERTY),
        Bytes::from_static(b"true"),
        false,
    );
}

/// A log record on `topic` (`flespi/log/...`), not retained.
pub fn log_record(broker: &Broker, cid: Cid, topic: String, record: &Value) {
    send(broker, cid, topic, json_bytes(record), false);
}

/// A log record already serialized, not retained.
pub fn log_json(broker: &Broker, cid: Cid, topic: String, json: Bytes) {
    send(broker, cid, topic, json, false);
}

/// A stored message on `flespi/message/gw/devices/<id>`.
pub fn message(broker: &Broker, cid: Cid, id: u64, json: Bytes) {
    send(broker, cid, topics::device_message_topic(id), json, false);
}

/// One telemetry parameter: its value with `ts` as the message timestamp, or an empty payload
/// when it was deleted.
pub fn telemetry(broker: &Broker, cid: Cid, id: u64, param: &str, value: Option<(&Value, f64)>) {
    let topic = ByteString::from(topics::device_telemetry_topic(id, param));
    let msg = match value {
        Some((v, ts)) => broker.message_at(
            cid,
            topic,
            json_bytes(v),
            QoS::AtLeastOnce,
            true,
            ts_micros(ts),
        ),
        None => broker.message(cid, topic, Bytes::new(), QoS::AtLeastOnce, true),
    };
    emit(broker, msg);
}

/// The telemetry topics of what `changes` says changed in device `id`'s telemetry `t`.
pub fn telemetry_changes(
    broker: &Broker,
    cid: Cid,
    id: u64,
    t: &crate::Telemetry,
    changes: &crate::telemetry::Changes,
) {
    for k in &changes.updated {
        if let Some(p) = t.get(k) {
            telemetry(broker, cid, id, k, Some((&p.value, p.ts)));
        }
    }
    for k in &changes.removed {
        telemetry(broker, cid, id, k, None);
    }
}

/// A parameter's `ts` as the broker's message time (times before 1970 are written as 0).
fn ts_micros(ts: f64) -> Micros {
    let m = (ts * 1e6).round();
    if m <= 0.0 { 0 } else { m as Micros }
}
