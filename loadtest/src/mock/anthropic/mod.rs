//! Anthropic Messages wire format of the mock: `POST /v1/messages`.
//!
//! Same deterministic rules as the OpenAI endpoint ([`super::tokens`]), in Anthropic's shapes:
//!
//! * **Headers**: an API key is required, as `x-api-key` or as `Authorization: Bearer` (which
//!   recent official SDKs send); any value, 401 `authentication_error` without one.
//!   `anthropic-version` is required too (any value, 400 without it). The `x-mock-*` overrides and the
//!   `mock-status-NNN` model rule work as on the OpenAI endpoint, with Anthropic-shaped error
//!   bodies (`{"type":"error","error":{"type","message"},"request_id"}`).
//! * **Prompt tokens**: `system` (when present) and every message count as messages: words of
//!   string content, of `text` blocks and of `tool_result` contents, plus 4 each. When the
//!   request has a `cache_control` marker anywhere, half of them (rounded down) are reported as
//!   `cache_read_input_tokens` and the rest as `input_tokens`; otherwise all are `input_tokens`.
//! * **Completion**: `max_tokens` (required, at least 1) words, capped by the configured
//!   maximum, `stop_reason` `max_tokens` (or `end_turn` when the cap stopped it). If a
//!   `stop_sequences` entry occurs in that text, the completion ends before the word
//!   completing its first occurrence, with `stop_reason` `stop_sequence`.
//! * **Tool use**: when the request has `tools` and the last user message's text contains
//!   "weather" (any case), the answer is the text [`TOOL_USE_TEXT`] plus a `get_weather`
//!   `tool_use` block with input `{"city":"Paris"}`, `stop_reason` `tool_use` and
//!   [`TOOL_USE_OUTPUT_TOKENS`] output tokens.
//! * **Streams** (`"stream": true`) send the real event sequence: `message_start`,
//!   `content_block_start`, `ping`, one `content_block_delta` per token (`text_delta`; for the
//!   tool block `input_json_delta` fragments), `content_block_stop`, `message_delta` (stop
//!   reason, output tokens), `message_stop`, each as `event: NAME` + `data: JSON`.

use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use rand::distributions::Alphanumeric;
use rand::Rng;
use serde::Deserialize;
use serde_json::{json, Value};

use super::handlers::{model_status, overrides, sleep_or_shutdown, AppState, HEADER_STATUS};
use super::openai::Usage;
use super::tokens::{
    completion_word, content_words, count_words, plan_completion, FinishReason,
    PER_MESSAGE_OVERHEAD,
};
use stream::{sse_response, stream_events};

/// Header carrying the API key (this or `Authorization` is required, any value).
pub const HEADER_API_KEY: &str = "x-api-key";
/// Header carrying the API version (required, any value).
pub const HEADER_VERSION: &str = "anthropic-version";
/// Text before the `get_weather` tool call.
pub const TOOL_USE_TEXT: &str = "Let me check the weather.";
/// Output tokens reported for a tool-use answer.
pub const TOOL_USE_OUTPUT_TOKENS: u64 = 10;
/// Fragments of the tool input `{"city": "Paris"}` as streamed.
pub(crate) const TOOL_INPUT_PARTS: [&str; 3] = ["", "{\"city\": ", "\"Paris\"}"];

/// Anthropic `error.type` for a status.
fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        408 | 504 => "timeout_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    }
}

pub(crate) fn random_id(prefix: &str) -> String {
    let suffix: String = rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(24)
        .map(char::from)
        .collect();
    format!("{prefix}{suffix}")
}

/// An Anthropic-shaped error body.
pub fn error_body(status: StatusCode, message: &str) -> Value {
    json!({
        "type": "error",
        "error": {"type": error_type(status), "message": message},
        "request_id": random_id("req_"),
    })
}

fn error_response(status: StatusCode, message: &str) -> Response {
    (status, Json(error_body(status, message))).into_response()
}

