//! Test support: an in-process broker on ephemeral ports, the real binary for process-level
//! tests, a raw MQTT client built on tern-codec that sends exactly the bytes a test wants, and
//! the transports it can run over (TCP, TLS, WebSocket, secure WebSocket), and a real Mosquitto
//! for the MQTT channels.

#![allow(dead_code)]

pub mod client;
pub mod cluster;
pub mod http;
/// Mosquitto and its certificates, shared with tern-mqttc's tests.
#[path = "../../../crates/tern-mqttc/tests/support/mosquitto.rs"]
pub mod mosquitto;
pub mod nats;
pub mod process;
pub mod transport;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use client::Client;
use tern::certs::DevCertFiles;
use tern::{Config, ListenerAddrs, Server, ServerOptions};
use tern_broker::Broker;

pub use tern_testclient::{QUIET, WAIT};

/// A fresh development CA, server and client certificate in a temporary directory (removed on
/// drop).
pub struct TestCerts {
    pub dir: tempfile::TempDir,
    pub files: DevCertFiles,
}

impl TestCerts {
    pub fn new() -> TestCerts {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = tern::certs::write(dir.path(), &[], false).expect("dev certificates");
        TestCerts { dir, files }
    }

    /// Replaces the files with a new set (a new CA too), as an operator renewing them would.
    pub fn renew(&self) {
        tern::certs::write(self.dir.path(), &[], true).expect("dev certificates");
    }

    pub fn ca(&self) -> PathBuf {
        self.files.ca.clone()
    }
}

/// A broker running in the test's runtime, on 127.0.0.1 with ephemeral ports.
pub struct TestBroker {
    server: Option<Server>,
    /// The MQTT/TCP listener.
    pub addr: SocketAddr,
    /// Every listener that runs (`http` is off unless a test turns it on; `mqtts` and `https`
    /// run when a certificate is configured).
    pub addrs: ListenerAddrs,
    /// The certificates of [`TestBroker::with_listeners`].
    pub certs: Option<Arc<TestCerts>>,
    /// The data directory (a fresh temporary one unless the test chose one).
    pub data_dir: PathBuf,
    _data: Option<tempfile::TempDir>,
}

impl TestBroker {
    /// Starts a broker with the defaults (anonymous clients allowed) and only the MQTT/TCP
    /// listener.
    pub async fn start() -> TestBroker {
        TestBroker::with(|_| {}).await
    }

    /// Starts a broker after `tweak` adjusted the configuration. Listeners not turned on by
    /// `tweak` stay off, except MQTT/TCP.
    pub async fn with(tweak: impl FnOnce(&mut Config)) -> TestBroker {
        TestBroker::start_with(None, tweak).await
    }

    /// Starts a broker with all four listeners on 127.0.0.1 (mqtt, mqtts, http, https) and a
    /// fresh development certificate.
    pub async fn with_listeners(tweak: impl FnOnce(&mut Config)) -> TestBroker {
        TestBroker::start_with(Some(Arc::new(TestCerts::new())), |c| {
            c.listeners.http = Some(loopback());
            tweak(c)
        })
        .await
    }

    /// Starts a broker whose TLS listeners use `certs` (shared, e.g. for a reload test).
    pub async fn start_with(
        certs: Option<Arc<TestCerts>>,
        tweak: impl FnOnce(&mut Config),
    ) -> TestBroker {
        TestBroker::start_opts(certs, ServerOptions::default(), tweak).await
    }

    /// Like [`TestBroker::start_with`], with server options (e.g. a store fault switch).
    pub async fn start_opts(
        certs: Option<Arc<TestCerts>>,
        options: ServerOptions,
        tweak: impl FnOnce(&mut Config),
    ) -> TestBroker {
        let mut config = Config::default();
        config.listeners.mqtt = Some(loopback());
        config.listeners.mqtts = Some(loopback());
        config.listeners.http = None;
        config.listeners.https = Some(loopback());
        config.auth.anonymous = true;
        config.log.level = "warn".into();
        let data = tempfile::tempdir().expect("tempdir");
        config.store.data_dir = data.path().to_path_buf();
        if let Some(c) = &certs {
            config.tls.cert = Some(c.files.server_cert.clone());
            config.tls.key = Some(c.files.server_key.clone());
        }
        tweak(&mut config);
        let server = Server::start(&config, options)
            .await
            .expect("broker starts");
        let addrs = server.addrs();
        let own_data = config.store.data_dir == data.path();
        TestBroker {
            server: Some(server),
            addr: addrs.mqtt.expect("mqtt listener"),
            addrs,
            certs,
            data_dir: config.store.data_dir.clone(),
            _data: own_data.then_some(data),
        }
    }

    pub fn broker(&self) -> &Arc<Broker> {
        self.server.as_ref().expect("running").broker()
    }

    pub fn server(&self) -> &Server {
        self.server.as_ref().expect("running")
    }

    /// The session key of a client without credentials (`--anonymous`): its sessions live in
    /// the `anonymous` account.
    pub fn anonymous_key(&self, client_id: &str) -> tern_broker::SessionKey {
        tern_broker::SessionKey {
            cid: self
                .server()
                .directory()
                .anonymous()
                .expect("an anonymous account"),
            client_id: client_id.into(),
        }
    }

    /// The key of the master token the first start created.
    pub fn master_key(&self) -> String {
        self.server()
            .directory()
            .tokens()
            .into_iter()
            .find(|t| t.access.kind == tern_broker::accounts::Access::MASTER)
            .expect("a first start creates the master token")
            .key
    }

    pub fn mqtts(&self) -> SocketAddr {
        self.addrs.mqtts.expect("mqtts listener")
    }

    pub fn http(&self) -> SocketAddr {
        self.addrs.http.expect("http listener")
    }

    pub fn https(&self) -> SocketAddr {
        self.addrs.https.expect("https listener")
    }

    /// The certificates (of a broker started with them).
    pub fn test_certs(&self) -> &TestCerts {
        self.certs.as_deref().expect("started with certificates")
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
            s.broker().shut_down();
        }
    }
}

/// 127.0.0.1 on an ephemeral port.
pub fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
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
