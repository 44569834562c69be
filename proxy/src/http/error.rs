//! Every error the API can answer with, mapped to HTTP in one place (OpenAI-shaped JSON).

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::limits::{LimitError, Metric, RateHeaders};

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
    /// Unknown key.
    #[error("Incorrect API key provided.")]
    InvalidKey,
    /// Key (or its account) disabled or expired.
    #[error("This API key is disabled or expired.")]
    KeyDisabled,
    /// The model's deployments cannot serve this endpoint.
    #[error("The model `{model}` does not support this endpoint: {reason}.")]
    EndpointNotSupported {
        /// Model name.
        model: String,
        /// Why.
        reason: &'static str,
    },
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
    /// Every deployment tried refused the gateway's own provider credentials (upstream 401 or
    /// 403): the operator's configuration, not the client's key.
    #[error("The upstream provider refused this gateway's credentials for the model (HTTP {0}). The gateway's operator must fix the deployment's provider key.")]
    UpstreamAuthFailed(u16),
    /// A request or token limit of the key or the model is used up.
    #[error("Rate limit exceeded for {entity}. Limited on {}, current limit: {limit}, remaining: {remaining}", .metric.as_str())]
    RateLimited {
        /// `API key ID: <id>` or `model '<name>'`.
        entity: String,
        /// Which limit.
        metric: Metric,
        /// Its value.
        limit: u64,
        /// What is left.
        remaining: u64,
        /// When to retry, seconds.
        retry_after_secs: u64,
        /// `x-ratelimit-*` values.
        headers: Box<RateHeaders>,
    },
    /// The key's or the model's concurrency limit is reached.
    #[error("Concurrency limit exceeded for {entity}")]
    ConcurrencyLimited {
        /// `API key ID: <id>` or `model '<name>'`.
        entity: String,
        /// When to retry, seconds.
        retry_after_secs: u64,
        /// `x-ratelimit-*` values.
        headers: Box<RateHeaders>,
    },
    /// The shared rate-limit store is unreachable and limits fail closed.
    #[error("Rate limits cannot be checked right now; please retry shortly.")]
    LimiterUnavailable,
    /// A hard budget or the prepaid balance of a scope of the request is used up.
    #[error("{0}")]
    BudgetExceeded(#[from] crate::budget::BudgetError),
}

impl From<LimitError> for ApiError {
    fn from(e: LimitError) -> Self {
        match e {
            LimitError::Unavailable => Self::LimiterUnavailable,
            LimitError::Denied(d) => {
                let retry_after_secs = u64::try_from(d.retry_after_ms)
                    .unwrap_or(0)
                    .div_ceil(1_000)
                    .max(1);
                if d.metric == Metric::Concurrency {
                    Self::ConcurrencyLimited {
                        entity: d.entity,
                        retry_after_secs,
                        headers: Box::new(d.headers),
                    }
                } else {
                    Self::RateLimited {
                        entity: d.entity,
                        metric: d.metric,
                        limit: d.limit,
                        remaining: d.remaining,
                        retry_after_secs,
                        headers: Box::new(d.headers),
                    }
                }
            }
        }
    }
}

