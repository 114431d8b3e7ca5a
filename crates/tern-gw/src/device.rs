//! A device (docs/flespi.md#devices): the stored record, what clients may send, and the item the
//! REST API and the state topics show.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::error::GwError;
use crate::types::{DeviceType, device_type};

/// `messages_ttl` when none is given: a year.
pub const DEFAULT_MESSAGES_TTL: u64 = 31_536_000;

/// A device as stored (the JSON document of `Op::PutDevice`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Device {
    pub id: u64,
    pub cid: u64,
    pub name: String,
    pub enabled: bool,
    /// `ident` (a string) is required; other keys belong to the device type.
    pub configuration: Map<String, Value>,
    pub device_type_id: u64,
    /// Seconds a message is kept (by its `timestamp`); 0: messages are not stored.
    pub messages_ttl: u64,
    /// KB of stored messages beyond which the oldest go; 0: no limit.
    pub messages_rotate: u64,
    pub metadata: Map<String, Value>,
    /// Unix seconds of the last message received; `None` before the first.
    #[serde(default)]
    pub last_active: Option<u64>,
    /// The groups the device belongs to (`/gw/groups`), shown to selectors as `groups.id`.
    #[serde(default)]
    pub groups: Vec<u64>,
}

impl Device {
    pub fn ident(&self) -> &str {
        self.configuration
            .get("ident")
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    pub fn device_type(&self) -> Option<&'static DeviceType> {
        device_type(self.device_type_id)
    }

    pub fn protocol_id(&self) -> u64 {
        self.device_type().map_or(0, |t| t.protocol_id)
    }

    /// The item (no telemetry): the stored fields, `protocol_id`, and the state `connected`
    /// and `messages_size`.
    pub fn item(&self, connected: bool, messages_size: u64) -> Value {
        json!({
            "id": self.id,
            "cid": self.cid,
            "name": self.name,
            "enabled": self.enabled,
            "configuration": self.configuration,
            "device_type_id": self.device_type_id,
            "protocol_id": self.protocol_id(),
            "messages_ttl": self.messages_ttl,
            "messages_rotate": self.messages_rotate,
            "metadata": self.metadata,
            "connected": connected,
            "last_active": self.last_active,
            "messages_size": messages_size,
        })
    }
}

/// A new device (POST /gw/devices).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceInput {
    pub name: Option<String>,
    pub enabled: Option<bool>,
    pub configuration: Option<Map<String, Value>>,
    pub device_type_id: Option<u64>,
    pub messages_ttl: Option<u64>,
    pub messages_rotate: Option<u64>,
    pub metadata: Option<Map<String, Value>>,
    /// The account, at or below the acting one (default: the acting account).
    pub cid: Option<u64>,
}

/// Changes of PUT/PATCH /gw/devices/{sel}.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceChanges {
    pub name: Option<String>,
    pub enabled: Option<bool>,
    pub configuration: Option<Map<String, Value>>,
    pub device_type_id: Option<u64>,
    pub messages_ttl: Option<u64>,
    pub messages_rotate: Option<u64>,
    pub metadata: Option<Map<String, Value>>,
}

/// Fields a client cannot set.
pub const READ_ONLY: &[&str] = &[
    "id",
    "cid",
    "protocol_id",
    "connected",
    "last_active",
    "messages_size",
    "telemetry",
];

impl DeviceInput {
    /// The device this input describes (id and account filled in by the caller).
    pub fn into_device(self, cid: u64) -> Result<Device, GwError> {
        let configuration = self
            .configuration
            .ok_or_else(|| GwError::Invalid("configuration with an ident is required".into()))?;
        let device_type_id = self
            .device_type_id
            .ok_or_else(|| GwError::Invalid("device_type_id is required".into()))?;
        let device = Device {
            id: 0,
            cid,
            name: self.name.unwrap_or_default(),
            enabled: self.enabled.unwrap_or(true),
            configuration,
            device_type_id,
            messages_ttl: self.messages_ttl.unwrap_or(DEFAULT_MESSAGES_TTL),
            messages_rotate: self.messages_rotate.unwrap_or(0),
            metadata: self.metadata.unwrap_or_default(),
            last_active: None,
            groups: Vec::new(),
        };
        check(&device)?;
        Ok(device)
    }
}

