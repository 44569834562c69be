//! Anthropic Messages wire format: pure translation to and from the OpenAI chat format.
//!
//! Nothing here does I/O; the HTTP pipeline calls these functions around its upstream call.
//!
//! * `POST /v1/chat/completions` with an Anthropic upstream:
//!   [`openai_to_anthropic_request`] → upstream → [`anthropic_to_openai_response`], or for
//!   streams [`AnthropicToOpenAiStream`] fed with the upstream bytes.
//! * `POST /v1/messages` with an OpenAI-compatible upstream: [`anthropic_to_openai_request`] →
//!   upstream → [`openai_to_anthropic_response`], or for streams [`OpenAiToAnthropicStream`].
//!   With an Anthropic upstream `/v1/messages` is passed through untouched.
//! * Error bodies: [`anthropic_error_to_openai`] and [`openai_error_to_anthropic`] (status
//!   preserved), [`anthropic_error_body`] for errors the gateway itself raises on
//!   `/v1/messages`.
//!
//! Usage is reported as [`TokenUsage`], where `prompt_tokens` always *includes* cached input
//! (OpenAI's convention); Anthropic's `input_tokens` excludes cache reads and cache writes.

mod errors;
mod fields;
mod request;
mod response;
mod reverse;
mod reverse_stream;
mod sse;
mod stream;

use serde_json::{json, Value};

pub use errors::{
    anthropic_error_body, anthropic_error_to_openai, anthropic_error_type,
    openai_error_to_anthropic, MappedError,
};
pub use request::{
    include_usage, openai_to_anthropic_request, DEFAULT_MAX_TOKENS, DROPPED_OPENAI_FIELDS,
};
pub use response::anthropic_to_openai_response;
pub use reverse::{
    anthropic_to_openai_request, openai_to_anthropic_response, DROPPED_ANTHROPIC_FIELDS,
};
pub use reverse_stream::OpenAiToAnthropicStream;
pub use stream::AnthropicToOpenAiStream;

use crate::usage::Tokens;

/// Why a body could not be translated. Paths name the offending field, e.g.
/// `messages[2].content[0].type`; stream errors use `event[N]` (the N-th SSE event, from 0).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    /// A required field is absent or null.
    #[error("missing required field `{0}`")]
    Missing(String),
    /// A field has the wrong JSON type.
    #[error("field `{path}` must be {expected}")]
    Type {
        /// Path of the field.
        path: String,
        /// What it must be, e.g. "a string".
        expected: &'static str,
    },
    /// A value the other wire format cannot express.
    #[error("field `{path}`: {reason}")]
    Unsupported {
        /// Path of the field.
        path: String,
        /// Explanation.
        reason: String,
    },
    /// Text that must be JSON is not.
    #[error("field `{path}` is not valid JSON: {reason}")]
    Json {
        /// Path of the field (or SSE event).
        path: String,
        /// Parser message.
        reason: String,
    },
    /// The upstream stream ended before its final event.
    #[error("upstream stream ended before {0}")]
    Truncated(&'static str),
}

impl TranslateError {
    /// Path of the offending field, if the error is about one.
    pub fn path(&self) -> Option<&str> {
        match self {
            Self::Missing(path)
            | Self::Type { path, .. }
            | Self::Unsupported { path, .. }
            | Self::Json { path, .. } => Some(path),
            Self::Truncated(_) => None,
        }
    }
}

/// The end of a translator's `finish`: `out` on success; on failure `out` goes back to
/// `pending` (for `take_pending`) and the error is returned.
fn finished(
    pending: &mut Vec<u8>,
    out: Vec<u8>,
    result: Result<(), TranslateError>,
) -> Result<bytes::Bytes, TranslateError> {
    match result {
        Ok(()) => Ok(bytes::Bytes::from(out)),
        Err(e) => {
            *pending = out;
            Err(e)
        }
    }
}

/// Token counts of one response, in OpenAI's convention.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenUsage {
    /// All input tokens: uncached + cache reads + cache writes.
    pub prompt_tokens: u64,
    /// Output tokens.
    pub completion_tokens: u64,
    /// Input tokens read from the prompt cache (part of `prompt_tokens`).
    pub cached_tokens: u64,
    /// Input tokens written to the prompt cache (part of `prompt_tokens`; Anthropic only).
    pub cache_creation_tokens: u64,
}

fn u64_field(v: &Value, key: &str) -> Option<u64> {
    v.get(key).and_then(Value::as_u64)
}

impl TokenUsage {
    /// From an Anthropic `usage` object (missing fields count 0).
    pub fn from_anthropic(usage: &Value) -> Self {
        let input = u64_field(usage, "input_tokens").unwrap_or(0);
        let read = u64_field(usage, "cache_read_input_tokens").unwrap_or(0);
        let write = u64_field(usage, "cache_creation_input_tokens").unwrap_or(0);
        Self {
            prompt_tokens: input.saturating_add(read).saturating_add(write),
            completion_tokens: u64_field(usage, "output_tokens").unwrap_or(0),
            cached_tokens: read,
            cache_creation_tokens: write,
        }
    }

    /// From an OpenAI `usage` object (missing fields count 0).
    pub fn from_openai(usage: &Value) -> Self {
        Self {
            prompt_tokens: u64_field(usage, "prompt_tokens").unwrap_or(0),
            completion_tokens: u64_field(usage, "completion_tokens").unwrap_or(0),
            cached_tokens: usage
                .get("prompt_tokens_details")
                .and_then(|d| u64_field(d, "cached_tokens"))
                .unwrap_or(0),
            cache_creation_tokens: 0,
        }
    }

    /// The OpenAI `usage` object.
    pub fn openai_json(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens.saturating_add(self.completion_tokens),
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        })
    }

    /// The Anthropic `usage` object (`input_tokens` excludes cache reads and writes).
    pub fn anthropic_json(&self) -> Value {
        let uncached = self
            .prompt_tokens
            .saturating_sub(self.cached_tokens)
            .saturating_sub(self.cache_creation_tokens);
        json!({
            "input_tokens": uncached,
            "cache_creation_input_tokens": self.cache_creation_tokens,
            "cache_read_input_tokens": self.cached_tokens,
            "output_tokens": self.completion_tokens,
        })
    }
}

impl From<TokenUsage> for Tokens {
    fn from(u: TokenUsage) -> Self {
        let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        Tokens {
            prompt: clamp(u.prompt_tokens),
            completion: clamp(u.completion_tokens),
            cached: clamp(u.cached_tokens),
            estimated: false,
        }
    }
}

/// OpenAI `finish_reason` for an Anthropic `stop_reason`: `end_turn`, `stop_sequence` and
/// `pause_turn` → `stop`, `max_tokens` → `length`, `tool_use` → `tool_calls`, `refusal` →
/// `content_filter`; anything else → `stop`.
pub fn finish_reason_from_anthropic(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop",
    }
}

/// Anthropic `stop_reason` for an OpenAI `finish_reason`: `length` → `max_tokens`,
/// `tool_calls`/`function_call` → `tool_use`, `content_filter` → `refusal`, anything else
/// (`stop`) → `end_turn`.
pub fn stop_reason_from_openai(finish_reason: &str) -> &'static str {
    match finish_reason {
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        _ => "end_turn",
    }
}

#[cfg(test)]
mod tests;
