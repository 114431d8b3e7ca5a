//! Records to flespi messages (docs/teltonika.md#record, #messages).
//!
//! [`PARAMETERS`] is the one table of the `teltonika` device type's message parameters: the
//! channel serves it in `/gw/channel-protocols` (`message_parameters`) and
//! [`record_to_message`] maps IO elements by it, so what is announced is what is produced.
//! A message is a flat `serde_json::Map` with dotted keys, before the ingest fields
//! (`server.timestamp`, `channel.id`, `protocol.id`, `peer`, `device.*`) the channel adds.

use serde_json::{Map, Value};

use crate::avl::{AvlCodec, AvlPacket, IoValue, Record};

/// A message parameter's JSON type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParameterType {
    Boolean,
    Number,
    String,
}

impl ParameterType {
    /// The name `/gw/channel-protocols` gives the type.
    pub fn as_str(self) -> &'static str {
        match self {
            ParameterType::Boolean => "boolean",
            ParameterType::Number => "number",
            ParameterType::String => "string",
        }
    }
}

/// Where a parameter's value comes from and how it is converted (docs/teltonika.md#record,
/// #messages).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Source {
    /// A field of the record itself (docs/teltonika.md#record: timestamp, priority, GPS element,
    /// event id), or the handshake IMEI.
    Record,
    /// IO element `id`, non-zero = true.
    Boolean(u16),
    /// IO element `id` divided by the divisor ("division is division", docs/teltonika.md#messages).
    Divide(u16, f64),
    /// IO element `id` multiplied by the factor.
    Multiply(u16, u64),
    /// IO element `id` as is.
    AsIs(u16),
    /// IO element `id` (Active GSM Operator) as a decimal string; `gsm.mcc`/`gsm.mnc` follow
    /// from it.
    OperatorCode(u16),
    /// Derived from IO element `id` with another parameter (`gsm.mcc`, `gsm.mnc` from 241).
    Derived(u16),
    /// Any IO id not in this table: `custom.param.<id>`.
    Unknown,
}

impl Source {
    /// The AVL id an IO parameter is read from.
    pub fn avl_id(self) -> Option<u16> {
        match self {
            Source::Boolean(id)
            | Source::Divide(id, _)
            | Source::Multiply(id, _)
            | Source::AsIs(id)
            | Source::OperatorCode(id)
            | Source::Derived(id) => Some(id),
            Source::Record | Source::Unknown => None,
        }
    }
}

/// One message parameter of the `teltonika` device type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Parameter {
    pub name: &'static str,
    pub kind: ParameterType,
    pub unit: Option<&'static str>,
    pub info: &'static str,
    pub source: Source,
}

impl Parameter {
    /// The parameter as `/gw/channel-protocols` lists it in `message_parameters`: `name`,
    /// `type`, `unit` (when it has one) and `info`.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("name".into(), self.name.into());
        m.insert("type".into(), self.kind.as_str().into());
        if let Some(unit) = self.unit {
            m.insert("unit".into(), unit.into());
        }
        m.insert("info".into(), self.info.into());
        Value::Object(m)
    }
}

/// [`PARAMETERS`] as `/gw/channel-protocols` serves them (`message_parameters`).
pub fn message_parameters() -> Vec<Value> {
    PARAMETERS.iter().map(Parameter::to_json).collect()
}

const fn p(
    name: &'static str,
    kind: ParameterType,
    unit: Option<&'static str>,
    info: &'static str,
    source: Source,
) -> Parameter {
    Parameter {
        name,
        kind,
        unit,
        info,
        source,
    }
}

use ParameterType::{Boolean as B, Number as N, String as S};

