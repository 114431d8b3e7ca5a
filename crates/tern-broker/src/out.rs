//! A connection's output: encoded packets waiting to be written, in order.
//!
//! Small packets are encoded into one growing buffer (`tail`). A large payload is not copied
//! into it: the bytes before it are frozen into a segment and the payload itself, shared with
//! every other receiver of the message, follows as the next segment. The driver writes the
//! segments with vectored writes ([`Buf::chunks_vectored`]), so one `writev` still carries many
//! packets.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, Bytes, BytesMut};

/// Payloads at least this large are shared with the write instead of copied: below it a copy
/// is cheaper than one more segment and the reference count it touches.
pub const SHARE_PAYLOAD_FROM: usize = 1024;

/// The write buffer's first allocation after it was released: room for a burst of small
/// packets (acknowledgements, a CONNACK with its v5 properties) without growing.
const TAIL_FIRST: usize = 1024;

/// Encoded packets waiting to be written: frozen segments, then the tail being appended to.
#[derive(Debug, Default)]
pub struct OutBuf {
    segments: VecDeque<Bytes>,
    /// Bytes in `segments`.
    segments_len: usize,
    tail: BytesMut,
}

impl OutBuf {
    /// Bytes waiting to be written.
    pub fn len(&self) -> usize {
        self.segments_len + self.tail.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The buffer packets are encoded into; it is written after every segment. Allocated on
    /// first use after a [`release`](OutBuf::release).
    pub fn tail(&mut self) -> &mut BytesMut {
        if self.tail.capacity() == 0 {
            self.tail.reserve(TAIL_FIRST);
        }
        &mut self.tail
    }

    /// Frees the buffers once everything was written, so that an idle connection holds no
    /// write buffer. Does nothing while bytes wait.
    pub fn release(&mut self) {
        // Even at no capacity left: a consumed buffer still holds the allocation it advanced
        // through (or a share of it, once split).
        if self.is_empty() {
            self.tail = BytesMut::new();
            self.segments = VecDeque::new();
        }
    }

    /// Appends `bytes` without copying them: what was encoded so far is frozen into a segment
    /// first, so that the order is kept.
    pub fn push_shared(&mut self, bytes: Bytes) {
        if bytes.is_empty() {
            return;
        }
        if !self.tail.is_empty() {
            let head = self.tail.split().freeze();
            self.push_segment(head);
        }
        self.push_segment(bytes);
    }

    fn push_segment(&mut self, bytes: Bytes) {
        self.segments_len += bytes.len();
        self.segments.push_back(bytes);
    }

    /// Takes everything waiting as one buffer (tests and diagnostics; copies the segments).
    pub fn take_all(&mut self) -> BytesMut {
        let mut all = BytesMut::with_capacity(self.len());
        for s in self.segments.drain(..) {
            all.extend_from_slice(&s);
        }
        self.segments_len = 0;
        all.extend_from_slice(&self.tail);
        self.tail.clear();
        all
    }
}

impl Buf for OutBuf {
    fn remaining(&self) -> usize {
        self.len()
    }

    fn chunk(&self) -> &[u8] {
        match self.segments.front() {
            Some(s) => s,
            None => &self.tail,
        }
    }

    fn advance(&mut self, mut cnt: usize) {
        while cnt > 0 {
            let Some(front) = self.segments.front_mut() else {
                self.tail.advance(cnt);
                return;
            };
            if cnt < front.len() {
                front.advance(cnt);
                self.segments_len -= cnt;
                return;
            }
            cnt -= front.len();
            self.segments_len -= front.len();
            self.segments.pop_front();
        }
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for s in self
            .segments
            .iter()
            .map(|s| &s[..])
            .chain(std::iter::once(&self.tail[..]))
        {
            if n == dst.len() {
                break;
            }
            if !s.is_empty() {
                dst[n] = IoSlice::new(s);
                n += 1;
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    #[test]
    fn segments_keep_the_order_and_advance_across_them() {
        let mut out = OutBuf::default();
        out.tail().put_slice(b"ab");
        out.push_shared(Bytes::from_static(b"PAYLOAD"));
        out.tail().put_slice(b"cd");
        out.push_shared(Bytes::from_static(b"XY"));
        out.tail().put_slice(b"e");
        assert_eq!(out.len(), 14);
        let mut slices = [IoSlice::new(&[]); 8];
        let n = out.chunks_vectored(&mut slices);
        let joined: Vec<u8> = slices[..n].iter().flat_map(|s| s.to_vec()).collect();
        assert_eq!(joined, b"abPAYLOADcdXYe");
        out.advance(4);
        assert_eq!(out.chunk(), b"YLOAD");
        out.advance(8);
        assert_eq!(out.chunk(), b"Y");
        assert_eq!(out.len(), 2);
        out.advance(1);
        assert_eq!(out.chunk(), b"e");
        out.advance(1);
        assert!(out.is_empty());
    }

    #[test]
    fn take_all_copies_everything_out() {
        let mut out = OutBuf::default();
        out.tail().put_slice(b"1");
        out.push_shared(Bytes::from_static(b"22"));
        out.tail().put_slice(b"3");
        assert_eq!(&out.take_all()[..], b"1223");
        assert!(out.is_empty());
    }
}
