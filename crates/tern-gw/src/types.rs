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
    pub message_parameters: Parameters,
    /// Devices of this protocol hold a connection: `connected` is true while it is open (not
    /// the inactivity rule of connectionless channels).
    pub sessions: bool,
}

/// Where a protocol's `message_parameters` come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parameters {
    List(&'static [MessageParameter]),
    /// The naming table of the Teltonika records (`tern_teltonika::PARAMETERS`).
    Teltonika,
}

/// The protocol id of Teltonika channels (flespi's `protocol.id` in Teltonika messages).
pub const TELTONIKA: u64 = 14;

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
        message_parameters: Parameters::List(COMMON_PARAMETERS),
        sessions: false,
    },
    // The channel subscribes to MQTT topics (tern's own broker or an external one).
    Protocol {
        id: 2,
        name: "mqtt",
        title: "MQTT (JSON messages)",
        message_parameters: Parameters::List(COMMON_PARAMETERS),
        sessions: false,
    },
    // Teltonika trackers (Codec 8, 8 Extended, 16 over TCP; Codec 12 commands): every channel
    // owns a TCP listener (docs/teltonika.md).
    Protocol {
        id: TELTONIKA,
        name: "teltonika",
        title: "Teltonika (Codec 8/8E/16 over TCP)",
        message_parameters: Parameters::Teltonika,
        sessions: true,
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
    // Teltonika FMB/FMC/FMM trackers; `configuration.ident` is the IMEI.
    DeviceType {
        id: TELTONIKA,
        name: "teltonika",
        title: "Teltonika FMB/FMC/FMM (generic)",
        protocol_id: TELTONIKA,
        protocol_name: "teltonika",
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

/// The pattern of a Teltonika device's ident (its IMEI).
pub const IMEI_PATTERN: &str = "^[0-9]{15,17}$";

/// Whether `ident` is a valid ident for devices of protocol `protocol_id`.
pub fn ident_fits(protocol_id: u64, ident: &str) -> bool {
    protocol_id != TELTONIKA
        || ((15..=17).contains(&ident.len()) && ident.bytes().all(|b| b.is_ascii_digit()))
}

/// The JSON schema of a device's `configuration`: `ident` required, any other keys allowed.
fn device_configuration_schema(protocol_id: u64) -> Value {
    if protocol_id == TELTONIKA {
        return json!({
            "type": "object",
            "properties": {
                "ident": {
                    "type": "string",
                    "title": "IMEI",
                    "description": "The tracker's IMEI, as it sends it at the handshake",
                    "pattern": IMEI_PATTERN
                }
            },
            "required": ["ident"],
            "additionalProperties": true
        });
    }
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

/// The JSON schema of a Teltonika channel's `configuration` (docs/teltonika.md).
fn teltonika_configuration_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "port": {"type": "integer", "minimum": 0, "maximum": 65535, "default": 0,
                "title": "TCP port (0: a free port from gw.channel_ports, written back here)"},
            "udp": {"type": "boolean", "default": false, "title": "UDP (not supported yet)"},
            "max_connections": {"type": "integer", "minimum": 1, "default": 10000},
            "max_packet_size": {"type": "integer", "minimum": 3, "maximum": 1048576, "default": 65536,
                "title": "Largest data field of a frame, bytes"},
            "handshake_timeout": {"type": "integer", "minimum": 1, "default": 30, "title": "Seconds"},
            "frame_timeout": {"type": "integer", "minimum": 1, "default": 60, "title": "Seconds from a frame's first byte to its last"},
            "inactivity_timeout": {"type": "integer", "minimum": 1, "default": 600, "title": "Seconds without a byte"},
            "command_timeout": {"type": "integer", "minimum": 1, "default": 15, "title": "Seconds a command waits for its response"},
            "accept_unknown": {"type": "boolean", "default": true,
                "title": "Accept IMEIs with no device (their messages stay in the channel)"}
        },
        "additionalProperties": false
    })
}

/// The JSON schema of a channel's `configuration` for protocol `name`.
fn channel_configuration_schema(name: &str) -> Value {
    if name == "teltonika" {
        return teltonika_configuration_schema();
    }
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
                            "clean_session": {"type": "boolean", "default": false,
                                "title": "Start without the broker's session (false: the broker keeps messages while tern is away; QoS 1 is acknowledged once stored)"},
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
        let params: Vec<Value> = match self.message_parameters {
            Parameters::List(list) => list
                .iter()
                .map(|p| json!({"name": p.name, "type": p.r#type, "unit": p.unit, "info": p.info}))
                .collect(),
            Parameters::Teltonika => tern_teltonika::message_parameters(),
        };
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
            "configuration": device_configuration_schema(self.protocol_id),
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
            let key = if p.id == TELTONIKA { "port" } else { "ident" };
            assert!(v["configuration"]["properties"][key].is_object());
        }
        let t = device_type(TELTONIKA).expect("teltonika").item();
        assert_eq!(
            t["configuration"]["properties"]["ident"]["pattern"],
            IMEI_PATTERN
        );
        assert!(ident_fits(TELTONIKA, "356307042441013"));
        assert!(!ident_fits(TELTONIKA, "35630704244"));
        assert!(ident_fits(1, "anything"));
        let t = DEVICE_TYPES[0].item();
        assert_eq!(t["protocol_id"], 1);
        assert_eq!(t["protocol_name"], "http");
        assert!(t["configuration"]["properties"]["ident"]["pattern"].is_string());
        assert!(t["title"].is_string());
    }
}