/// The request fields the mock reads; others are ignored.
#[derive(Debug, Deserialize)]
struct MessagesRequest {
    model: String,
    messages: Vec<Message>,
    max_tokens: u64,
    #[serde(default)]
    system: Option<Value>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    tools: Option<Vec<Value>>,
    #[serde(default)]
    stop_sequences: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
struct Message {
    role: String,
    content: Value,
}

/// Words of Anthropic content: a string, or blocks with `text` (and `tool_result` contents).
fn block_words(content: &Value) -> u64 {
    let nested = match content {
        Value::Array(blocks) => blocks
            .iter()
            .filter(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
            .map(|b| content_words(b.get("content")))
            .sum(),
        _ => 0,
    };
    content_words(Some(content)).saturating_add(nested)
}

fn has_cache_control(v: &Value) -> bool {
    match v {
        Value::Object(o) => o
            .iter()
            .any(|(k, v)| k == "cache_control" || has_cache_control(v)),
        Value::Array(a) => a.iter().any(has_cache_control),
        _ => false,
    }
}

/// Text of the last user message (string content or its `text` blocks).
fn last_user_text(messages: &[Message]) -> String {
    let Some(m) = messages.iter().rev().find(|m| m.role == "user") else {
        return String::new();
    };
    match &m.content {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// What the mock answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Text tokens (words) to produce.
    pub(crate) tokens: u32,
    /// Whether a `get_weather` tool call follows (then the text is [`TOOL_USE_TEXT`]).
    pub(crate) tool: bool,
    /// `stop_reason`.
    pub(crate) stop_reason: &'static str,
    /// The matched stop sequence.
    pub(crate) stop_sequence: Option<String>,
    /// Uncached input tokens.
    pub(crate) input_tokens: u64,
    /// Cached input tokens.
    pub(crate) cached_tokens: u64,
    /// Reported output tokens.
    pub(crate) output_tokens: u64,
}

impl Plan {
    /// Text word `i` as streamed (leading space after the first).
    pub(crate) fn word(&self, i: u32) -> String {
        let word = if self.tool {
            TOOL_USE_TEXT.split(' ').nth(i as usize).unwrap_or_default()
        } else {
            completion_word(i)
        };
        if i == 0 {
            word.to_owned()
        } else {
            format!(" {word}")
        }
    }

    fn text(&self) -> String {
        (0..self.tokens).map(|i| self.word(i)).collect()
    }
}

/// Words kept before the first stop sequence completes, if any occurs in `text`.
fn cut_at_stop(text: &str, stops: &[String]) -> Option<(u32, String)> {
    stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()).map(|p| (p + s.len() - 1, s)))
        .min_by_key(|(end, _)| *end)
        .map(|(end, s)| {
            // A space belongs to the word after it (as streamed).
            let word = text.as_bytes()[..=end]
                .iter()
                .filter(|b| **b == b' ')
                .count();
            (u32::try_from(word).unwrap_or(u32::MAX), s.clone())
        })
}

fn plan(req: &MessagesRequest, raw: &Value, default: u32, cap: u32) -> Plan {
    let system = req
        .system
        .as_ref()
        .map(|s| block_words(s).saturating_add(PER_MESSAGE_OVERHEAD))
        .unwrap_or(0);
    let prompt = req
        .messages
        .iter()
        .map(|m| block_words(&m.content).saturating_add(PER_MESSAGE_OVERHEAD))
        .fold(system, u64::saturating_add);
    let cached_tokens = if has_cache_control(raw) {
        prompt / 2
    } else {
        0
    };
    let input_tokens = prompt - cached_tokens;

    let wants_tool = req.tools.as_ref().is_some_and(|t| !t.is_empty())
        && last_user_text(&req.messages)
            .to_lowercase()
            .contains("weather");
    if wants_tool {
        return Plan {
            tokens: u32::try_from(count_words(TOOL_USE_TEXT)).unwrap_or(0),
            tool: true,
            stop_reason: "tool_use",
            stop_sequence: None,
            input_tokens,
            cached_tokens,
            output_tokens: TOOL_USE_OUTPUT_TOKENS,
        };
    }
    let (tokens, finish) = plan_completion(Some(req.max_tokens), default, cap);
    let mut p = Plan {
        tokens,
        tool: false,
        stop_reason: match finish {
            FinishReason::Length => "max_tokens",
            FinishReason::Stop => "end_turn",
        },
        stop_sequence: None,
        input_tokens,
        cached_tokens,
        output_tokens: u64::from(tokens),
    };
    let stops = req.stop_sequences.as_deref().unwrap_or_default();
    if let Some((kept, s)) = cut_at_stop(&p.text(), stops) {
        p.tokens = kept;
        p.stop_reason = "stop_sequence";
        p.stop_sequence = Some(s);
        p.output_tokens = u64::from(kept);
    }
    p
}

pub(crate) fn usage_json(p: &Plan, output_tokens: u64) -> Value {
    json!({
        "input_tokens": p.input_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": p.cached_tokens,
        "output_tokens": output_tokens,
    })
}

pub(crate) fn tool_block(id: &str, input: Value) -> Value {
    json!({"type": "tool_use", "id": id, "name": "get_weather", "input": input})
}

/// The non-streaming message body.
fn message_body(id: &str, model: &str, p: &Plan) -> Value {
    let mut content = Vec::new();
    if p.tokens > 0 {
        content.push(json!({"type": "text", "text": p.text()}));
    }
    if p.tool {
        content.push(tool_block(&random_id("toolu_"), json!({"city": "Paris"})));
    }
    json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": p.stop_reason,
        "stop_sequence": p.stop_sequence,
        "usage": usage_json(p, p.output_tokens),
    })
}

