//! MQTT over WebSocket (docs/flespi.md#listeners; MQTT 5.0 §6): the upgrade on any path, the
//! subprotocol answer, and [`WsStream`], which turns a WebSocket into the byte stream the driver
//! reads and writes, so MQTT behaves exactly as on TCP.
//!
//! - Binary frames only [MQTT-6.0.0-1]: a text frame closes the client with a protocol error.
//! - The bytes of all binary messages form one stream: a packet may span messages and a
//!   message may hold several packets [MQTT-6.0.0-2].
//! - A message larger than the configured maximum closes the client (packet too large).
//! - Each driver write becomes one binary frame (at most [`MAX_OUT_FRAME`] bytes), so batched
//!   deliveries stay batched.
//! - WebSocket pings are answered by tungstenite and do not count as MQTT keep alive.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Sink, Stream};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tern_broker::{CloseReason, Violation};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};

use crate::accept::{Acceptor, Listener};
use crate::driver::{Peer, TransportClose, run_connection};

/// The subprotocols tern answers, in order of preference.
pub const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Largest binary frame tern sends; a larger write goes out in several frames.
pub const MAX_OUT_FRAME: usize = 128 * 1024;

/// tungstenite's read buffer is allocated eagerly per connection: keep it small, it grows for
/// large messages.
const READ_BUFFER: usize = 8 * 1024;

/// Limits of the WebSocket transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WsSettings {
    /// Largest message (all frames of it) accepted from a client, bytes.
    pub max_message_size: usize,
}

impl Default for WsSettings {
    fn default() -> Self {
        WsSettings {
            max_message_size: 2 * 1024 * 1024,
        }
    }
}

impl WsSettings {
    fn tungstenite(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER)
            // Every frame goes to the socket at once: the driver batches already.
            .write_buffer_size(0)
            // One outgoing frame plus control frames can wait for a slow socket; the driver
            // stops writing until they are gone.
            .max_write_buffer_size(2 * MAX_OUT_FRAME)
            .max_message_size(Some(self.max_message_size))
            .max_frame_size(Some(self.max_message_size))
    }
}

/// Whether `headers` contain `token` in a comma-separated list header (case-insensitive).
fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// Whether the request asks for a WebSocket upgrade (RFC 6455 §4.2.1). Any path qualifies.
pub fn is_upgrade_request<B>(req: &Request<B>) -> bool {
    req.method() == Method::GET
        && header_has_token(req.headers(), header::CONNECTION, "upgrade")
        && header_has_token(req.headers(), header::UPGRADE, "websocket")
}

/// The subprotocol to answer with: `mqtt` if offered, else `mqttv3.1`, else none (lenient
/// clients that offer nothing, or something else, get no header). The client's own spelling is
/// echoed, since browsers compare the answer byte for byte with what they offered.
pub fn select_subprotocol(headers: &HeaderMap) -> Option<HeaderValue> {
    SUBPROTOCOLS.iter().find_map(|wanted| {
        headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .find_map(|v| {
                let s = v.to_str().ok()?;
                s.split(',')
                    .map(str::trim)
                    .find(|t| t.eq_ignore_ascii_case(wanted))
                    .and_then(|t| HeaderValue::from_str(t).ok())
            })
    })
}

fn plain(status: StatusCode, text: &'static str) -> Response<axum::body::Body> {
    let mut res = Response::new(axum::body::Body::from(text));
    *res.status_mut() = status;
    res
}

/// Answers an upgrade request and, once hyper hands the connection over, runs MQTT on it in
/// a task of the shutdown tree. The connection keeps its permit while it lives.
pub(crate) fn upgrade(
    mut req: Request<Incoming>,
    addr: SocketAddr,
    listener: Listener,
    acceptor: &Acceptor,
    settings: WsSettings,
    permit: Arc<OwnedSemaphorePermit>,
) -> Response<axum::body::Body> {
    let headers = req.headers();
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        let mut res = plain(
            StatusCode::UPGRADE_REQUIRED,
            "only WebSocket version 13 is supported\n",
        );
        res.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return res;
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return plain(StatusCode::BAD_REQUEST, "Sec-WebSocket-Key is missing\n");
    };
    let accept = derive_accept_key(key.as_bytes());
    let protocol = select_subprotocol(headers);
    let on_upgrade = hyper::upgrade::on(&mut req);

    let broker = acceptor.broker.clone();
    let metrics = acceptor.metrics.clone();
    acceptor.tracker.spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(err) => {
                tracing::debug!(peer = %addr, listener = listener.name(), %err, "WebSocket upgrade failed");
                return;
            }
        };
        let ws = WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            Some(settings.tungstenite()),
        )
        .await;
        let stream = WsStream::new(ws, addr);
        run_connection(broker, metrics, Peer { addr, listener }, stream).await;
        drop(permit);
    });

    let mut res = Response::new(axum::body::Body::empty());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if let Some(p) = protocol {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, p);
    }
    res
}

