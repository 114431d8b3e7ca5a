//! Wiring: a broker, its timers and its listeners, and one shutdown tree for all of them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tern_broker::{Anonymous, Authenticator, Broker};
use tern_net::{Acceptor, ConnectionLimit, serve_tcp};
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use crate::config::Config;

/// Options that do not come from the configuration file.
#[derive(Debug, Default, Clone)]
pub struct ServerOptions {}

/// A running broker with its listeners.
#[derive(Debug)]
pub struct Server {
    broker: Arc<Broker>,
    tracker: TaskTracker,
    mqtt_addr: Option<SocketAddr>,
}

impl Server {
    /// Binds every configured listener and starts serving.
    pub async fn start(config: &Config, _options: ServerOptions) -> anyhow::Result<Server> {
        let auth: Box<dyn Authenticator> = Box::new(Anonymous {
            cid: config.auth.anonymous_cid,
        });
        let broker = Broker::new(config.broker(), auth);
        let tracker = TaskTracker::new();
        tracker.spawn(broker.clone().run_timers());
        let acceptor = Acceptor {
            broker: broker.clone(),
            limit: ConnectionLimit::new(config.listeners.max_connections),
            tracker: tracker.clone(),
        };

        let mut mqtt_addr = None;
        if let Some(addr) = config.listeners.mqtt {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for MQTT on {addr}"))?;
            let local = listener.local_addr()?;
            tracing::info!(listener = "mqtt", addr = %local, "listening");
            mqtt_addr = Some(local);
            tracker.spawn(serve_tcp(listener, "mqtt", acceptor.clone()));
        }
        Ok(Server {
            broker,
            tracker,
            mqtt_addr,
        })
    }

    /// The bound MQTT/TCP address (useful with port 0).
    pub fn mqtt_addr(&self) -> Option<SocketAddr> {
        self.mqtt_addr
    }

    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// Stops accepting, sends DISCONNECT 0x8B to every v5 client, closes every connection and
    /// waits for them, at most `deadline`. Returns false if the deadline passed first.
    pub async fn shutdown(self, deadline: Duration) -> bool {
        tracing::info!("shutting down");
        self.broker.shutdown_token().cancel();
        self.tracker.close();
        let done = tokio::time::timeout(deadline, self.tracker.wait())
            .await
            .is_ok();
        if !done {
            tracing::warn!(
                ?deadline,
                "shutdown deadline passed with connections still open"
            );
        }
        done
    }
}
