//! tern-broker: the MQTT broker core without sockets.
//!
//! Sessions, the per-packet handlers, routing and fan-out. A connection driver (tern-net) feeds
//! decoded packets into a [`Connection`] and writes out what it encodes; everything shared sits
//! in the [`Broker`] behind short, synchronous locks that are never held across `.await`.
//!
//! Layout:
//! - `broker`: the shared state (session registry, per-account namespaces) and routing
//! - `connection`: one connection's protocol state, close and detach
//! - `handlers/`: one handler per packet type (`connect`, `publish`, `ack`, `subscribe`,
//!   `unsubscribe`, `disconnect`, `deliver` for outgoing messages) and the dispatch
//! - `session`: sessions, their outbox and in-flight window
//! - `message`: messages, deliveries, the broker clock
//! - `timers`: will delay and session expiry
//! - `auth`: the authentication hook
//! - `close`: `CloseReason`, the one vocabulary for why a connection ended
//! - `metrics`: counters and gauges
//! - `config`: the broker's settings as plain data

pub mod auth;
pub mod broker;
pub mod close;
pub mod config;
pub mod connection;
mod handlers;
pub mod message;
pub mod metrics;
pub mod session;
pub mod timers;

pub use auth::{Anonymous, Authenticator, Credentials, Principal};
pub use broker::{Broker, Namespace, SubEntry};
pub use close::CloseReason;
pub use config::BrokerConfig;
pub use connection::Connection;
pub use message::{Cid, Clock, Delivery, Message, Micros, SessionId};
pub use metrics::{DropReason, Metrics};
pub use session::{Session, SessionKey, Subscription};
