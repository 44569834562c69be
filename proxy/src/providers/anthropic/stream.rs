//! Anthropic Messages SSE stream → OpenAI `chat.completion.chunk` SSE stream.

use std::collections::HashMap;

use bytes::Bytes;
use serde_json::{json, Value};

use super::errors::openai_error_from_anthropic;
use super::fields::{as_obj, get, join, opt_str, opt_u64, parse_json, req_obj, req_str};
use super::sse::{SseBuffer, SseEvent};
use super::{finish_reason_from_anthropic, TokenUsage, TranslateError};

/// What an Anthropic content block (by its index) turned into.
#[derive(Debug, Clone, Copy)]
enum Block {
    Text,
    /// A tool call with this OpenAI `tool_calls[].index`.
    Tool(u64),
    /// Thinking and other blocks OpenAI clients cannot see.
    Hidden,
}

/// Translates an Anthropic streaming response into OpenAI chunks, incrementally.
///
/// Feed the upstream body with [`feed`](Self::feed) as it arrives (any split, events are
/// buffered up to their blank line) and forward the returned bytes; call
/// [`finish`](Self::finish) when the upstream body ends.
///
/// Output: a role chunk on `message_start`; a `content` chunk per non-empty `text_delta`; for a
/// `tool_use` block a chunk opening `tool_calls[k]` (`index`, `id`, `type`, `function.name`,
/// empty `arguments`) and one chunk per `input_json_delta` fragment; on `message_stop` a chunk
/// with an empty delta and the mapped `finish_reason`, then (with `include_usage`) a usage
/// chunk with empty `choices`, then `data: [DONE]`. `ping`, `content_block_stop`, thinking
/// blocks and unknown events produce nothing. An `error` event becomes an OpenAI error event
/// (`data: {"error": {...}}`) and ends the stream without `[DONE]`.
#[derive(Debug)]
pub struct AnthropicToOpenAiStream {
    sse: SseBuffer,
    /// Output translated before an event failed, sent with the next call.
    pending: Vec<u8>,
    model: String,
    created: u64,
    include_usage: bool,
    id: String,
    blocks: HashMap<u64, Block>,
    next_tool: u64,
    finish_reason: Option<&'static str>,
    usage: Option<TokenUsage>,
    emitted_token: bool,
    done: bool,
    error: Option<Value>,
}

impl AnthropicToOpenAiStream {
    /// A translator answering with the public `model` name and `created` Unix time; with
    /// `include_usage` the stream ends with a usage chunk (OpenAI's
    /// `stream_options.include_usage`).
    pub fn new(model: impl Into<String>, created: u64, include_usage: bool) -> Self {
        Self {
            sse: SseBuffer::default(),
            pending: Vec::new(),
            model: model.into(),
            created,
            include_usage,
            id: "msg_unknown".into(),
            blocks: HashMap::new(),
            next_tool: 0,
            finish_reason: None,
            usage: None,
            emitted_token: false,
            done: false,
            error: None,
        }
    }

