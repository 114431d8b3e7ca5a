//! The plain TCP listener.

use std::net::SocketAddr;
use std::sync::Arc;

use tern_broker::Broker;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use crate::driver::{Peer, run_connection};

/// Caps the number of live connections across every listener.
#[derive(Debug, Clone)]
pub struct ConnectionLimit {
    permits: Arc<Semaphore>,
}

impl ConnectionLimit {
    pub fn new(max: usize) -> ConnectionLimit {
        ConnectionLimit {
            permits: Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))),
        }
    }

    /// A permit for one connection, or `None` when the broker is full.
    pub fn try_acquire(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }
}

/// Everything an accept loop needs.
#[derive(Debug, Clone)]
pub struct Acceptor {
    pub broker: Arc<Broker>,
    pub limit: ConnectionLimit,
    pub tracker: TaskTracker,
}

/// Accepts MQTT connections on `listener` until the broker shuts down.
pub async fn serve_tcp(listener: TcpListener, name: &'static str, acceptor: Acceptor) {
    let shutdown = acceptor.broker.shutdown_token().clone();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, addr) = match accepted {
            Ok(pair) => pair,
            Err(err) => {
                // Usually EMFILE: back off briefly instead of spinning.
                tracing::warn!(listener = name, %err, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        spawn_tcp(&acceptor, stream, addr, name);
    }
}

fn spawn_tcp(acceptor: &Acceptor, stream: TcpStream, addr: SocketAddr, name: &'static str) {
    let Some(permit) = acceptor.limit.try_acquire() else {
        tracing::warn!(listener = name, peer = %addr, "connection refused: max connections reached");
        acceptor
            .broker
            .metrics
            .closed(&tern_broker::CloseReason::ConnectRefused(
                tern_codec::ReasonCode::SERVER_BUSY,
            ));
        drop(stream);
        return;
    };
    let _ = stream.set_nodelay(true);
    let broker = acceptor.broker.clone();
    acceptor.tracker.spawn(async move {
        let (reader, writer) = stream.into_split();
        run_connection(
            broker,
            Peer {
                addr,
                listener: name,
            },
            reader,
            writer,
        )
        .await;
        drop(permit);
    });
}
