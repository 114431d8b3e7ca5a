//! Accounts and tokens as flespi describes them (docs/flespi.md#the-rest-api): the JSON the store
//! keeps and the REST API serves.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::message::Cid;

/// An account (flespi "customer" or "sub-account").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Account {
    pub id: Cid,
    pub name: String,
    /// The parent account; `None` for the top account.
    #[serde(rename = "cid", default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Cid>,
    #[serde(default = "empty_object")]
    pub metadata: Value,
    /// A disabled account's tokens are refused with 0x8A (banned).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Per-account overrides of the quota defaults.
    #[serde(default, skip_serializing_if = "Limits::is_empty")]
    pub limits: Limits,
}

/// Per-account quotas; `None` takes the broker default. Each one bounds the account together
/// with every account below it (a sub-account's use counts against each ancestor's quota too),
/// and none may be set above the parent's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// MQTT sessions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt_sessions: Option<u64>,
    /// Subscriptions of all sessions together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt_subscriptions: Option<u64>,
    /// Bytes of retained messages (topic + payload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retained_bytes: Option<u64>,
    /// Accounts below this one (sub-accounts, theirs, and so on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subaccounts: Option<u64>,
    /// Tokens of this account and of every account below it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    /// Devices (`/gw/devices`) of this account and of every account below it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<u64>,
    /// Channels (`/gw/channels`) of this account and of every account below it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<u64>,
    /// Bytes of stored device messages and channel buffers (the stored JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages_bytes: Option<u64>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        self == &Limits::default()
    }

    /// Each limit by name, as set (`None`: the default).
    pub fn named(&self) -> [(&'static str, Option<u64>); 8] {
        [
            ("mqtt_sessions", self.mqtt_sessions),
            ("mqtt_subscriptions", self.mqtt_subscriptions),
            ("retained_bytes", self.retained_bytes),
            ("subaccounts", self.subaccounts),
            ("tokens", self.tokens),
            ("devices", self.devices),
            ("channels", self.channels),
            ("messages_bytes", self.messages_bytes),
        ]
    }
}

/// A token: the key that authorizes MQTT and REST access for one account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Token {
    pub id: u64,
    /// 64 alphanumeric characters.
    pub key: String,
    #[serde(default)]
    pub info: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Absolute expiry, unix seconds; 0 never expires.
    #[serde(default)]
    pub expire: u64,
    /// Seconds the token stays valid after its last use; 0 for no limit.
    #[serde(default)]
    pub ttl: u64,
    /// Unix seconds.
    #[serde(default)]
    pub created: u64,
    /// Last use, unix seconds.
    #[serde(default)]
    pub accessed: u64,
    /// Client address masks, comma-separated, with `*` and `?`; empty allows any.
    #[serde(default)]
    pub ips: String,
    pub cid: Cid,
    #[serde(default = "empty_object")]
    pub metadata: Value,
    #[serde(default)]
    pub access: Access,
}

/// What a token may do.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Access {
    /// 0 standard, 1 master, 2 ACL.
    #[serde(rename = "type", default)]
    pub kind: u8,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acl: Vec<AclEntry>,
}

impl Access {
    pub const STANDARD: u8 = 0;
    pub const MASTER: u8 = 1;
    pub const ACL: u8 = 2;
}

/// One ACL entry. MQTT entries are `{"uri": "mqtt", "topic": "<filter>", "actions":
/// ["publish", "subscribe"]}`; entries for REST URIs are kept as given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AclEntry {
    pub uri: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<String>,
    #[serde(flatten)]
    pub rest: serde_json::Map<String, Value>,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

fn yes() -> bool {
    true
}
