//! OpenAI wire format: the request fields the mock reads and the JSON bodies
//! it answers with (completions, stream chunks, errors, model list).

use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use rand::distributions::Alphanumeric;
use rand::Rng;
use serde::Deserialize;
use serde_json::{json, Value};

use super::tokens::FinishReason;

/// Models listed by `GET /v1/models` (any model name is accepted).
pub const MODELS: [&str; 3] = ["gpt-4o-mini", "gpt-4o", "tollgate-mock-1"];

/// The subset of a chat-completion request the mock looks at. Unknown
/// fields (`metadata`, `temperature`, `tools`, ...) are ignored.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    /// Requested model, echoed back.
    pub model: String,
    /// Conversation messages.
    pub messages: Vec<ChatMessage>,
    /// Whether to answer as a server-sent-event stream.
    #[serde(default)]
    pub stream: Option<bool>,
    /// Stream options (`include_usage`).
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// Legacy completion-token limit.
    #[serde(default)]
    pub max_tokens: Option<u64>,
    /// Completion-token limit; wins over `max_tokens` when both are given.
    #[serde(default)]
    pub max_completion_tokens: Option<u64>,
}

impl ChatRequest {
    /// Whether the request asked for streaming.
    pub fn is_stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    /// Whether a stream should end with a usage chunk.
    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false)
    }

    /// The request's completion-token limit, if any.
    pub fn token_limit(&self) -> Option<u64> {
        self.max_completion_tokens.or(self.max_tokens)
    }
}

/// One chat message; only `content` matters for token counting.
#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    /// Message role (`system`, `user`, ...); not validated.
    #[serde(default)]
    pub role: Option<String>,
    /// A string, an array of content parts, or null.
    #[serde(default)]
    pub content: Option<Value>,
}

/// `stream_options` of a request.
#[derive(Debug, Deserialize)]
pub struct StreamOptions {
    /// Emit a final chunk with empty `choices` and the `usage` object.
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// Token counts of one completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
}

impl Usage {
    /// The OpenAI `usage` object.
    pub fn to_json(self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens.saturating_add(self.completion_tokens),
        })
    }
}

/// A fresh completion id: `chatcmpl-` followed by 24 random alphanumerics.
pub fn completion_id() -> String {
    let suffix: String = rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(24)
        .map(char::from)
        .collect();
    format!("chatcmpl-{suffix}")
}

/// Current Unix time in seconds (0 if the clock is before 1970).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A non-streaming `chat.completion` body.
pub fn completion_body(
    id: &str,
    created: u64,
    model: &str,
    content: &str,
    finish: FinishReason,
    usage: Usage,
) -> Value {
    json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": "fp_tollgate_mock",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content, "refusal": null},
            "logprobs": null,
            "finish_reason": finish.as_str(),
        }],
        "usage": usage.to_json(),
    })
}

/// Identity shared by all chunks of one stream.
#[derive(Clone, Debug)]
pub struct ChunkHeader {
    /// Completion id.
    pub id: String,
    /// Creation time (Unix seconds).
    pub created: u64,
    /// Echoed model.
    pub model: String,
    /// Whether `usage: null` is added to choice chunks (include_usage set).
    pub usage_null: bool,
}

impl ChunkHeader {
    fn chunk(&self, choices: Value) -> Value {
        let mut v = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_tollgate_mock",
            "choices": choices,
        });
        if self.usage_null {
            if let Some(obj) = v.as_object_mut() {
                obj.insert("usage".to_owned(), Value::Null);
            }
        }
        v
    }

    /// A chunk carrying `delta` and `finish_reason` for choice 0.
    pub fn delta_chunk(&self, delta: Value, finish: Option<FinishReason>) -> Value {
        self.chunk(json!([{
            "index": 0,
            "delta": delta,
            "logprobs": null,
            "finish_reason": finish.map(FinishReason::as_str),
        }]))
    }

    /// The usage chunk: empty `choices` and the `usage` object.
    pub fn usage_chunk(&self, usage: Usage) -> Value {
        let mut v = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_tollgate_mock",
            "choices": [],
        });
        if let Some(obj) = v.as_object_mut() {
            obj.insert("usage".to_owned(), usage.to_json());
        }
        v
    }
}

