//! The plain TCP listener (`mqtt`, default 1883).

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
        |stream, addr, permit| {
            let broker = broker.clone();
            let metrics = metrics.clone();
            async move {
                let (reader, writer) = stream.into_split();
                let peer = Peer {
                    addr,
                    listener: Listener::Mqtt,
                };
                run_connection(broker, metrics, peer, reader, writer).await;
                drop(permit);
            }
        },
    )
    .await;
}