    /// Consumes upstream bytes; returns the OpenAI SSE bytes they complete (maybe empty).
    /// Bytes after the end of the stream are ignored. An event that cannot be translated is
    /// skipped with an error; output translated before it comes with the next call, and later
    /// events are still translated.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Bytes, TranslateError> {
        if self.done {
            return Ok(Bytes::new());
        }
        self.sse.push(bytes);
        let mut out = std::mem::take(&mut self.pending);
        while !self.done {
            let step = self.sse.next_event().and_then(|ev| match ev {
                Some((n, ev)) => self.handle(n, &ev, &mut out).map(|()| true),
                None => Ok(false),
            });
            match step {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    self.pending = out;
                    return Err(e);
                }
            }
        }
        Ok(Bytes::from(out))
    }

    /// Call when the upstream body ended: translates a last event that lacked its blank line.
    /// Fails with [`TranslateError::Truncated`] when neither `message_stop` nor `error` came.
    /// What it translated stays available to [`Self::take_pending`] after a failure.
    pub fn finish(&mut self) -> Result<Bytes, TranslateError> {
        let mut out = std::mem::take(&mut self.pending);
        let result = self.finish_into(&mut out);
        super::finished(&mut self.pending, out, result)
    }

    fn finish_into(&mut self, out: &mut Vec<u8>) -> Result<(), TranslateError> {
        while !self.done {
            let Some((n, ev)) = self.sse.finish()? else {
                break;
            };
            self.handle(n, &ev, out)?;
        }
        if self.done {
            Ok(())
        } else {
            Err(TranslateError::Truncated("message_stop"))
        }
    }

    /// Output translated but not returned because `feed` or `finish` failed after it.
    pub fn take_pending(&mut self) -> Bytes {
        Bytes::from(std::mem::take(&mut self.pending))
    }

    /// Usage seen so far: input (with cache reads/writes) from `message_start`, output from
    /// the last `message_delta`. `None` before `message_start`.
    pub fn usage(&self) -> Option<TokenUsage> {
        self.usage
    }

    /// Whether a content token (text or tool call) was emitted: for time-to-first-token.
    pub fn emitted_token(&self) -> bool {
        self.emitted_token
    }

    /// Whether the stream ended (`message_stop` or `error` seen).
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The upstream `error` event's `error` object (Anthropic shape), if one came.
    pub fn upstream_error(&self) -> Option<&Value> {
        self.error.as_ref()
    }

    /// The mapped `finish_reason`, once `message_delta` carried a `stop_reason`.
    pub fn finish_reason(&self) -> Option<&'static str> {
        self.finish_reason
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        })
    }

    fn emit(out: &mut Vec<u8>, v: &Value) {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(v.to_string().as_bytes());
        out.extend_from_slice(b"\n\n");
    }

    fn handle(&mut self, n: usize, ev: &SseEvent, out: &mut Vec<u8>) -> Result<(), TranslateError> {
        let path = format!("event[{n}]");
        let data = parse_json(&ev.data, &path)?;
        let o = as_obj(&data, &path)?;
        let kind = match opt_str(o, "type", &path)? {
            Some(k) => k,
            None => ev.event.as_deref().unwrap_or_default(),
        };
        match kind {
            "message_start" => {
                let m = req_obj(o, "message", &path)?;
                let mpath = join(&path, "message");
                if let Some(id) = opt_str(m, "id", &mpath)? {
                    self.id = id.to_owned();
                }
                let usage = get(m, "usage").map(TokenUsage::from_anthropic);
                self.usage = Some(usage.unwrap_or_default());
                Self::emit(
                    out,
                    &self.chunk(json!({"role": "assistant", "content": ""}), None),
                );
            }
            "content_block_start" => {
                let idx = block_index(o, &path)?;
                let b = req_obj(o, "content_block", &path)?;
                let bpath = join(&path, "content_block");
                match req_str(b, "type", &bpath)? {
                    "text" => {
                        self.blocks.insert(idx, Block::Text);
                        let text = opt_str(b, "text", &bpath)?.unwrap_or_default();
                        self.text(text, out);
                    }
                    "tool_use" => {
                        let k = self.next_tool;
                        self.next_tool += 1;
                        self.blocks.insert(idx, Block::Tool(k));
                        let call = json!({
                            "index": k,
                            "id": req_str(b, "id", &bpath)?,
                            "type": "function",
                            "function": {"name": req_str(b, "name", &bpath)?, "arguments": ""},
                        });
                        self.emitted_token = true;
                        Self::emit(out, &self.chunk(json!({ "tool_calls": [call] }), None));
                    }
                    _ => {
                        self.blocks.insert(idx, Block::Hidden);
                    }
                }
            }
            "content_block_delta" => {
                let idx = block_index(o, &path)?;
                let dpath = join(&path, "delta");
                let d = req_obj(o, "delta", &path)?;
                let block = self.blocks.get(&idx).copied();
                match (req_str(d, "type", &dpath)?, block) {
                    ("text_delta", Some(Block::Text) | None) => {
                        let text = req_str(d, "text", &dpath)?;
                        self.text(text, out);
                    }
                    ("input_json_delta", Some(Block::Tool(k))) => {
                        let part = req_str(d, "partial_json", &dpath)?;
                        if !part.is_empty() {
                            let call = json!({"index": k, "function": {"arguments": part}});
                            Self::emit(out, &self.chunk(json!({ "tool_calls": [call] }), None));
                        }
                    }
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(d) = get(o, "delta") {
                    let d = as_obj(d, &join(&path, "delta"))?;
                    if let Some(r) = opt_str(d, "stop_reason", &join(&path, "delta"))? {
                        self.finish_reason = Some(finish_reason_from_anthropic(r));
                    }
                }
                if let Some(u) = get(o, "usage") {
                    self.merge_usage(as_obj(u, &join(&path, "usage"))?);
                }
            }
            "message_stop" => {
                let finish = self.finish_reason.unwrap_or("stop");
                Self::emit(out, &self.chunk(json!({}), Some(finish)));
                if self.include_usage {
                    let usage = self.usage.unwrap_or_default();
                    Self::emit(
                        out,
                        &json!({
                            "id": self.id,
                            "object": "chat.completion.chunk",
                            "created": self.created,
                            "model": self.model,
                            "choices": [],
                            "usage": usage.openai_json(),
                        }),
                    );
                }
                out.extend_from_slice(b"data: [DONE]\n\n");
                self.done = true;
            }
            "error" => {
                let err = get(o, "error").cloned().unwrap_or_else(|| json!({}));
                Self::emit(out, &openai_error_from_anthropic(&err, None));
                self.error = Some(err);
                self.done = true;
            }
            _ => {}
        }
        Ok(())
    }

    fn text(&mut self, text: &str, out: &mut Vec<u8>) {
        if text.is_empty() {
            return;
        }
        self.emitted_token = true;
        Self::emit(out, &self.chunk(json!({ "content": text }), None));
    }

    /// `message_delta.usage` carries cumulative counts: output always, the input fields
    /// sometimes; each field present replaces the one from `message_start`.
    fn merge_usage(&mut self, u: &serde_json::Map<String, Value>) {
        let old = self.usage.unwrap_or_default();
        let field = |k: &str| u.get(k).and_then(Value::as_u64);
        let uncached = old
            .prompt_tokens
            .saturating_sub(old.cached_tokens)
            .saturating_sub(old.cache_creation_tokens);
        let merged = json!({
            "input_tokens": field("input_tokens").unwrap_or(uncached),
            "cache_read_input_tokens": field("cache_read_input_tokens").unwrap_or(old.cached_tokens),
            "cache_creation_input_tokens":
                field("cache_creation_input_tokens").unwrap_or(old.cache_creation_tokens),
            "output_tokens": field("output_tokens").unwrap_or(old.completion_tokens),
        });
        self.usage = Some(TokenUsage::from_anthropic(&merged));
    }
}

fn block_index(o: &serde_json::Map<String, Value>, path: &str) -> Result<u64, TranslateError> {
    opt_u64(o, "index", path)?.ok_or_else(|| TranslateError::Missing(join(path, "index")))
}

#[cfg(test)]
#[path = "stream_tests.rs"]
mod tests;