/// A WebSocket as a byte stream: reads yield the bytes of binary messages, each write sends
/// one binary frame. Shutting down sends a close frame whose code says why (1003 after a text
/// frame, 1009 after an over-size message, 1002 after a WebSocket protocol error, 1000
/// otherwise).
#[derive(Debug)]
pub struct WsStream<S> {
    ws: WebSocketStream<S>,
    peer: SocketAddr,
    /// The unread rest of the last binary message.
    pending: Bytes,
    close: Option<CloseFrame>,
    close_queued: bool,
}

impl<S> WsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    pub fn new(ws: WebSocketStream<S>, peer: SocketAddr) -> WsStream<S> {
        WsStream {
            ws,
            peer,
            pending: Bytes::new(),
            close: None,
            close_queued: false,
        }
    }

    /// Remembers the close code for shutdown, logs why, and returns the error that makes the
    /// driver close with `reason`.
    fn fail(&mut self, code: CloseCode, why: &'static str, reason: CloseReason) -> io::Error {
        tracing::info!(peer = %self.peer, %reason, "closing WebSocket client: {why}");
        self.close = Some(CloseFrame {
            code,
            reason: why.into(),
        });
        TransportClose::error(reason)
    }
}

fn ws_io_error(err: tungstenite::Error) -> io::Error {
    match err {
        tungstenite::Error::Io(e) => e,
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            io::Error::from(io::ErrorKind::BrokenPipe)
        }
        other => io::Error::other(other),
    }
}

impl<S> AsyncRead for WsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending[..n]);
                this.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            let item = ready!(Pin::new(&mut this.ws).poll_next(cx));
            match item {
                // The close handshake is done or the stream ended: end of file.
                None => return Poll::Ready(Ok(())),
                Some(Ok(Message::Binary(data))) => this.pending = data,
                Some(Ok(Message::Text(_))) => {
                    let reason = Violation::WebSocketText.into();
                    return Poll::Ready(Err(this.fail(
                        CloseCode::Unsupported,
                        "text frame",
                        reason,
                    )));
                }
                // Pings are answered by tungstenite; a close frame is answered too, and the
                // next poll reports the end.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Close(_))) => {}
                Some(Ok(Message::Frame(_))) => {}
                Some(Err(tungstenite::Error::Capacity(CapacityError::MessageTooLong {
                    size,
                    max_size,
                }))) => {
                    tracing::info!(peer = %this.peer, size, max_size, "WebSocket message over the limit");
                    return Poll::Ready(Err(this.fail(
                        CloseCode::Size,
                        "message too large",
                        CloseReason::PacketTooLarge,
                    )));
                }
                Some(Err(tungstenite::Error::Protocol(err))) => {
                    let reason = Violation::WebSocketProtocol(err.to_string()).into();
                    return Poll::Ready(Err(this.fail(
                        CloseCode::Protocol,
                        "WebSocket protocol error",
                        reason,
                    )));
                }
                Some(Err(
                    tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed,
                )) => return Poll::Ready(Ok(())),
                Some(Err(err)) => return Poll::Ready(Err(ws_io_error(err))),
            }
        }
    }
}

