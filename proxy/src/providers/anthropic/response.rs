//! Anthropic Messages response → OpenAI chat.completion response.

use serde_json::{json, Value};

use super::fields::{as_obj, get, index, opt_str, req_array, req_str};
use super::{finish_reason_from_anthropic, TokenUsage, TranslateError};

/// Translates a (successful) Anthropic message into an OpenAI `chat.completion`.
///
/// `text` blocks are concatenated into `message.content` (null when there is none and the
/// model called tools); `tool_use` blocks become `message.tool_calls` with `arguments` as a JSON
/// string; `thinking`, `redacted_thinking` and server-tool blocks are dropped. `stop_reason` is
/// mapped by [`finish_reason_from_anthropic`], `usage` by [`TokenUsage::from_anthropic`]
/// (cache reads and writes count as prompt tokens, cache reads also as `cached_tokens`). The
/// message `id` is kept; `model` is the public model name given, `created` the Unix time.
pub fn anthropic_to_openai_response(
    resp: &Value,
    model: &str,
    created: u64,
) -> Result<Value, TranslateError> {
    let o = as_obj(resp, "")?;
    if let Some(kind) = opt_str(o, "type", "")? {
        if kind != "message" {
            return Err(TranslateError::Unsupported {
                path: "type".into(),
                reason: format!("expected a `message`, got `{kind}`"),
            });
        }
    }
    let id = opt_str(o, "id", "")?.unwrap_or("msg_unknown");
    let mut text = String::new();
    let mut has_text = false;
    let mut tool_calls = Vec::new();
    for (i, block) in req_array(o, "content", "")?.iter().enumerate() {
        let path = index("content", i);
        let b = as_obj(block, &path)?;
        match req_str(b, "type", &path)? {
            "text" => {
                text.push_str(req_str(b, "text", &path)?);
                has_text = true;
            }
            "tool_use" => {
                let input = get(b, "input").cloned().unwrap_or_else(|| json!({}));
                tool_calls.push(json!({
                    "id": req_str(b, "id", &path)?,
                    "type": "function",
                    "function": {
                        "name": req_str(b, "name", &path)?,
                        "arguments": input.to_string(),
                    },
                }));
            }
            _ => {}
        }
    }
    let finish = opt_str(o, "stop_reason", "")?
        .map(finish_reason_from_anthropic)
        .unwrap_or("stop");
    let usage = match get(o, "usage") {
        Some(u) => {
            as_obj(u, "usage")?;
            TokenUsage::from_anthropic(u)
        }
        None => TokenUsage::default(),
    };
    let content = if has_text || tool_calls.is_empty() {
        json!(text)
    } else {
        Value::Null
    };
    let mut message = json!({"role": "assistant", "content": content, "refusal": null});
    if !tool_calls.is_empty() {
        message["tool_calls"] = Value::Array(tool_calls);
    }
    Ok(json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish,
        }],
        "usage": usage.openai_json(),
    }))
}
