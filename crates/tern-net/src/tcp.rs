//! The plain TCP listener (`mqtt`, default 1883).

use futures_util::FutureExt;
use tokio::net::TcpListener;

use crate::accept::{Acceptor, Listener, accept_loop};
use crate::driver::{Peer, run_connection};

/// Accepts MQTT connections on `listener` until the broker shuts down.
pub async fn serve_tcp(listener: TcpListener, acceptor: Acceptor) {
    let broker = acceptor.broker.clone();
    let metrics = acceptor.metrics.clone();
    accept_loop(
        listener,
        Listener::Mqtt,
        acceptor,
        move |stream, addr, permit| {
            // The connection's future is built here, outside the task's async block, so that
            // the task holds it and the permit and nothing else.
            let peer = Peer {
                addr,
                listener: Listener::Mqtt,
            };
            // `map`, not an async block: awaiting a captured future would store it twice.
            run_connection(broker.clone(), metrics.clone(), peer, stream).map(move |_| drop(permit))
        },
    )
    .await;
}
