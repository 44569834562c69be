//! A client's JSON request body, read without building a tree.
//!
//! Parsing every request into a `serde_json::Value` and writing it out again for the upstream
//! was the largest part of the proxy's own CPU per request, and it grows with the prompt. Here
//! the top level of the body is read once into borrowed raw values: the fields the proxy needs
//! (`model`, `stream`, token limits, the prompt text, `metadata`, `stream_options`) are located
//! as byte ranges and parsed one by one, every other field is only validated. The upstream body
//! of a passthrough route is the client's bytes with the `model` value replaced (and
//! `stream_options.include_usage` set when usage must be asked for), so key order and spacing
//! are kept and nothing else is copied twice. Routes that translate between wire formats parse
//! a tree on demand ([`ClientBody::tree`]).
//!
//! A body that repeats a top-level key is first normalised through a tree (which keeps the
//! last of repeated keys, as before): the upstream then sees each key once, the one the proxy
//! read, so a client cannot have the proxy meter one model while the upstream runs another.

use std::borrow::Cow;
use std::ops::Range;
use std::sync::OnceLock;

use bytes::Bytes;
use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::error::ApiError;
use crate::providers::tokens::Tally;

/// What the proxy reads of the top level: the small fields as byte ranges of the body, the
/// prompt fields as their JSON type and text tally (counted while the body is read once).
#[derive(Debug, Default, Clone)]
struct Fields {
    model: Option<Range<usize>>,
    stream: Option<Range<usize>>,
    max_tokens: Option<Range<usize>>,
    max_completion_tokens: Option<Range<usize>>,
    metadata: Option<Range<usize>>,
    stream_options: Option<Range<usize>>,
    /// `messages`: its type and element count.
    messages: Option<(Kind, usize)>,
    prompt: Option<Kind>,
    input: Option<Kind>,
    /// The prompt text of `system`, `prompt`, `input` and every message's `content`.
    tally: Tally,
    /// Offset of the closing `}` of the top-level object.
    end: usize,
    /// Whether the object has any key (a field inserted before `end` needs a comma).
    any_key: bool,
}

/// A parsed client body (cheap to share by reference; the bytes are reference-counted).
#[derive(Debug)]
pub struct ClientBody {
    bytes: Bytes,
    fields: Fields,
    /// The tree, once parsed (`None`: the bytes do not parse into one, e.g. a number beyond
    /// `f64`, which the raw read leaves to the upstream).
    tree: OnceLock<Option<Value>>,
}

/// One top-level value as [`ClientBody::parse`] keeps it.
enum Item<'a> {
    /// A small field: its raw text.
    Raw(&'a RawValue),
    /// A prompt field (`messages`, `prompt`, `input`, `system`): its type, element count and
    /// text, counted as it was read.
    Prompt(Kind, usize, Tally),
    /// Anything else (validated, not kept).
    Other,
}

/// The top level of the body read by [`ClientBody::parse`]: each key with what is kept of
/// its value, in order (borrowed from the body).
struct TopLevel<'a>(Vec<(Cow<'a, str>, Item<'a>)>);

