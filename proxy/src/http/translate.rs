//! Bodies in the right wire format for each route (see [`Route`]): upstream request bodies,
//! client response bodies, stream stages, and usage read from either format.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::{Map, Value};

use super::error::ApiError;
use super::forward::Call;
use super::json_scan;
use super::sse::AnthropicUsage;
use super::stream::{MeterFormat, SseTransform};
use crate::entities::Provider;
use crate::providers::anthropic::{
    self, AnthropicToOpenAiStream, OpenAiToAnthropicStream, TranslateError,
};
use crate::providers::openai::UsageJson;
use crate::providers::{Endpoint, Route};
use crate::routing::Deployment;
use crate::usage::Tokens;

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn bad_request(e: TranslateError) -> ApiError {
    ApiError::InvalidRequest {
        message: e.to_string(),
        param: None,
    }
}

fn ask_for_usage(obj: &mut Map<String, Value>) {
    let opts = obj
        .entry("stream_options")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(o) = opts {
        o.insert("include_usage".into(), Value::Bool(true));
    }
}

/// The upstream request body for `deployment`.
pub fn request_body(
    route: Route,
    call: &Call<'_>,
    deployment: &Deployment,
) -> Result<Bytes, ApiError> {
    let openai_upstream = deployment.provider != Provider::Anthropic;
    let streams = matches!(
        call.endpoint,
        Endpoint::ChatCompletions | Endpoint::Completions | Endpoint::Messages
    );
    let ask_usage = call.stream && openai_upstream && streams;
    match route {
        Route::Passthrough => call.body.passthrough(&deployment.upstream_model, ask_usage),
        Route::ChatToAnthropic | Route::MessagesToOpenai => {
            let tree = call.body.tree()?;
            let mut body = if route == Route::ChatToAnthropic {
                anthropic::openai_to_anthropic_request(tree).map_err(bad_request)?
            } else {
                anthropic::anthropic_to_openai_request(tree).map_err(bad_request)?
            };
            if let Value::Object(obj) = &mut body {
                obj.insert(
                    "model".into(),
                    Value::String(deployment.upstream_model.clone()),
                );
                if ask_usage {
                    ask_for_usage(obj);
                }
            }
            encode(&body)
        }
    }
}

fn encode<T: serde::Serialize + ?Sized>(body: &T) -> Result<Bytes, ApiError> {
    serde_json::to_vec(body)
        .map(Bytes::from)
        .map_err(|e| ApiError::InvalidJson(e.to_string()))
}

struct Upstream<T>(T);

/// What a translator's `finish` leaves for the client: on failure (the upstream ended early)
/// the events it translated before the end still reach the client.
fn tail(end: Result<Bytes, TranslateError>, pending: impl FnOnce() -> Bytes) -> Vec<u8> {
    match end {
        Ok(b) => b.to_vec(),
        Err(e) => {
            tracing::warn!(error = %e, "upstream stream ended early");
            pending().to_vec()
        }
    }
}

impl SseTransform for Upstream<AnthropicToOpenAiStream> {
    fn push(&mut self, input: &[u8]) -> Vec<u8> {
        match self.0.feed(input) {
            Ok(b) => b.to_vec(),
            Err(e) => {
                tracing::warn!(error = %e, "untranslatable Anthropic stream event skipped");
                Vec::new()
            }
        }
    }
    fn finish(&mut self) -> Vec<u8> {
        let end = self.0.finish();
        tail(end, || self.0.take_pending())
    }
}

impl SseTransform for Upstream<OpenAiToAnthropicStream> {
    fn push(&mut self, input: &[u8]) -> Vec<u8> {
        match self.0.feed(input) {
            Ok(b) => b.to_vec(),
            Err(e) => {
                tracing::warn!(error = %e, "untranslatable OpenAI stream chunk skipped");
                Vec::new()
            }
        }
    }
    fn finish(&mut self) -> Vec<u8> {
        let end = self.0.finish();
        tail(end, || self.0.take_pending())
    }
}

/// How a stream is relayed.
pub struct StreamStages {
    /// Format metered.
    pub format: MeterFormat,
    /// Translation of upstream bytes.
    pub pre: Option<Box<dyn SseTransform>>,
    /// Translation into the client's format.
    pub post: Option<Box<dyn SseTransform>>,
    /// Drop the usage chunk the client did not ask for.
    pub hide_usage: bool,
    /// Upstream → public model name.
    pub rename_model: Option<std::sync::Arc<super::sse::ModelRename>>,
}

