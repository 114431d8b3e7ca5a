//! Black-box tests: a real broker over real sockets, one module per feature area.
//!
//! Most tests run for MQTT 3.1.1 and 5.0 (and a few for 3.1). Raw-packet exchanges use the
//! client in `support::client`, over TCP, TLS or WebSocket (`support::transport`); real clients
//! are rumqttc (Rust), mosquitto_pub/sub and paho-mqtt (Python) in `clients`, and MQTT.js
//! (Node) and paho-mqtt over WebSocket in `websocket`.

// Test code: a failed unwrap is a failed test.
#![allow(
    clippy::unwrap_used,
    clippy::large_enum_variant,
    clippy::type_complexity
)]

mod support;

mod accounts;
mod clients;
mod cluster;
mod cluster_cfg;
mod cluster_faults;
mod cluster_gw;
mod cluster_sessions;
mod cluster_share;
mod config;
mod connect;
mod connection_cost;
mod cors;
mod durable_offline;
mod filter;
mod flow_control;
mod gw;
mod gw_mqtt_channels;
mod gw_mqtt_streams;
mod gw_streams;
mod gw_tools;
mod limits;
mod malformed;
mod metrics;
mod mqttc;
mod overload;
mod persistence;
mod publish_subscribe;
mod qos;
mod retained;
mod sessions;
mod shared;
mod shutdown;
mod store_failure;
mod teltonika;
mod tls;
mod topic_alias;
mod trust;
mod v5_properties;
mod webhooks;
mod websocket;
mod wills;
