//! The REST API and REST over MQTT against a running broker over real sockets (issue 8).

mod bad_input;
mod bridge;
mod curl;
mod gw;
mod gw_channels;
mod gw_logs;
mod gw_protocols;
mod gw_quotas;
mod messages;
mod openapi;
mod platform;
mod platform_logs;
mod sessions;
mod support;
