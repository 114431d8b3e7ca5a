//! The JSON items the endpoints serve (docs/flespi.md#the-rest-api item fields) and the bodies they
//! accept. The OpenAPI schemas are derived from these very types, and every answer goes through
//! them.

use std::collections::BTreeMap;

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tern_broker::accounts::{Access, Account, AclEntry, Limits, Token};
use tern_broker::message::format_timestamp;
use tern_broker::{Cid, Message, SessionView, SubscriptionView};
use utoipa::ToSchema;

/// Serializes an item for selection and answers.
pub(crate) fn to_value<T: Serialize>(item: &T) -> Value {
    serde_json::to_value(item).unwrap_or(Value::Null)
}

// ---- served ----------------------------------------------------------------------------------

/// A token.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct TokenItem {
    pub id: u64,
    /// 64 letters and digits.
    pub key: String,
    pub info: String,
    pub enabled: bool,
    /// Absolute expiry, unix seconds; 0 never.
    pub expire: u64,
    /// Seconds of validity after the last use; 0 no limit.
    pub ttl: u64,
    pub created: u64,
    pub accessed: u64,
    /// Allowed client addresses: comma-separated masks with `*` and `?`; empty allows any.
    pub ips: String,
    /// The token's account.
    #[schema(value_type = u64)]
    pub cid: Cid,
    #[schema(value_type = Object)]
    pub metadata: Value,
    pub access: AccessItem,
}

/// What a token may do: `type` 0 standard, 1 master, 2 ACL (with `acl` entries; an MQTT entry
/// is `{"uri": "mqtt", "topic": "<filter>", "actions": ["publish", "subscribe"]}`, a REST entry
/// `{"uri": "mqtt/messages", "methods": ["GET"]}`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AccessItem {
    #[serde(rename = "type")]
    #[schema(rename = "type")]
    pub kind: u8,
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub acl: Vec<AclEntry>,
}

impl From<&Token> for TokenItem {
    fn from(t: &Token) -> TokenItem {
        TokenItem {
            id: t.id,
            key: t.key.clone(),
            info: t.info.clone(),
            enabled: t.enabled,
            expire: t.expire,
            ttl: t.ttl,
            created: t.created,
            accessed: t.accessed,
            ips: t.ips.clone(),
            cid: t.cid,
            metadata: t.metadata.clone(),
            access: AccessItem {
                kind: t.access.kind,
                acl: t.access.acl.clone(),
            },
        }
    }
}

impl From<AccessItem> for Access {
    fn from(a: AccessItem) -> Access {
        Access {
            kind: a.kind,
            acl: a.acl,
        }
    }
}

/// An account: the customer (`/platform/customer`) or a sub-account.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct AccountItem {
    #[schema(value_type = u64)]
    pub id: Cid,
    pub name: String,
    /// The parent account; absent for the top account.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<u64>)]
    pub cid: Option<Cid>,
    #[schema(value_type = Object)]
    pub metadata: Value,
    pub enabled: bool,
    /// Quotas of this account together with every account below it; absent fields take the
    /// broker's defaults. Never above the parent's.
    pub limits: LimitsItem,
}

/// Per-account quotas.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitsItem {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt_sessions: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt_subscriptions: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retained_bytes: Option<u64>,
    /// Accounts below this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subaccounts: Option<u64>,
    /// Tokens of this account and of the accounts below it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    /// Devices (`/gw/devices`) of this account and of the accounts below it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<u64>,
    /// Channels (`/gw/channels`) of this account and of the accounts below it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<u64>,
    /// Bytes of stored device messages and channel buffers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages_bytes: Option<u64>,
}

impl From<&Account> for AccountItem {
    fn from(a: &Account) -> AccountItem {
        AccountItem {
            id: a.id,
            name: a.name.clone(),
            cid: a.parent,
            metadata: a.metadata.clone(),
            enabled: a.enabled,
            limits: LimitsItem {
                mqtt_sessions: a.limits.mqtt_sessions,
                mqtt_subscriptions: a.limits.mqtt_subscriptions,
                retained_bytes: a.limits.retained_bytes,
                subaccounts: a.limits.subaccounts,
                tokens: a.limits.tokens,
                devices: a.limits.devices,
                channels: a.limits.channels,
                messages_bytes: a.limits.messages_bytes,
            },
        }
    }
}

