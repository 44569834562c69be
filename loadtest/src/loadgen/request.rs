//! One chat-completion request and its measured outcome.

use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use serde_json::{json, Value};

use super::report::Outcome;
use super::sse::SseParser;
use super::LoadConfig;

/// Pre-serialised request bodies (one streaming, one not).
#[derive(Clone, Debug)]
pub(crate) struct Bodies {
    pub(crate) plain: Bytes,
    pub(crate) stream: Bytes,
}

impl Bodies {
    pub(crate) fn new(cfg: &LoadConfig) -> anyhow::Result<Self> {
        Ok(Self {
            plain: Bytes::from(serde_json::to_vec(&request_body(cfg, false))?),
            stream: Bytes::from(serde_json::to_vec(&request_body(cfg, true))?),
        })
    }
}

/// The JSON body sent for a request: one user message with the prompt,
/// `max_tokens`, `stream`, `stream_options.include_usage` (streams with
/// `include_usage` only) and the optional top-level `metadata`.
pub fn request_body(cfg: &LoadConfig, stream: bool) -> Value {
    let mut body = json!({
        "model": cfg.model,
        "messages": [{"role": "user", "content": cfg.prompt}],
        "max_tokens": cfg.max_tokens,
        "stream": stream,
    });
    if let Some(obj) = body.as_object_mut() {
        if stream && cfg.include_usage {
            obj.insert("stream_options".to_owned(), json!({"include_usage": true}));
        }
        if let Some(meta) = &cfg.metadata {
            obj.insert("metadata".to_owned(), meta.clone());
        }
    }
    body
}

fn transport_kind(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else if e.is_body() || e.is_decode() {
        "body read"
    } else {
        "request"
    }
}

/// `usage.{prompt,completion}_tokens` of a JSON value, if it has a usage
/// object.
fn usage_of(v: &Value) -> Option<(u64, u64)> {
    let usage = v.get("usage")?.as_object()?;
    let get = |k: &str| usage.get(k).and_then(Value::as_u64).unwrap_or(0);
    Some((get("prompt_tokens"), get("completion_tokens")))
}

/// Whether a stream chunk carries non-empty `delta.content`.
fn has_content(v: &Value) -> bool {
    v.get("choices")
        .and_then(Value::as_array)
        .is_some_and(|choices| {
            choices.iter().any(|c| {
                c.get("delta")
                    .and_then(|d| d.get("content"))
                    .and_then(Value::as_str)
                    .is_some_and(|s| !s.is_empty())
            })
        })
}

/// Sends one request and measures it. Never fails: every problem becomes an
/// error outcome.
pub(crate) async fn send(
    client: &reqwest::Client,
    url: &reqwest::Url,
    cfg: &LoadConfig,
    bodies: &Bodies,
    stream: bool,
) -> Outcome {
    let body = if stream {
        bodies.stream.clone()
    } else {
        bodies.plain.clone()
    };
    let req = Prepared {
        key: cfg.api_key.as_deref(),
        body,
        stream,
    };
    send_at(client, url, req, Instant::now()).await
}

/// A request ready to go.
#[derive(Debug)]
pub(crate) struct Prepared<'a> {
    /// Bearer key, if any.
    pub(crate) key: Option<&'a str>,
    /// Serialised JSON body.
    pub(crate) body: Bytes,
    /// Whether the body asks for a stream.
    pub(crate) stream: bool,
}

