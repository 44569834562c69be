//! Optional TLS on the public listener (`tls: {cert_file, key_file}` in the proxy config):
//! rustls with the ring provider, PEM certificate chain and private key.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;

/// `tls:` of a listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain (leaf first).
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("tls: cannot read {path}: {message}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// rustls refused the certificate or key.
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
}

fn pem_err(path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::Pem {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// A TLS acceptor for `cfg` (HTTP/2 and HTTP/1.1 offered via ALPN).
pub fn acceptor(cfg: &TlsConfig) -> Result<TlsAcceptor, TlsError> {
    let certs = CertificateDer::pem_file_iter(&cfg.cert_file)
        .map_err(|e| pem_err(&cfg.cert_file, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(&cfg.cert_file, e))?;
    if certs.is_empty() {
        return Err(pem_err(&cfg.cert_file, "no certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(&cfg.key_file).map_err(|e| pem_err(&cfg.key_file, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(server)))
}
