//! TLS with rustls on the `ring` provider: PEM certificate chain and key, TLS 1.2 and 1.3
//! only, client certificates off, optional or required against a CA file, and a certificate
//! reload (SIGHUP) that leaves live connections alone: each handshake takes the configuration
//! current at that moment, and connections already up keep the one they started with.
//!
//! The `mqtts` listener is here; `https` uses the same [`TlsContext`] (see `http`).

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::RwLock;
use rustls::RootCertStore;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::accept::{Acceptor, Listener, accept_loop};
use crate::driver::{Peer, run_connection};

/// Whether clients must present a certificate signed by the client CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// No client certificate is asked for.
    Off,
    /// A client certificate is asked for and verified when sent; clients without one connect.
    Optional,
    /// Clients without a valid certificate fail the handshake.
    Required,
}

impl ClientAuth {
    pub fn name(self) -> &'static str {
        match self {
            ClientAuth::Off => "off",
            ClientAuth::Optional => "optional",
            ClientAuth::Required => "required",
        }
    }
}

/// Where the TLS material lives. Read at start and again on every reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA certificates that sign client certificates.
    pub client_ca: Option<PathBuf>,
    pub client_auth: ClientAuth,
}

/// Why TLS material could not be loaded. Each variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{}: no PEM certificate found", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: no PEM private key found", path.display())]
    NoKey { path: PathBuf },
    #[error("{}: not valid PEM: {detail}", path.display())]
    Pem { path: PathBuf, detail: String },
    #[error("{}: {detail}", path.display())]
    ClientCa { path: PathBuf, detail: String },
    #[error("client_auth = \"{}\" needs a client CA file", mode.name())]
    MissingClientCa { mode: ClientAuth },
    #[error("certificate {} with key {}: {source}", cert.display(), key.display())]
    Unusable {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn pem_error(path: &Path, err: pem::Error) -> TlsError {
    TlsError::Pem {
        path: path.to_path_buf(),
        detail: err.to_string(),
    }
}

/// Reads every certificate of a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// Reads the first private key of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::NoKey {
            path: path.to_path_buf(),
        },
        other => pem_error(path, other),
    })
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds a rustls server configuration from the files: TLS 1.3 and 1.2, the certificate chain
/// and its key (checked to match), and the client certificate policy.
pub fn server_config(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    let certs = load_certs(&files.cert)?;
    let key = load_key(&files.key)?;
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|source| TlsError::Unusable {
            cert: files.cert.clone(),
            key: files.key.clone(),
            source,
        })?;
    let builder = match (files.client_auth, &files.client_ca) {
        (ClientAuth::Off, _) => builder.with_no_client_auth(),
        (mode, None) => return Err(TlsError::MissingClientCa { mode }),
        (mode, Some(ca)) => {
            let mut roots = RootCertStore::empty();
            for cert in load_certs(ca)? {
                roots.add(cert).map_err(|e| TlsError::ClientCa {
                    path: ca.clone(),
                    detail: e.to_string(),
                })?;
            }
            let mut verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider);
            if mode == ClientAuth::Optional {
                verifier = verifier.allow_unauthenticated();
            }
            let verifier = verifier.build().map_err(|e| TlsError::ClientCa {
                path: ca.clone(),
                detail: e.to_string(),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    builder
        .with_single_cert(certs, key)
        .map_err(|source| TlsError::Unusable {
            cert: files.cert.clone(),
            key: files.key.clone(),
            source,
        })
}

/// The TLS configuration shared by `mqtts` and `https`, swappable at run time.
#[derive(Debug)]
pub struct TlsContext {
    files: TlsFiles,
    handshake_timeout: Duration,
    /// Held only to clone or replace the `Arc`, never across `.await`.
    current: RwLock<Arc<ServerConfig>>,
    reloads: AtomicU64,
    reload_failures: AtomicU64,
}

impl TlsContext {
    /// Loads the files; fails if any is missing or unusable.
    pub fn load(files: TlsFiles, handshake_timeout: Duration) -> Result<TlsContext, TlsError> {
        let config = server_config(&files)?;
        Ok(TlsContext {
            files,
            handshake_timeout,
            current: RwLock::new(Arc::new(config)),
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
        })
    }

    /// Reads the files again and uses them for every handshake from now on. On error the
    /// previous certificate stays in use. Live connections are not touched either way.
    pub fn reload(&self) -> Result<(), TlsError> {
        match server_config(&self.files) {
            Ok(config) => {
                *self.current.write() = Arc::new(config);
                self.reloads.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(err) => {
                self.reload_failures.fetch_add(1, Ordering::Relaxed);
                Err(err)
            }
        }
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Successful and failed reloads so far.
    pub fn reload_counts(&self) -> (u64, u64) {
        (
            self.reloads.load(Ordering::Relaxed),
            self.reload_failures.load(Ordering::Relaxed),
        )
    }

    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.read().clone())
    }

    /// Runs the server side of a handshake, bounded by the handshake timeout and by shutdown.
    /// Failures are counted and logged (at debug: public ports see scanners all day).
    pub(crate) async fn handshake(
        &self,
        stream: TcpStream,
        addr: SocketAddr,
        listener: Listener,
        acceptor: &Acceptor,
    ) -> Option<TlsStream<TcpStream>> {
        let accept = self.acceptor().accept(stream);
        let result = tokio::select! {
            _ = acceptor.broker.shutdown_token().cancelled() => return None,
            result = tokio::time::timeout(self.handshake_timeout, accept) => result,
        };
        let err = match result {
            Ok(Ok(stream)) => return Some(stream),
            Ok(Err(err)) => err.to_string(),
            Err(_) => format!("no handshake within {:?}", self.handshake_timeout),
        };
        acceptor.metrics.tls_failed(listener);
        tracing::debug!(listener = listener.name(), peer = %addr, error = %err, "TLS handshake failed");
        None
    }
}

/// Accepts MQTT over TLS on `listener` until the broker shuts down.
pub async fn serve_tls(listener: TcpListener, tls: Arc<TlsContext>, acceptor: Acceptor) {
    let ctx = acceptor.clone();
    accept_loop(
        listener,
        Listener::Mqtts,
        acceptor,
        move |stream, addr, permit| {
            let tls = tls.clone();
            let ctx = ctx.clone();
            async move {
                let Some(stream) = tls.handshake(stream, addr, Listener::Mqtts, &ctx).await else {
                    return;
                };
                let peer = Peer {
                    addr,
                    listener: Listener::Mqtts,
                };
                run_connection(ctx.broker, ctx.metrics, peer, stream).await;
                drop(permit);
            }
        },
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path) -> TlsFiles {
        TlsFiles {
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
            client_ca: None,
            client_auth: ClientAuth::Off,
        }
    }

    #[test]
    fn missing_file_names_it() {
        let dir = std::env::temp_dir().join("tern-net-tls-test-missing");
        let err = server_config(&files(&dir)).unwrap_err();
        assert!(matches!(err, TlsError::Read { .. }), "{err}");
        assert!(err.to_string().contains("server.pem"), "{err}");
    }

    #[test]
    fn garbage_is_no_certificate() {
        let dir = std::env::temp_dir().join(format!("tern-net-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("server.pem"), "not pem at all\n").unwrap();
        let err = load_certs(&dir.join("server.pem")).unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err}");
        std::fs::write(dir.join("server.key"), "").unwrap();
        let err = load_key(&dir.join("server.key")).unwrap_err();
        assert!(matches!(err, TlsError::NoKey { .. }), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn client_auth_needs_a_ca() {
        let err = TlsError::MissingClientCa {
            mode: ClientAuth::Required,
        };
        assert_eq!(
            err.to_string(),
            "client_auth = \"required\" needs a client CA file"
        );
    }
}
