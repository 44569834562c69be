//! Upstream providers: where a request goes and in which wire format.
//!
//! Clients speak OpenAI (`/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`) or
//! Anthropic (`/v1/messages`); deployments speak OpenAI (any compatible base URL), Azure OpenAI
//! or Anthropic. [`Endpoint`] names what the client called; [`upstream_request`] builds the
//! HTTP request for one deployment.

pub mod anthropic;
pub mod openai;
pub mod tokens;

use bytes::Bytes;

use crate::entities::Provider;
use crate::http::error::ApiError;
use crate::routing::Deployment;

/// The API a client called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/chat/completions` (OpenAI).
    ChatCompletions,
    /// `POST /v1/completions` (OpenAI, legacy).
    Completions,
    /// `POST /v1/embeddings` (OpenAI).
    Embeddings,
    /// `POST /v1/messages` (Anthropic).
    Messages,
}

impl Endpoint {
    /// Name in usage events and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ChatCompletions => "chat.completions",
            Self::Completions => "completions",
            Self::Embeddings => "embeddings",
            Self::Messages => "messages",
        }
    }

    /// Whether the client speaks Anthropic's format.
    pub fn anthropic_client(self) -> bool {
        self == Self::Messages
    }

    /// Whether the endpoint can stream.
    pub fn can_stream(self) -> bool {
        self != Self::Embeddings
    }
}

/// How a request is carried to one deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Same wire format on both sides (OpenAI⇄OpenAI/Azure, Anthropic⇄Anthropic).
    Passthrough,
    /// OpenAI chat client, Anthropic upstream.
    ChatToAnthropic,
    /// Anthropic client, OpenAI-compatible upstream.
    MessagesToOpenai,
}

/// How `endpoint` reaches a deployment of `provider`, or why it cannot.
pub fn route(endpoint: Endpoint, provider: Provider) -> Result<Route, &'static str> {
    match (endpoint, provider) {
        (Endpoint::Messages, Provider::Anthropic) => Ok(Route::Passthrough),
        (Endpoint::Messages, _) => Ok(Route::MessagesToOpenai),
        (Endpoint::ChatCompletions, Provider::Anthropic) => Ok(Route::ChatToAnthropic),
        (_, Provider::Anthropic) => {
            Err("Anthropic deployments serve chat completions and messages only")
        }
        _ => Ok(Route::Passthrough),
    }
}

/// Anthropic API version header value sent upstream when the client did not send one.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// Build the upstream request for `deployment`. `body` is already in the upstream's format.
pub fn upstream_request(
    client: &reqwest::Client,
    deployment: &Deployment,
    endpoint: Endpoint,
    route: Route,
    body: Bytes,
    request_id: &str,
    anthropic_version: Option<&str>,
) -> Result<reqwest::RequestBuilder, ApiError> {
    let wire = match route {
        Route::Passthrough => endpoint,
        Route::ChatToAnthropic => Endpoint::Messages,
        Route::MessagesToOpenai => Endpoint::ChatCompletions,
    };
    let path = match wire {
        Endpoint::ChatCompletions => "chat/completions",
        Endpoint::Completions => "completions",
        Endpoint::Embeddings => "embeddings",
        Endpoint::Messages => "messages",
    };
    let base = &deployment.base_url;
    let mut req = match deployment.provider {
        Provider::Openai => client.post(format!("{base}/{path}")),
        Provider::Azure => client
            .post(format!(
                "{base}/openai/deployments/{}/{path}",
                deployment.upstream_model
            ))
            .query(&[("api-version", deployment.api_version.as_str())]),
        Provider::Anthropic => {
            // Anthropic's base URL is the host; the version prefix is part of the path.
            let base = base.trim_end_matches("/v1");
            client.post(format!("{base}/v1/{path}")).header(
                "anthropic-version",
                anthropic_version.unwrap_or(ANTHROPIC_VERSION),
            )
        }
    };
    req = req
        .header(http::header::CONTENT_TYPE, "application/json")
        .header("x-request-id", request_id)
        .body(body);
    if let Some(key) = &deployment.api_key {
        req = match deployment.provider {
            Provider::Openai => req.bearer_auth(key),
            Provider::Azure => req.header("api-key", key),
            Provider::Anthropic => req.header("x-api-key", key),
        };
    }
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_between_formats() {
        assert_eq!(
            route(Endpoint::ChatCompletions, Provider::Openai),
            Ok(Route::Passthrough)
        );
        assert_eq!(
            route(Endpoint::ChatCompletions, Provider::Anthropic),
            Ok(Route::ChatToAnthropic)
        );
        assert_eq!(
            route(Endpoint::Messages, Provider::Azure),
            Ok(Route::MessagesToOpenai)
        );
        assert_eq!(
            route(Endpoint::Messages, Provider::Anthropic),
            Ok(Route::Passthrough)
        );
        assert!(route(Endpoint::Embeddings, Provider::Anthropic).is_err());
    }
}
