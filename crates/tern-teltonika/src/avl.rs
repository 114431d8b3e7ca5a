//! AVL records of Codec 8, 8 Extended and 16 (docs/teltonika.md#record, #io-elements): the model
//! and the parse of a data field.
//!
//! IO values are integers, and the variable-length values of Codec 8 Extended are `Bytes` views of
//! the frame: no IO element copies the frame.

use bytes::Bytes;

use crate::error::DecodeError;
use crate::wire::Reader;

/// The AVL codecs (docs/teltonika.md#frame, codec id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AvlCodec {
    /// Codec 8, id `08`.
    Codec8,
    /// Codec 8 Extended, id `8E`.
    Codec8Extended,
    /// Codec 16, id `10`.
    Codec16,
}

impl AvlCodec {
    /// The codec for a codec id byte, if it is an AVL codec.
    pub fn from_id(id: u8) -> Option<Self> {
        match id {
            CODEC_8 => Some(AvlCodec::Codec8),
            CODEC_8E => Some(AvlCodec::Codec8Extended),
            CODEC_16 => Some(AvlCodec::Codec16),
            _ => None,
        }
    }

    /// The codec id byte (also the message's `codec.id`: 8, 142, 16).
    pub fn id(self) -> u8 {
        match self {
            AvlCodec::Codec8 => CODEC_8,
            AvlCodec::Codec8Extended => CODEC_8E,
            AvlCodec::Codec16 => CODEC_16,
        }
    }
}

/// Codec id of Codec 8.
pub const CODEC_8: u8 = 0x08;
/// Codec id of Codec 8 Extended.
pub const CODEC_8E: u8 = 0x8E;
/// Codec id of Codec 16.
pub const CODEC_16: u8 = 0x10;

/// The GPS element of a record (docs/teltonika.md#record), raw values as sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Gps {
    /// Degrees x 1e7, two's complement.
    pub longitude: i32,
    /// Degrees x 1e7, two's complement.
    pub latitude: i32,
    /// Metres.
    pub altitude: i16,
    /// Degrees from north, clockwise.
    pub angle: u16,
    /// Satellites in use; 0 means no valid fix (docs/teltonika.md#record, the validity decision).
    pub satellites: u8,
    /// km/h.
    pub speed: u16,
}

/// One IO element value (docs/teltonika.md#io-elements): an unsigned integer of its width, or
/// variable-length bytes (Codec 8 Extended only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IoValue {
    U8(u8),
    U16(u16),
    U32(u32),
    U64(u64),
    /// A variable-length (NX) value: a view of the frame.
    Bytes(Bytes),
}

impl IoValue {
    /// The integer of a fixed-width value, `None` for variable-length bytes.
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            IoValue::U8(v) => Some(u64::from(*v)),
            IoValue::U16(v) => Some(u64::from(*v)),
            IoValue::U32(v) => Some(u64::from(*v)),
            IoValue::U64(v) => Some(*v),
            IoValue::Bytes(_) => None,
        }
    }

    /// The width on the wire: 1, 2, 4, 8, or `None` for variable-length.
    pub fn width(&self) -> Option<u8> {
        match self {
            IoValue::U8(_) => Some(1),
            IoValue::U16(_) => Some(2),
            IoValue::U32(_) => Some(4),
            IoValue::U64(_) => Some(8),
            IoValue::Bytes(_) => None,
        }
    }
}

/// One IO element: the AVL id and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoElement {
    pub id: u16,
    pub value: IoValue,
}

/// One AVL record (docs/teltonika.md#record, #io-elements).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Milliseconds since 1970-01-01 UTC.
    pub timestamp_ms: u64,
    /// 0 low, 1 high, 2 panic.
    pub priority: u8,
    pub gps: Gps,
    /// The IO id that triggered the record; 0 when none.
    pub event_io_id: u16,
    /// Codec 16 only: 0 on exit ... 7 periodical.
    pub generation_type: Option<u8>,
    /// IO elements in the order of the frame: the 1-, 2-, 4-, 8-byte groups, then the
    /// variable-length group.
    pub io: Vec<IoElement>,
}

/// The records of one AVL frame (or UDP datagram).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AvlPacket {
    pub codec: AvlCodec,
    pub records: Vec<Record>,
}

impl AvlPacket {
    /// The record count the server ACKs (docs/teltonika.md#frame).
    pub fn ack_count(&self) -> u32 {
        // At most 255 records (a one-byte count).
        self.records.len() as u32
    }
}