impl From<LimitsItem> for Limits {
    fn from(l: LimitsItem) -> Limits {
        Limits {
            mqtt_sessions: l.mqtt_sessions,
            mqtt_subscriptions: l.mqtt_subscriptions,
            retained_bytes: l.retained_bytes,
            subaccounts: l.subaccounts,
            tokens: l.tokens,
            devices: l.devices,
            channels: l.channels,
            messages_bytes: l.messages_bytes,
        }
    }
}

/// An MQTT session, live or offline.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct SessionItem {
    pub id: u64,
    pub client_id: String,
    #[schema(value_type = u64)]
    pub cid: Cid,
    pub connected: bool,
    pub clean: bool,
    /// Address of the current or last connection.
    pub ip: String,
    /// When an offline session expires (unix seconds); null while connected or never.
    pub expires: Option<f64>,
    /// Session Expiry Interval, seconds.
    pub expiry_interval: u32,
    /// Bytes of queued messages.
    pub size: u64,
    /// Queued and in-flight messages.
    pub queued: u64,
    pub protocol_version: u8,
    /// Number of subscriptions.
    pub subscriptions: u64,
}

impl From<SessionView> for SessionItem {
    fn from(v: SessionView) -> SessionItem {
        SessionItem {
            id: v.id,
            client_id: v.client_id,
            cid: v.cid,
            connected: v.connected,
            clean: v.clean,
            ip: v.ip,
            expires: v.expires,
            expiry_interval: v.expiry_interval,
            size: v.size,
            queued: v.queued,
            protocol_version: v.protocol_version,
            subscriptions: v.subscriptions,
        }
    }
}

/// A subscription of a session.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct SubscriptionItem {
    /// Stable id derived from the subscription string.
    pub id: u64,
    /// The subscription string (with `$share/` and `$filter/` prefixes).
    pub topic: String,
    pub qos: u8,
    pub no_local: bool,
    /// Retain As Published.
    pub rap: bool,
    pub retain_handling: u8,
    pub subscription_id: Option<u32>,
    /// The account the subscription is restricted to (SUBSCRIBE user property `cid`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<u64>)]
    pub cid: Option<Cid>,
    /// The session holding it.
    pub session_id: u64,
}

impl SubscriptionItem {
    pub fn new(v: SubscriptionView, session_id: u64) -> SubscriptionItem {
        SubscriptionItem {
            id: v.id,
            topic: v.topic,
            qos: v.qos,
            no_local: v.no_local,
            rap: v.rap,
            retain_handling: v.retain_handling,
            subscription_id: v.subscription_id,
            cid: v.cid,
            session_id,
        }
    }
}

/// A retained message.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct MessageItem {
    pub topic: String,
    /// The payload as text; base64 when it is not UTF-8 (then `encoding` says so).
    pub payload: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encoding: Option<String>,
    /// The publisher's account (the namespace it is retained in).
    #[schema(value_type = u64)]
    pub cid: Cid,
    /// Publication time, unix seconds.
    pub timestamp: f64,
    pub retained: bool,
    pub qos: u8,
    pub user_properties: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_topic: Option<String>,
    /// Correlation data, base64.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation_data: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_expiry_interval: Option<u32>,
}

impl From<&Message> for MessageItem {
    fn from(m: &Message) -> MessageItem {
        let b64 = base64::engine::general_purpose::STANDARD;
        let (payload, encoding) = match std::str::from_utf8(&m.payload) {
            Ok(text) => (text.to_string(), None),
            Err(_) => (b64.encode(&m.payload), Some("base64".to_string())),
        };
        let p = &m.properties;
        MessageItem {
            topic: m.topic.to_string(),
            payload,
            encoding,
            cid: m.cid,
            timestamp: format_timestamp(m.timestamp).parse().unwrap_or(0.0),
            retained: m.retain,
            qos: m.qos as u8,
            user_properties: p
                .user_properties
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            content_type: p.content_type.as_ref().map(ToString::to_string),
            response_topic: p.response_topic.as_ref().map(ToString::to_string),
            correlation_data: p.correlation_data.as_ref().map(|c| b64.encode(c)),
            message_expiry_interval: p.message_expiry_interval,
        }
    }
}

/// What `POST /mqtt/messages` did with one message.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct PublishedItem {
    pub topic: String,
    /// The account it was published as.
    #[schema(value_type = u64)]
    pub cid: Cid,
    pub qos: u8,
    pub retained: bool,
    /// Sessions it was queued for.
    pub subscribers: usize,
}

