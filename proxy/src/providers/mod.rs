//! Upstream providers: where a request goes and in which wire format.
//!
//! Clients speak OpenAI (`/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`) or
//! Anthropic (`/v1/messages`); deployments speak OpenAI (any compatible base URL), Azure OpenAI
//! or Anthropic. [`Endpoint`] names what the client called; [`upstream_request`] builds the
//! HTTP request for one deployment.

pub mod anthropic;
pub mod client;
pub mod openai;
pub mod pool;
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
    deployment: &Deployment,
    endpoint: Endpoint,
    route: Route,
    body: Bytes,
    request_id: &str,
    anthropic_version: Option<&str>,
) -> Result<http::Request<client::RequestBody>, ApiError> {
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
    let bad = |what: &str| ApiError::UpstreamUnavailable(format!("invalid upstream {what}"));
    let base = &deployment.base_url;
    let url = match deployment.provider {
        Provider::Openai => format!("{base}/{path}"),
        Provider::Azure => {
            let mut url = reqwest::Url::parse(&format!(
                "{base}/openai/deployments/{}/{path}",
                deployment.upstream_model
            ))
            .map_err(|_| bad("URL"))?;
            url.query_pairs_mut()
                .append_pair("api-version", &deployment.api_version);
            url.to_string()
        }
        // Anthropic's base URL is the host; the version prefix is part of the path.
        Provider::Anthropic => format!("{}/v1/{path}", base.trim_end_matches("/v1")),
    };
    let mut req = http::Request::post(url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header("x-request-id", request_id);
    if deployment.provider == Provider::Anthropic {
        req = req.header(
            "anthropic-version",
            anthropic_version.unwrap_or(ANTHROPIC_VERSION),
        );
    }
    if let Some(key) = &deployment.api_key {
        let (name, value) = match deployment.provider {
            Provider::Openai => (http::header::AUTHORIZATION, format!("Bearer {key}")),
            Provider::Azure => (http::HeaderName::from_static("api-key"), key.clone()),
            Provider::Anthropic => (http::HeaderName::from_static("x-api-key"), key.clone()),
        };
        let mut value = http::HeaderValue::try_from(value).map_err(|_| bad("API key"))?;
        value.set_sensitive(true);
        req = req.header(name, value);
    }
    req.body(client::RequestBody::new(body))
        .map_err(|_| bad("URL or header"))
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
