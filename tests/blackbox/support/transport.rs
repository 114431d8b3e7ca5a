//! Transports for the raw client: TLS (rustls with the test CA), WebSocket and secure WebSocket
//! (tungstenite, turned into a byte stream by tern-net's adapter), so that one test can run
//! over every listener.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::ClientConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls_pki_types::pem::PemObject;
use tern_net::ws::WsStream;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::TestBroker;

pub use tern_testclient::Io;

/// The four ways to reach tern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Tls,
    Ws,
    Wss,
}

impl Transport {
    pub const ALL: [Transport; 4] = [
        Transport::Tcp,
        Transport::Tls,
        Transport::Ws,
        Transport::Wss,
    ];
}

/// A rustls client that trusts `ca`, with a client certificate when `identity` is given.
pub fn client_tls(ca: &Path, identity: Option<(&Path, &Path)>) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("ca file") {
        roots.add(cert.expect("ca pem")).expect("ca cert");
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .expect("client cert")
                .collect::<Result<Vec<_>, _>>()
                .expect("client cert pem");
            let key = PrivateKeyDer::from_pem_file(key).expect("client key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client identity")
        }
    };
    Arc::new(config)
}

/// A rustls client limited to TLS 1.2.
pub fn client_tls12(ca: &Path) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("ca file") {
        roots.add(cert.expect("ca pem")).expect("ca cert");
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS12])
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    Arc::new(config)
}

/// A TLS connection to `addr` for server name `localhost`. The handshake completes before
/// this returns (a refused client certificate may only show on the first read in TLS 1.3).
pub async fn tls(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from("localhost").expect("server name");
    TlsConnector::from(config).connect(name, tcp).await
}

/// A WebSocket over `stream` to `path`, offering `protocols`; returns the byte stream and the
/// subprotocol the server chose.
pub async fn ws<S: Io + 'static>(
    stream: S,
    addr: SocketAddr,
    path: &str,
    protocols: &[&str],
) -> Result<(WsStream<S>, Option<String>), tungstenite::Error> {
    let mut request = format!("ws://{addr}{path}").into_client_request()?;
    if !protocols.is_empty() {
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            protocols.join(", ").parse().expect("header"),
        );
    }
    let (ws, response) = tokio_tungstenite::client_async(request, stream).await?;
    let chosen = response
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    Ok((WsStream::new(ws, addr), chosen))
}

/// A plain WebSocket connection to `addr`.
pub async fn ws_tcp(addr: SocketAddr, path: &str, protocols: &[&str]) -> Box<dyn Io> {
    let tcp = TcpStream::connect(addr).await.expect("tcp connect");
    tcp.set_nodelay(true).ok();
    let (ws, _) = ws(tcp, addr, path, protocols).await.expect("ws handshake");
    Box::new(ws)
}

/// A secure WebSocket connection to `addr`.
pub async fn ws_tls(addr: SocketAddr, config: Arc<ClientConfig>, path: &str) -> Box<dyn Io> {
    let stream = tls(addr, config).await.expect("tls handshake");
    let (ws, _) = ws(stream, addr, path, &["mqtt"])
        .await
        .expect("wss handshake");
    Box::new(ws)
}

/// A connection to the broker over `transport` (WebSockets on `/mqtt` with `mqtt` offered).
pub async fn open(b: &TestBroker, transport: Transport) -> Box<dyn Io> {
    let (addr, ca) = match transport {
        Transport::Tcp => (b.addr, None),
        Transport::Tls => (b.mqtts(), Some(b.test_certs().ca())),
        Transport::Ws => (b.http(), None),
        Transport::Wss => (b.https(), Some(b.test_certs().ca())),
    };
    connect(transport, addr, ca.as_deref()).await
}

/// A connection to `addr` over `transport`, trusting `ca` for TLS.
pub async fn connect(transport: Transport, addr: SocketAddr, ca: Option<&Path>) -> Box<dyn Io> {
    match transport {
        Transport::Tcp => {
            let tcp = TcpStream::connect(addr).await.expect("tcp connect");
            tcp.set_nodelay(true).ok();
            Box::new(tcp)
        }
        Transport::Tls => {
            let config = client_tls(ca.expect("a CA for TLS"), None);
            Box::new(tls(addr, config).await.expect("tls handshake"))
        }
        Transport::Ws => ws_tcp(addr, "/mqtt", &["mqtt"]).await,
        Transport::Wss => {
            let config = client_tls(ca.expect("a CA for TLS"), None);
            ws_tls(addr, config, "/mqtt").await
        }
    }
}
