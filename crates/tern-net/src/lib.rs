//! tern-net: listeners and the connection driver. This crate owns every socket.
//!
//! Layout:
//! - `driver`: one task per connection: read, decode, hand to the broker, write
//! - `tcp`: the TCP listener, the connection limit

pub mod driver;
pub mod tcp;

pub use driver::{Peer, run_connection};
pub use tcp::{Acceptor, ConnectionLimit, serve_tcp};
