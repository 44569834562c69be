//! OpenAI-compatible wire format: usage parsing.

use serde::Deserialize;

use crate::usage::Tokens;

/// `usage` as OpenAI reports it.
#[derive(Debug, Deserialize, Default, PartialEq)]
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
#[derive(Debug, Deserialize, Default, PartialEq)]
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
