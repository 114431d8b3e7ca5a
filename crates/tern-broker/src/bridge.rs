//! The hook through which the REST API answers REST over MQTT (docs/flespi.md#rest-over-mqtt):
//! a client's publish to `flespi/rest/<method>/<uri>` becomes a [`RestCall`] handed to the
//! installed [`RestBridge`] (tern-api), which publishes the answer itself.

use std::sync::Arc;

use bytes::Bytes;
use bytestring::ByteString;
use tern_codec::PublishProperties;

use crate::auth::Principal;
use crate::session::Session;

/// A publish to `flespi/rest/<method>/<uri>` handed to the REST bridge.
#[derive(Debug, Clone)]
pub struct RestCall {
    pub principal: Principal,
    /// The requesting session: responses on the request topic go only to it.
    pub session: Arc<Session>,
    /// The request topic.
    pub topic: ByteString,
    pub payload: Bytes,
    pub properties: PublishProperties,
    /// Whether the requester speaks v5 (response topic, correlation data, chunking by its
    /// Maximum Packet Size).
    pub v5: bool,
    /// The requester's Maximum Packet Size.
    pub max_packet_size: u32,
}

/// The REST bridge (tern-api) answers `flespi/rest/...` publishes.
pub trait RestBridge: Send + Sync + std::fmt::Debug + 'static {
    /// Starts the call; the bridge publishes the response itself (see
    /// [`Broker::deliver_to`], or [`Broker::publish`] of a [`Broker::message`]). Must not block.
    fn call(&self, call: RestCall);
}
