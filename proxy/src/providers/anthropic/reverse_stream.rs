//! OpenAI `chat.completion.chunk` SSE stream → Anthropic Messages SSE stream.

use std::collections::HashMap;

use bytes::Bytes;
use serde_json::{json, Value};

use super::errors::openai_error_to_anthropic;
use super::fields::{as_obj, get, index, join, opt_array, opt_str, opt_u64, parse_json};
use super::sse::SseBuffer;
use super::{stop_reason_from_openai, TokenUsage, TranslateError};

/// Which content block is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    Text(u64),
    Tool(u64),
}

impl Open {
    fn index(self) -> u64 {
        match self {
            Open::Text(i) | Open::Tool(i) => i,
        }
    }
}

/// Translates an OpenAI streaming response into Anthropic's event stream, incrementally.
///
/// Feed the upstream body with [`feed`](Self::feed) and forward the returned bytes; call
/// [`finish`](Self::finish) when it ends. The upstream request should ask for
/// `stream_options.include_usage` ([`anthropic_to_openai_request`](super::anthropic_to_openai_request)
/// does) so that the final usage is known.
///
/// Output (each as `event: NAME\ndata: JSON\n\n`): `message_start` (with zero usage: OpenAI
/// reports usage only at the end) on the first chunk; `content_block_start` /
/// `content_block_delta` (`text_delta`, `input_json_delta`) / `content_block_stop` for the text
/// and for each tool call; on `[DONE]` a `message_delta` with the mapped `stop_reason` and the
/// full usage (`input_tokens`, `cache_read_input_tokens`, `output_tokens`) and `message_stop`.
/// An OpenAI error chunk (`{"error": ...}`) becomes an `error` event and ends the stream.
#[derive(Debug)]
pub struct OpenAiToAnthropicStream {
    sse: SseBuffer,
    /// Output translated before an event failed, sent with the next call.
    pending: Vec<u8>,
    model: String,
    started: bool,
    open: Option<Open>,
    next_block: u64,
    tools: HashMap<u64, u64>,
    stop_reason: Option<&'static str>,
    usage: Option<TokenUsage>,
    emitted_token: bool,
    done: bool,
    error: Option<Value>,
}

fn emit(out: &mut Vec<u8>, v: &Value) {
    let name = v.get("type").and_then(Value::as_str).unwrap_or("message");
    out.extend_from_slice(format!("event: {name}\ndata: {v}\n\n").as_bytes());
}

impl OpenAiToAnthropicStream {
    /// A translator answering with the public `model` name.
    pub fn new(model: impl Into<String>) -> Self {
        Self {
            sse: SseBuffer::default(),
            pending: Vec::new(),
            model: model.into(),
            started: false,
            open: None,
            next_block: 0,
            tools: HashMap::new(),
            stop_reason: None,
            usage: None,
            emitted_token: false,
            done: false,
            error: None,
        }
    }

    /// Consumes upstream bytes; returns the Anthropic SSE bytes they complete (maybe empty).
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
                Some((n, ev)) => self.handle(n, &ev.data, &mut out).map(|()| true),
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