// ---- accepted --------------------------------------------------------------------------------

/// A new token (`POST /platform/tokens`).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenInput {
    #[serde(default)]
    pub info: Option<String>,
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub expire: Option<u64>,
    #[serde(default)]
    pub ttl: Option<u64>,
    #[serde(default)]
    pub ips: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// Standard (type 0) when absent.
    #[serde(default)]
    pub access: Option<AccessItem>,
    /// 64 letters and digits; generated when absent.
    #[serde(default)]
    pub key: Option<String>,
    /// The account of the token: the acting account or one below it (default: the acting one).
    #[serde(default)]
    #[schema(value_type = Option<u64>)]
    pub cid: Option<Cid>,
}

/// Changes to tokens (`PUT`/`PATCH /platform/tokens/{sel}`); `id`, `key`, `cid`, `created` and
/// `accessed` cannot be changed.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenChanges {
    #[serde(default)]
    pub info: Option<String>,
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub expire: Option<u64>,
    #[serde(default)]
    pub ttl: Option<u64>,
    #[serde(default)]
    pub ips: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    #[serde(default)]
    pub access: Option<AccessItem>,
}

/// A new sub-account (`POST /platform/subaccounts`).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubaccountInput {
    pub name: String,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// The new account's id; chosen when absent.
    #[serde(default)]
    #[schema(value_type = Option<u64>)]
    pub id: Option<Cid>,
    /// The parent: the acting account or one below it (default: the acting one).
    #[serde(default)]
    #[schema(value_type = Option<u64>)]
    pub cid: Option<Cid>,
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub limits: Option<LimitsItem>,
}

/// Changes to sub-accounts (`PUT`/`PATCH /platform/subaccounts/{sel}`); `id` and `cid` cannot
/// be changed.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AccountChanges {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub limits: Option<LimitsItem>,
}

/// Changes to the customer (`PUT /platform/customer`): `name` and `metadata`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CustomerChanges {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
}

/// A message to publish (`POST /mqtt/messages`).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct MessageInput {
    pub topic: String,
    /// A string is published as is; any other JSON value as its JSON text; absent is empty.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub payload: Option<Value>,
    #[serde(default)]
    pub qos: Option<u8>,
    #[serde(default)]
    pub retained: Option<bool>,
    /// Values that are not strings are sent as their JSON text.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub user_properties: Option<Map<String, Value>>,
    #[serde(default)]
    pub message_expiry_interval: Option<u32>,
    #[serde(default)]
    pub content_type: Option<String>,
    #[serde(default)]
    pub response_topic: Option<String>,
    /// Sent as the UTF-8 bytes of the string.
    #[serde(default)]
    pub correlation_data: Option<String>,
}

/// A subscription to add to sessions (`POST /mqtt/sessions/{sel}/subscriptions`).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubscriptionInput {
    /// A topic filter, with `$share/` or `$filter/` prefixes if wanted.
    pub topic: String,
    #[serde(default)]
    pub qos: Option<u8>,
    #[serde(default)]
    pub no_local: Option<bool>,
    #[serde(default)]
    pub rap: Option<bool>,
    #[serde(default)]
    pub retain_handling: Option<u8>,
    #[serde(default)]
    pub subscription_id: Option<u32>,
    /// Only messages published by this account (as the SUBSCRIBE user property `cid`).
    #[serde(default)]
    #[schema(value_type = Option<u64>)]
    pub cid: Option<Cid>,
}

/// `data=` of the retained-message calls.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct MessagesData {
    /// Include the sub-accounts' namespaces (default true).
    #[serde(default = "yes")]
    pub recursive: bool,
}

impl Default for MessagesData {
    fn default() -> Self {
        MessagesData { recursive: true }
    }
}

/// `data=` of calls that take no parameters: only `{}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NoData {}

fn yes() -> bool {
    true
}

/// RFC 7396 merge: objects merge key by key, `null` removes a key, anything else replaces.
pub(crate) fn merge_patch(target: &mut Value, patch: Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(&k);
                } else {
                    merge_patch(t.entry(k).or_insert(Value::Null), v);
                }
            }
        }
        (t, Value::Object(p)) => {
            *t = Value::Object(Map::new());
            merge_patch(t, Value::Object(p));
        }
        (t, p) => *t = p,
    }
}
