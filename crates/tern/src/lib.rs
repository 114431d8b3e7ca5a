//! tern: the daemon. Configuration, wiring of the broker and its listeners, logging, metrics,
//! signals.
//!
//! The library part exists so that tests can start a real server in-process on ephemeral ports
//! ([`Server::start`]); the binary (`main.rs`) adds the CLI and signal handling.
//!
//! Layout:
//! - `config`: the TOML configuration, its defaults, `TERN_*` and command-line overrides
//! - `state`: open the store, load accounts and tokens, provision, bootstrap the master token
//! - `server`: start listeners, reload the certificate, shut down
//! - `routes`: `/health` and `/metrics` on the HTTP listeners
//! - `metrics`: the Prometheus collector over the broker's and the listeners' counters
//! - `offline`: `tern token`, `tern account`, `tern store` on a stopped daemon's data
//! - `certs`: `tern certs dev`, development certificates
//! - `health`: `tern health`, the probe for container health checks
//! - `logging`: tracing setup

pub mod certs;
pub mod config;
pub mod cors;
pub mod health;
pub mod logging;
pub mod metrics;
pub mod offline;
pub mod routes;
pub mod server;
pub mod state;

pub use config::Config;
pub use server::{ListenerAddrs, Server, ServerOptions};
