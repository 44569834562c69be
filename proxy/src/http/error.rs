//! Every error the API can answer with, mapped to HTTP in one place (OpenAI-shaped JSON).

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// Who caused an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The client sent something wrong.
    Client,
    /// The upstream provider failed.
    Upstream,
    /// The gateway itself.
    Gateway,
}

/// An error answered to an API client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Body is not valid JSON.
    #[error("We could not parse the JSON body of your request: {0}")]
    InvalidJson(String),
    /// A field is missing or has the wrong type.
    #[error("{message}")]
    InvalidRequest {
        /// Explanation.
        message: String,
        /// The offending field.
        param: Option<&'static str>,
    },
    /// No `Authorization: Bearer` header.
    #[error("You didn't provide an API key. Send it as `Authorization: Bearer <key>`.")]
    MissingKey,
    /// Unknown (or disabled) key.
    #[error("Incorrect API key provided.")]
    InvalidKey,
    /// The key may not use this model.
    #[error("The API key is not allowed to use model `{0}`.")]
    ModelNotAllowed(String),
    /// No such model.
    #[error("The model `{0}` does not exist or you do not have access to it.")]
    ModelNotFound(String),
    /// Body over the configured limit.
    #[error("Request body is larger than the limit of {0} bytes.")]
    BodyTooLarge(usize),
    /// Upstream could not be reached or broke the connection.
    #[error("The upstream provider could not be reached: {0}")]
    UpstreamUnavailable(String),
    /// Upstream did not answer in time.
    #[error("The upstream provider did not answer in time.")]
    UpstreamTimeout,
}

impl ApiError {
    /// HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidJson(_) | Self::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            Self::MissingKey | Self::InvalidKey => StatusCode::UNAUTHORIZED,
            Self::ModelNotAllowed(_) => StatusCode::FORBIDDEN,
            Self::ModelNotFound(_) => StatusCode::NOT_FOUND,
            Self::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UpstreamUnavailable(_) => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// OpenAI `error.type`.
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::InvalidJson(_) | Self::InvalidRequest { .. } | Self::BodyTooLarge(_) => {
                "invalid_request_error"
            }
            Self::MissingKey | Self::InvalidKey => "invalid_request_error",
            Self::ModelNotAllowed(_) => "permission_error",
            Self::ModelNotFound(_) => "invalid_request_error",
            Self::UpstreamUnavailable(_) | Self::UpstreamTimeout => "api_error",
        }
    }

    /// OpenAI `error.code`, also recorded as the usage event's `error_type`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidJson(_) => "invalid_json",
            Self::InvalidRequest { .. } => "invalid_request",
            Self::MissingKey => "missing_api_key",
            Self::InvalidKey => "invalid_api_key",
            Self::ModelNotAllowed(_) => "model_not_allowed",
            Self::ModelNotFound(_) => "model_not_found",
            Self::BodyTooLarge(_) => "request_too_large",
            Self::UpstreamUnavailable(_) => "upstream_unavailable",
            Self::UpstreamTimeout => "upstream_timeout",
        }
    }

    /// Whether retrying the same request may succeed.
    pub fn retryable(&self) -> bool {
        matches!(self, Self::UpstreamUnavailable(_) | Self::UpstreamTimeout)
    }

    /// Who caused it.
    pub fn cause(&self) -> Cause {
        match self {
            Self::UpstreamUnavailable(_) | Self::UpstreamTimeout => Cause::Upstream,
            _ => Cause::Client,
        }
    }

    fn param(&self) -> Option<&'static str> {
        match self {
            Self::InvalidRequest { param, .. } => *param,
            Self::ModelNotAllowed(_) | Self::ModelNotFound(_) => Some("model"),
            _ => None,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "message": self.to_string(),
                "type": self.error_type(),
                "param": self.param(),
                "code": self.code(),
            }
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status(), axum::Json(self.body())).into_response();
        if self.retryable() {
            resp.headers_mut()
                .insert("x-should-retry", HeaderValue::from_static("true"));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_bodies_are_openai_shaped() {
        let cases = [
            (ApiError::InvalidJson("x".into()), 400, "invalid_json"),
            (ApiError::MissingKey, 401, "missing_api_key"),
            (ApiError::InvalidKey, 401, "invalid_api_key"),
            (
                ApiError::ModelNotAllowed("m".into()),
                403,
                "model_not_allowed",
            ),
            (ApiError::ModelNotFound("m".into()), 404, "model_not_found"),
            (ApiError::BodyTooLarge(10), 413, "request_too_large"),
            (
                ApiError::UpstreamUnavailable("x".into()),
                502,
                "upstream_unavailable",
            ),
            (ApiError::UpstreamTimeout, 504, "upstream_timeout"),
        ];
        for (err, status, code) in cases {
            assert_eq!(err.status().as_u16(), status);
            let body = err.body();
            assert_eq!(body["error"]["code"], code);
            assert!(body["error"]["message"].as_str().unwrap().len() > 5);
            assert!(body["error"]["type"].is_string());
        }
        assert_eq!(ApiError::UpstreamTimeout.cause(), Cause::Upstream);
        assert!(!ApiError::InvalidKey.retryable());
    }
}