/// The message parameters of the `teltonika` device type, in message order: the record's own fields
/// (docs/teltonika.md#record, #messages), then the IO elements of the docs/teltonika.md#messages
/// table, then the form of unknown ids.
pub static PARAMETERS: &[Parameter] = &[
    p(
        "ident",
        S,
        None,
        "device IMEI from the handshake",
        Source::Record,
    ),
    p(
        "timestamp",
        N,
        Some("s"),
        "record time, seconds since 1970-01-01 UTC",
        Source::Record,
    ),
    p(
        "codec.id",
        N,
        None,
        "AVL codec: 8, 142 (8 Extended) or 16",
        Source::Record,
    ),
    p(
        "event.priority.enum",
        N,
        None,
        "record priority: 0 low, 1 high, 2 panic",
        Source::Record,
    ),
    p(
        "position.longitude",
        N,
        Some("degrees"),
        "longitude",
        Source::Record,
    ),
    p(
        "position.latitude",
        N,
        Some("degrees"),
        "latitude",
        Source::Record,
    ),
    p(
        "position.altitude",
        N,
        Some("m"),
        "altitude",
        Source::Record,
    ),
    p(
        "position.direction",
        N,
        Some("degrees"),
        "angle from north, clockwise",
        Source::Record,
    ),
    p(
        "position.satellites",
        N,
        None,
        "satellites in use",
        Source::Record,
    ),
    p("position.speed", N, Some("km/h"), "speed", Source::Record),
    p(
        "position.valid",
        B,
        None,
        "fix is valid: satellites > 0",
        Source::Record,
    ),
    p(
        "event.enum",
        N,
        None,
        "AVL id of the IO element that triggered the record (absent when 0)",
        Source::Record,
    ),
    p(
        "event.generation.enum",
        N,
        None,
        "Codec 16 generation type: 0 on exit, 1 on entrance, 2 on both, 3 reserved, 4 hysteresis, 5 on change, 6 eventual, 7 periodical",
        Source::Record,
    ),
    p(
        "din.1",
        B,
        None,
        "Digital Input 1 (AVL 1)",
        Source::Boolean(1),
    ),
    p(
        "din.2",
        B,
        None,
        "Digital Input 2 (AVL 2)",
        Source::Boolean(2),
    ),
    p(
        "din.3",
        B,
        None,
        "Digital Input 3 (AVL 3)",
        Source::Boolean(3),
    ),
    p(
        "ain.1",
        N,
        Some("V"),
        "Analog Input 1 (AVL 9)",
        Source::Divide(9, 1000.0),
    ),
    p(
        "ain.2",
        N,
        Some("V"),
        "Analog Input 2 (AVL 10)",
        Source::Divide(10, 1000.0),
    ),
    p(
        "vehicle.mileage",
        N,
        Some("km"),
        "Total Odometer (AVL 16)",
        Source::Divide(16, 1000.0),
    ),
    p(
        "gsm.signal.level",
        N,
        Some("%"),
        "GSM Signal (AVL 21)",
        Source::Multiply(21, 20),
    ),
    p(
        "external.powersource.voltage",
        N,
        Some("V"),
        "External Voltage (AVL 66)",
        Source::Divide(66, 1000.0),
    ),
    p(
        "battery.voltage",
        N,
        Some("V"),
        "Battery Voltage (AVL 67)",
        Source::Divide(67, 1000.0),
    ),
    p(
        "battery.current",
        N,
        Some("A"),
        "Battery Current (AVL 68)",
        Source::Divide(68, 1000.0),
    ),
    p(
        "gnss.state.enum",
        N,
        None,
        "GNSS Status (AVL 69)",
        Source::AsIs(69),
    ),
    p(
        "battery.level",
        N,
        Some("%"),
        "Battery Level (AVL 113)",
        Source::AsIs(113),
    ),
    p(
        "dout.1",
        B,
        None,
        "Digital Output 1 (AVL 179)",
        Source::Boolean(179),
    ),
    p(
        "dout.2",
        B,
        None,
        "Digital Output 2 (AVL 180)",
        Source::Boolean(180),
    ),
    p(
        "position.pdop",
        N,
        None,
        "GNSS PDOP (AVL 181)",
        Source::Divide(181, 10.0),
    ),
    p(
        "position.hdop",
        N,
        None,
        "GNSS HDOP (AVL 182)",
        Source::Divide(182, 10.0),
    ),
    p(
        "sleep.mode.enum",
        N,
        None,
        "Sleep Mode (AVL 200)",
        Source::AsIs(200),
    ),
    p(
        "gsm.cellid",
        N,
        None,
        "GSM Cell ID (AVL 205)",
        Source::AsIs(205),
    ),
    p(
        "gsm.lac",
        N,
        None,
        "GSM Area Code (AVL 206)",
        Source::AsIs(206),
    ),
    p(
        "engine.ignition.status",
        B,
        None,
        "Ignition (AVL 239)",
        Source::Boolean(239),
    ),
    p(
        "movement.status",
        B,
        None,
        "Movement (AVL 240)",
        Source::Boolean(240),
    ),
    p(
        "gsm.operator.code",
        S,
        None,
        "Active GSM Operator (AVL 241)",
        Source::OperatorCode(241),
    ),
    p(
        "gsm.mcc",
        N,
        None,
        "mobile country code: the first 3 digits of gsm.operator.code",
        Source::Derived(241),
    ),
    p(
        "gsm.mnc",
        N,
        None,
        "mobile network code: the digits of gsm.operator.code after the first 3",
        Source::Derived(241),
    ),
    p(
        "custom.param.<id>",
        N,
        None,
        "IO element with an AVL id not listed here: the unsigned integer, or a lowercase hex string for a variable-length value",
        Source::Unknown,
    ),
];