/// Stages for a stream on `route`.
pub fn stream_stages(
    route: Route,
    call: &Call<'_>,
    deployment: &Deployment,
    public: &str,
) -> StreamStages {
    let rename = deployment.stream_rename.clone();
    match route {
        Route::Passthrough if call.endpoint.anthropic_client() => StreamStages {
            format: MeterFormat::Anthropic,
            pre: None,
            post: None,
            hide_usage: false,
            rename_model: rename,
        },
        Route::Passthrough => StreamStages {
            format: MeterFormat::Openai,
            pre: None,
            post: None,
            hide_usage: !call.body.wants_usage(),
            rename_model: rename,
        },
        Route::ChatToAnthropic => StreamStages {
            format: MeterFormat::Openai,
            pre: Some(Box::new(Upstream(AnthropicToOpenAiStream::new(
                public,
                now_secs(),
                true,
            )))),
            post: None,
            hide_usage: !call.body.wants_usage(),
            rename_model: None,
        },
        Route::MessagesToOpenai => StreamStages {
            format: MeterFormat::Openai,
            pre: None,
            post: Some(Box::new(Upstream(OpenAiToAnthropicStream::new(public)))),
            hide_usage: false,
            rename_model: None,
        },
    }
}

/// A client-format response body.
#[derive(Debug)]
pub struct Translated {
    /// Bytes to send.
    pub bytes: Bytes,
    /// Usage the body reports, if it parsed and had one.
    pub usage: Option<Tokens>,
    /// Whether the bytes differ from the upstream's (content type becomes JSON).
    pub changed: bool,
    /// A successful upstream response the proxy could not translate: the bytes are an error
    /// body, sent as 502.
    pub untranslatable: bool,
}

impl Translated {
    /// Output text of the body (for estimating completion tokens when it reports no usage).
    pub fn output_text(&self, endpoint: Endpoint) -> String {
        let body: Value = serde_json::from_slice(&self.bytes).unwrap_or(Value::Null);
        output_text(endpoint, &body)
    }
}

/// A successful response in the client's own format with `model` renamed to the public name
/// in place: the upstream's bytes and key order are kept, and only `model` and `usage` are
/// read ([`json_scan::envelope`]). `None` when the body is not a JSON object this can read
/// (the caller parses it).
fn passthrough(endpoint: Endpoint, bytes: &Bytes, public: &str) -> Option<Translated> {
    let env = json_scan::envelope(bytes)?;
    let usage = env.usage.and_then(|r| {
        let raw = bytes.get(r)?;
        usage_from(endpoint, &mut serde_json::Deserializer::from_slice(raw))
    });
    let unchanged = || {
        Some(Translated {
            bytes: bytes.clone(),
            usage,
            changed: false,
            untranslatable: false,
        })
    };
    let Some(model) = env.model else {
        return unchanged();
    };
    let mut name = Vec::with_capacity(public.len() + 2);
    serde_json::to_writer(&mut name, public).ok()?;
    if bytes.get(model.clone())? == name.as_slice() {
        return unchanged();
    }
    let mut out = Vec::with_capacity(bytes.len() - model.len() + name.len());
    out.extend_from_slice(bytes.get(..model.start)?);
    out.extend_from_slice(&name);
    out.extend_from_slice(bytes.get(model.end..)?);
    Some(Translated {
        bytes: Bytes::from(out),
        usage,
        changed: true,
        untranslatable: false,
    })
}

/// Translate (or pass through, renaming the model) a non-streamed upstream response.
pub fn response_body(
    route: Route,
    call: &Call<'_>,
    status: http::StatusCode,
    bytes: &Bytes,
    public: &str,
) -> Translated {
    let endpoint = call.endpoint;
    if status.is_success() && route == Route::Passthrough {
        if let Some(t) = passthrough(endpoint, bytes, public) {
            return t;
        }
    }
    let unchanged = |body: &Value| Translated {
        bytes: bytes.clone(),
        usage: usage_of(endpoint, body),
        changed: false,
        untranslatable: false,
    };
    let parsed: Option<Value> = serde_json::from_slice(bytes).ok();
    let to_client = |v: Value| Translated {
        bytes: Bytes::from(serde_json::to_vec(&v).unwrap_or_default()),
        usage: usage_of(endpoint, &v),
        changed: true,
        untranslatable: false,
    };
    if !status.is_success() {
        return match route {
            Route::Passthrough => unchanged(parsed.as_ref().unwrap_or(&Value::Null)),
            Route::ChatToAnthropic => {
                to_client(anthropic::anthropic_error_to_openai(status.as_u16(), bytes).body)
            }
            Route::MessagesToOpenai => {
                to_client(anthropic::openai_error_to_anthropic(status.as_u16(), bytes).body)
            }
        };
    }
    let Some(mut v) = parsed else {
        return unchanged(&Value::Null);
    };
    let translated = match route {
        Route::Passthrough => {
            // Only a body `passthrough` could not read (e.g. a repeated `model` key).
            if let Some(m) = v.get_mut("model") {
                *m = Value::String(public.to_string());
                Ok(v)
            } else {
                return unchanged(&v);
            }
        }
        Route::ChatToAnthropic => anthropic::anthropic_to_openai_response(&v, public, now_secs()),
        Route::MessagesToOpenai => anthropic::openai_to_anthropic_response(&v, public),
    };
    match translated {
        Ok(v) => to_client(v),
        Err(e) => {
            tracing::warn!(request_id = call.request_id, error = %e, endpoint = endpoint.as_str(), "untranslatable upstream response");
            let err = ApiError::UpstreamUnavailable(format!("untranslatable response: {e}"));
            let body = if endpoint.anthropic_client() {
                err.anthropic_body()
            } else {
                err.body()
            };
            Translated {
                untranslatable: true,
                ..to_client(body)
            }
        }
    }
}