impl<'de> Deserialize<'de> for TopLevel<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TopLevel<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    let item = match key.as_ref() {
                        "model"
                        | "stream"
                        | "max_tokens"
                        | "max_completion_tokens"
                        | "metadata"
                        | "stream_options" => Item::Raw(map.next_value()?),
                        "messages" => {
                            let p = map.next_value_seed(Prompt(Shape::Messages))?;
                            Item::Prompt(p.kind, p.len, p.tally)
                        }
                        "prompt" | "input" | "system" => {
                            let p = map.next_value_seed(Prompt(Shape::Text))?;
                            Item::Prompt(p.kind, p.len, p.tally)
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                            Item::Other
                        }
                    };
                    out.push((key, item));
                }
                Ok(TopLevel(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// The deepest nesting serde_json parses into a tree (its recursion limit is 128).
const MAX_DEPTH: usize = 127;

/// Whether `bytes` nests arrays and objects deeper than `limit` (string contents skipped).
fn nests_deeper_than(bytes: &[u8], limit: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in bytes {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Where `raw` (borrowed from `body`) sits in `body`.
fn range_in(body: &[u8], raw: &RawValue) -> Option<Range<usize>> {
    let text = raw.get().as_bytes();
    let start = (text.as_ptr() as usize).checked_sub(body.as_ptr() as usize)?;
    let end = start.checked_add(text.len())?;
    (end <= body.len()).then_some(start..end)
}

impl ClientBody {
    /// Read `bytes`, which must be one JSON object (errors as the API reports them).
    pub fn parse(bytes: impl Into<Bytes>) -> Result<Self, ApiError> {
        let bytes = bytes.into();
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        // Skipped values are not depth-checked by serde_json: a body nested deeper than a tree
        // may be goes the tree's way, which refuses it as before.
        if first == Some(&b'{') && !nests_deeper_than(&bytes, MAX_DEPTH) {
            match Self::read(&bytes) {
                Ok(Some(fields)) => {
                    return Ok(Self {
                        bytes,
                        fields,
                        tree: OnceLock::new(),
                    })
                }
                // A repeated key: normalise through a tree below.
                Ok(None) => {}
                Err(e) => return Err(ApiError::InvalidJson(e.to_string())),
            }
        }
        let tree: Value =
            serde_json::from_slice(&bytes).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
        if !tree.is_object() {
            return Err(ApiError::InvalidJson(
                "the body must be a JSON object".into(),
            ));
        }
        let bytes = Bytes::from(
            serde_json::to_vec(&tree).map_err(|e| ApiError::InvalidJson(e.to_string()))?,
        );
        match Self::read(&bytes) {
            Ok(Some(fields)) => Ok(Self {
                bytes,
                fields,
                tree: OnceLock::from(Some(tree)),
            }),
            // A tree written out has neither repeated keys nor syntax errors.
            _ => Err(ApiError::InvalidJson("unreadable body".into())),
        }
    }

    /// The fields of an object body; `None` when a top-level key repeats.
    fn read(bytes: &[u8]) -> Result<Option<Fields>, serde_json::Error> {
        let top: TopLevel<'_> = serde_json::from_slice(bytes)?;
        let mut f = Fields {
            end: bytes
                .iter()
                .rposition(|b| !b.is_ascii_whitespace())
                .unwrap_or(0),
            any_key: !top.0.is_empty(),
            ..Fields::default()
        };
        if repeats_a_key(&top.0) {
            return Ok(None);
        }
        for (key, item) in &top.0 {
            match item {
                Item::Raw(raw) => {
                    let slot = match key.as_ref() {
                        "model" => &mut f.model,
                        "stream" => &mut f.stream,
                        "max_tokens" => &mut f.max_tokens,
                        "max_completion_tokens" => &mut f.max_completion_tokens,
                        "metadata" => &mut f.metadata,
                        _ => &mut f.stream_options,
                    };
                    *slot = range_in(bytes, raw);
                }
                Item::Prompt(kind, len, tally) => {
                    f.tally.add(tally);
                    match key.as_ref() {
                        "messages" => f.messages = Some((*kind, *len)),
                        "prompt" => f.prompt = Some(*kind),
                        "input" => f.input = Some(*kind),
                        _ => {}
                    }
                }
                Item::Other => {}
            }
        }
        Ok(Some(f))
    }

    /// The body as received (or normalised, when it repeated a key).
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The body as a tree, parsed on first use (routes that translate between formats).
    pub fn tree(&self) -> Result<&Value, ApiError> {
        self.tree
            .get_or_init(|| serde_json::from_slice(&self.bytes).ok())
            .as_ref()
            .ok_or_else(|| {
                ApiError::InvalidJson(
                    "the body holds a value that cannot be translated (e.g. a number out of range)"
                        .into(),
                )
            })
    }

    fn raw(&self, range: &Option<Range<usize>>) -> Option<Json<'_>> {
        let r = range.clone()?;
        let text = std::str::from_utf8(self.bytes.get(r)?).ok()?;
        Some(Json(text))
    }

    /// A small top-level field by name: `model`, `stream`, `max_tokens`,
    /// `max_completion_tokens`, `metadata` or `stream_options`.
    pub fn field(&self, name: &str) -> Option<Json<'_>> {
        let f = &self.fields;
        let range = match name {
            "model" => &f.model,
            "stream" => &f.stream,
            "max_tokens" => &f.max_tokens,
            "max_completion_tokens" => &f.max_completion_tokens,
            "metadata" => &f.metadata,
            "stream_options" => &f.stream_options,
            _ => return None,
        };
        self.raw(range)
    }

    /// Whether `messages` is an array with at least one element.
    pub fn has_messages(&self) -> bool {
        matches!(self.fields.messages, Some((Kind::Array, n)) if n > 0)
    }

    /// The JSON type of `prompt` (`"prompt"`) or `input` (`"input"`), if present.
    pub fn kind_of(&self, name: &str) -> Option<Kind> {
        match name {
            "prompt" => self.fields.prompt,
            "input" => self.fields.input,
            _ => None,
        }
    }

    /// Whether the client asked for the usage chunk of a stream
    /// (`stream_options.include_usage: true`).
    pub fn wants_usage(&self) -> bool {
        #[derive(Deserialize)]
        struct Options {
            #[serde(default)]
            include_usage: Option<Value>,
        }
        self.field("stream_options")
            .filter(|o| o.kind() == Kind::Object)
            .and_then(|o| serde_json::from_str::<Options>(o.0).ok())
            .is_some_and(|o| o.include_usage == Some(Value::Bool(true)))
    }

    /// The body an OpenAI-format upstream gets on a passthrough route: the client's bytes with
    /// `model` set to `model` and, when `ask_usage`, `stream_options.include_usage` set.
    pub fn passthrough(&self, model: &str, ask_usage: bool) -> Result<Bytes, ApiError> {
        let mut edits: Vec<(Range<usize>, Vec<u8>)> = Vec::with_capacity(2);
        let name = to_json(model)?;
        let at_end = self.fields.end..self.fields.end;
        let comma = |any: bool, field: &str, value: &[u8]| {
            let mut v = Vec::with_capacity(field.len() + value.len() + 4);
            if any {
                v.push(b',');
            }
            v.push(b'"');
            v.extend_from_slice(field.as_bytes());
            v.extend_from_slice(b"\":");
            v.extend_from_slice(value);
            v
        };
        match &self.fields.model {
            Some(r) if self.bytes.get(r.clone()) == Some(name.as_slice()) => {}
            Some(r) => edits.push((r.clone(), name)),
            None => edits.push((at_end.clone(), comma(self.fields.any_key, "model", &name))),
        }
        if ask_usage && !self.wants_usage() {
            match (&self.fields.stream_options, self.field("stream_options")) {
                (Some(r), Some(opts)) if opts.kind() == Kind::Object => {
                    let mut o: serde_json::Map<String, Value> = serde_json::from_str(opts.0)
                        .map_err(|e| ApiError::InvalidJson(e.to_string()))?;
                    o.insert("include_usage".into(), Value::Bool(true));
                    edits.push((r.clone(), to_json(&o)?));
                }
                // Not an object: left as the client sent it (the upstream answers).
                (Some(_), _) => {}
                (None, _) => {
                    let any = self.fields.any_key || !edits.is_empty();
                    edits.push((
                        at_end,
                        comma(any, "stream_options", br#"{"include_usage":true}"#),
                    ));
                }
            }
        }
        if edits.is_empty() {
            return Ok(self.bytes.clone());
        }
        edits.sort_by_key(|(r, _)| (r.start, r.end));
        let grown: usize = edits.iter().map(|(_, v)| v.len()).sum();
        let mut out = Vec::with_capacity(self.bytes.len() + grown);
        let mut at = 0;
        for (r, v) in &edits {
            out.extend_from_slice(self.bytes.get(at..r.start).unwrap_or_default());
            out.extend_from_slice(v);
            at = r.end;
        }
        out.extend_from_slice(self.bytes.get(at..).unwrap_or_default());
        Ok(Bytes::from(out))
    }

    /// The prompt's token estimate ([`crate::providers::tokens::estimate_prompt`]), counted
    /// while the body was read.
    pub fn prompt_estimate(&self) -> i64 {
        self.fields.tally.estimate()
    }

    /// `metadata` entries with string values, as the usage event keeps them: at most
    /// `max_entries`, keys and values within their limits, in key order (repeated keys: the
    /// last).
    pub fn metadata(
        &self,
        max_entries: usize,
        max_key: usize,
        max_value: usize,
    ) -> Vec<(String, String)> {
        let Some(meta) = self.field("metadata").filter(|m| m.kind() == Kind::Object) else {
            return Vec::new();
        };
        let Ok(Entries(mut entries)) = serde_json::from_str::<Entries<'_>>(meta.0) else {
            return Vec::new();
        };
        // Key order, the last of repeated keys (what a tree of the object would hold).
        entries.reverse();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        entries.dedup_by(|later, first| later.0 == first.0);
        let mut out = Vec::new();
        for (k, v) in entries {
            if out.len() >= max_entries {
                break;
            }
            if Json(v.get()).kind() != Kind::String {
                continue;
            }
            if let Ok(s) = serde_json::from_str::<Cow<'_, str>>(v.get()) {
                if k.len() <= max_key && s.len() <= max_value {
                    out.push((k.into_owned(), s.into_owned()));
                }
            }
        }
        out
    }
}

fn to_json<T: serde::Serialize + ?Sized>(v: &T) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(v).map_err(|e| ApiError::InvalidJson(e.to_string()))
}

