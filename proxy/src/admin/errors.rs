//! Admin API errors, rendered as OpenAI-shaped JSON:
//! `{"error": {"message", "type", "param", "code"}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::entities::FieldError;
use crate::store::StoreError;

/// An error answered by the admin API.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The body is not JSON.
    #[error("The request body is not valid JSON ({0}). Send a JSON object with Content-Type: application/json.")]
    InvalidJson(String),
    /// A field is unknown, missing, mistyped or fails validation.
    #[error("{message}")]
    Invalid {
        /// Field path, e.g. `deployments[0].base_url` (None: the request as a whole).
        param: Option<String>,
        /// What is wrong and how to fix it.
        message: String,
        /// `unknown_field`, `missing_field`, `invalid_type`, `invalid_value`, `invalid_body`.
        code: &'static str,
    },
    /// A reference to another entity that does not exist.
    #[error("{message}")]
    UnknownReference {
        /// Field path, e.g. `allowed_models[1]`.
        param: String,
        /// Explanation.
        message: String,
    },
    /// No `Authorization: Bearer` header.
    #[error("You didn't provide the admin key. Send it as `Authorization: Bearer <admin key>`.")]
    MissingKey,
    /// Wrong admin key.
    #[error("Incorrect admin key provided.")]
    InvalidKey,
    /// The entity does not exist.
    #[error("The {kind} `{id}` does not exist.")]
    NotFound {
        /// `model`, `key` or `account`.
        kind: &'static str,
        /// Its id.
        id: String,
    },
    /// No such route.
    #[error("Unknown admin API route `{0}`. Routes live under /admin/v1/ (models, keys, accounts, budgets, credit-accounts, credit-topups, credit-statements, healthz).")]
    NoRoute(String),
    /// Method not supported on this route.
    #[error("Method not allowed on this route. Use GET/POST on collections and GET/PUT/DELETE on /{{collection}}/{{id}}.")]
    MethodNotAllowed,
    /// The id (or another unique value) is taken.
    #[error("{message}")]
    Conflict {
        /// The conflicting field.
        param: &'static str,
        /// Explanation.
        message: String,
    },
    /// Body over the limit.
    #[error("The request body is larger than the limit of {0} bytes.")]
    BodyTooLarge(usize),
    /// The config store cannot be reached.
    #[error("The config store is unavailable; try again shortly ({0}).")]
    StoreUnavailable(String),
    /// A bug or an unusable setting.
    #[error("Internal error: {0}")]
    Internal(String),
}

impl AdminError {
    /// A validation failure of `validate()`.
    pub fn field(e: FieldError) -> Self {
        Self::Invalid {
            message: format!("Invalid value for `{}`: {}.", e.field, e.message),
            param: Some(e.field),
            code: "invalid_value",
        }
    }

    /// HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidJson(_) | Self::Invalid { .. } => StatusCode::BAD_REQUEST,
            Self::UnknownReference { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::MissingKey | Self::InvalidKey => StatusCode::UNAUTHORIZED,
            Self::NotFound { .. } | Self::NoRoute(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::StoreUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// OpenAI `error.type`.
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::MissingKey | Self::InvalidKey => "authentication_error",
            Self::StoreUnavailable(_) | Self::Internal(_) => "api_error",
            _ => "invalid_request_error",
        }
    }

    /// OpenAI `error.code`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidJson(_) => "invalid_json",
            Self::Invalid { code, .. } => code,
            Self::UnknownReference { .. } => "unknown_reference",
            Self::MissingKey => "missing_api_key",
            Self::InvalidKey => "invalid_api_key",
            Self::NotFound { .. } => "not_found",
            Self::NoRoute(_) => "unknown_route",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Conflict { .. } => "conflict",
            Self::BodyTooLarge(_) => "request_too_large",
            Self::StoreUnavailable(_) => "store_unavailable",
            Self::Internal(_) => "internal_error",
        }
    }

    /// OpenAI `error.param`.
    pub fn param(&self) -> Option<&str> {
        match self {
            Self::Invalid { param, .. } => param.as_deref(),
            Self::UnknownReference { param, .. } => Some(param),
            Self::Conflict { param, .. } => Some(param),
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

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        if self.status().is_server_error() {
            tracing::warn!(error = %self, "admin request failed");
        }
        (self.status(), axum::Json(self.body())).into_response()
    }
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::AlreadyExists { kind, id } => Self::Conflict {
                param: if kind == "model" { "name" } else { "id" },
                message: format!(
                    "The {kind} `{id}` already exists. Use PUT /admin/v1/{}/{id} to replace it.",
                    match kind {
                        "model" => "models",
                        "key" => "keys",
                        "budget" => "budgets",
                        "credit account" => "credit-accounts",
                        _ => "accounts",
                    }
                ),
            },
            StoreError::NotFound { kind, id } => Self::NotFound { kind, id },
            e @ (StoreError::Unavailable(_) | StoreError::Timeout(_)) => {
                Self::StoreUnavailable(e.to_string())
            }
            e @ (StoreError::Config(_) | StoreError::Encode { .. }) => {
                Self::Internal(e.to_string())
            }
        }
    }
}