/// `PARAMETERS` index + 1 of the IO parameter for each AVL id below 256 (0: none). Every id of the
/// docs/teltonika.md#messages table is below 256. Built from `PARAMETERS` at compile time, so the
/// two cannot differ.
static BY_ID: [u8; 256] = {
    let mut index = [0u8; 256];
    let mut i = 0;
    while i < PARAMETERS.len() {
        let id = match PARAMETERS[i].source {
            Source::Boolean(id)
            | Source::Divide(id, _)
            | Source::Multiply(id, _)
            | Source::AsIs(id)
            | Source::OperatorCode(id) => id as usize,
            _ => usize::MAX,
        };
        if id < 256 {
            index[id] = (i + 1) as u8;
        }
        i += 1;
    }
    index
};

/// The IO parameter for an AVL id, `None` for an id not in the docs/teltonika.md#messages table.
pub fn parameter_for(id: u16) -> Option<&'static Parameter> {
    let slot = *BY_ID.get(usize::from(id))?;
    PARAMETERS.get(usize::from(slot).checked_sub(1)?)
}

/// The message of one record (docs/teltonika.md#messages): `ident`, `timestamp`, `codec.id`,
/// `event.priority.enum`, the seven `position.*` keys, `event.enum` (event IO id, when not 0),
/// `event.generation.enum` (Codec 16), then every IO element by [`PARAMETERS`]; an id that appears
/// twice: the last wins.
pub fn record_to_message(ident: &str, codec: AvlCodec, record: &Record) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("ident".into(), ident.into());
    // docs/teltonika.md#record: ms / 1000 as float seconds.
    m.insert(
        "timestamp".into(),
        Value::from(record.timestamp_ms as f64 / 1000.0),
    );
    m.insert("codec.id".into(), codec.id().into());
    m.insert("event.priority.enum".into(), record.priority.into());
    let gps = &record.gps;
    m.insert(
        "position.longitude".into(),
        Value::from(f64::from(gps.longitude) / 1e7),
    );
    m.insert(
        "position.latitude".into(),
        Value::from(f64::from(gps.latitude) / 1e7),
    );
    m.insert("position.altitude".into(), gps.altitude.into());
    m.insert("position.direction".into(), gps.angle.into());
    m.insert("position.satellites".into(), gps.satellites.into());
    m.insert("position.speed".into(), gps.speed.into());
    // docs/teltonika.md#record validity decision: a fix is valid when satellites are in use.
    m.insert("position.valid".into(), (gps.satellites > 0).into());
    if record.event_io_id != 0 {
        m.insert("event.enum".into(), record.event_io_id.into());
    }
    if let Some(generation) = record.generation_type {
        m.insert("event.generation.enum".into(), generation.into());
    }
    for element in &record.io {
        insert_io(&mut m, element.id, &element.value);
    }
    m
}

/// The messages of all records of a frame, in order (one frame = one batch,
/// docs/teltonika.md#messages).
pub fn packet_to_messages(ident: &str, packet: &AvlPacket) -> Vec<Map<String, Value>> {
    packet
        .records
        .iter()
        .map(|r| record_to_message(ident, packet.codec, r))
        .collect()
}

