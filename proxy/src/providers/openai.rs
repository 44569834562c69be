//! OpenAI-compatible wire format: usage parsing, transport errors, the pooled client.

use std::time::Duration;

use serde::Deserialize;

use crate::http::error::ApiError;
use crate::usage::Tokens;

/// `usage` as OpenAI reports it.
#[derive(Debug, Deserialize, Default)]
pub struct UsageJson {
    /// Input tokens.
    #[serde(default)]
    pub prompt_tokens: i64,
    /// Output tokens.
    #[serde(default)]
    pub completion_tokens: i64,
    /// Details of the input tokens.
    #[serde(default)]
    pub prompt_tokens_details: Option<PromptDetails>,
}

/// `usage.prompt_tokens_details`.
#[derive(Debug, Deserialize, Default)]
pub struct PromptDetails {
    /// Input tokens served from the prompt cache.
    #[serde(default)]
    pub cached_tokens: Option<i64>,
}

impl UsageJson {
    /// As reported (not estimated) token counts.
    pub fn tokens(&self) -> Tokens {
        Tokens {
            prompt: self.prompt_tokens,
            completion: self.completion_tokens,
            cached: self
                .prompt_tokens_details
                .as_ref()
                .and_then(|d| d.cached_tokens)
                .unwrap_or(0),
            estimated: false,
        }
    }
}

#[derive(Deserialize)]
struct ResponseProbe {
    #[serde(default)]
    usage: Option<UsageJson>,
}

/// Usage of a non-streamed response body, if it reports any.
pub fn response_usage(body: &[u8]) -> Option<Tokens> {
    serde_json::from_slice::<ResponseProbe>(body)
        .ok()
        .and_then(|p| p.usage)
        .map(|u| u.tokens())
}

/// Map a transport error to the API error a client sees.
pub fn classify(e: reqwest::Error) -> ApiError {
    if e.is_timeout() {
        ApiError::UpstreamTimeout
    } else {
        ApiError::UpstreamUnavailable(without_url(&e))
    }
}

fn without_url(e: &reqwest::Error) -> String {
    // The URL may carry credentials in unusual setups; never echo it.
    let kind = if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "response body broken"
    } else if e.is_request() {
        "request failed"
    } else {
        "transport error"
    };
    kind.to_string()
}

/// Upstream client with connection pooling (one per connect timeout in use).
pub fn client(connect_timeout: Duration) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(1024)
        .tcp_nodelay(true)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_usage_with_cached_tokens() {
        let body = br#"{"id":"x","usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17,"prompt_tokens_details":{"cached_tokens":4}}}"#;
        assert_eq!(
            response_usage(body),
            Some(Tokens {
                prompt: 12,
                completion: 5,
                cached: 4,
                estimated: false
            })
        );
        assert_eq!(response_usage(b"{\"id\":1}"), None);
        assert_eq!(response_usage(b"not json"), None);
    }
}
