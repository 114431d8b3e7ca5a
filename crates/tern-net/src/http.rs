//! The HTTP and HTTPS listeners (`http`, default 8080; `https`, default 8443): HTTP/1.1 served
//! by hyper, one task per connection. A WebSocket upgrade on any path carries MQTT (see `ws`);
//! every other request goes to the router handed in from above (the daemon's `/health` and
//! `/metrics`, later the REST API), with the client's address as
//! `axum::extract::ConnectInfo<SocketAddr>`, the [`Listener`] and the connection's
//! [`LocalAddr`] in the request extensions.
//!
//! WebSocket upgrades accept any `Origin` (browser apps are served from other hosts; MQTT
//! authenticates with its own credentials, never with cookies).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};

use crate::request_line::RequestLineFix;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::OwnedSemaphorePermit;
use tower::ServiceExt;

use crate::accept::{Acceptor, Listener, accept_loop};
use crate::tls::TlsContext;
use crate::ws::{self, WsSettings};

/// How long a request in progress may take to finish once shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// What an HTTP listener serves besides MQTT over WebSocket.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Requests that are not WebSocket upgrades.
    pub routes: Router,
    pub websocket: WsSettings,
    /// A client must send a request's headers within this time; an idle keep-alive connection
    /// is closed after it too.
    pub header_timeout: Duration,
}

impl HttpOptions {
    pub fn new(routes: Router) -> HttpOptions {
        HttpOptions {
            routes,
            websocket: WsSettings::default(),
            header_timeout: Duration::from_secs(30),
        }
    }
}

/// The address a client connected to (this end of the connection, as the socket reports it):
/// a request extension, for answers that must name the server when the request has no `Host`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalAddr(pub SocketAddr);

#[derive(Debug)]
struct Shared {
    listener: Listener,
    acceptor: Acceptor,
    options: HttpOptions,
}

/// Serves HTTP (`tls` = `None`) or HTTPS on `listener` until the broker shuts down.
pub async fn serve_http(
    listener: TcpListener,
    tls: Option<Arc<TlsContext>>,
    acceptor: Acceptor,
    options: HttpOptions,
) {
    let kind = if tls.is_some() {
        Listener::Https
    } else {
        Listener::Http
    };
    let bound = listener.local_addr().ok();
    let shared = Arc::new(Shared {
        listener: kind,
        acceptor: acceptor.clone(),
        options,
    });
    accept_loop(listener, kind, acceptor, move |stream, addr, permit| {
        let shared = shared.clone();
        let tls = tls.clone();
        let local = stream.local_addr().ok().or(bound).map(LocalAddr);
        async move {
            let permit = Arc::new(permit);
            let peer = Addrs { peer: addr, local };
            match tls {
                None => serve_connection(stream, peer, permit, shared).await,
                Some(tls) => {
                    if let Some(stream) = tls.handshake(stream, addr, kind, &shared.acceptor).await
                    {
                        serve_connection(stream, peer, permit, shared).await;
                    }
                }
            }
        }
    })
    .await;
}

/// Both ends of one connection.
#[derive(Debug, Clone, Copy)]
struct Addrs {
    peer: SocketAddr,
    local: Option<LocalAddr>,
}

/// Serves one HTTP connection. The permit is shared with a WebSocket connection upgraded from
/// it, which outlives this function.
async fn serve_connection<I>(
    io: I,
    addrs: Addrs,
    permit: Arc<OwnedSemaphorePermit>,
    shared: Arc<Shared>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let shutdown = shared.acceptor.broker.shutdown_token().clone();
    let header_timeout = shared.options.header_timeout;
    let service = service_fn(move |req: Request<Incoming>| {
        let shared = shared.clone();
        let permit = permit.clone();
        async move { Ok::<_, Infallible>(shared.handle(req, addrs, permit).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(RequestLineFix::new(io)), service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(SHUTDOWN_GRACE, conn.as_mut()).await {
                Ok(result) => result,
                Err(_) => return,
            }
        }
    };
    if let Err(err) = result {
        tracing::debug!(peer = %addrs.peer, %err, "HTTP connection ended with an error");
    }
}

impl Shared {
    async fn handle(
        &self,
        mut req: Request<Incoming>,
        addrs: Addrs,
        permit: Arc<OwnedSemaphorePermit>,
    ) -> Response<axum::body::Body> {
        if ws::is_upgrade_request(&req) {
            return ws::upgrade(
                req,
                addrs.peer,
                self.listener,
                &self.acceptor,
                self.options.websocket,
                permit,
            );
        }
        req.extensions_mut().insert(ConnectInfo(addrs.peer));
        req.extensions_mut().insert(self.listener);
        if let Some(local) = addrs.local {
            req.extensions_mut().insert(local);
        }
        let req = req.map(axum::body::Body::new);
        match self.options.routes.clone().oneshot(req).await {
            Ok(res) => res,
            Err(never) => match never {},
        }
    }
}
