//! Server-sent-event helpers: splitting a byte stream into events, inspecting events for
//! metering (OpenAI chunks and Anthropic events), and rewriting the model name in place.

use std::borrow::Cow;

use bytes::BytesMut;
use serde::de::IgnoredAny;
use serde::Deserialize;

use crate::providers::openai::UsageJson;
use crate::usage::Tokens;

/// Longest SSE event buffered while waiting for its blank line: beyond it an upstream is
/// broken or hostile, and its bytes are passed on (or refused by a translator) unbuffered.
pub const MAX_EVENT_BYTES: usize = 8 << 20;

/// Splits bytes into complete SSE events (terminated by a blank line; `\n\n` or `\r\n\r\n`).
///
/// Each push scans only the bytes not scanned before (plus a 3-byte overlap for a terminator
/// split across chunks), so a long event arriving in many small chunks costs linear time. An
/// unterminated event over [`MAX_EVENT_BYTES`] is handed out as it is (metering cannot read
/// it, the client gets it), so memory stays bounded.
#[derive(Debug, Default)]
pub struct EventSplitter {
    buf: BytesMut,
    scanned: usize,
}

impl EventSplitter {
    /// Add bytes; returns the complete events now available (each including its terminator).
    pub fn push(&mut self, bytes: &[u8]) -> Vec<BytesMut> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        loop {
            let from = self.scanned.saturating_sub(3);
            match terminator_end(&self.buf, from) {
                Some(end) => {
                    out.push(self.buf.split_to(end));
                    self.scanned = 0;
                }
                None if self.buf.len() > MAX_EVENT_BYTES => {
                    out.push(self.buf.split());
                    self.scanned = 0;
                    break;
                }
                None => {
                    self.scanned = self.buf.len();
                    break;
                }
            }
        }
        out
    }

    /// Whatever is left (an unterminated last event).
    pub fn rest(&mut self) -> BytesMut {
        self.scanned = 0;
        self.buf.split()
    }
}

/// The end (after the blank line) of the first event terminator (`\n\n` or `\r\n\r\n`) at or
/// after `from`.
fn terminator_end(buf: &[u8], from: usize) -> Option<usize> {
    let tail = buf.get(from..)?;
    for at in memchr::memchr_iter(b'\n', tail).map(|i| from + i) {
        match buf.get(at + 1) {
            Some(b'\n') => return Some(at + 2),
            Some(b'\r') if buf.get(at + 2) == Some(&b'\n') && at >= 1 && buf[at - 1] == b'\r' => {
                return Some(at + 3)
            }
            _ => {}
        }
    }
    None
}

/// Position of `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    memchr::memmem::find(hay, needle)
}

/// The `data:` payloads of an event, joined by `\n` as the SSE spec says (borrowed when the
/// event has one `data:` line, as providers send).
pub fn data_of(event: &[u8]) -> Option<Cow<'_, [u8]>> {
    let mut data: Option<Cow<'_, [u8]>> = None;
    let mut rest = event;
    while !rest.is_empty() {
        let (line, next) = match memchr::memchr(b'\n', rest) {
            Some(at) => (&rest[..at], &rest[at + 1..]),
            None => (rest, &[][..]),
        };
        rest = next;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(value) = line.strip_prefix(b"data:") {
            let value = value.strip_prefix(b" ").unwrap_or(value);
            match data.as_mut() {
                Some(d) => {
                    let d = d.to_mut();
                    d.push(b'\n');
                    d.extend_from_slice(value);
                }
                None => data = Some(Cow::Borrowed(value)),
            }
        }
    }
    data
}

/// What metering learned from one event.
#[derive(Debug, Default, PartialEq)]
pub struct EventInfo {
    /// `[DONE]` (OpenAI) or `message_stop` (Anthropic).
    pub done: bool,
    /// Output text carried by the event (for estimation when no usage is reported).
    pub text: String,
    /// Whether the event carries output (text or tool-call arguments).
    pub has_token: bool,
    /// Usage reported by the event (Anthropic: cumulative parts, see [`AnthropicUsage`]).
    pub usage: Option<Tokens>,
    /// OpenAI: a usage-only chunk (`choices: []`).
    pub usage_only: bool,
}

#[derive(Deserialize)]
struct ChunkProbe<'a> {
    #[serde(borrow, default)]
    choices: Vec<ChoiceProbe<'a>>,
    #[serde(default)]
    usage: Option<UsageJson>,
}

#[derive(Deserialize)]
struct ChoiceProbe<'a> {
    #[serde(borrow, default)]
    delta: Option<DeltaProbe<'a>>,
    /// Legacy completions stream `text`.
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct DeltaProbe<'a> {
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
    #[serde(default)]
    tool_calls: Option<IgnoredAny>,
}

