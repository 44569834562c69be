//! The `/v1/messages` direction with an OpenAI-compatible upstream: Anthropic Messages request
//! → OpenAI chat request, and OpenAI chat.completion → Anthropic message.

use serde_json::{json, Value};

use super::fields::{
    as_obj, get, index, join, object, opt_array, opt_bool, opt_f64, opt_str, opt_u64, parse_json,
    req_array, req_obj, req_str, unsupported, Obj,
};
use super::{stop_reason_from_openai, TokenUsage, TranslateError};

/// Anthropic request fields with no OpenAI equivalent, dropped by
/// [`anthropic_to_openai_request`] (as are unknown fields and `cache_control` markers).
pub const DROPPED_ANTHROPIC_FIELDS: &[&str] = &[
    "container",
    "context_management",
    "mcp_servers",
    "service_tier",
    "thinking",
    "top_k",
];

/// Translates an Anthropic Messages request into an OpenAI chat-completion request.
///
/// * `model`, `max_tokens` (required, as Anthropic requires it), `temperature`, `top_p`,
///   `stream` are copied; a stream also asks for `stream_options.include_usage`;
///   `stop_sequences` → `stop`; `metadata.user_id` → `user`.
/// * `system` (string or text blocks) → a leading `system` message; user `text` and `image`
///   blocks (base64 → `data:` URL, url → URL) → content parts (a lone text → a string);
///   `tool_result` blocks → `tool` messages (placed before the rest of that user turn; text
///   content kept, `is_error` dropped); assistant `text` → `content`, `tool_use` →
///   `tool_calls` with `arguments` as a JSON string; `thinking` blocks are dropped.
/// * `tools[]{name, description, input_schema}` → `tools[].function`; `tool_choice` `auto` /
///   `any` / `tool` / `none` → `auto` / `required` / named function / `none`;
///   `disable_parallel_tool_use` → `parallel_tool_calls: false`.
/// * [`DROPPED_ANTHROPIC_FIELDS`] are dropped; server tools (a `type` other than `custom`),
///   `document` blocks and images inside tool results are rejected.
pub fn anthropic_to_openai_request(req: &Value) -> Result<Value, TranslateError> {
    let o = as_obj(req, "")?;
    let mut out = Obj::new();
    out.insert("model".into(), json!(req_str(o, "model", "")?));

    let mut messages = Vec::new();
    if let Some(system) = get(o, "system") {
        let text = system_text(system)?;
        messages.push(json!({"role": "system", "content": text}));
    }
    for (i, m) in req_array(o, "messages", "")?.iter().enumerate() {
        convert_message(m, &index("messages", i), &mut messages)?;
    }
    out.insert("messages".into(), Value::Array(messages));

    let max = opt_u64(o, "max_tokens", "")?
        .ok_or_else(|| TranslateError::Missing("max_tokens".into()))?;
    out.insert("max_tokens".into(), json!(max));
    if let Some(t) = opt_f64(o, "temperature", "")? {
        out.insert("temperature".into(), json!(t));
    }
    if let Some(p) = opt_f64(o, "top_p", "")? {
        out.insert("top_p".into(), json!(p));
    }
    if let Some(stop) = opt_array(o, "stop_sequences", "")? {
        if !stop.is_empty() {
            out.insert("stop".into(), Value::Array(stop.to_vec()));
        }
    }
    if opt_bool(o, "stream", "")? == Some(true) {
        out.insert("stream".into(), json!(true));
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    if let Some(meta) = get(o, "metadata") {
        let meta = as_obj(meta, "metadata")?;
        if let Some(user) = opt_str(meta, "user_id", "metadata")? {
            out.insert("user".into(), json!(user));
        }
    }
    if let Some(tools) = opt_array(o, "tools", "")? {
        if !tools.is_empty() {
            let converted = tools
                .iter()
                .enumerate()
                .map(|(i, t)| convert_tool(t, &index("tools", i)))
                .collect::<Result<Vec<_>, _>>()?;
            out.insert("tools".into(), Value::Array(converted));
        }
    }
    if let Some(choice) = get(o, "tool_choice") {
        let c = as_obj(choice, "tool_choice")?;
        let mapped = match req_str(c, "type", "tool_choice")? {
            "auto" => json!("auto"),
            "any" => json!("required"),
            "none" => json!("none"),
            "tool" => {
                json!({"type": "function", "function": {"name": req_str(c, "name", "tool_choice")?}})
            }
            other => {
                return Err(unsupported(
                    "tool_choice.type".into(),
                    format!("unknown tool_choice type `{other}`"),
                ))
            }
        };
        if out.contains_key("tools") {
            out.insert("tool_choice".into(), mapped);
            if opt_bool(c, "disable_parallel_tool_use", "tool_choice")? == Some(true) {
                out.insert("parallel_tool_calls".into(), json!(false));
            }
        }
    }
    Ok(Value::Object(out))
}

/// Text of `system`, a string or text blocks joined by newlines.
fn system_text(system: &Value) -> Result<String, TranslateError> {
    match system {
        Value::String(s) => Ok(s.clone()),
        Value::Array(blocks) => {
            let mut parts = Vec::with_capacity(blocks.len());
            for (i, b) in blocks.iter().enumerate() {
                let path = index("system", i);
                let b = as_obj(b, &path)?;
                match req_str(b, "type", &path)? {
                    "text" => parts.push(req_str(b, "text", &path)?),
                    other => {
                        return Err(unsupported(
                            join(&path, "type"),
                            format!("system block type `{other}` is not supported"),
                        ))
                    }
                }
            }
            Ok(parts.join("\n"))
        }
        _ => Err(TranslateError::Type {
            path: "system".into(),
            expected: "a string or an array of text blocks",
        }),
    }
}

fn convert_message(m: &Value, path: &str, out: &mut Vec<Value>) -> Result<(), TranslateError> {
    let o = as_obj(m, path)?;
    let role = req_str(o, "role", path)?;
    let cpath = join(path, "content");
    let blocks: Vec<Value> = match get(o, "content") {
        Some(Value::String(s)) => vec![json!({"type": "text", "text": s})],
        Some(Value::Array(a)) => a.clone(),
        Some(_) => {
            return Err(TranslateError::Type {
                path: cpath,
                expected: "a string or an array of content blocks",
            })
        }
        None => return Err(TranslateError::Missing(cpath)),
    };
    match role {
        "user" => user_message(&blocks, &cpath, out),
        "assistant" => assistant_message(&blocks, &cpath, out),
        other => Err(unsupported(
            join(path, "role"),
            format!("role must be `user` or `assistant`, not `{other}`"),
        )),
    }
}

fn user_message(blocks: &[Value], path: &str, out: &mut Vec<Value>) -> Result<(), TranslateError> {
    let mut parts = Vec::new();
    for (j, block) in blocks.iter().enumerate() {
        let bpath = index(path, j);
        let b = as_obj(block, &bpath)?;
        match req_str(b, "type", &bpath)? {
            "text" => parts.push(json!({"type": "text", "text": req_str(b, "text", &bpath)?})),
            "image" => parts.push(image_part(b, &bpath)?),
            "tool_result" => {
                let id = req_str(b, "tool_use_id", &bpath)?;
                let content = tool_result_text(get(b, "content"), &join(&bpath, "content"))?;
                out.push(json!({"role": "tool", "tool_call_id": id, "content": content}));
            }
            other => {
                return Err(unsupported(
                    join(&bpath, "type"),
                    format!("content block type `{other}` is not supported"),
                ))
            }
        }
    }
    if parts.is_empty() && !blocks.is_empty() {
        return Ok(());
    }
    let content = match parts.as_slice() {
        [only] if only["type"] == "text" => only["text"].clone(),
        _ => Value::Array(parts),
    };
    out.push(json!({"role": "user", "content": content}));
    Ok(())
}

fn image_part(b: &Obj, path: &str) -> Result<Value, TranslateError> {
    let spath = join(path, "source");
    let s = req_obj(b, "source", path)?;
    let url = match req_str(s, "type", &spath)? {
        "base64" => format!(
            "data:{};base64,{}",
            req_str(s, "media_type", &spath)?,
            req_str(s, "data", &spath)?
        ),
        "url" => req_str(s, "url", &spath)?.to_owned(),
        other => {
            return Err(unsupported(
                join(&spath, "type"),
                format!("image source type `{other}` is not supported"),
            ))
        }
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

fn tool_result_text(content: Option<&Value>, path: &str) -> Result<String, TranslateError> {
    match content {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(blocks)) => {
            let mut text = Vec::with_capacity(blocks.len());
            for (k, b) in blocks.iter().enumerate() {
                let bpath = index(path, k);
                let b = as_obj(b, &bpath)?;
                match req_str(b, "type", &bpath)? {
                    "text" => text.push(req_str(b, "text", &bpath)?),
                    other => {
                        return Err(unsupported(
                            join(&bpath, "type"),
                            format!("`{other}` blocks in tool results are not supported"),
                        ))
                    }
                }
            }
            Ok(text.join("\n"))
        }
        Some(_) => Err(TranslateError::Type {
            path: path.to_owned(),
            expected: "a string or an array of content blocks",
        }),
    }
}

fn assistant_message(
    blocks: &[Value],
    path: &str,
    out: &mut Vec<Value>,
) -> Result<(), TranslateError> {
    let mut text = String::new();
    let mut has_text = false;
    let mut calls = Vec::new();
    for (j, block) in blocks.iter().enumerate() {
        let bpath = index(path, j);
        let b = as_obj(block, &bpath)?;
        match req_str(b, "type", &bpath)? {
            "text" => {
                text.push_str(req_str(b, "text", &bpath)?);
                has_text = true;
            }
            "tool_use" => {
                let input = get(b, "input").cloned().unwrap_or_else(|| json!({}));
                calls.push(json!({
                    "id": req_str(b, "id", &bpath)?,
                    "type": "function",
                    "function": {"name": req_str(b, "name", &bpath)?, "arguments": input.to_string()},
                }));
            }
            "thinking" | "redacted_thinking" => {}
            other => {
                return Err(unsupported(
                    join(&bpath, "type"),
                    format!("content block type `{other}` is not supported"),
                ))
            }
        }
    }
    let content = (has_text || calls.is_empty()).then(|| json!(text));
    let tool_calls = (!calls.is_empty()).then_some(Value::Array(calls));
    out.push(object([
        ("role", Some(json!("assistant"))),
        ("content", Some(content.unwrap_or(Value::Null))),
        ("tool_calls", tool_calls),
    ]));
    Ok(())
}

fn convert_tool(tool: &Value, path: &str) -> Result<Value, TranslateError> {
    let t = as_obj(tool, path)?;
    if let Some(kind) = opt_str(t, "type", path)? {
        if kind != "custom" {
            return Err(unsupported(
                join(path, "type"),
                format!("server tool `{kind}` is not supported by OpenAI-compatible upstreams"),
            ));
        }
    }
    let schema = match get(t, "input_schema") {
        Some(s) => Value::Object(as_obj(s, &join(path, "input_schema"))?.clone()),
        None => return Err(TranslateError::Missing(join(path, "input_schema"))),
    };
    let function = object([
        ("name", Some(json!(req_str(t, "name", path)?))),
        (
            "description",
            opt_str(t, "description", path)?.map(|d| json!(d)),
        ),
        ("parameters", Some(schema)),
    ]);
    Ok(json!({"type": "function", "function": function}))
}

/// Translates an OpenAI `chat.completion` into an Anthropic `message` (first choice).
///
/// `content` → a `text` block (when non-empty); `tool_calls` → `tool_use` blocks (`arguments`
/// parsed as JSON; empty → `{}`); `finish_reason` → `stop_reason` via
/// [`stop_reason_from_openai`]; usage → `input_tokens` (prompt minus cached),
/// `cache_read_input_tokens` (cached), `output_tokens`. The upstream `id` is kept; `model` is
/// the public model name.
pub fn openai_to_anthropic_response(resp: &Value, model: &str) -> Result<Value, TranslateError> {
    let o = as_obj(resp, "")?;
    let choices = req_array(o, "choices", "")?;
    let choice = choices
        .first()
        .ok_or_else(|| TranslateError::Missing("choices[0]".into()))?;
    let cpath = "choices[0]";
    let c = as_obj(choice, cpath)?;
    let mpath = join(cpath, "message");
    let m = req_obj(c, "message", cpath)?;
    let mut content = Vec::new();
    if let Some(text) = opt_str(m, "content", &mpath)? {
        if !text.is_empty() {
            content.push(json!({"type": "text", "text": text}));
        }
    }
    if let Some(calls) = opt_array(m, "tool_calls", &mpath)? {
        let tpath = join(&mpath, "tool_calls");
        for (j, call) in calls.iter().enumerate() {
            let path = index(&tpath, j);
            let call = as_obj(call, &path)?;
            let fpath = join(&path, "function");
            let f = req_obj(call, "function", &path)?;
            let args = opt_str(f, "arguments", &fpath)?.unwrap_or_default();
            let input = if args.trim().is_empty() {
                json!({})
            } else {
                parse_json(args, &join(&fpath, "arguments"))?
            };
            content.push(json!({
                "type": "tool_use",
                "id": req_str(call, "id", &path)?,
                "name": req_str(f, "name", &fpath)?,
                "input": input,
            }));
        }
    }
    let stop = opt_str(c, "finish_reason", cpath)?
        .map(stop_reason_from_openai)
        .unwrap_or("end_turn");
    let usage = get(o, "usage")
        .map(TokenUsage::from_openai)
        .unwrap_or_default();
    Ok(json!({
        "id": opt_str(o, "id", "")?.unwrap_or("msg_unknown"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": null,
        "usage": usage.anthropic_json(),
    }))
}

#[cfg(test)]
#[path = "reverse_tests.rs"]
mod tests;