impl<S> AsyncWrite for WsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        ready!(Pin::new(&mut this.ws).poll_ready(cx)).map_err(ws_io_error)?;
        let n = buf.len().min(MAX_OUT_FRAME);
        // One copy per write (not per packet): tungstenite frames owned bytes.
        Pin::new(&mut this.ws)
            .start_send(Message::Binary(Bytes::copy_from_slice(&buf[..n])))
            .map_err(ws_io_error)?;
        Poll::Ready(Ok(n))
    }

    /// Gathers the slices into one frame (up to `MAX_OUT_FRAME`): the connection's output
    /// comes in segments (large payloads are shared, not copied), and a frame per segment
    /// would be a frame per packet.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total == 0 {
            return Poll::Ready(Ok(0));
        }
        ready!(Pin::new(&mut this.ws).poll_ready(cx)).map_err(ws_io_error)?;
        let n = total.min(MAX_OUT_FRAME);
        let mut frame = BytesMut::with_capacity(n);
        for b in bufs {
            let room = n - frame.len();
            if room == 0 {
                break;
            }
            frame.extend_from_slice(&b[..b.len().min(room)]);
        }
        Pin::new(&mut this.ws)
            .start_send(Message::Binary(frame.freeze()))
            .map_err(ws_io_error)?;
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().ws)
            .poll_flush(cx)
            .map_err(ws_io_error)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_queued {
            if ready!(Pin::new(&mut this.ws).poll_ready(cx)).is_ok() {
                let frame = this.close.take().unwrap_or(CloseFrame {
                    code: CloseCode::Normal,
                    reason: "".into(),
                });
                // Fails only when the connection is closing already.
                let _ = Pin::new(&mut this.ws).start_send(Message::Close(Some(frame)));
            }
            this.close_queued = true;
        }
        match ready!(Pin::new(&mut this.ws).poll_close(cx)) {
            Ok(())
            | Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                Poll::Ready(Ok(()))
            }
            Err(err) => Poll::Ready(Err(ws_io_error(err))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_codec::ReasonCode;

    fn offer(values: &[&'static str]) -> Option<HeaderValue> {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(v));
        }
        select_subprotocol(&headers)
    }

    #[test]
    fn subprotocol_answers_one_that_was_offered() {
        assert_eq!(offer(&["mqtt"]).unwrap(), "mqtt");
        assert_eq!(offer(&["mqttv3.1"]).unwrap(), "mqttv3.1");
        assert_eq!(offer(&["mqttv3.1, mqtt"]).unwrap(), "mqtt");
        assert_eq!(offer(&["foo", "mqttv3.1"]).unwrap(), "mqttv3.1");
        assert_eq!(offer(&["MQTT"]).unwrap(), "MQTT");
        assert!(offer(&[]).is_none());
        assert!(offer(&["graphql-ws"]).is_none());
    }

    #[test]
    fn upgrade_request_detection() {
        let req = Request::builder()
            .method(Method::GET)
            .uri("/anything")
            .header(header::CONNECTION, "keep-alive, Upgrade")
            .header(header::UPGRADE, "WebSocket")
            .body(())
            .unwrap();
        assert!(is_upgrade_request(&req));
        let req = Request::builder()
            .method(Method::GET)
            .uri("/health")
            .body(())
            .unwrap();
        assert!(!is_upgrade_request(&req));
    }

    /// A server-side WsStream over an in-memory pipe, and the client end of it.
    async fn pair(
        max: usize,
    ) -> (
        WsStream<tokio::io::DuplexStream>,
        WebSocketStream<tokio::io::DuplexStream>,
    ) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let settings = WsSettings {
            max_message_size: max,
        };
        let server =
            WebSocketStream::from_raw_socket(a, Role::Server, Some(settings.tungstenite())).await;
        let client = WebSocketStream::from_raw_socket(b, Role::Client, None).await;
        (
            WsStream::new(server, "127.0.0.1:1".parse().unwrap()),
            client,
        )
    }

    #[tokio::test]
    async fn binary_messages_form_one_stream() {
        use futures_util::{SinkExt, StreamExt};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut server, mut client) = pair(1024).await;
        client
            .send(Message::Binary(Bytes::from_static(b"ab")))
            .await
            .unwrap();
        client
            .send(Message::Ping(Bytes::from_static(b"p")))
            .await
            .unwrap();
        client
            .send(Message::Binary(Bytes::from_static(b"")))
            .await
            .unwrap();
        client
            .send(Message::Binary(Bytes::from_static(b"cdef")))
            .await
            .unwrap();
        let mut got = [0u8; 6];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"abcdef");

        server.write_all(b"hello").await.unwrap();
        server.flush().await.unwrap();
        // The pong comes first, then our frame.
        loop {
            match client.next().await.unwrap().unwrap() {
                Message::Pong(_) => continue,
                Message::Binary(b) => {
                    assert_eq!(&b[..], b"hello");
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn text_frame_is_a_protocol_error() {
        use futures_util::{SinkExt, StreamExt};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut server, mut client) = pair(1024).await;
        client.send(Message::text("CONNECT")).await.unwrap();
        let mut buf = [0u8; 8];
        let err = server.read(&mut buf).await.unwrap_err();
        let TransportClose(reason) = err.get_ref().unwrap().downcast_ref().unwrap();
        assert_eq!(reason.reason_code(), ReasonCode::PROTOCOL_ERROR);
        server.shutdown().await.unwrap();
        match client.next().await.unwrap().unwrap() {
            Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Unsupported),
            other => panic!("expected a close frame, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn oversize_message_is_packet_too_large() {
        use futures_util::{SinkExt, StreamExt};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut server, mut client) = pair(16).await;
        client
            .send(Message::Binary(Bytes::from(vec![0u8; 17])))
            .await
            .unwrap();
        let mut buf = [0u8; 8];
        let err = server.read(&mut buf).await.unwrap_err();
        let TransportClose(reason) = err.get_ref().unwrap().downcast_ref().unwrap();
        assert_eq!(*reason, CloseReason::PacketTooLarge);
        server.shutdown().await.unwrap();
        match client.next().await.unwrap().unwrap() {
            Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Size),
            other => panic!("expected a close frame, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn large_writes_are_split_into_frames() {
        use futures_util::StreamExt;
        use tokio::io::AsyncWriteExt;
        let (mut server, mut client) = pair(1024).await;
        let data = vec![7u8; MAX_OUT_FRAME + 10];
        let reader = tokio::spawn(async move {
            let mut sizes = Vec::new();
            while sizes.iter().sum::<usize>() < MAX_OUT_FRAME + 10 {
                match client.next().await.unwrap().unwrap() {
                    Message::Binary(b) => sizes.push(b.len()),
                    other => panic!("unexpected {other:?}"),
                }
            }
            sizes
        });
        server.write_all(&data).await.unwrap();
        server.flush().await.unwrap();
        assert_eq!(reader.await.unwrap(), vec![MAX_OUT_FRAME, 10]);
    }
}
