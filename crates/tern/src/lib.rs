//! tern: the daemon. Configuration, wiring of the broker and its listeners, logging, signals.
//!
//! The library part exists so that tests can start a real server in-process on ephemeral ports
//! ([`Server::start`]); the binary (`main.rs`) adds the CLI and signal handling.
//!
//! Layout:
//! - `config`: the TOML configuration and its defaults
//! - `server`: start listeners, shut down
//! - `logging`: tracing setup

pub mod config;
pub mod logging;
pub mod server;

pub use config::Config;
pub use server::{Server, ServerOptions};