/// Sends one request and measures latency and TTFT from `start`, which may
/// lie in the past (the intended send time of an open-loop schedule), so
/// that queueing in the generator counts. Never fails: every problem
/// becomes an error outcome.
pub(crate) async fn send_at(
    client: &reqwest::Client,
    url: &reqwest::Url,
    prepared: Prepared<'_>,
    start: Instant,
) -> Outcome {
    let stream = prepared.stream;
    let mut outcome = Outcome {
        stream,
        ..Outcome::default()
    };
    let mut req = client
        .post(url.clone())
        .header(CONTENT_TYPE, "application/json")
        .body(prepared.body);
    if stream {
        req = req.header(ACCEPT, "text/event-stream");
    }
    if let Some(key) = prepared.key {
        req = req.bearer_auth(key);
    }
    let mut resp = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(error = %e, "request failed");
            outcome.error_kind = Some(transport_kind(&e).to_owned());
            outcome.latency = start.elapsed();
            return outcome;
        }
    };
    let status = resp.status();
    outcome.status = Some(status.as_u16());

    if !status.is_success() {
        // Drain the body so the connection can be reused.
        let _ = resp.bytes().await;
        outcome.error_kind = Some(format!("http {}", status.as_u16()));
        outcome.latency = start.elapsed();
        return outcome;
    }

    if !stream {
        match resp.bytes().await {
            Ok(body) => match serde_json::from_slice::<Value>(&body) {
                Ok(v) => {
                    if let Some((p, c)) = usage_of(&v) {
                        outcome.prompt_tokens = p;
                        outcome.completion_tokens = c;
                    }
                    outcome.ok = true;
                }
                Err(_) => outcome.error_kind = Some("invalid json".to_owned()),
            },
            Err(e) => outcome.error_kind = Some(transport_kind(&e).to_owned()),
        }
        outcome.latency = start.elapsed();
        return outcome;
    }

    let mut parser = SseParser::new();
    let mut done = false;
    let mut ttft: Option<Duration> = None;
    let mut handle = |data: String, outcome: &mut Outcome| {
        let data = data.trim();
        if data == "[DONE]" {
            done = true;
            return;
        }
        if let Ok(v) = serde_json::from_str::<Value>(data) {
            if ttft.is_none() && has_content(&v) {
                ttft = Some(start.elapsed());
            }
            if let Some((p, c)) = usage_of(&v) {
                outcome.prompt_tokens = p;
                outcome.completion_tokens = c;
            }
        }
    };
    let mut read_error = None;
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                for data in parser.push(&chunk) {
                    handle(data, &mut outcome);
                }
            }
            Ok(None) => break,
            Err(e) => {
                read_error = Some(transport_kind(&e));
                break;
            }
        }
    }
    if let Some(data) = parser.finish() {
        handle(data, &mut outcome);
    }
    outcome.latency = start.elapsed();
    outcome.ttft = ttft;
    if status == reqwest::StatusCode::OK && done {
        outcome.ok = true;
    } else {
        outcome.error_kind = Some(match read_error {
            Some(kind) => kind.to_owned(),
            None if !done => "stream incomplete".to_owned(),
            None => format!("http {}", status.as_u16()),
        });
    }
    outcome
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn builds_request_bodies() {
        let cfg = LoadConfig {
            metadata: Some(json!({"team": "qa"})),
            include_usage: true,
            max_tokens: 7,
            ..LoadConfig::default()
        };
        let plain = request_body(&cfg, false);
        assert_eq!(plain["stream"], false);
        assert_eq!(plain["max_tokens"], 7);
        assert!(plain.get("stream_options").is_none());
        assert_eq!(plain["metadata"]["team"], "qa");
        assert_eq!(plain["messages"][0]["content"], cfg.prompt.as_str());

        let streaming = request_body(&cfg, true);
        assert_eq!(streaming["stream"], true);
        assert_eq!(streaming["stream_options"]["include_usage"], true);

        let cfg = LoadConfig {
            include_usage: false,
            ..cfg
        };
        assert!(request_body(&cfg, true).get("stream_options").is_none());
    }

    #[test]
    fn reads_usage_and_content() {
        assert_eq!(
            usage_of(&json!({"usage": {"prompt_tokens": 3, "completion_tokens": 4}})),
            Some((3, 4))
        );
        assert_eq!(usage_of(&json!({"usage": null})), None);
        assert!(has_content(
            &json!({"choices": [{"delta": {"content": "x"}}]})
        ));
        assert!(!has_content(
            &json!({"choices": [{"delta": {"role": "assistant", "content": ""}}]})
        ));
        assert!(!has_content(&json!({"choices": []})));
    }
}