fn insert_io(m: &mut Map<String, Value>, id: u16, value: &IoValue) {
    let known = parameter_for(id).zip(value.as_u64());
    let Some((parameter, v)) = known else {
        // docs/teltonika.md#messages: unknown ids (and variable-length values) are
        // `custom.param.<id>`: the unsigned integer, or lowercase hex for variable-length bytes.
        let value = match value {
            IoValue::Bytes(b) => Value::String(hex(b)),
            _ => value.as_u64().unwrap_or_default().into(),
        };
        m.insert(format!("custom.param.{id}"), value);
        return;
    };
    let name = parameter.name.to_owned();
    match parameter.source {
        Source::Boolean(_) => {
            m.insert(name, (v != 0).into());
        }
        Source::Divide(_, divisor) => {
            m.insert(name, Value::from(v as f64 / divisor));
        }
        Source::Multiply(_, factor) => {
            m.insert(name, v.saturating_mul(factor).into());
        }
        Source::OperatorCode(_) => {
            let code = v.to_string();
            // docs/teltonika.md#messages: `gsm.mcc` = the first 3 digits, `gsm.mnc` = the rest, as
            // numbers.
            let mcc = code.get(..3).and_then(|s| s.parse::<u64>().ok());
            let mnc = code.get(3..).and_then(|s| s.parse::<u64>().ok());
            m.insert(name, code.into());
            if let (Some(mcc), Some(mnc)) = (mcc, mnc) {
                m.insert("gsm.mcc".into(), mcc.into());
                m.insert("gsm.mnc".into(), mnc.into());
            }
        }
        Source::AsIs(_) | Source::Derived(_) | Source::Record | Source::Unknown => {
            m.insert(name, v.into());
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_io_parameter_is_found_by_its_id() {
        for parameter in PARAMETERS {
            if let Source::Derived(_) = parameter.source {
                continue;
            }
            if let Some(id) = parameter.source.avl_id() {
                assert_eq!(parameter_for(id).map(|p| p.name), Some(parameter.name));
            }
        }
        assert_eq!(parameter_for(11), None);
        assert_eq!(parameter_for(256), None);
        assert_eq!(parameter_for(u16::MAX), None);
    }

    #[test]
    fn names_are_unique() {
        let mut names: Vec<_> = PARAMETERS.iter().map(|p| p.name).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(names.len(), before);
    }

    #[test]
    fn parameters_serve_as_json() {
        let list = message_parameters();
        assert_eq!(list.len(), PARAMETERS.len());
        let mileage = list.iter().find(|p| p["name"] == "vehicle.mileage");
        assert_eq!(
            mileage,
            Some(
                &serde_json::json!({"name": "vehicle.mileage", "type": "number", "unit": "km", "info": "Total Odometer (AVL 16)"})
            )
        );
    }

    #[test]
    fn io_values_convert_by_the_table() {
        let mut m = Map::new();
        insert_io(&mut m, 11, &IoValue::U64(u64::MAX));
        insert_io(&mut m, 21, &IoValue::U8(5));
        insert_io(&mut m, 241, &IoValue::U32(24_602));
        insert_io(&mut m, 16, &IoValue::U32(24_079));
        insert_io(
            &mut m,
            1,
            &IoValue::Bytes(bytes::Bytes::from_static(&[0xAB, 0x01])),
        );
        assert_eq!(m.get("custom.param.11"), Some(&Value::from(u64::MAX)));
        assert_eq!(m.get("gsm.signal.level"), Some(&Value::from(100u64)));
        assert_eq!(m.get("gsm.operator.code"), Some(&Value::from("24602")));
        assert_eq!(m.get("gsm.mcc"), Some(&Value::from(246u64)));
        assert_eq!(m.get("gsm.mnc"), Some(&Value::from(2u64)));
        // docs/teltonika.md#messages: division is division.
        assert_eq!(m.get("vehicle.mileage"), Some(&Value::from(24.079)));
        // A variable-length value under a table id keeps the unknown form.
        assert_eq!(m.get("custom.param.1"), Some(&Value::from("ab01")));
        assert_eq!(m.get("din.1"), None);
    }

    #[test]
    fn last_duplicate_wins() {
        let mut m = Map::new();
        insert_io(&mut m, 239, &IoValue::U8(1));
        insert_io(&mut m, 239, &IoValue::U8(0));
        assert_eq!(m.get("engine.ignition.status"), Some(&Value::Bool(false)));
    }
}
