//! tern-net: listeners and the connection driver. This crate owns every socket.
//!
//! MQTT behaves identically on every listener: each one ends in the same driver, over a TCP
//! stream, a TLS stream or a WebSocket turned into a byte stream.
//!
//! Layout:
//! - `listener`: the four listener names (configuration keys and metric labels)
//! - `accept`: the connection limit shared by all listeners, the accept loop
//! - `driver`: one task per connection: read, decode, hand to the broker, write
//! - `tcp`: the `mqtt` listener
//! - `tls`: rustls configuration (PEM files, client certificates, reload) and `mqtts`
//! - `http`: the `http`/`https` listeners: hyper, the router from above, WebSocket upgrades
//! - `ws`: MQTT over WebSocket: subprotocols and the byte-stream adapter
//! - `teltonika`: a Teltonika channel's TCP side: tracker connections, handshake, frames,
//!   ACKs after storage, commands (the records go to a `TrackerSink` above)
//! - `request_line`: percent-encoding what a client left raw in the first request line
//! - `metrics`: counters by listener and protocol version
//! - `limits`: the process's file descriptor limit, raised for many connections

pub mod accept;
pub mod driver;
pub mod http;
mod limits;
mod listener;
pub mod metrics;
mod request_line;
pub mod tcp;
pub mod teltonika;
pub mod tls;
pub mod ws;

pub use accept::{Acceptor, ConnectionLimit};
pub use driver::{Peer, TransportClose, run_connection};
pub use http::{HttpOptions, LocalAddr, serve_http};
pub use limits::raise_fd_limit;
pub use listener::Listener;
pub use metrics::NetMetrics;
pub use tcp::serve_tcp;
pub use tls::{ClientAuth, TlsContext, TlsError, TlsFiles, serve_tls};
pub use ws::WsSettings;