fn validate(req: &MessagesRequest) -> Result<(), String> {
    if req.max_tokens < 1 {
        return Err("max_tokens: must be greater than or equal to 1".into());
    }
    if req.messages.is_empty() {
        return Err("messages: at least one message is required".into());
    }
    match req
        .messages
        .iter()
        .position(|m| m.role != "user" && m.role != "assistant")
    {
        Some(i) => Err(format!(
            "messages.{i}.role: Input should be 'user' or 'assistant'"
        )),
        None => Ok(()),
    }
}

/// `POST /v1/messages`.
pub(crate) async fn messages(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    state.stats.add_request();
    let mut resp = serve(&state, &headers, body).await;
    if let Ok(v) = HeaderValue::from_str(&random_id("req_")) {
        resp.headers_mut().insert("request-id", v);
    }
    resp
}

async fn serve(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if headers.get(HEADER_API_KEY).is_none() && headers.get(header::AUTHORIZATION).is_none() {
        return error_response(
            StatusCode::UNAUTHORIZED,
            "an API key is required (x-api-key or Authorization header)",
        );
    }
    if headers.get(HEADER_VERSION).is_none() {
        return error_response(
            StatusCode::BAD_REQUEST,
            "anthropic-version: header is required",
        );
    }
    let ov = match overrides(headers, &state.cfg) {
        Ok(ov) => ov,
        Err(msg) => return error_response(StatusCode::BAD_REQUEST, &msg),
    };
    let mut shutdown = state.shutdown.clone();
    let shutting_down = || {
        error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "mock server is shutting down",
        )
    };
    if let Some(status) = ov.status {
        if !sleep_or_shutdown(ov.latency_ms, &mut shutdown).await {
            return shutting_down();
        }
        let msg = format!("mock injected error ({HEADER_STATUS}: {})", status.as_u16());
        return error_response(status, &msg);
    }
    let body = match body {
        Ok(b) => b,
        Err(rej) => return error_response(rej.status(), &rej.body_text()),
    };
    let parsed = serde_json::from_slice::<Value>(&body).and_then(|raw| {
        serde_json::from_value::<MessagesRequest>(raw.clone()).map(|req| (raw, req))
    });
    let (raw, req) = match parsed {
        Ok(r) => r,
        Err(e) => {
            let msg = format!("invalid messages request body: {e}");
            return error_response(StatusCode::BAD_REQUEST, &msg);
        }
    };
    if let Err(msg) = validate(&req) {
        return error_response(StatusCode::BAD_REQUEST, &msg);
    }
    if let Some(status) = model_status(&req.model) {
        if !sleep_or_shutdown(ov.latency_ms, &mut shutdown).await {
            return shutting_down();
        }
        let msg = format!("mock injected error (model {})", req.model);
        return error_response(status, &msg);
    }

    let p = plan(
        &req,
        &raw,
        state.cfg.default_completion_tokens,
        state.cfg.max_completion_tokens,
    );
    if !sleep_or_shutdown(ov.latency_ms, &mut shutdown).await {
        return shutting_down();
    }
    let stream = req.stream.unwrap_or(false);
    state.stats.add_served(
        stream,
        Usage {
            prompt_tokens: p.input_tokens + p.cached_tokens,
            completion_tokens: p.output_tokens,
        },
    );
    tracing::debug!(model = %req.model, stream, ?p, "serving anthropic message");
    let id = random_id("msg_");
    if stream {
        sse_response(
            stream_events(&id, &req.model, &p),
            ov.chunk_delay_ms,
            shutdown,
        )
    } else {
        Json(message_body(&id, &req.model, &p)).into_response()
    }
}

mod stream;

#[cfg(test)]
mod tests;
