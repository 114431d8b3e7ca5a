//! The channel protocols and device types tern knows (docs/flespi.md#devices): the one list.
//! A device's protocol comes from its `device_type_id`; `GET /gw/channel-protocols/{sel}` and
//! `/gw/channel-protocols/{sel}/device-types/{sel}` serve the items built here. Nothing else in
//! tern spells a protocol or a device type.

use serde_json::{Value, json};

/// One parameter a protocol's messages may carry (`message_parameters`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageParameter {
    pub name: &'static str,
    /// `string`, `number`, `boolean`, `object`, `array`.
    pub r#type: &'static str,
    pub unit: &'static str,
    pub info: &'static str,
}

/// One channel protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Protocol {
    pub id: u64,
    pub name: &'static str,
    pub title: &'static str,
    pub message_parameters: &'static [MessageParameter],
}

/// One device type of one protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceType {
    pub id: u64,
    pub name: &'static str,
    pub title: &'static str,
    pub protocol_id: u64,
    pub protocol_name: &'static str,
}

/// The parameters every channel message gets from tern (§5's ingest fields) or commonly carries.
const COMMON_PARAMETERS: &[MessageParameter] = &[
    MessageParameter {
        name: "ident",
        r#type: "string",
        unit: "",
        info: "Device identifier",
    },
    MessageParameter {
        name: "timestamp",
        r#type: "number",
        unit: "seconds",
        info: "Message timestamp (unix seconds)",
    },
    MessageParameter {
        name: "server.timestamp",
        r#type: "number",
        unit: "seconds",
        info: "When tern received the message",
    },
    MessageParameter {
        name: "channel.id",
        r#type: "number",
        unit: "",
        info: "The channel the message came through",
    },
    MessageParameter {
        name: "protocol.id",
        r#type: "number",
        unit: "",
        info: "The channel's protocol",
    },
    MessageParameter {
        name: "peer",
        r#type: "string",
        unit: "",
        info: "The sender's address",
    },
    MessageParameter {
        name: "position.latitude",
        r#type: "number",
        unit: "degrees",
        info: "Latitude",
    },
    MessageParameter {
        name: "position.longitude",
        r#type: "number",
        unit: "degrees",
        info: "Longitude",
    },
];

/// Every protocol tern serves.
pub const PROTOCOLS: &[Protocol] = &[
    // Clients POST JSON messages to the channel's `uri`.
    Protocol {
        id: 1,
        name: "http",
        title: "HTTP (JSON messages)",
        message_parameters: COMMON_PARAMETERS,
    },
    // The channel subscribes to MQTT topics (tern's own broker or an external one).
    Protocol {
        id: 2,
        name: "mqtt",
        title: "MQTT (JSON messages)",
        message_parameters: COMMON_PARAMETERS,
    },
];

/// Every device type tern serves.
pub const DEVICE_TYPES: &[DeviceType] = &[
    // Devices that post JSON messages over HTTP (and over REST, `POST /gw/devices/{sel}/messages`).
    DeviceType {
        id: 1,
        name: "http",
        title: "HTTP device (JSON)",
        protocol_id: 1,
        protocol_name: "http",
    },
    // Devices that publish JSON messages over MQTT.
    DeviceType {
        id: 2,
        name: "mqtt",
        title: "MQTT device (JSON)",
        protocol_id: 2,
        protocol_name: "mqtt",
    },
];

/// The device type `id`.
pub fn device_type(id: u64) -> Option<&'static DeviceType> {
    DEVICE_TYPES.iter().find(|t| t.id == id)
}

/// The protocol `id`.
pub fn protocol(id: u64) -> Option<&'static Protocol> {
    PROTOCOLS.iter().find(|p| p.id == id)
}

/// The protocol called `name`.
pub fn protocol_named(name: &str) -> Option<&'static Protocol> {
    PROTOCOLS.iter().find(|p| p.name == name)
}

