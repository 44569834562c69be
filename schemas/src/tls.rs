//! Optional TLS on a listener (`tls: {cert_file, key_file}` of the proxy's public and admin
//! listeners and of the aggregator's listener): rustls with the ring provider, PEM
//! certificate chain and private key. Errors name the config key of the failing file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use tokio_rustls::rustls;
pub use tokio_rustls::TlsAcceptor;

/// `tls:` of a listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain (leaf first).
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// TLS could not be set up; every variant names the config key at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{key}: cannot read {path}: {message}")]
    Pem {
        /// Dotted config key of the file, e.g. `admin.tls.cert_file`.
        key: String,
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// rustls refused the certificate or key (e.g. a key that does not match the certificate).
    #[error("{key}: {source}")]
    Rustls {
        /// Dotted config key of the `tls` block, e.g. `admin.tls`.
        key: String,
        /// rustls' reason.
        source: rustls::Error,
    },
}

impl TlsError {
    /// The dotted config key at fault.
    pub fn key(&self) -> &str {
        match self {
            Self::Pem { key, .. } | Self::Rustls { key, .. } => key,
        }
    }

    /// What is wrong, without the key.
    pub fn detail(&self) -> String {
        match self {
            Self::Pem { path, message, .. } => {
                format!("cannot read {}: {message}", path.display())
            }
            Self::Rustls { source, .. } => source.to_string(),
        }
    }
}

/// A TLS acceptor for `cfg`, the `tls:` block at config key `key` (e.g. `tls` or
/// `admin.tls`, used in errors). Offers HTTP/2 and HTTP/1.1 via ALPN.
pub fn acceptor_at(key: &str, cfg: &TlsConfig) -> Result<TlsAcceptor, TlsError> {
    let pem_err = |field: &str, path: &Path, e: &dyn std::fmt::Display| TlsError::Pem {
        key: format!("{key}.{field}"),
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let cert_err = |e: &dyn std::fmt::Display| pem_err("cert_file", &cfg.cert_file, e);
    let certs = CertificateDer::pem_file_iter(&cfg.cert_file)
        .map_err(|e| cert_err(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(&e))?;
    if certs.is_empty() {
        return Err(cert_err(&"no certificate in the file"));
    }
    let key_der = PrivateKeyDer::from_pem_file(&cfg.key_file)
        .map_err(|e| pem_err("key_file", &cfg.key_file, &e))?;
    let rustls_err = |source| TlsError::Rustls {
        key: key.to_string(),
        source,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(rustls_err)?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(rustls_err)?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(server)))
}

/// [`acceptor_at`] for the proxy's top-level `tls:` block.
pub fn acceptor(cfg: &TlsConfig) -> Result<TlsAcceptor, TlsError> {
    acceptor_at("tls", cfg)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// The error of building an acceptor (the acceptor itself has no `Debug`).
    fn fails(key: &str, cfg: &TlsConfig) -> TlsError {
        match acceptor_at(key, cfg) {
            Ok(_) => panic!("{key}: accepted {cfg:?}"),
            Err(e) => e,
        }
    }

    fn write_pair(dir: &Path, name: &str) -> TlsConfig {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let cfg = TlsConfig {
            cert_file: dir.join(format!("{name}-cert.pem")),
            key_file: dir.join(format!("{name}-key.pem")),
        };
        std::fs::write(&cfg.cert_file, cert.cert.pem()).unwrap();
        std::fs::write(&cfg.key_file, cert.key_pair.serialize_pem()).unwrap();
        cfg
    }

    #[test]
    fn a_matching_pair_builds_an_acceptor() {
        let dir = tempfile::tempdir().unwrap();
        assert!(acceptor_at("admin.tls", &write_pair(dir.path(), "a")).is_ok());
    }

    #[test]
    fn errors_name_the_config_key_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let good = write_pair(dir.path(), "a");
        let missing = dir.path().join("missing.pem");

        let cfg = TlsConfig {
            cert_file: missing.clone(),
            ..good.clone()
        };
        let err = fails("admin.tls", &cfg);
        assert_eq!(err.key(), "admin.tls.cert_file");
        let text = err.to_string();
        assert!(
            text.starts_with("admin.tls.cert_file: cannot read "),
            "{text}"
        );
        assert!(text.contains(&missing.display().to_string()), "{text}");

        let cfg = TlsConfig {
            key_file: missing,
            ..good.clone()
        };
        assert_eq!(fails("tls", &cfg).key(), "tls.key_file");

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let cfg = TlsConfig {
            cert_file: empty,
            ..good.clone()
        };
        let err = fails("tls", &cfg);
        assert_eq!(err.key(), "tls.cert_file");
        assert!(err.detail().contains("no certificate"), "{err}");

        // The key of another certificate: rustls refuses the pair, naming the block.
        let other = write_pair(dir.path(), "b");
        let cfg = TlsConfig {
            key_file: other.key_file,
            ..good
        };
        let err = fails("admin.tls", &cfg);
        assert_eq!(err.key(), "admin.tls", "{err}");
    }
}