impl ApiError {
    /// HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidJson(_) | Self::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            Self::MissingKey | Self::InvalidKey | Self::KeyDisabled => StatusCode::UNAUTHORIZED,
            Self::EndpointNotSupported { .. } => StatusCode::BAD_REQUEST,
            Self::ModelNotAllowed(_) => StatusCode::FORBIDDEN,
            Self::ModelNotFound(_) => StatusCode::NOT_FOUND,
            Self::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UpstreamUnavailable(_) | Self::UpstreamAuthFailed(_) => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::RateLimited { .. } | Self::ConcurrencyLimited { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Self::LimiterUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::BudgetExceeded(_) => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// OpenAI `error.type`.
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::InvalidJson(_) | Self::InvalidRequest { .. } | Self::BodyTooLarge(_) => {
                "invalid_request_error"
            }
            Self::MissingKey | Self::InvalidKey | Self::KeyDisabled => "invalid_request_error",
            Self::EndpointNotSupported { .. } => "invalid_request_error",
            Self::ModelNotAllowed(_) => "permission_error",
            Self::ModelNotFound(_) => "invalid_request_error",
            Self::UpstreamUnavailable(_) | Self::UpstreamTimeout | Self::UpstreamAuthFailed(_) => {
                "api_error"
            }
            Self::RateLimited { .. } | Self::ConcurrencyLimited { .. } => "rate_limit_error",
            Self::LimiterUnavailable => "api_error",
            Self::BudgetExceeded(_) => "insufficient_quota",
        }
    }

    /// OpenAI `error.code`, also recorded as the usage event's `error_type`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidJson(_) => "invalid_json",
            Self::InvalidRequest { .. } => "invalid_request",
            Self::MissingKey => "missing_api_key",
            Self::InvalidKey => "invalid_api_key",
            Self::KeyDisabled => "api_key_disabled",
            Self::EndpointNotSupported { .. } => "endpoint_not_supported",
            Self::ModelNotAllowed(_) => "model_not_allowed",
            Self::ModelNotFound(_) => "model_not_found",
            Self::BodyTooLarge(_) => "request_too_large",
            Self::UpstreamUnavailable(_) => "upstream_unavailable",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::UpstreamAuthFailed(_) => "upstream_auth_failed",
            Self::RateLimited { .. } => "rate_limit_exceeded",
            Self::ConcurrencyLimited { .. } => "concurrency_limit_exceeded",
            Self::LimiterUnavailable => "rate_limiter_unavailable",
            Self::BudgetExceeded(_) => "budget_exceeded",
        }
    }

    /// Whether retrying the same request may succeed.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            Self::UpstreamUnavailable(_)
                | Self::UpstreamTimeout
                | Self::RateLimited { .. }
                | Self::ConcurrencyLimited { .. }
                | Self::LimiterUnavailable
        )
    }

    /// Who caused it.
    pub fn cause(&self) -> Cause {
        match self {
            Self::UpstreamUnavailable(_) | Self::UpstreamTimeout => Cause::Upstream,
            Self::LimiterUnavailable | Self::UpstreamAuthFailed(_) => Cause::Gateway,
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

impl ApiError {
    /// Anthropic's error type for this error.
    fn anthropic_type(&self) -> &'static str {
        match self.status().as_u16() {
            400 | 413 => "invalid_request_error",
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            429 => "rate_limit_error",
            _ => "api_error",
        }
    }

    /// The body in Anthropic's shape (for `/v1/messages` clients).
    pub fn anthropic_body(&self) -> serde_json::Value {
        serde_json::json!({
            "type": "error",
            "error": { "type": self.anthropic_type(), "message": self.to_string() }
        })
    }

    /// Render for an Anthropic-format client.
    pub fn into_anthropic_response(self) -> Response {
        let mut resp = (self.status(), axum::Json(self.anthropic_body())).into_response();
        self.limit_headers(resp.headers_mut());
        resp
    }

    /// `Retry-After` and `x-ratelimit-*` of rate-limit refusals.
    fn limit_headers(&self, h: &mut HeaderMap) {
        let (retry, headers) = match self {
            Self::RateLimited {
                retry_after_secs,
                headers,
                ..
            }
            | Self::ConcurrencyLimited {
                retry_after_secs,
                headers,
                ..
            } => (*retry_after_secs, Some(headers)),
            Self::LimiterUnavailable => (1, None),
            Self::BudgetExceeded(e) => match e.retry_after_secs(crate::budget::now_ms()) {
                Some(secs) => (secs, None),
                None => return,
            },
            _ => return,
        };
        h.insert(axum::http::header::RETRY_AFTER, HeaderValue::from(retry));
        if let Some(headers) = headers {
            headers.apply(h);
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status(), axum::Json(self.body())).into_response();
        self.limit_headers(resp.headers_mut());
        if self.retryable() {
            resp.headers_mut()
                .insert("x-should-retry", HeaderValue::from_static("true"));
        }
        if let Self::BudgetExceeded(_) = self {
            // SDKs retry 429s by default; a used-up budget does not recover in seconds.
            resp.headers_mut()
                .insert("x-should-retry", HeaderValue::from_static("false"));
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
            (ApiError::KeyDisabled, 401, "api_key_disabled"),
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
            (
                ApiError::UpstreamAuthFailed(401),
                502,
                "upstream_auth_failed",
            ),
        ];
        for (err, status, code) in cases {
            assert_eq!(err.status().as_u16(), status);
            let body = err.body();
            assert_eq!(body["error"]["code"], code);
            assert!(body["error"]["message"].as_str().unwrap().len() > 5);
            assert!(body["error"]["type"].is_string());
        }
        assert_eq!(ApiError::UpstreamTimeout.cause(), Cause::Upstream);
        assert_eq!(ApiError::UpstreamAuthFailed(403).cause(), Cause::Gateway);
        assert!(!ApiError::UpstreamAuthFailed(401).retryable());
        assert!(!ApiError::InvalidKey.retryable());
    }

    #[test]
    fn rate_limit_refusals_carry_retry_after_and_name_entity_and_metric() {
        let headers = RateHeaders {
            requests: Some(crate::limits::headers::Quota {
                limit: 100,
                remaining: 0,
                reset_ms: 1_500,
            }),
            ..RateHeaders::default()
        };
        let e = ApiError::from(LimitError::Denied(Box::new(crate::limits::Denial {
            entity: "API key ID: my-app".into(),
            metric: Metric::Rpm,
            limit: 100,
            remaining: 0,
            retry_after_ms: 1_500,
            headers,
        })));
        let body = e.body();
        assert_eq!(
            body["error"]["message"],
            "Rate limit exceeded for API key ID: my-app. Limited on rpm, current limit: 100, remaining: 0"
        );
        assert_eq!(body["error"]["type"], "rate_limit_error");
        assert_eq!(body["error"]["code"], "rate_limit_exceeded");
        let resp = e.into_response();
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()["retry-after"], "2");
        assert_eq!(resp.headers()["x-ratelimit-remaining-requests"], "0");
        let e = ApiError::from(LimitError::Denied(Box::new(crate::limits::Denial {
            entity: "model 'openai-gpt4-mini'".into(),
            metric: Metric::Concurrency,
            limit: 5,
            remaining: 0,
            retry_after_ms: 1_000,
            headers: RateHeaders::default(),
        })));
        assert_eq!(e.code(), "concurrency_limit_exceeded");
        assert_eq!(
            e.to_string(),
            "Concurrency limit exceeded for model 'openai-gpt4-mini'"
        );
        let resp = e.into_anthropic_response();
        assert_eq!(resp.headers()["retry-after"], "1");
        let e = ApiError::from(LimitError::Unavailable);
        assert_eq!(e.status(), 503);
        assert_eq!(e.code(), "rate_limiter_unavailable");
    }
}