/// Usage in a client-format response body.
pub fn usage_of(endpoint: Endpoint, body: &Value) -> Option<Tokens> {
    usage_from(endpoint, body.get("usage")?)
}

/// A `usage` object in the client's format (Anthropic's or OpenAI's).
fn usage_from<'de, D: serde::Deserializer<'de>>(endpoint: Endpoint, usage: D) -> Option<Tokens> {
    use serde::Deserialize as _;
    if endpoint.anthropic_client() {
        AnthropicUsage::deserialize(usage).ok().map(|u| u.tokens())
    } else {
        UsageJson::deserialize(usage).ok().map(|u| u.tokens())
    }
}

/// Output text of a client-format response body (for estimation).
pub fn output_text(endpoint: Endpoint, body: &Value) -> String {
    let mut out = String::new();
    if endpoint.anthropic_client() {
        for block in body
            .get("content")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            out.push_str(block.get("text").and_then(Value::as_str).unwrap_or(""));
        }
    } else {
        for c in body
            .get("choices")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let text = c.pointer("/message/content").or_else(|| c.get("text"));
            out.push_str(text.and_then(Value::as_str).unwrap_or(""));
        }
    }
    out
}

impl std::fmt::Debug for StreamStages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamStages")
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod passthrough_tests {
    use super::*;

    fn pass(endpoint: Endpoint, body: &str, public: &str) -> Translated {
        passthrough(endpoint, &Bytes::from(body.to_owned()), public).unwrap()
    }

    #[test]
    fn renames_the_model_in_place_keeping_order_and_spacing() {
        let body = r#"{ "id": "c1", "model" : "up-model", "choices": [{"message": {"content": "hi"}}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 2,
                      "prompt_tokens_details": {"cached_tokens": 3}} }"#;
        let t = pass(Endpoint::ChatCompletions, body, "public\"1");
        assert!(t.changed);
        assert_eq!(
            std::str::from_utf8(&t.bytes).unwrap(),
            body.replace(r#""up-model""#, r#""public\"1""#)
        );
        let v: Value = serde_json::from_slice(&t.bytes).unwrap();
        assert_eq!(v["model"], "public\"1");
        let usage = t.usage.unwrap();
        assert_eq!((usage.prompt, usage.completion, usage.cached), (7, 2, 3));
        assert!(!usage.estimated);
    }

    #[test]
    fn same_name_or_no_model_sends_the_upstream_bytes() {
        let body =
            Bytes::from_static(br#"{"model":"m","usage":{"input_tokens":4,"output_tokens":1}}"#);
        let t = passthrough(Endpoint::Messages, &body, "m").unwrap();
        assert!(!t.changed);
        assert_eq!(t.bytes.as_ptr(), body.as_ptr(), "no copy");
        assert_eq!(t.usage.map(|u| (u.prompt, u.completion)), Some((4, 1)));
        let t = pass(
            Endpoint::Embeddings,
            r#"{"data": [], "object": "list"}"#,
            "m",
        );
        assert!(!t.changed);
        assert_eq!(t.usage, None);
    }

    #[test]
    fn bodies_it_cannot_read_are_left_to_the_parser() {
        for body in [
            r#" ["up", {}]"#,
            "not json",
            r#"{"model": "a""#,
            r#"{"model": "a", "model": "b"}"#,
        ] {
            assert!(
                passthrough(Endpoint::ChatCompletions, &Bytes::from(body), "p").is_none(),
                "{body}"
            );
        }
    }
}
