//! OpenAI chat-completion request → Anthropic Messages request.

use serde_json::{json, Value};

use super::fields::{
    as_obj, get, index, join, opt_array, opt_bool, opt_f64, opt_str, opt_u64, parse_json,
    req_array, req_obj, req_str, unsupported, Obj,
};
use super::TranslateError;

/// `max_tokens` sent to Anthropic (which requires it) when the OpenAI request has neither
/// `max_completion_tokens` nor `max_tokens`.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

/// OpenAI request fields with no Anthropic equivalent: [`openai_to_anthropic_request`]
/// drops them (as it drops any other field it does not translate). `stream_options` is read by
/// the caller ([`include_usage`]) and handled by the stream translator instead.
pub const DROPPED_OPENAI_FIELDS: &[&str] = &[
    "audio",
    "frequency_penalty",
    "function_call",
    "functions",
    "logit_bias",
    "logprobs",
    "metadata",
    "modalities",
    "prediction",
    "presence_penalty",
    "reasoning_effort",
    "response_format",
    "seed",
    "service_tier",
    "store",
    "stream_options",
    "top_logprobs",
    "verbosity",
    "web_search_options",
];

/// Whether an OpenAI request asked for a final usage chunk (`stream_options.include_usage`).
pub fn include_usage(openai_request: &Value) -> bool {
    openai_request
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// Translates an OpenAI chat-completion request into an Anthropic Messages request.
///
/// * `model`, `stream`, `temperature` (clamped to Anthropic's 0..=1), `top_p` are copied;
///   `max_completion_tokens`, else `max_tokens`, else [`DEFAULT_MAX_TOKENS`] → `max_tokens`;
///   `stop` (string or array) → `stop_sequences`; `user` → `metadata.user_id`.
/// * `system` and `developer` messages (wherever they are) → `system`; `user` content strings
///   and parts (`text`; `image_url` with a base64 `data:` URL → base64 `image` block, with an
///   http(s) URL → `url` image block); `assistant` text and `tool_calls` → `text` and
///   `tool_use` blocks (arguments parsed as JSON); `tool` messages → `tool_result` blocks in a
///   user turn. Consecutive turns of the same role are merged; a `cache_control` on a text part
///   is kept.
/// * `tools[].function` → `tools[]{name, description, input_schema}`; `tool_choice` `auto` /
///   `none` / `required` / named function → `auto` / `none` / `any` / `tool`;
///   `parallel_tool_calls: false` → `tool_choice.disable_parallel_tool_use`. Without tools,
///   `tool_choice` is dropped.
/// * [`DROPPED_OPENAI_FIELDS`] and unknown fields are dropped. `n` above 1, audio/file parts
///   and legacy `function` messages are rejected.
pub fn openai_to_anthropic_request(req: &Value) -> Result<Value, TranslateError> {
    let o = as_obj(req, "")?;
    let mut out = Obj::new();
    out.insert("model".into(), json!(req_str(o, "model", "")?));

    let (system, messages) = convert_messages(req_array(o, "messages", "")?)?;
    if let Some(system) = system {
        out.insert("system".into(), system);
    }
    out.insert("messages".into(), Value::Array(messages));

    let max_tokens = match opt_u64(o, "max_completion_tokens", "")? {
        Some(n) => n,
        None => opt_u64(o, "max_tokens", "")?.unwrap_or(DEFAULT_MAX_TOKENS),
    };
    out.insert("max_tokens".into(), json!(max_tokens));

    if let Some(t) = opt_f64(o, "temperature", "")? {
        out.insert("temperature".into(), json!(t.clamp(0.0, 1.0)));
    }
    if let Some(p) = opt_f64(o, "top_p", "")? {
        out.insert("top_p".into(), json!(p));
    }
    if let Some(stop) = stop_sequences(get(o, "stop"))? {
        out.insert("stop_sequences".into(), stop);
    }
    if let Some(stream) = opt_bool(o, "stream", "")? {
        out.insert("stream".into(), json!(stream));
    }
    if let Some(user) = opt_str(o, "user", "")? {
        out.insert("metadata".into(), json!({ "user_id": user }));
    }
    if opt_u64(o, "n", "")?.is_some_and(|n| n > 1) {
        return Err(unsupported(
            "n".into(),
            "only one choice (n = 1) is supported",
        ));
    }

    let tools = opt_array(o, "tools", "")?.unwrap_or_default();
    if !tools.is_empty() {
        let converted = tools
            .iter()
            .enumerate()
            .map(|(i, t)| convert_tool(t, &index("tools", i)))
            .collect::<Result<Vec<_>, _>>()?;
        out.insert("tools".into(), Value::Array(converted));
        let parallel = opt_bool(o, "parallel_tool_calls", "")?;
        if let Some(choice) = convert_tool_choice(get(o, "tool_choice"), parallel)? {
            out.insert("tool_choice".into(), choice);
        }
    }
    Ok(Value::Object(out))
}

fn stop_sequences(stop: Option<&Value>) -> Result<Option<Value>, TranslateError> {
    match stop {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(json!([s]))),
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                if !item.is_string() {
                    return Err(TranslateError::Type {
                        path: index("stop", i),
                        expected: "a string",
                    });
                }
            }
            Ok((!items.is_empty()).then(|| Value::Array(items.clone())))
        }
        Some(_) => Err(TranslateError::Type {
            path: "stop".into(),
            expected: "a string or an array of strings",
        }),
    }
}