/// The entries of an object with the raw text of each value, in order.
struct Entries<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Entries<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    out.push((key, map.next_value()?));
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// How a prompt value's text is found.
#[derive(Clone, Copy)]
enum Shape {
    /// `messages`: an array of objects whose `content` is [`Shape::Text`].
    Messages,
    /// A string, or an array of strings and of objects whose `text` is [`Shape::Text`].
    Text,
    /// An element of a [`Shape::Text`] array.
    Part,
    /// A message: an object whose `content` is [`Shape::Text`].
    Message,
}

/// What is kept of a prompt value: its type, its element count (arrays) and its text.
#[derive(Default)]
struct PromptRead {
    kind: Kind,
    len: usize,
    tally: Tally,
}

impl PromptRead {
    fn number() -> Self {
        Self {
            kind: Kind::Number,
            ..Self::default()
        }
    }
}

/// Reads a prompt value of a [`Shape`] in one pass, counting its text (what
/// Whether a key occurs twice: pairwise for the few keys of a real request, through a set
/// beyond that (a body of many thousands of keys must not cost quadratic time).
fn repeats_a_key(entries: &[(Cow<'_, str>, Item<'_>)]) -> bool {
    const PAIRWISE_UP_TO: usize = 32;
    if entries.len() <= PAIRWISE_UP_TO {
        return entries
            .iter()
            .enumerate()
            .any(|(i, (key, _))| entries[..i].iter().any(|(k, _)| k == key));
    }
    let mut seen = std::collections::HashSet::with_capacity(entries.len());
    !entries.iter().all(|(key, _)| seen.insert(key.as_ref()))
}

