//! Admin key check: `Authorization: Bearer <admin key>`, compared as SHA-256 in constant time.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use super::errors::AdminError;
use crate::config::AdminConfig;

/// Why the admin key configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum KeyConfigError {
    /// Neither `key_sha256` nor `key_env` is set.
    #[error("admin: set key_sha256 or key_env so the admin API is protected")]
    Missing,
    /// `key_sha256` is not 64 hex characters.
    #[error("admin.key_sha256 must be 64 hex characters (sha256sum of the admin key)")]
    BadHash,
    /// The variable named by `key_env` is unset or empty.
    #[error("admin.key_env: environment variable `{0}` is unset or empty")]
    EmptyEnv(String),
}

/// SHA-256 digests of the accepted admin keys (`key_sha256` and/or the `key_env` value, so a
/// key can be rotated by setting the new one in one place before removing the old one).
#[derive(Clone)]
pub struct AdminKeys(Arc<Vec<[u8; 32]>>);

impl std::fmt::Debug for AdminKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AdminKeys({} accepted)", self.0.len())
    }
}

impl AdminKeys {
    /// Accepted digests from the config; `env` reads `key_env`.
    pub fn from_config(
        cfg: &AdminConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, KeyConfigError> {
        let mut keys = Vec::new();
        if let Some(h) = &cfg.key_sha256 {
            let bytes = hex::decode(h.trim()).map_err(|_| KeyConfigError::BadHash)?;
            keys.push(<[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| KeyConfigError::BadHash)?);
        }
        if let Some(var) = &cfg.key_env {
            let value = env(var).filter(|v| !v.is_empty());
            let value = value.ok_or_else(|| KeyConfigError::EmptyEnv(var.clone()))?;
            keys.push(Sha256::digest(value.as_bytes()).into());
        }
        if keys.is_empty() {
            return Err(KeyConfigError::Missing);
        }
        Ok(Self(Arc::new(keys)))
    }

    /// Whether `presented` is an accepted key. Every accepted digest is compared in constant
    /// time, without early exit.
    pub fn verify(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut ok = Choice::from(0);
        for k in self.0.iter() {
            ok |= digest[..].ct_eq(&k[..]);
        }
        bool::from(ok)
    }
}

/// Middleware: 401 unless the bearer key is accepted.
pub async fn require_admin(State(keys): State<AdminKeys>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    match presented {
        None | Some("") => AdminError::MissingKey.into_response(),
        Some(k) if keys.verify(k) => next.run(req).await,
        Some(_) => {
            tracing::warn!(path = %req.uri().path(), "admin request with a wrong key");
            AdminError::InvalidKey.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(hash: Option<&str>, env: Option<&str>) -> AdminConfig {
        AdminConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            key_sha256: hash.map(str::to_string),
            key_env: env.map(str::to_string),
            tls: None,
            allowlist: Default::default(),
        }
    }

    #[test]
    fn accepts_hash_or_env_key_only() {
        let hash = hex::encode(Sha256::digest(b"admin-secret-1"));
        let keys = AdminKeys::from_config(&cfg(Some(&hash), Some("K")), |_| {
            Some("admin-secret-2".into())
        })
        .unwrap();
        assert!(keys.verify("admin-secret-1"));
        assert!(keys.verify("admin-secret-2"));
        assert!(!keys.verify("admin-secret-3"));
        assert!(!keys.verify(""));
        assert!(!format!("{keys:?}").contains(&hash));
        assert!(matches!(
            AdminKeys::from_config(&cfg(None, Some("K")), |_| None),
            Err(KeyConfigError::EmptyEnv(_))
        ));
        assert!(matches!(
            AdminKeys::from_config(&cfg(Some("abc"), None), |_| None),
            Err(KeyConfigError::BadHash)
        ));
        assert!(matches!(
            AdminKeys::from_config(&cfg(None, None), |_| None),
            Err(KeyConfigError::Missing)
        ));
    }
}