/// Inspect an OpenAI chunk event.
pub fn inspect_openai(event: &[u8]) -> EventInfo {
    let mut info = EventInfo::default();
    let Some(data) = data_of(event) else {
        return info;
    };
    let data = data.trim_ascii();
    if data == b"[DONE]" {
        info.done = true;
        return info;
    }
    let chunk = match super::chunk::read(data) {
        Some(c) => c,
        None => match probe_openai(data) {
            Some(c) => c,
            None => return info,
        },
    };
    info.has_token = !chunk.text.is_empty() || chunk.tool_calls;
    info.text = chunk.text;
    if let Some(u) = chunk.usage {
        info.usage = Some(u.tokens());
        info.usage_only = chunk.choices == 0;
    }
    info
}

/// [`super::chunk::read`] by deserialising the chunk (the reference, and the fallback for
/// chunks off its plain path); `None` when serde refuses it.
pub fn probe_openai(data: &[u8]) -> Option<super::chunk::Chunk> {
    let probe = serde_json::from_slice::<ChunkProbe<'_>>(data).ok()?;
    let mut chunk = super::chunk::Chunk {
        choices: probe.choices.len(),
        usage: probe.usage,
        ..Default::default()
    };
    for c in &probe.choices {
        let text = c
            .delta
            .as_ref()
            .and_then(|d| d.content.as_deref())
            .or(c.text.as_deref())
            .unwrap_or("");
        chunk.text.push_str(text);
        chunk.tool_calls |= c.delta.as_ref().is_some_and(|d| d.tool_calls.is_some());
    }
    Some(chunk)
}

/// Usage fields of an Anthropic `usage` object.
#[derive(Debug, Deserialize, Default, Clone, Copy)]
pub struct AnthropicUsage {
    /// Uncached input tokens.
    #[serde(default)]
    pub input_tokens: Option<i64>,
    /// Output tokens (cumulative in `message_delta`).
    #[serde(default)]
    pub output_tokens: Option<i64>,
    /// Input tokens read from the cache.
    #[serde(default)]
    pub cache_read_input_tokens: Option<i64>,
    /// Input tokens written to the cache.
    #[serde(default)]
    pub cache_creation_input_tokens: Option<i64>,
}

impl AnthropicUsage {
    /// As Tollgate counts them: prompt includes cached and cache-creation tokens.
    pub fn tokens(&self) -> Tokens {
        let cached = self.cache_read_input_tokens.unwrap_or(0);
        Tokens {
            prompt: self.input_tokens.unwrap_or(0)
                + cached
                + self.cache_creation_input_tokens.unwrap_or(0),
            completion: self.output_tokens.unwrap_or(0),
            cached,
            estimated: false,
        }
    }

    /// Merge a later report (message_delta) into an earlier one (message_start).
    pub fn merge(&mut self, later: &AnthropicUsage) {
        self.input_tokens = later.input_tokens.or(self.input_tokens);
        self.output_tokens = later.output_tokens.or(self.output_tokens);
        self.cache_read_input_tokens = later
            .cache_read_input_tokens
            .or(self.cache_read_input_tokens);
        self.cache_creation_input_tokens = later
            .cache_creation_input_tokens
            .or(self.cache_creation_input_tokens);
    }
}

#[derive(Deserialize)]
struct AnthropicProbe {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    message: Option<AnthropicMessageProbe>,
    #[serde(default)]
    delta: Option<AnthropicDeltaProbe>,
    #[serde(default)]
    usage: Option<AnthropicUsage>,
}

#[derive(Deserialize)]
struct AnthropicMessageProbe {
    #[serde(default)]
    usage: Option<AnthropicUsage>,
}

#[derive(Deserialize)]
struct AnthropicDeltaProbe {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    partial_json: Option<String>,
}

/// Inspect an Anthropic stream event; usage is returned raw for merging.
pub fn inspect_anthropic(event: &[u8]) -> (EventInfo, Option<AnthropicUsage>) {
    let mut info = EventInfo::default();
    let Some(data) = data_of(event) else {
        return (info, None);
    };
    let Ok(probe) = serde_json::from_slice::<AnthropicProbe>(data.trim_ascii()) else {
        return (info, None);
    };
    let mut usage = None;
    match probe.kind.as_str() {
        "message_start" => usage = probe.message.and_then(|m| m.usage),
        "content_block_delta" => {
            if let Some(d) = probe.delta {
                let text = d.text.unwrap_or_default();
                info.has_token = !text.is_empty() || d.partial_json.is_some_and(|p| !p.is_empty());
                info.text = text;
            }
        }
        "message_delta" => usage = probe.usage,
        "message_stop" => info.done = true,
        _ => {}
    }
    (info, usage)
}

/// Renames the model in stream events: `"model":"from"` (with or without a space after the
/// colon) becomes `"model":"to"`. Its searchers are built once per stream.
#[derive(Debug)]
pub struct ModelRename {
    patterns: [memchr::memmem::Finder<'static>; 2],
    to: Vec<u8>,
}

impl ModelRename {
    /// Rename `from` to `to`.
    pub fn new(from: &str, to: &str) -> Self {
        let json = |name: &str| serde_json::to_string(name).unwrap_or_default();
        let (from, to) = (json(from), json(to));
        let pattern = |space: &str| {
            memchr::memmem::Finder::new(format!("\"model\":{space}{from}").as_bytes()).into_owned()
        };
        Self {
            patterns: [pattern(""), pattern(" ")],
            to: format!("\"model\":{to}").into_bytes(),
        }
    }