impl DeviceChanges {
    /// `device` with the changes; `merge` (PATCH) merges `configuration` and `metadata` into
    /// the stored objects (RFC 7396: `null` removes a key), PUT replaces them.
    pub fn apply(&self, device: &Device, merge: bool) -> Result<Device, GwError> {
        let mut d = device.clone();
        if let Some(v) = &self.name {
            d.name = v.clone();
        }
        if let Some(v) = self.enabled {
            d.enabled = v;
        }
        if let Some(v) = &self.configuration {
            d.configuration = if merge {
                merged(&d.configuration, v)
            } else {
                v.clone()
            };
        }
        if let Some(v) = self.device_type_id {
            d.device_type_id = v;
        }
        if let Some(v) = self.messages_ttl {
            d.messages_ttl = v;
        }
        if let Some(v) = self.messages_rotate {
            d.messages_rotate = v;
        }
        if let Some(v) = &self.metadata {
            d.metadata = if merge {
                merged(&d.metadata, v)
            } else {
                v.clone()
            };
        }
        check(&d)?;
        Ok(d)
    }
}

pub(crate) fn merged(base: &Map<String, Value>, patch: &Map<String, Value>) -> Map<String, Value> {
    let mut out = Value::Object(base.clone());
    merge_patch(&mut out, Value::Object(patch.clone()));
    match out {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// RFC 7396 JSON merge patch.
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
        (t, p @ Value::Object(_)) => {
            *t = Value::Object(Map::new());
            merge_patch(t, p);
        }
        (t, p) => *t = p,
    }
}

/// The rules every device keeps.
fn check(d: &Device) -> Result<(), GwError> {
    match d.configuration.get("ident") {
        Some(Value::String(s)) if !s.is_empty() => {}
        Some(_) => {
            return Err(GwError::Invalid(
                "configuration.ident must be a non-empty string".into(),
            ));
        }
        None => return Err(GwError::Invalid("configuration.ident is required".into())),
    }
    if device_type(d.device_type_id).is_none() {
        let known: Vec<String> = crate::types::DEVICE_TYPES
            .iter()
            .map(|t| format!("{} ({})", t.id, t.name))
            .collect();
        return Err(GwError::Invalid(format!(
            "unknown device_type_id {}; known: {}",
            d.device_type_id,
            known.join(", ")
        )));
    }
    if !crate::types::ident_fits(d.protocol_id(), d.ident()) {
        return Err(GwError::Invalid(format!(
            "configuration.ident must match {} for this device type",
            crate::types::IMEI_PATTERN
        )));
    }
    if d.name.len() > 255 {
        return Err(GwError::Invalid("name is longer than 255 bytes".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(v: Value) -> DeviceInput {
        serde_json::from_value(v).expect("input")
    }

    #[test]
    fn a_device_needs_an_ident_and_a_known_type() {
        let d = input(json!({"name": "a", "device_type_id": 1, "configuration": {"ident": "x"}}))
            .into_device(7)
            .expect("valid");
        assert_eq!(
            (d.cid, d.messages_ttl, d.enabled),
            (7, DEFAULT_MESSAGES_TTL, true)
        );
        assert!(
            input(json!({"device_type_id": 1, "configuration": {}}))
                .into_device(7)
                .is_err()
        );
        assert!(
            input(json!({"device_type_id": 99, "configuration": {"ident": "x"}}))
                .into_device(7)
                .is_err()
        );
        assert!(serde_json::from_value::<DeviceInput>(json!({"bogus": 1})).is_err());
    }

    #[test]
    fn patch_merges_and_put_replaces() {
        let d = input(json!({"device_type_id": 1, "configuration": {"ident": "x", "a": 1}, "metadata": {"k": 1, "j": 2}}))
            .into_device(7)
            .expect("valid");
        let ch: DeviceChanges =
            serde_json::from_value(json!({"metadata": {"k": null, "n": 3}})).expect("changes");
        assert_eq!(
            Value::Object(ch.apply(&d, true).expect("patch").metadata),
            json!({"j": 2, "n": 3})
        );
        assert_eq!(
            Value::Object(ch.apply(&d, false).expect("put").metadata),
            json!({"k": null, "n": 3})
        );
    }
}