/// `tokens::estimate_prompt` counts of a tree; the last of repeated keys, as a tree keeps).
struct Prompt(Shape);

impl<'de> serde::de::DeserializeSeed<'de> for Prompt {
    type Value = PromptRead;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<PromptRead, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Prompt {
    type Value = PromptRead;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_str<E>(self, v: &str) -> Result<PromptRead, E> {
        let mut tally = Tally::default();
        if matches!(self.0, Shape::Text | Shape::Part) {
            tally.text(v);
        }
        Ok(PromptRead {
            kind: Kind::String,
            len: 0,
            tally,
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<PromptRead, A::Error> {
        let element = match self.0 {
            Shape::Messages => Some(Shape::Message),
            Shape::Text => Some(Shape::Part),
            Shape::Part | Shape::Message => None,
        };
        let mut read = PromptRead {
            kind: Kind::Array,
            ..PromptRead::default()
        };
        while let Some(item) = match element {
            Some(shape) => seq.next_element_seed(Prompt(shape))?,
            None => seq
                .next_element::<IgnoredAny>()?
                .map(|_| PromptRead::default()),
        } {
            read.len += 1;
            read.tally.add(&item.tally);
            if matches!(self.0, Shape::Messages) {
                read.tally.message();
            }
        }
        Ok(read)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PromptRead, A::Error> {
        let wanted = match self.0 {
            Shape::Message => Some("content"),
            Shape::Part => Some("text"),
            Shape::Messages | Shape::Text => None,
        };
        let mut last = Tally::default();
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            if Some(key.as_ref()) == wanted {
                last = map.next_value_seed(Prompt(Shape::Text))?.tally;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(PromptRead {
            kind: Kind::Object,
            len: 0,
            tally: last,
        })
    }

    fn visit_bool<E>(self, _: bool) -> Result<PromptRead, E> {
        Ok(PromptRead {
            kind: Kind::Bool,
            ..PromptRead::default()
        })
    }

    fn visit_i64<E>(self, _: i64) -> Result<PromptRead, E> {
        Ok(PromptRead::number())
    }

    fn visit_u64<E>(self, _: u64) -> Result<PromptRead, E> {
        Ok(PromptRead::number())
    }

    fn visit_f64<E>(self, _: f64) -> Result<PromptRead, E> {
        Ok(PromptRead::number())
    }

    fn visit_unit<E>(self) -> Result<PromptRead, E> {
        Ok(PromptRead::default())
    }
}

/// The JSON type of a raw value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Kind {
    /// `null`
    #[default]
    Null,
    /// `true` / `false`
    Bool,
    /// A number.
    Number,
    /// A string.
    String,
    /// An array.
    Array,
    /// An object.
    Object,
}

/// The raw text of one valid JSON value of the body.
#[derive(Debug, Clone, Copy)]
pub struct Json<'a>(&'a str);

impl<'a> Json<'a> {
    /// Its type, from its first byte (raw values carry no surrounding whitespace).
    pub fn kind(&self) -> Kind {
        match self.0.as_bytes().first() {
            Some(b'"') => Kind::String,
            Some(b'[') => Kind::Array,
            Some(b'{') => Kind::Object,
            Some(b't' | b'f') => Kind::Bool,
            Some(b'n') | None => Kind::Null,
            Some(_) => Kind::Number,
        }
    }

    /// The string, unescaped (borrowed when it has no escapes).
    pub fn as_str(&self) -> Option<Cow<'a, str>> {
        (self.kind() == Kind::String)
            .then(|| serde_json::from_str::<Cow<'a, str>>(self.0).ok())
            .flatten()
    }

    /// The boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match self.0 {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        }
    }

    /// The number as a `u64`, if it is a non-negative integer that fits.
    pub fn as_u64(&self) -> Option<u64> {
        (self.kind() == Kind::Number)
            .then(|| serde_json::from_str::<Value>(self.0).ok()?.as_u64())
            .flatten()
    }
}

#[cfg(test)]
#[path = "client_body_tests.rs"]
mod tests;
