//! Test support: an in-process broker on an ephemeral port, the real binary for process-level
//! tests, and a raw MQTT client built on tern-codec that sends exactly the bytes a test wants.

#![allow(dead_code)]

pub mod client;
pub mod process;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use client::Client;
use tern::{Config, Server, ServerOptions};
use tern_broker::Broker;

/// Default time a test waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(5);
/// Time a test waits to be sure something does NOT happen.
pub const QUIET: Duration = Duration::from_millis(300);

/// A broker running in the test's runtime, on 127.0.0.1 with an ephemeral port.
pub struct TestBroker {
    server: Option<Server>,
    pub addr: SocketAddr,
}

impl TestBroker {
    /// Starts a broker with the defaults (anonymous clients allowed).
    pub async fn start() -> TestBroker {
        TestBroker::with(|_| {}).await
    }

    /// Starts a broker after `tweak` adjusted the configuration.
    pub async fn with(tweak: impl FnOnce(&mut Config)) -> TestBroker {
        let mut config = Config::default();
        config.listeners.mqtt = Some("127.0.0.1:0".parse().unwrap());
        config.auth.anonymous = true;
        config.log.level = "warn".into();
        tweak(&mut config);
        let server = Server::start(&config, ServerOptions::default())
            .await
            .expect("broker starts");
        let addr = server.mqtt_addr().expect("mqtt listener");
        TestBroker {
            server: Some(server),
            addr,
        }
    }

    pub fn broker(&self) -> &Arc<Broker> {
        self.server.as_ref().expect("running").broker()
    }

    /// Shuts down gracefully; returns whether it finished within the deadline.
    pub async fn shutdown(mut self, deadline: Duration) -> bool {
        match self.server.take() {
            Some(s) => s.shutdown(deadline).await,
            None => true,
        }
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(s) = &self.server {
            s.broker().shutdown_token().cancel();
        }
    }
}

/// Polls `f` until it returns true or `WAIT` passes.
pub async fn eventually(mut f: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f()
}
