//! tern-broker: the MQTT broker core without sockets.
//!
//! Sessions, the per-packet handlers, routing and fan-out. A connection driver (tern-net) feeds
//! decoded packets into a [`Connection`] and writes out what it encodes; everything shared sits
//! in the [`Broker`] behind short, synchronous locks that are never held across `.await`.
//!
//! Layout:
//! - `broker`: the shared state (session registry, per-account namespaces) and routing
//! - `connection`: one connection's protocol state, close and detach
//! - `held`: what a connection holds back: acknowledgements waiting for the disk, reading
//!   paused by congested subscribers
//! - `handlers/`: one handler per packet type (`connect`, `publish`, `ack`, `subscribe`,
//!   `unsubscribe`, `disconnect`, `deliver` for outgoing messages) and the dispatch
//! - `filter`: `$share/`, `$filter/` and the `cid` property of subscriptions
//! - `session`: sessions, their outbox and in-flight window
//! - `subscriptions`: the one subscribe path (`Broker::subscribe`: ACLs, quotas, store, index)
//!   and the re-check of a session's subscriptions against a token's rights
//! - `budget`: the broker-wide budget of queued bytes (every outbox together)
//! - `message`: messages, deliveries, the broker clock (wall or manual)
//! - `topics`: the flespi topic space (`flespi/`, `flespi/rest/`, the event and state topics,
//!   the `cid` and `timestamp` properties), cited by everything else
//! - `events`: the `flespi/log/mqtt/sessions/...` events
//! - `timers`: will delay, session expiry, the retained sweep and token expiry, on the clock
//! - `timer_queue`: the deadlines those act on, ordered by time (plain data)
//! - `out`: a connection's encoded output (`OutBuf`), large payloads shared, not copied
//! - `rules`: the checks every message from a client passes (PUBLISH, will, REST publish)
//! - `persist`, `restore`: mirroring sessions into the store, and rebuilding them at start
//! - `accounts`: accounts, tokens, ACLs and the failed-login limiter (the `Directory`)
//! - `admin`: actions for the REST API
//! - `views`: what the REST API and the session events show of a session and its subscriptions
//! - `bridge`: the REST bridge hook (`RestCall`, `RestBridge`) for REST over MQTT
//! - `tap`: the publish tap (`PublishTap`): in-process code seeing publications (MQTT channels)
//! - `gateway_api`: what the devices layer needs beyond `message`/`publish` (`message_at`)
//! - `auth`: the authentication hook
//! - `rights`: what a principal may do with topics (master, standard, ACL grants)
//! - `quota`: account quotas, of one account and of its ancestor chain
//! - `close`: `CloseReason`, the one vocabulary for why a connection ended
//! - `violation`: the protocol rules the handlers enforce, each with its reason code
//! - `metrics`: counters and gauges
//! - `config`: the broker's settings as plain data

pub mod accounts;
pub mod admin;
pub mod auth;
pub mod bridge;
pub mod broker;
pub mod budget;
pub mod close;
pub mod config;
pub mod connection;
pub mod deadlines;
pub mod events;
pub mod fabric;
pub mod filter;
mod gateway_api;
mod handlers;
mod held;
pub mod message;
pub mod metrics;
pub mod out;
mod persist;
pub mod quota;
mod restore;
pub mod rights;
pub mod rules;
pub mod session;
pub mod subscriptions;
pub mod tap;
mod timer_queue;
pub mod timers;
pub mod topics;
mod views;
pub mod violation;

pub use auth::{Anonymous, Authenticator, Credentials, Principal};
pub use bridge::{RestBridge, RestCall};
pub use broker::{Broker, Namespace, Routed, SubEntry};
pub use budget::QueueBudget;
pub use close::CloseReason;
pub use config::BrokerConfig;
pub use connection::Connection;
pub use events::SessionLog;
pub use fabric::{Fabric, FabricTicket, FabricWait, ShareGroupRef, SharedGroupCount};
pub use message::{Cid, Clock, Delivery, Message, Micros, SessionId};
pub use metrics::{DropReason, Metrics};
pub use restore::Restored;
pub use session::{Kick, Session, SessionKey, Signal, Subscription, SubscriptionKey};
pub use tap::PublishTap;
pub use views::{SessionView, SubscriptionView};
pub use violation::Violation;