/// The JSON schema of a device's `configuration`: `ident` required, any other keys allowed.
fn device_configuration_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "ident": {
                "type": "string",
                "title": "Ident",
                "description": "The device's identifier in its messages (unique per protocol and account tree)",
                "pattern": "^[^\\u0000-\\u001f]{1,255}$",
                "minLength": 1,
                "maxLength": 255
            }
        },
        "required": ["ident"],
        "additionalProperties": true
    })
}

/// The JSON schema of a channel's `configuration` for protocol `name`.
fn channel_configuration_schema(name: &str) -> Value {
    let mut schema = json!({
        "type": "object",
        "properties": {
            "ident_field": {"type": "string", "default": "ident", "title": "Message field holding the device ident"},
            "timestamp_field": {"type": "string", "default": "timestamp", "title": "Message field holding the unix timestamp"},
            "skip_invalid": {"type": "boolean", "default": false, "title": "Drop invalid messages instead of refusing the whole request"},
            "ident": {
                "type": "string",
                "title": "Ident",
                "description": "The ident of a device, as a message carries it",
                "pattern": "^[^\\u0000-\\u001f]{1,255}$"
            }
        },
        "additionalProperties": false
    });
    if let Some(props) = schema["properties"].as_object_mut() {
        if name == "http" {
            props.insert(
                "json_path".into(),
                json!({"type": "string", "title": "Path to the array of messages inside a posted object"}),
            );
        } else {
            props.insert(
                "broker".into(),
                json!({
                    "title": "\"internal\" (tern itself) or an external broker",
                    "oneOf": [
                        {"type": "string", "enum": ["internal"]},
                        {"type": "object", "properties": {
                            "uri": {"type": "string", "pattern": "^mqtts?://.+$"},
                            "username": {"type": "string"},
                            "password": {"type": "string"},
                            "client_id": {"type": "string"},
                            "qos": {"type": "integer", "enum": [0, 1]},
                            "ca": {"type": "string", "title": "PEM of the CA that signs the broker's certificate (default: the system's)"}
                        }, "required": ["uri"]}
                    ],
                    "default": "internal"
                }),
            );
            props.insert(
                "topics".into(),
                json!({"type": "array", "items": {"type": "string"}, "minItems": 1, "title": "Topic filters"}),
            );
            props.insert(
                "ident_topic_level".into(),
                json!({"type": "integer", "minimum": 0, "title": "Topic level (0-based) holding the ident"}),
            );
        }
    }
    schema
}

impl Protocol {
    /// The item `GET /gw/channel-protocols/{sel}` answers.
    pub fn item(&self) -> Value {
        let params: Vec<Value> = self
            .message_parameters
            .iter()
            .map(|p| json!({"name": p.name, "type": p.r#type, "unit": p.unit, "info": p.info}))
            .collect();
        json!({
            "id": self.id,
            "name": self.name,
            "title": self.title,
            "message_parameters": params,
            "configuration": channel_configuration_schema(self.name),
        })
    }
}

impl DeviceType {
    /// The item `GET /gw/channel-protocols/{sel}/device-types/{sel}` answers.
    pub fn item(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "title": self.title,
            "protocol_id": self.protocol_id,
            "protocol_name": self.protocol_name,
            "configuration": device_configuration_schema(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_device_type_has_its_protocol() {
        for t in DEVICE_TYPES {
            let p = protocol(t.protocol_id).expect("protocol");
            assert_eq!(p.name, t.protocol_name);
        }
        assert_eq!(protocol_named("mqtt").map(|p| p.id), Some(2));
    }

    #[test]
    fn items_carry_what_the_apps_read() {
        for p in PROTOCOLS {
            let v = p.item();
            assert!(v["message_parameters"].is_array());
            assert!(v["configuration"]["properties"]["ident"]["pattern"].is_string());
        }
        let t = DEVICE_TYPES[0].item();
        assert_eq!(t["protocol_id"], 1);
        assert_eq!(t["protocol_name"], "http");
        assert!(t["configuration"]["properties"]["ident"]["pattern"].is_string());
        assert!(t["title"].is_string());
    }
}
