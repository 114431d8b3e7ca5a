//! tern-api: the flespi REST API (docs/flespi.md#the-rest-api) over HTTP, the same API over MQTT
//! (docs/flespi.md#rest-over-mqtt), and the state topics that API changes publish
//! (docs/flespi.md#broker-events).
//!
//! The daemon mounts [`router`] on its HTTP/HTTPS listeners and calls [`install_bridge`] so that
//! a client's publish to `flespi/rest/<method>/<uri>` runs through the very same router.
//! [`publish_state`] publishes the current `flespi/state/platform/...` topics once at start.
//!
//! # The contract, and the decisions where flespi's documents are silent
//!
//! - **Auth.** `Authorization: FlespiToken <key>` or the bare key; a missing or unknown, disabled
//!   or expired token is 401; a token whose address mask refuses the client, or whose account is
//!   disabled, is 403. `/platform/*` is for master tokens only (403 otherwise). `/mqtt/*` takes
//!   master and standard tokens, and ACL tokens with an entry whose `uri` is a prefix of the
//!   call's path (`"mqtt/messages"`, `"mqtt"` …) and whose optional `methods` list the method;
//!   an ACL token's topic grants still limit which messages it reads, deletes and publishes and
//!   which subscriptions it adds. `/auth/info` takes any valid token; `/auth/regions` none
//!   (browser apps ask it before they have one; docs/flespi.md#browser-apps). `x-flespi-cid: <n>` makes
//!   the call act inside account n, which must be the token's account or below it (403
//!   otherwise); only master tokens may name another account than their own.
//! - **Limits.** A sub-account's `limits` (`mqtt_sessions`, `mqtt_subscriptions`,
//!   `retained_bytes`, `subaccounts`, `tokens`) bound it together with everything below it, and
//!   each ancestor's bound it too. They are set only from above: `/platform/subaccounts` never
//!   lists the acting account itself and `/platform/customer` changes only `name` and
//!   `metadata`, so no token changes its own account's limits. A limit above the parent's
//!   (the lowest of the parent's and its ancestors') is refused (400); a new sub-account or
//!   token past the `subaccounts` or `tokens` quota of its parent or an account above it
//!   fails as an item with 403 (POST answers 400 with `result` and `errors`).
//! - **Scope.** Lists cover the acting account and every account below it (items carry `cid`, so
//!   `,cid=N` picks one account): tokens, sub-accounts (the acting account itself excluded),
//!   sessions, and retained messages (`data={"recursive": false}` limits them to the acting
//!   account's own namespace).
//! - **Envelope.** `{"result": [...]}`; with `limit` or `offset` also `"pagination": {"limit",
//!   "offset", "count"}`, `count` being the number of items before paging (`limit` is null when
//!   only `offset` was given). Errors: `{"errors": [{"code", "reason"}]}` with `code` equal to
//!   the HTTP status. A request whose input is malformed (JSON, unknown or read-only fields, bad
//!   values, bad selector, bad `limit`) changes nothing and answers 400 listing every problem,
//!   with `index` naming the item of a POST array. When valid items of a POST fail while being
//!   applied (a duplicate id or key, a quota), the others are still applied and the answer is
//!   **400 with both** `result` (what was done) and `errors` (each with its `index`).
//! - **Bodies.** JSON; POST takes an array or one object; bodies above
//!   [`ApiOptions::max_body`] (4 MiB) are refused with 413 and an error envelope. PUT changes the
//!   fields given; PATCH does the same but merges `metadata` (and sub-account `limits`) into the
//!   stored object (RFC 7396: `null` removes a key).
//! - **Parameters.** `fields=a,b,c.d` keeps those dotted paths of each item (nested objects stay
//!   nested); `limit` (0 ..= [`ApiOptions::max_limit`]) and `offset` must be non-negative
//!   integers; `data=<JSON object>` carries the method's parameters for GET and DELETE; unknown
//!   keys in `data` are refused. Other query parameters are ignored.
//! - **Selectors** (`selector`): `all`, ids, `field=value` with `*`/`?` wildcards on dotted
//!   paths (a quoted value is taken literally), `{expression}`; comma-separated, all must hold
//!   (ids among themselves are alternatives). The topic selector of `/mqtt/messages/{topic}` is
//!   a percent-encoded topic or filter, optionally followed by `,field=value` or
//!   `,{expression}` conditions; a comma inside the topic is sent as `%2C`.
//! - **Deletes** answer the deleted items. `POST /mqtt/messages` answers one item per message
//!   (`topic`, `cid`, `qos`, `retained`, `subscribers` it was queued for). Message payloads are
//!   strings: a JSON value that is not a string is published as its JSON text; payloads that are
//!   not UTF-8 are shown in base64 with `"encoding": "base64"`.
//! - **CSV.** `Accept: text/csv` on a successful call answers the result as CSV: columns from
//!   `fields`, otherwise the union of the items' keys in order of appearance, nested keys dotted
//!   (`access.type`); arrays are written as JSON. Errors stay JSON.
//! - **State topics** (docs/flespi.md#broker-events, `state`): `flespi/state/platform/customer` in
//!   an account's own namespace and `flespi/state/platform/subaccounts/<id>` in the parent's
//!   namespace are published retained (QoS 1) whenever the REST API changes the account; a deleted
//!   sub-account's topic gets an empty retained message, which deletes it.
//! - **REST over MQTT** (`bridge`): see [`bridge`].
//! - **The REST call log** (`call_log`, docs/flespi.md#account-logs): every call whose token was
//!   found, over HTTP or MQTT, is recorded in the log of the account it acted in
//!   (`GET /platform/customer/logs`), whatever its answer; a 401 (no account) is not. The
//!   record is queued after the answer, never written on the call's path.
//! - **OpenAPI.** `GET /api.json` serves the OpenAPI 3.1 description generated (utoipa) from the
//!   same handler annotations that register the routes. It needs no token.
//!
//! Layout:
//! - `error`: the error envelope and HTTP statuses
//! - `auth`: tokens, `x-flespi-cid`, who may call what
//! - `call`: one request taken apart: caller, query parameters, raw selectors, JSON body
//! - `selector`: `{sel}` path segments
//! - `reply`: the success envelope, `fields`, pagination, CSV
//! - `items`: the JSON items the endpoints serve and accept
//! - `handlers/`: one module per resource (`auth`, `customer`, `tokens`, `subaccounts`,
//!   `sessions`, `subscriptions`, `messages`, `gw_devices`, `gw_groups`)
//! - `state`: the `flespi/state/platform/...` topics
//! - `bridge`: REST over MQTT
//! - `durable`: changes refused while the store cannot write, answered once durable
//! - `call_log`: every call of an account into its REST call log
//! - `openapi`: the router with its OpenAPI description

