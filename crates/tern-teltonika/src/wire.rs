//! Wire helpers: CRC-16/IBM (docs/teltonika.md#frame) and a bounds-checked big-endian reader over a
//! frame's `Bytes`.

use bytes::Bytes;

use crate::error::DecodeError;

/// CRC-16/IBM as docs/teltonika.md#frame defines it: polynomial 0xA001 reflected, init 0, no final
/// xor.
pub fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        // The table has 256 entries, so a `u8` index is always in range.
        crc = (crc >> 8) ^ CRC_TABLE[usize::from((crc as u8) ^ b)];
    }
    crc
}

const CRC_TABLE: [u16; 256] = {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u16;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// Reads big-endian integers and slices from a frame's data field. Every read is bounds-checked
/// and fails with [`DecodeError::Overrun`] naming the record and the field, so a record that runs
/// past the data field is a protocol error, never a panic. Slices share the frame's buffer.
#[derive(Debug)]
pub(crate) struct Reader {
    buf: Bytes,
    pos: usize,
    /// The record being read (1-based, 0 before the first), for error messages.
    pub(crate) record: u8,
}

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Self {
        Reader {
            buf,
            pos: 0,
            record: 0,
        }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let end = self.pos.checked_add(N);
        match end.and_then(|end| self.buf.get(self.pos..end)) {
            Some(s) => {
                let mut out = [0u8; N];
                out.copy_from_slice(s);
                self.pos += N;
                Ok(out)
            }
            None => Err(DecodeError::Overrun {
                record: self.record,
                field,
            }),
        }
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        self.array::<1>(field).map(|[b]| b)
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        self.array(field).map(u16::from_be_bytes)
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        self.array(field).map(u32::from_be_bytes)
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        self.array(field).map(u64::from_be_bytes)
    }

    /// `len` bytes as a view of the frame (no copy).
    pub(crate) fn bytes(&mut self, len: usize, field: &'static str) -> Result<Bytes, DecodeError> {
        match self.pos.checked_add(len) {
            Some(end) if end <= self.buf.len() => {
                let out = self.buf.slice(self.pos..end);
                self.pos = end;
                Ok(out)
            }
            _ => Err(DecodeError::Overrun {
                record: self.record,
                field,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_ibm_check_value() {
        // The catalogue check value of CRC-16/ARC (= IBM): "123456789" -> 0xBB3D.
        assert_eq!(crc16(b"123456789"), 0xBB3D);
    }

    #[test]
    fn reader_overrun_is_an_error() {
        let mut r = Reader::new(Bytes::from_static(&[1, 2, 3]));
        assert_eq!(r.u16("a"), Ok(0x0102));
        assert_eq!(
            r.u16("b"),
            Err(DecodeError::Overrun {
                record: 0,
                field: "b"
            })
        );
        assert_eq!(r.u8("c"), Ok(3));
        assert!(r.bytes(1, "d").is_err());
        assert_eq!(r.bytes(0, "e").map(|b| b.len()), Ok(0));
    }
}
