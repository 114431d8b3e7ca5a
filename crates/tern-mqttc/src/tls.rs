//! The rustls client configuration of an `mqtts://` connection, built once at start: ring as
//! the crypto provider (never aws-lc), the trusted roots, an optional client certificate.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::options::{Roots, SYSTEM_BUNDLES, TlsOptions};

/// Why the TLS configuration cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("no system CA bundle found (looked at {})", SYSTEM_BUNDLES.join(", "))]
    NoSystemBundle,
    #[error("reading the CA bundle {path}: {source}")]
    ReadBundle {
        path: &'static str,
        source: std::io::Error,
    },
    #[error("the CA PEM has no usable certificate")]
    NoRoots,
    #[error("bad PEM in {what}: {detail}")]
    Pem { what: &'static str, detail: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The client configuration for `options` (also the HTTP streams' TLS, in tern-gw).
pub fn client_config(options: &TlsOptions) -> Result<Arc<ClientConfig>, TlsConfigError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = if options.insecure_skip_verify {
        tracing::warn!("TLS certificate verification is off (insecure_skip_verify)");
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SkipVerify(
                provider.signature_verification_algorithms,
            )))
    } else {
        builder.with_root_certificates(roots(&options.roots)?)
    };
    let config = match &options.client_cert {
        None => builder.with_no_client_auth(),
        Some(c) => {
            let chain = CertificateDer::pem_slice_iter(&c.chain_pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| TlsConfigError::Pem {
                    what: "the client certificate",
                    detail: e.to_string(),
                })?;
            let key =
                PrivateKeyDer::from_pem_slice(&c.key_pem).map_err(|e| TlsConfigError::Pem {
                    what: "the client key",
                    detail: e.to_string(),
                })?;
            builder.with_client_auth_cert(chain, key)?
        }
    };
    Ok(Arc::new(config))
}

fn roots(roots: &Roots) -> Result<RootCertStore, TlsConfigError> {
    let owned;
    let pem: &[u8] = match roots {
        Roots::Pem(p) => p,
        Roots::System => {
            let path = SYSTEM_BUNDLES
                .iter()
                .find(|p| std::path::Path::new(p).exists())
                .ok_or(TlsConfigError::NoSystemBundle)?;
            owned = std::fs::read(path)
                .map_err(|source| TlsConfigError::ReadBundle { path, source })?;
            &owned
        }
    };
    let mut store = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| TlsConfigError::Pem {
            what: "the CA certificates",
            detail: e.to_string(),
        })?;
        // A bundle may hold a certificate rustls cannot use; the others still count.
        let _ = store.add(cert);
    }
    if store.is_empty() {
        return Err(TlsConfigError::NoRoots);
    }
    Ok(store)
}

/// `insecure_skip_verify`: any certificate chain is accepted, but the handshake signatures are
/// still checked, so the peer at least holds the key of the certificate it shows.
#[derive(Debug)]
struct SkipVerify(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for SkipVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}