/// Messages being built: role and content blocks.
#[derive(Default)]
struct Turns {
    system: Vec<Value>,
    turns: Vec<(&'static str, Vec<Value>)>,
}

impl Turns {
    fn push(&mut self, role: &'static str, blocks: Vec<Value>) {
        match self.turns.last_mut() {
            Some((last, existing)) if *last == role => existing.extend(blocks),
            _ => self.turns.push((role, blocks)),
        }
    }
}

/// A single plain text block (no `cache_control`) becomes a string.
fn collapse(blocks: Vec<Value>) -> Value {
    if let [only] = blocks.as_slice() {
        if let Some(o) = only.as_object() {
            if o.len() == 2 && o.get("type").and_then(Value::as_str) == Some("text") {
                if let Some(text) = o.get("text") {
                    return text.clone();
                }
            }
        }
    }
    Value::Array(blocks)
}

fn convert_messages(messages: &[Value]) -> Result<(Option<Value>, Vec<Value>), TranslateError> {
    let mut turns = Turns::default();
    for (i, m) in messages.iter().enumerate() {
        let path = index("messages", i);
        let o = as_obj(m, &path)?;
        let role = req_str(o, "role", &path)?;
        let content_path = join(&path, "content");
        match role {
            "system" | "developer" => {
                let blocks = text_blocks(get(o, "content"), &content_path, false)?;
                turns.system.extend(blocks);
            }
            "user" => {
                let blocks = user_blocks(get(o, "content"), &content_path)?;
                turns.push("user", blocks);
            }
            "assistant" => {
                let mut blocks = text_blocks(get(o, "content"), &content_path, true)?;
                if let Some(calls) = opt_array(o, "tool_calls", &path)? {
                    let calls_path = join(&path, "tool_calls");
                    for (j, call) in calls.iter().enumerate() {
                        blocks.push(tool_use_block(call, &index(&calls_path, j))?);
                    }
                }
                if !blocks.is_empty() {
                    turns.push("assistant", blocks);
                }
            }
            "tool" => {
                let id = req_str(o, "tool_call_id", &path)?;
                let mut block = json!({"type": "tool_result", "tool_use_id": id});
                if let Some(content) = get(o, "content") {
                    let blocks = text_blocks(Some(content), &content_path, false)?;
                    block["content"] = match content {
                        Value::String(s) => json!(s),
                        _ => Value::Array(blocks),
                    };
                }
                turns.push("user", vec![block]);
            }
            "function" => {
                return Err(unsupported(
                    join(&path, "role"),
                    "legacy `function` messages are not supported; use `tool`",
                ))
            }
            other => {
                return Err(unsupported(
                    join(&path, "role"),
                    format!("unknown role `{other}`"),
                ))
            }
        }
    }
    let system = (!turns.system.is_empty()).then(|| collapse(turns.system));
    let messages = turns
        .turns
        .into_iter()
        .map(|(role, blocks)| json!({"role": role, "content": collapse(blocks)}))
        .collect();
    Ok((system, messages))
}

fn text_block(text: &str, part: Option<&Obj>) -> Value {
    let mut block = json!({"type": "text", "text": text});
    if let Some(cc) = part.and_then(|p| get(p, "cache_control")) {
        block["cache_control"] = cc.clone();
    }
    block
}

/// Text-only content (system, assistant, tool): a string or `text` parts. For the assistant,
/// `refusal` parts count as text and empty texts are left out.
fn text_blocks(
    content: Option<&Value>,
    path: &str,
    assistant: bool,
) -> Result<Vec<Value>, TranslateError> {
    let mut out = Vec::new();
    match content {
        None => {}
        Some(Value::String(s)) if assistant && s.is_empty() => {}
        Some(Value::String(s)) => out.push(text_block(s, None)),
        Some(Value::Array(parts)) => {
            for (j, part) in parts.iter().enumerate() {
                let ppath = index(path, j);
                let p = as_obj(part, &ppath)?;
                let kind = req_str(p, "type", &ppath)?;
                let text = match kind {
                    "text" => req_str(p, "text", &ppath)?,
                    "refusal" if assistant => req_str(p, "refusal", &ppath)?,
                    other => {
                        return Err(unsupported(
                            join(&ppath, "type"),
                            format!("content part type `{other}` is not supported here"),
                        ))
                    }
                };
                if !(assistant && text.is_empty()) {
                    out.push(text_block(text, Some(p)));
                }
            }
        }
        Some(_) => {
            return Err(TranslateError::Type {
                path: path.to_owned(),
                expected: "a string or an array of content parts",
            })
        }
    }
    Ok(out)
}

fn user_blocks(content: Option<&Value>, path: &str) -> Result<Vec<Value>, TranslateError> {
    let Some(Value::Array(parts)) = content else {
        return text_blocks(content, path, false);
    };
    let mut out = Vec::with_capacity(parts.len());
    for (j, part) in parts.iter().enumerate() {
        let ppath = index(path, j);
        let p = as_obj(part, &ppath)?;
        match req_str(p, "type", &ppath)? {
            "text" => out.push(text_block(req_str(p, "text", &ppath)?, Some(p))),
            "image_url" => out.push(image_block(p, &ppath)?),
            other => {
                return Err(unsupported(
                    join(&ppath, "type"),
                    format!("content part type `{other}` is not supported by Anthropic"),
                ))
            }
        }
    }
    Ok(out)
}

fn image_block(part: &Obj, path: &str) -> Result<Value, TranslateError> {
    let url_path = join(path, "image_url");
    let url = match get(part, "image_url") {
        Some(Value::String(s)) => s.as_str(),
        Some(Value::Object(o)) => req_str(o, "url", &url_path)?,
        Some(_) => {
            return Err(TranslateError::Type {
                path: url_path,
                expected: "an object with a `url`",
            })
        }
        None => return Err(TranslateError::Missing(url_path)),
    };
    let source = match url.strip_prefix("data:") {
        Some(rest) => {
            let (meta, data) = rest.split_once(',').unwrap_or((rest, ""));
            let Some(meta) = meta.strip_suffix(";base64") else {
                return Err(unsupported(
                    join(&url_path, "url"),
                    "only base64 `data:` URLs are supported",
                ));
            };
            let media_type = meta.split(';').next().unwrap_or_default();
            json!({"type": "base64", "media_type": media_type, "data": data})
        }
        None => json!({"type": "url", "url": url}),
    };
    let mut block = json!({"type": "image", "source": source});
    if let Some(cc) = get(part, "cache_control") {
        block["cache_control"] = cc.clone();
    }
    Ok(block)
}

fn tool_use_block(call: &Value, path: &str) -> Result<Value, TranslateError> {
    let c = as_obj(call, path)?;
    if let Some(kind) = opt_str(c, "type", path)? {
        if kind != "function" {
            return Err(unsupported(
                join(path, "type"),
                format!("tool call type `{kind}` is not supported"),
            ));
        }
    }
    let id = req_str(c, "id", path)?;
    let fpath = join(path, "function");
    let f = req_obj(c, "function", path)?;
    let name = req_str(f, "name", &fpath)?;
    let apath = join(&fpath, "arguments");
    let args = opt_str(f, "arguments", &fpath)?.unwrap_or_default();
    let input = if args.trim().is_empty() {
        json!({})
    } else {
        parse_json(args, &apath)?
    };
    if !input.is_object() {
        return Err(TranslateError::Type {
            path: apath,
            expected: "a JSON object (as a string)",
        });
    }
    Ok(json!({"type": "tool_use", "id": id, "name": name, "input": input}))
}

fn convert_tool(tool: &Value, path: &str) -> Result<Value, TranslateError> {
    let t = as_obj(tool, path)?;
    if let Some(kind) = opt_str(t, "type", path)? {
        if kind != "function" {
            return Err(unsupported(
                join(path, "type"),
                format!("tool type `{kind}` is not supported"),
            ));
        }
    }
    let fpath = join(path, "function");
    let f = req_obj(t, "function", path)?;
    let mut out = json!({ "name": req_str(f, "name", &fpath)? });
    if let Some(d) = opt_str(f, "description", &fpath)? {
        out["description"] = json!(d);
    }
    out["input_schema"] = match get(f, "parameters") {
        Some(p) => json!(as_obj(p, &join(&fpath, "parameters"))?),
        None => json!({"type": "object", "properties": {}}),
    };
    Ok(out)
}

fn convert_tool_choice(
    choice: Option<&Value>,
    parallel: Option<bool>,
) -> Result<Option<Value>, TranslateError> {
    let mut out = match choice {
        None => json!({"type": "auto"}),
        Some(Value::String(s)) => match s.as_str() {
            "auto" => json!({"type": "auto"}),
            "none" => json!({"type": "none"}),
            "required" => json!({"type": "any"}),
            other => {
                return Err(unsupported(
                    "tool_choice".into(),
                    format!("unknown tool_choice `{other}`"),
                ))
            }
        },
        Some(v) => {
            let o = as_obj(v, "tool_choice")?;
            match req_str(o, "type", "tool_choice")? {
                "function" => {
                    let f = req_obj(o, "function", "tool_choice")?;
                    json!({"type": "tool", "name": req_str(f, "name", "tool_choice.function")?})
                }
                other => {
                    return Err(unsupported(
                        "tool_choice.type".into(),
                        format!("tool_choice type `{other}` is not supported"),
                    ))
                }
            }
        }
    };
    let disable_parallel = parallel == Some(false) && out["type"] != "none";
    if disable_parallel {
        out["disable_parallel_tool_use"] = json!(true);
    } else if choice.is_none() {
        // Anthropic's default is already `auto`.
        return Ok(None);
    }
    Ok(Some(out))
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
