//! The device types and protocols tern knows (docs/flespi.md#devices). Until channels exist this
//! is the whole catalogue: a device's protocol comes from its `device_type_id`. The channel work
//! grows this list; nothing else in tern spells a device type.

/// One device type of one protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceType {
    pub id: u64,
    pub name: &'static str,
    pub protocol_id: u64,
    pub protocol_name: &'static str,
}

/// Every device type tern serves.
pub const DEVICE_TYPES: &[DeviceType] = &[
    // Devices that post JSON messages over HTTP (and over REST, `POST /gw/devices/{sel}/messages`).
    DeviceType {
        id: 1,
        name: "http",
        protocol_id: 1,
        protocol_name: "http",
    },
    // Devices that publish JSON messages over MQTT.
    DeviceType {
        id: 2,
        name: "mqtt",
        protocol_id: 2,
        protocol_name: "mqtt",
    },
];

/// The device type `id`.
pub fn device_type(id: u64) -> Option<&'static DeviceType> {
    DEVICE_TYPES.iter().find(|t| t.id == id)
}
