//! Accepting connections: the connection limit shared by every listener, and the accept loop
//! each listener runs.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tern_broker::{Broker, CloseReason};
use tern_codec::ReasonCode;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;

pub use crate::listener::Listener;
use crate::metrics::NetMetrics;

/// Caps the number of live connections across every listener (MQTT, TLS, HTTP and WebSocket
/// alike: each holds a socket).
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
    pub fn try_acquire(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }
}

/// Everything an accept loop needs: the broker, the shared connection limit, the task tracker
/// of the shutdown tree and the listeners' counters.
#[derive(Debug, Clone)]
pub struct Acceptor {
    pub broker: Arc<Broker>,
    pub limit: ConnectionLimit,
    pub tracker: TaskTracker,
    pub metrics: Arc<NetMetrics>,
}

impl Acceptor {
    pub fn new(broker: Arc<Broker>, max_connections: usize, tracker: TaskTracker) -> Acceptor {
        Acceptor {
            broker,
            limit: ConnectionLimit::new(max_connections),
            tracker,
            metrics: Arc::new(NetMetrics::default()),
        }
    }
}

/// Accepts connections on `listener` until the broker shuts down, with one accept loop per
/// worker thread of the runtime (see [`accept_loops`]). Each accepted socket that fits under
/// the connection limit is handed to `handle` in a task of the tracker, together with its
/// permit (released when the task drops it).
pub(crate) async fn accept_loop<F, Fut>(
    listener: TcpListener,
    kind: Listener,
    acceptor: Acceptor,
    handle: F,
) where
    F: FnMut(TcpStream, SocketAddr, OwnedSemaphorePermit) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = Arc::new(listener);
    for _ in 1..accept_loops() {
        acceptor.tracker.spawn(accept_some(
            listener.clone(),
            kind,
            acceptor.clone(),
            handle.clone(),
        ));
    }
    accept_some(listener, kind, acceptor, handle).await;
}

/// How many accept loops a listener runs: one per worker thread, so that a storm of
/// connections is accepted on every core. The loops share the one listening socket (tokio
/// wakes every task waiting on it); each spawns the connections it accepts on its own worker,
/// so a connection starts where it was accepted instead of being handed across threads.
pub fn accept_loops() -> usize {
    tokio::runtime::Handle::try_current().map_or(1, |h| h.metrics().num_workers().max(1))
}

/// One accept loop.
async fn accept_some<F, Fut>(
    listener: Arc<TcpListener>,
    kind: Listener,
    acceptor: Acceptor,
    mut handle: F,
) where
    F: FnMut(TcpStream, SocketAddr, OwnedSemaphorePermit) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
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
                tracing::warn!(listener = kind.name(), %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        acceptor.metrics.accepted(kind);
        let Some(permit) = acceptor.limit.try_acquire() else {
            tracing::warn!(listener = kind.name(), peer = %addr, "connection refused: max connections reached");
            acceptor.metrics.refused(kind);
            acceptor
                .broker
                .metrics
                .closed(&CloseReason::ConnectRefused(ReasonCode::SERVER_BUSY));
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        acceptor.tracker.spawn(handle(stream, addr, permit));
    }
}
