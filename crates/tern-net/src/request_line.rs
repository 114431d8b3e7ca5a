//! Percent-encodes what a client left raw in the request target of the first HTTP request of a
//! connection, before hyper parses it.
//!
//! flespi's selectors are written with characters a URI may not hold: spaces, quotes, `<`, `>`,
//! braces (`/gw/devices/{last_active < (now() - 86400)}`). curl sends them as typed (with `-g`),
//! and hyper answers such a request with a bare 400 before the REST API sees it. Encoding them
//! here turns the request into the one the client meant; the API then decodes the path as for
//! any other request, and a selector that still does not parse gets the API's JSON error.
//!
//! Only the request line of the first request is touched (a command-line client opens one
//! connection per call); everything after it passes through unchanged, and so does a line
//! longer than [`MAX_LINE`] or one that does not end in ` HTTP/1.x`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The longest request line that is rewritten.
pub const MAX_LINE: usize = 8 * 1024;

/// A stream whose first request line is made valid.
pub struct RequestLineFix<I> {
    inner: I,
    /// Bytes read while looking for the end of the request line, then the rewritten line and
    /// whatever followed it, handed out before reading on.
    buf: BytesMut,
    /// The request line has been handled; `buf` drains and the stream passes through.
    done: bool,
}

impl<I> RequestLineFix<I> {
    pub fn new(inner: I) -> Self {
        RequestLineFix {
            inner,
            buf: BytesMut::new(),
            done: false,
        }
    }
}

/// Whether a byte of a request target must be percent-encoded (RFC 3986: not allowed in a URI).
fn must_encode(b: u8) -> bool {
    matches!(
        b,
        b' ' | b'"' | b'<' | b'>' | b'\\' | b'^' | b'`' | b'{' | b'|' | b'}'
    ) || !(0x20..0x7f).contains(&b)
}

/// The request line (`line`, without its CRLF) with its target encoded; `None` when it needs
/// nothing or does not look like an HTTP/1 request line.
pub fn fix_line(line: &[u8]) -> Option<Vec<u8>> {
    let method_end = line.iter().position(|&b| b == b' ')?;
    let version_at = line.len().checked_sub(9)?;
    if version_at <= method_end || !line[version_at..].starts_with(b" HTTP/1.") {
        return None;
    }
    let target = &line[method_end + 1..version_at];
    if !target.iter().copied().any(must_encode) {
        return None;
    }
    let mut out = Vec::with_capacity(line.len() + 16);
    out.extend_from_slice(&line[..=method_end]);
    for &b in target {
        if must_encode(b) {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        } else {
            out.push(b);
        }
    }
    out.extend_from_slice(&line[version_at..]);
    Some(out)
}

impl<I: AsyncRead + Unpin> RequestLineFix<I> {
    /// Reads until the request line is complete (or cannot be), then rewrites it in `buf`.
    fn poll_line(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.done {
            if let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
                let end = if nl > 0 && self.buf[nl - 1] == b'\r' {
                    nl - 1
                } else {
                    nl
                };
                if let Some(line) = fix_line(&self.buf[..end]) {
                    let rest = self.buf.split_off(end);
                    self.buf.clear();
                    self.buf.extend_from_slice(&line);
                    self.buf.unsplit(rest);
                }
                self.done = true;
                break;
            }
            if self.buf.len() >= MAX_LINE {
                self.done = true;
                break;
            }
            let mut chunk = [0u8; 2048];
            let mut rb = ReadBuf::new(&mut chunk);
            match Pin::new(&mut self.inner).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    if rb.filled().is_empty() {
                        // End of stream before a whole line: hand out what there is.
                        self.done = true;
                        break;
                    }
                    self.buf.extend_from_slice(rb.filled());
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for RequestLineFix<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.done {
            match this.poll_line(cx) {
                Poll::Ready(Ok(())) => {}
                other => return other,
            }
        }
        if !this.buf.is_empty() {
            let n = this.buf.len().min(out.remaining());
            out.put_slice(&this.buf[..n]);
            this.buf.advance(n);
            if this.buf.is_empty() {
                // Give the memory back: the rest of the connection passes through.
                this.buf = BytesMut::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, out)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for RequestLineFix<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    #[test]
    fn encodes_only_what_a_uri_cannot_hold() {
        let fixed = fix_line(b"GET /gw/devices/{last_active < 5}?fields=id HTTP/1.1").unwrap();
        assert_eq!(
            fixed,
            b"GET /gw/devices/%7Blast_active%20%3C%205%7D?fields=id HTTP/1.1"
        );
        assert_eq!(fix_line(b"GET /platform/tokens/all HTTP/1.1"), None);
        assert_eq!(fix_line(b"not http"), None);
        assert_eq!(fix_line(b"GET  HTTP/1.1"), None);
    }

    #[tokio::test]
    async fn the_first_line_is_rewritten_and_the_rest_passes() {
        let input: &[u8] =
            b"GET /a/{x == \"y\"} HTTP/1.1\r\nHost: h\r\n\r\nGET /b/{z} HTTP/1.1\r\n\r\n";
        let mut s = RequestLineFix::new(input);
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        assert_eq!(
            out,
            b"GET /a/%7Bx%20==%20%22y%22%7D HTTP/1.1\r\nHost: h\r\n\r\nGET /b/{z} HTTP/1.1\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn a_line_split_over_reads_and_one_without_end_pass() {
        let (mut w, r) = tokio::io::duplex(64);
        let reader = tokio::spawn(async move {
            let mut s = RequestLineFix::new(r);
            let mut out = Vec::new();
            s.read_to_end(&mut out).await.unwrap();
            out
        });
        use tokio::io::AsyncWriteExt;
        w.write_all(b"GET /x/{a").await.unwrap();
        tokio::task::yield_now().await;
        w.write_all(b"} HTTP/1.1\r\n\r\n").await.unwrap();
        drop(w);
        assert_eq!(reader.await.unwrap(), b"GET /x/%7Ba%7D HTTP/1.1\r\n\r\n");

        let mut s = RequestLineFix::new(&b"GET /no/end"[..]);
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"GET /no/end");
    }
}