/// An OpenAI-shaped error body:
/// `{"error":{"message":..,"type":..,"param":null,"code":..}}`.
pub fn error_body(status: StatusCode, message: &str) -> Value {
    let (kind, code): (&str, Value) = match status.as_u16() {
        400 | 413 | 422 => ("invalid_request_error", Value::Null),
        401 => ("invalid_request_error", json!("invalid_api_key")),
        403 => (
            "permission_error",
            json!("unsupported_country_region_territory"),
        ),
        404 => ("invalid_request_error", json!("model_not_found")),
        408 => ("timeout", json!("timeout")),
        429 => ("requests", json!("rate_limit_exceeded")),
        503 => ("server_error", json!("service_unavailable")),
        500..=599 => ("server_error", Value::Null),
        _ => ("invalid_request_error", Value::Null),
    };
    json!({
        "error": {
            "message": message,
            "type": kind,
            "param": null,
            "code": code,
        }
    })
}

/// The `GET /v1/models` body.
pub fn models_body() -> Value {
    let data: Vec<Value> = MODELS
        .iter()
        .map(|id| json!({"id": id, "object": "model", "created": 1_700_000_000u64, "owned_by": "tollgate-mock"}))
        .collect();
    json!({"object": "list", "data": data})
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_minimal_and_full_requests() {
        let r: ChatRequest =
            serde_json::from_str(r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#)
                .unwrap();
        assert!(!r.is_stream());
        assert!(!r.include_usage());
        assert_eq!(r.token_limit(), None);

        let r: ChatRequest = serde_json::from_str(
            r#"{"model":"m","messages":[{"role":"assistant","content":null}],
                "stream":true,"stream_options":{"include_usage":true},
                "max_tokens":7,"max_completion_tokens":9,"metadata":{"a":1}}"#,
        )
        .unwrap();
        assert!(r.is_stream());
        assert!(r.include_usage());
        assert_eq!(r.token_limit(), Some(9));
    }

    #[test]
    fn rejects_bad_requests() {
        assert!(serde_json::from_str::<ChatRequest>(r#"{"messages":[]}"#).is_err());
        assert!(serde_json::from_str::<ChatRequest>(r#"{"model":"m"}"#).is_err());
        assert!(serde_json::from_str::<ChatRequest>(
            r#"{"model":"m","messages":[],"max_tokens":-1}"#
        )
        .is_err());
    }

    #[test]
    fn completion_id_shape() {
        let id = completion_id();
        assert!(id.starts_with("chatcmpl-"));
        assert_eq!(id.len(), "chatcmpl-".len() + 24);
        assert_ne!(id, completion_id());
    }

    #[test]
    fn error_bodies_are_openai_shaped() {
        let v = error_body(StatusCode::TOO_MANY_REQUESTS, "slow down");
        assert_eq!(v["error"]["message"], "slow down");
        assert_eq!(v["error"]["type"], "requests");
        assert_eq!(v["error"]["code"], "rate_limit_exceeded");
        let v = error_body(StatusCode::INTERNAL_SERVER_ERROR, "boom");
        assert_eq!(v["error"]["type"], "server_error");
        assert!(v["error"]["code"].is_null());
    }

    #[test]
    fn chunks_carry_usage_null_only_when_asked() {
        let h = ChunkHeader {
            id: "chatcmpl-x".into(),
            created: 1,
            model: "m".into(),
            usage_null: false,
        };
        let c = h.delta_chunk(json!({"content": " a"}), None);
        assert!(c.get("usage").is_none());
        let h = ChunkHeader {
            usage_null: true,
            ..h
        };
        let c = h.delta_chunk(json!({}), Some(FinishReason::Stop));
        assert!(c["usage"].is_null() && c.get("usage").is_some());
        assert_eq!(c["choices"][0]["finish_reason"], "stop");
        let u = h.usage_chunk(Usage {
            prompt_tokens: 3,
            completion_tokens: 4,
        });
        assert_eq!(u["choices"], json!([]));
        assert_eq!(u["usage"]["total_tokens"], 7);
    }
}
