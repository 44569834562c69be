//! Authentication of API clients by virtual key.

use std::sync::Arc;

use axum::http::{header, HeaderMap};

use super::error::ApiError;
use crate::routing::{ApiKey, Catalog};

/// The presented secret: `Authorization: Bearer <key>`, or Anthropic's `x-api-key: <key>`.
fn presented(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let v = v.trim();
        let secret = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
            .map(str::trim)?;
        return (!secret.is_empty()).then_some(secret);
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// Find the caller's key: 401 when missing, unknown, disabled or expired.
pub fn authenticate(catalog: &Catalog, headers: &HeaderMap) -> Result<Arc<ApiKey>, ApiError> {
    let secret = presented(headers).ok_or(ApiError::MissingKey)?;
    let key = catalog.key_for_secret(secret).ok_or(ApiError::InvalidKey)?;
    if !key.usable() {
        return Err(ApiError::KeyDisabled);
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn bearer_and_x_api_key_are_accepted() {
        let mut h = HeaderMap::new();
        assert_eq!(presented(&h), None);
        h.insert("x-api-key", HeaderValue::from_static("sk-anthropic-style"));
        assert_eq!(presented(&h), Some("sk-anthropic-style"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer  sk-1 "),
        );
        assert_eq!(presented(&h), Some("sk-1"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(presented(&h), None);
    }
}