    /// Where `event` names `from`: the span of `"model":"from"`.
    fn find(&self, event: &[u8]) -> Option<(usize, usize)> {
        self.patterns.iter().find_map(|p| {
            let pos = p.find(event)?;
            Some((pos, pos + p.needle().len()))
        })
    }

    /// The event with the model renamed, or `None` when it does not name `from`.
    pub fn apply(&self, event: &[u8]) -> Option<Vec<u8>> {
        let mut out = BytesMut::new();
        self.apply_into(event, &mut out).then(|| out.into())
    }

    /// Append the event with the model renamed to `out`; `false`, with nothing appended, when
    /// it does not name `from` (the relay then passes the event on as it is, without a copy).
    pub fn apply_into(&self, event: &[u8], out: &mut BytesMut) -> bool {
        let Some((pos, end)) = self.find(event) else {
            return false;
        };
        out.reserve(event.len() - (end - pos) + self.to.len());
        out.extend_from_slice(&event[..pos]);
        out.extend_from_slice(&self.to);
        out.extend_from_slice(&event[end..]);
        true
    }
}

/// Replace `"model":"from"` (with or without a space after the colon) by `"model":"to"`.
pub fn rewrite_model(event: &[u8], from: &str, to: &str) -> Option<Vec<u8>> {
    ModelRename::new(from, to).apply(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endless_event_is_handed_out_instead_of_buffered() {
        let mut s = EventSplitter::default();
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..8 {
            assert!(s.push(&chunk).is_empty(), "still within the limit");
        }
        let out = s.push(b"x");
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].len(), MAX_EVENT_BYTES + 1);
        let ev = s.push(b"data: next\n\n");
        assert_eq!(ev.len(), 1);
        assert_eq!(&ev[0][..], b"data: next\n\n");
    }

    #[test]
    fn splits_events_across_chunks() {
        let mut s = EventSplitter::default();
        assert!(s.push(b"data: {\"a\":1}\n").is_empty());
        let ev = s.push(b"\ndata: [DO");
        assert_eq!(ev.len(), 1);
        assert_eq!(&ev[0][..], b"data: {\"a\":1}\n\n");
        let ev = s.push(b"NE]\r\n\r\n");
        assert_eq!(&ev[0][..], b"data: [DONE]\r\n\r\n");
    }

    #[test]
    fn terminators_split_at_every_byte_are_found() {
        let stream = b"data: a\n\ndata: b\r\n\r\ndata: c\n\n";
        for size in 1..stream.len() {
            let mut s = EventSplitter::default();
            let events: Vec<Vec<u8>> = stream
                .chunks(size)
                .flat_map(|c| s.push(c))
                .map(|e| e.to_vec())
                .collect();
            assert_eq!(events.len(), 3, "chunk size {size}");
            assert_eq!(events[1], b"data: b\r\n\r\n");
        }
    }

    #[test]
    fn inspects_openai_chunks() {
        let token = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\" hi\"}}]}\n\n";
        let info = inspect_openai(token);
        assert!(info.has_token);
        assert_eq!(info.text, " hi");
        let role = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n";
        assert!(!inspect_openai(role).has_token);
        let usage =
            b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\n\n";
        let info = inspect_openai(usage);
        assert!(info.usage_only);
        assert_eq!(info.usage.unwrap().completion, 2);
        assert!(inspect_openai(b"data: [DONE]\n\n").done);
        assert_eq!(inspect_openai(b": keep-alive\n\n"), EventInfo::default());
        let legacy = b"data: {\"choices\":[{\"text\":\"abc\",\"index\":0}]}\n\n";
        assert!(inspect_openai(legacy).has_token);
    }

    #[test]
    fn inspects_anthropic_events() {
        let start = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":10,\"cache_read_input_tokens\":4,\"output_tokens\":1}}}\n\n";
        let (_, u) = inspect_anthropic(start);
        let mut u = u.unwrap();
        let delta = b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n";
        assert!(inspect_anthropic(delta).0.has_token);
        let md = b"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":7}}\n\n";
        u.merge(&inspect_anthropic(md).1.unwrap());
        assert_eq!(
            u.tokens(),
            Tokens {
                prompt: 14,
                completion: 7,
                cached: 4,
                estimated: false
            }
        );
        assert!(
            inspect_anthropic(b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n")
                .0
                .done
        );
    }

    #[test]
    fn rewrites_model_names() {
        let ev = b"data: {\"id\":\"x\",\"model\":\"up-1\",\"choices\":[]}\n\n";
        let out = rewrite_model(ev, "up-1", "public").unwrap();
        assert_eq!(
            out,
            b"data: {\"id\":\"x\",\"model\":\"public\",\"choices\":[]}\n\n"
        );
        assert!(rewrite_model(ev, "other", "public").is_none());
    }
}