    /// Call when the upstream body ended. Upstreams that omit `data: [DONE]` are tolerated once
    /// a `finish_reason` came; otherwise this fails with [`TranslateError::Truncated`].
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
            self.handle(n, &ev.data, out)?;
        }
        if !self.done && self.stop_reason.is_some() {
            self.end(out);
        }
        if self.done {
            Ok(())
        } else {
            Err(TranslateError::Truncated("[DONE]"))
        }
    }

    /// Output translated but not returned because `feed` or `finish` failed after it.
    pub fn take_pending(&mut self) -> Bytes {
        Bytes::from(std::mem::take(&mut self.pending))
    }

    /// The usage chunk's counts, once it came.
    pub fn usage(&self) -> Option<TokenUsage> {
        self.usage
    }

    /// Whether a content token (text or tool call) was emitted: for time-to-first-token.
    pub fn emitted_token(&self) -> bool {
        self.emitted_token
    }

    /// Whether the stream ended (`message_stop` or `error` sent).
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The upstream error object (OpenAI shape), if an error chunk came.
    pub fn upstream_error(&self) -> Option<&Value> {
        self.error.as_ref()
    }

    fn handle(&mut self, n: usize, data: &str, out: &mut Vec<u8>) -> Result<(), TranslateError> {
        if data.trim() == "[DONE]" {
            self.end(out);
            return Ok(());
        }
        let path = format!("event[{n}]");
        let v = parse_json(data, &path)?;
        let o = as_obj(&v, &path)?;
        if let Some(err) = get(o, "error") {
            let status = err
                .get("code")
                .and_then(Value::as_u64)
                .and_then(|c| u16::try_from(c).ok());
            let mapped = openai_error_to_anthropic(status.unwrap_or(500), data.as_bytes());
            emit(out, &mapped.body);
            self.error = Some(err.clone());
            self.done = true;
            return Ok(());
        }
        if !self.started {
            self.started = true;
            let id = opt_str(o, "id", &path)?.unwrap_or("msg_unknown");
            let start = json!({
                "type": "message_start",
                "message": {
                    "id": id,
                    "type": "message",
                    "role": "assistant",
                    "model": self.model,
                    "content": [],
                    "stop_reason": null,
                    "stop_sequence": null,
                    "usage": {"input_tokens": 0, "output_tokens": 0},
                },
            });
            emit(out, &start);
        }
        if let Some(u) = get(o, "usage") {
            self.usage = Some(TokenUsage::from_openai(u));
        }
        let choices = opt_array(o, "choices", &path)?.unwrap_or_default();
        let cpath = join(&path, "choices");
        for (i, choice) in choices.iter().enumerate() {
            let ipath = index(&cpath, i);
            let c = as_obj(choice, &ipath)?;
            if opt_u64(c, "index", &ipath)?.unwrap_or(0) != 0 {
                continue;
            }
            if let Some(d) = get(c, "delta") {
                self.delta(
                    as_obj(d, &join(&ipath, "delta"))?,
                    &join(&ipath, "delta"),
                    out,
                )?;
            }
            if let Some(r) = opt_str(c, "finish_reason", &ipath)? {
                self.stop_reason = Some(stop_reason_from_openai(r));
                self.close(out);
            }
        }
        Ok(())
    }

    fn delta(
        &mut self,
        d: &serde_json::Map<String, Value>,
        path: &str,
        out: &mut Vec<u8>,
    ) -> Result<(), TranslateError> {
        if let Some(text) = opt_str(d, "content", path)? {
            if !text.is_empty() {
                let idx = match self.open {
                    Some(Open::Text(i)) => i,
                    _ => {
                        self.close(out);
                        let i = self.start_block(json!({"type": "text", "text": ""}), out);
                        self.open = Some(Open::Text(i));
                        i
                    }
                };
                self.emitted_token = true;
                emit(
                    out,
                    &json!({"type": "content_block_delta", "index": idx,
                            "delta": {"type": "text_delta", "text": text}}),
                );
            }
        }
        let calls = opt_array(d, "tool_calls", path)?.unwrap_or_default();
        let tpath = join(path, "tool_calls");
        for (j, call) in calls.iter().enumerate() {
            let cpath = index(&tpath, j);
            let c = as_obj(call, &cpath)?;
            let k = opt_u64(c, "index", &cpath)?.unwrap_or(0);
            let f = match get(c, "function") {
                Some(f) => Some(as_obj(f, &join(&cpath, "function"))?),
                None => None,
            };
            let fpath = join(&cpath, "function");
            let block = match self.tools.get(&k) {
                Some(b) => *b,
                None => {
                    self.close(out);
                    let id = match opt_str(c, "id", &cpath)? {
                        Some(id) => id.to_owned(),
                        None => format!("toolu_{k}"),
                    };
                    let name = match f {
                        Some(f) => opt_str(f, "name", &fpath)?.unwrap_or_default(),
                        None => "",
                    };
                    let b = self.start_block(
                        json!({"type": "tool_use", "id": id, "name": name, "input": {}}),
                        out,
                    );
                    self.tools.insert(k, b);
                    self.open = Some(Open::Tool(b));
                    self.emitted_token = true;
                    b
                }
            };
            let args = match f {
                Some(f) => opt_str(f, "arguments", &fpath)?.unwrap_or_default(),
                None => "",
            };
            if !args.is_empty() {
                emit(
                    out,
                    &json!({"type": "content_block_delta", "index": block,
                            "delta": {"type": "input_json_delta", "partial_json": args}}),
                );
            }
        }
        Ok(())
    }

    fn start_block(&mut self, block: Value, out: &mut Vec<u8>) -> u64 {
        let i = self.next_block;
        self.next_block += 1;
        emit(
            out,
            &json!({"type": "content_block_start", "index": i, "content_block": block}),
        );
        i
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        if let Some(open) = self.open.take() {
            emit(
                out,
                &json!({"type": "content_block_stop", "index": open.index()}),
            );
        }
    }

    fn end(&mut self, out: &mut Vec<u8>) {
        if !self.started {
            self.started = true;
            emit(
                out,
                &json!({"type": "message_start", "message": {
                    "id": "msg_unknown", "type": "message", "role": "assistant",
                    "model": self.model, "content": [], "stop_reason": null,
                    "stop_sequence": null, "usage": {"input_tokens": 0, "output_tokens": 0}}}),
            );
        }
        self.close(out);
        let usage = self.usage.unwrap_or_default();
        emit(
            out,
            &json!({
                "type": "message_delta",
                "delta": {"stop_reason": self.stop_reason.unwrap_or("end_turn"), "stop_sequence": null},
                "usage": usage.anthropic_json(),
            }),
        );
        emit(out, &json!({"type": "message_stop"}));
        self.done = true;
    }
}

#[cfg(test)]
#[path = "reverse_stream_tests.rs"]
mod tests;