/// Parses the data field of an AVL frame from the byte after the codec id: number of data 1, the
/// records, number of data 2. Every count must add up and the records must fill the field exactly.
pub(crate) fn parse_avl(codec: AvlCodec, body: Bytes) -> Result<AvlPacket, DecodeError> {
    let mut r = Reader::new(body);
    let count = r.u8("number of data 1")?;
    if count == 0 {
        return Err(DecodeError::BadCount {
            what: "number of data 1",
            count,
            expected: "1-255",
        });
    }
    let mut records = Vec::with_capacity(usize::from(count));
    for n in 1..=count {
        r.record = n;
        records.push(parse_record(codec, &mut r)?);
    }
    r.record = 0;
    // What is left must be exactly number of data 2.
    let extra = r.remaining().saturating_sub(1);
    if extra > 0 {
        return Err(DecodeError::TrailingBytes { extra });
    }
    let second = r.u8("number of data 2")?;
    if second != count {
        return Err(DecodeError::CountMismatch {
            first: count,
            second,
        });
    }
    Ok(AvlPacket { codec, records })
}

fn parse_record(codec: AvlCodec, r: &mut Reader) -> Result<Record, DecodeError> {
    let timestamp_ms = r.u64("timestamp")?;
    let priority = r.u8("priority")?;
    let gps = Gps {
        longitude: r.u32("longitude")? as i32,
        latitude: r.u32("latitude")? as i32,
        altitude: r.u16("altitude")? as i16,
        angle: r.u16("angle")?,
        satellites: r.u8("satellites")?,
        speed: r.u16("speed")?,
    };
    // docs/teltonika.md#io-elements: the widths of the event id, the counts and the ids per codec.
    let (event_io_id, generation_type, total) = match codec {
        AvlCodec::Codec8 => (
            u16::from(r.u8("event IO id")?),
            None,
            u16::from(r.u8("total IO count")?),
        ),
        AvlCodec::Codec8Extended => (r.u16("event IO id")?, None, r.u16("total IO count")?),
        AvlCodec::Codec16 => (
            r.u16("event IO id")?,
            Some(r.u8("generation type")?),
            u16::from(r.u8("total IO count")?),
        ),
    };
    let mut io = Vec::with_capacity(usize::from(total).min(r.remaining() / 2));
    let mut sum: u32 = 0;
    for width in [1u8, 2, 4, 8] {
        let n = count(codec, r, "IO group count")?;
        sum += u32::from(n);
        for _ in 0..n {
            let id = id(codec, r)?;
            let value = match width {
                1 => IoValue::U8(r.u8("IO value")?),
                2 => IoValue::U16(r.u16("IO value")?),
                4 => IoValue::U32(r.u32("IO value")?),
                _ => IoValue::U64(r.u64("IO value")?),
            };
            io.push(IoElement { id, value });
        }
    }
    if codec == AvlCodec::Codec8Extended {
        let n = r.u16("variable-length IO count")?;
        sum += u32::from(n);
        for _ in 0..n {
            let id = r.u16("IO id")?;
            let len = r.u16("IO value length")?;
            let value = IoValue::Bytes(r.bytes(usize::from(len), "variable-length IO value")?);
            io.push(IoElement { id, value });
        }
    }
    if u32::from(total) != sum {
        return Err(DecodeError::IoCount {
            record: r.record,
            total,
            sum,
        });
    }
    Ok(Record {
        timestamp_ms,
        priority,
        gps,
        event_io_id,
        generation_type,
        io,
    })
}

/// A group count: 2 bytes in Codec 8 Extended, 1 byte otherwise (docs/teltonika.md#io-elements).
fn count(codec: AvlCodec, r: &mut Reader, field: &'static str) -> Result<u16, DecodeError> {
    match codec {
        AvlCodec::Codec8Extended => r.u16(field),
        AvlCodec::Codec8 | AvlCodec::Codec16 => r.u8(field).map(u16::from),
    }
}

/// An IO id: 1 byte in Codec 8, 2 bytes otherwise (docs/teltonika.md#io-elements).
fn id(codec: AvlCodec, r: &mut Reader) -> Result<u16, DecodeError> {
    match codec {
        AvlCodec::Codec8 => r.u8("IO id").map(u16::from),
        AvlCodec::Codec8Extended | AvlCodec::Codec16 => r.u16("IO id"),
    }
}