mod auth;
pub mod bridge;
mod call;
mod call_log;
mod durable;
mod error;
mod handlers;
mod items;
mod openapi;
mod reply;
mod selector;
mod state;

use std::sync::Arc;

use tern_broker::Broker;
use tern_broker::accounts::Directory;
use tern_gw::Gateway;

pub use bridge::install_bridge;
pub use error::{ApiError, ErrorItem};
pub use openapi::{openapi, router};
pub use state::publish_state;

/// Limits of the REST API. Every number is a default, not a constant of the protocol.
#[derive(Debug, Clone)]
pub struct ApiOptions {
    /// Largest request body, in bytes (413 above it).
    pub max_body: usize,
    /// Largest `limit` a list call may ask for.
    pub max_limit: u64,
    /// REST-over-MQTT calls running at once; beyond it a call is answered 429 at once.
    pub bridge_max_calls: usize,
    /// Largest chunk of a chunked REST-over-MQTT response (further capped by the client's
    /// Maximum Packet Size).
    pub chunk_size: usize,
    /// What `GET /auth/regions` answers.
    pub region: RegionOptions,
}

/// What `GET /auth/regions` answers (docs/flespi.md#browser-apps). By default every address is
/// built from the request's `Host` on the listener that was asked; the overrides (`[http.region]`)
/// replace them behind a proxy.
#[derive(Debug, Clone, Default)]
pub struct RegionOptions {
    /// `rest`: the REST API's base URL, with scheme.
    pub rest: Option<String>,
    /// `mqtt-ws`: MQTT over WebSocket as `host:port`, without scheme.
    pub mqtt_ws: Option<String>,
    /// `mqtt`: MQTT over TCP as `host:port`.
    pub mqtt: Option<String>,
    /// The port of the `mqtt` listener (`None`: off, and `mqtt` is null unless overridden).
    pub mqtt_port: Option<u16>,
    /// The bound `http` and `https` listeners: the address of last resort when neither a
    /// `Host` header nor the connection's local address is known (REST over MQTT).
    pub http: Option<std::net::SocketAddr>,
    pub https: Option<std::net::SocketAddr>,
}

impl Default for ApiOptions {
    fn default() -> Self {
        ApiOptions {
            max_body: 4 * 1024 * 1024,
            max_limit: 100_000,
            bridge_max_calls: 256,
            chunk_size: 64 * 1024,
            region: RegionOptions::default(),
        }
    }
}

/// What every handler works on: the broker (sessions, retained messages, publishing) and the
/// directory (accounts, tokens). Cheap to clone.
#[derive(Debug, Clone)]
pub struct ApiState {
    pub broker: Arc<Broker>,
    pub directory: Arc<Directory>,
    /// The devices layer (`/gw/...`).
    pub gateway: Arc<Gateway>,
    pub options: Arc<ApiOptions>,
}

impl ApiState {
    pub fn new(broker: Arc<Broker>, directory: Arc<Directory>, gateway: Arc<Gateway>) -> ApiState {
        ApiState {
            broker,
            directory,
            gateway,
            options: Arc::new(ApiOptions::default()),
        }
    }

    pub fn with_options(
        broker: Arc<Broker>,
        directory: Arc<Directory>,
        gateway: Arc<Gateway>,
        options: ApiOptions,
    ) -> ApiState {
        ApiState {
            broker,
            directory,
            gateway,
            options: Arc::new(options),
        }
    }

    /// Unix seconds with a fraction, for `now()` in selector expressions.
    pub(crate) fn now_secs(&self) -> f64 {
        self.broker.clock.now() as f64 / 1e6
    }
}
